"""``metrics.csv`` that survives resumes: append-only rows, written as they are logged.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when a run folder is reused, and
rewrites the file with only the columns logged in the current process, so a resumed run lost
its earlier epochs. This logger never drops a row it finds: it appends each row at once (a
``kill -9`` loses nothing logged before it), rewrites the file only to widen the header (to a
temporary file, then an atomic rename), and skips a row already in the file with the same step,
epoch and keys, which is what a resumed run replays between its checkpoint and the kill.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only


def _row_key(row: Mapping[str, Any]) -> tuple:
    """What identifies a logged row: its step, its epoch (if any) and its set of metrics."""
    keys = frozenset(k for k, v in row.items() if v not in ("", None) and k != "step")
    epoch = row.get("epoch")
    return (str(row.get("step")), "" if epoch in (None, "") else str(int(float(epoch))), keys)


class MetricsCSVLogger(Logger):
    """Log metrics to ``save_dir/metrics.csv``, one row per ``log_metrics`` call.

    Args:
        save_dir: the run folder.
    """

    NAME = "metrics.csv"

    def __init__(self, save_dir: str | Path) -> None:
        super().__init__()
        self._save_dir = Path(save_dir)
        self.path = self._save_dir / self.NAME
        self.columns: list[str] = []
        self._seen: set[tuple] = set()
        self._loaded = False

    @property
    def name(self) -> str:
        """No experiment name: the run folder is the experiment."""
        return ""

    @property
    def version(self) -> str:
        """No versions: one run folder holds one run."""
        return ""

    @property
    def save_dir(self) -> str:
        """The run folder."""
        return str(self._save_dir)

    @property
    def log_dir(self) -> str:
        """The run folder."""
        return str(self._save_dir)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Nothing: the run's ``config.yaml`` holds them."""

    def _load(self) -> None:
        """Read the header and the rows already in the file (a resumed or reused run)."""
        self._loaded = True
        if not self.path.is_file():
            return
        with open(self.path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            self.columns = list(reader.fieldnames or [])
            self._seen = {_row_key(row) for row in reader}

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Append one row (``step`` included) unless the file already holds it."""
        if not self._loaded:
            self._load()
        row = {k: float(v) if hasattr(v, "item") else v for k, v in metrics.items()}
        row["step"] = step if step is not None else len(self._seen)
        key = _row_key(row)
        if key in self._seen:
            return  # replayed after a resume: the file already has it
        self._seen.add(key)
        new = sorted(row.keys() - set(self.columns))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if new and self.columns:
            self._widen([*self.columns, *new])
        elif new:
            self.columns = sorted(row)
            with open(self.path, "w", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, self.columns).writeheader()
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, self.columns).writerow(row)

    def _widen(self, columns: list[str]) -> None:
        """Rewrite the file with more columns, keeping every row (atomic rename)."""
        with open(self.path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        tmp = self.path.with_name(f".{self.NAME}.{os.getpid()}.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)
        self.columns = columns
