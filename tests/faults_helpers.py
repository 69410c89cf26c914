"""Shared helpers of the fault-table tests (tests/test_faults*.py, docs/reliability.md)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

TINY = ["--model", "mlp", "--data", "mnist", "--num-hiddens", "16", "--batch-size", "16",
        "--max-epochs", "1", "--limit-val-batches", "1", "--limit-test-batches", "1",
        "--no-progress-bar"]


def snapshot(*folders: Path) -> dict[str, str]:
    """``path -> sha256`` of every file under ``folders``."""
    out = {}
    for folder in folders:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_unchanged(before: dict[str, str], *folders: Path) -> None:
    """Every file of ``before`` is still there, byte-identical."""
    after = snapshot(*folders)
    changed = [p for p, h in before.items() if after.get(p) != h]
    assert not changed, changed


def one_error_line(stderr: str) -> str:
    """The single stderr line (no traceback), returned for further checks."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def weights_finite(ckpt: Path) -> bool:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
