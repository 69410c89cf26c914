"""Metrics beside a run's ``results.json`` (``train.py validate|test``, ``predict.py eval``).

Lightning-free and torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path


def print_beside_results(metrics: dict[str, float], results: Path, header: str) -> None:
    """Print ``header``, then each metric with ``(= results.json)`` or the value saved there."""
    try:
        saved = json.loads(results.read_text()) if results.is_file() else {}
    except (OSError, json.JSONDecodeError):
        saved = {}
    if not isinstance(saved, dict):
        saved = {}
    width = max(map(len, metrics), default=0)
    print(f"\n{header}")
    for key, value in metrics.items():
        before = saved.get(key)
        same = ("" if not isinstance(before, float) else
                "  (= results.json)" if before == value else f"  (results.json: {before!r})")
        print(f"{key.ljust(width)}  {value!r}{same}")
