"""Shared pieces of the bench/reproduce.py unit tests: a one-row table, a fixed clock and a
fake ``_train`` that writes a run's files."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bench import reproduce, rows, tables

CONFIG = """# docs/reproduce-test.md: tiny softmax regression
model:
  name: softmax_regression
data:
  name: fashion_mnist
  batch_size: {batch_size}
trainer:
  max_epochs: 3
  max_steps: {max_steps}
  accumulate_grad_batches: 2
"""
NOW = 1000.0  # the fixed clock's time.perf_counter()


@pytest.fixture
def row(tmp_path, monkeypatch) -> rows.Row:
    """A one-row table ``tiny/softmax`` (accumulates 2 batches, 3 epochs, at most 5 steps)."""
    cfg = tmp_path / "configs" / "tiny" / "softmax.yaml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(CONFIG.format(batch_size=60, max_steps=5))
    row = rows.Row(str(cfg), "a test", rows.Target("test/acc", ">=", 0.5, "0.5"), "cpu",
                   ("test/acc",))
    for module in (reproduce, tables):
        monkeypatch.setattr(module, "ROWS", [row])
    return row


@pytest.fixture
def clock(monkeypatch) -> SimpleNamespace:
    """``reproduce``'s clock stands at ``NOW`` (set ``clock.now`` to move it)."""
    fake = SimpleNamespace(now=NOW, strftime=time.strftime)
    fake.perf_counter = lambda: fake.now
    monkeypatch.setattr(reproduce, "time", fake)
    return fake


class FakeTrain:
    """Stands for ``_train``: records each call, writes ``results.json`` unless told not to."""

    def __init__(self, code: int = 0, wall: float = 3.0, stopped: bool = False,
                 results: dict[str, Any] | None = None, ckpt: bool = False) -> None:
        self.code, self.wall, self.stopped, self.ckpt = code, wall, stopped, ckpt
        self.results = results
        self.calls: list[tuple[list[str], Path, float | None]] = []
        self.stamps: list[dict[str, Any] | None] = []  # the stamp as the run starts

    def __call__(self, argv: list[str], log: Path, deadline: float | None = None):
        run = Path(argv[argv.index("--run-dir") + 1])
        stamp = run.parent / f"{run.name}.reproduce.json"
        self.calls.append((argv, log, deadline))
        self.stamps.append(json.loads(stamp.read_text()) if stamp.is_file() else None)
        run.mkdir(parents=True, exist_ok=True)
        if self.results is not None:
            (run / "results.json").write_text(json.dumps(self.results))
        if self.ckpt:
            (run / "checkpoints").mkdir(exist_ok=True)
            (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
        return self.code, self.wall, self.stopped


WARMUP = {"train_time_sec": 2.0, "global_step": 4, "train_batches_per_epoch": 6,
          "val_batches_per_epoch": 2}


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path
