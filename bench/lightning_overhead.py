"""Fixed per-step cost of the Lightning path, measured with a model that has almost no compute.

Softmax regression at batch 16 (µs per step, median over rounds, one process):
    plain        a hand-written loop (index_select, normalise, forward, backward, SGD step)
    bare         Trainer + our ImageClassificationTask, no logger or checkpoint, our monitor
    bare+log     as bare, plus one ``self.log(on_step, on_epoch)`` per step (what we avoid)
    bare+lines   as bare, plus the plain progress lines train.py prints without a terminal
                 (``callbacks.progress.LineProgress``, a line every 30 s)
    train.py     the full path: CSV logger, checkpoints, export, monitor

    python bench/lightning_overhead.py --data-dir ../shared/data [--steps 2000 --rounds 3]
        [--only bare bare+lines]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L  # noqa: E402

import train  # noqa: E402
from callbacks import TrainingMonitor  # noqa: E402
from callbacks.progress import LineProgress  # noqa: E402
from datamodules.registry import build_datamodule  # noqa: E402
from lit_models import ImageClassificationTask  # noqa: E402
from models import build_model, preprocess_images  # noqa: E402

MODEL, BATCH = "softmax_regression", 16


class LoggingEveryStep(ImageClassificationTask):
    """ImageClassificationTask that also calls ``self.log`` on every training step."""

    def training_step(self, batch, batch_idx):  # noqa: D102
        loss = super().training_step(batch, batch_idx)
        self.log("train/loss_every_step", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss


def plain(dm, steps: int) -> float:
    x_all, y_all = dm.train_set
    model = build_model(MODEL)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    perm = torch.randperm(len(x_all))
    start = time.perf_counter()
    for s in range(steps):
        idx = perm[(s * BATCH) % (len(perm) - BATCH):][:BATCH]
        x = preprocess_images(x_all.index_select(0, idx), dm.mean, dm.std)
        loss = F.cross_entropy(model(x), y_all.index_select(0, idx))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps * 1e6


def bare(dm, steps: int, cls=ImageClassificationTask, lines: bool = False) -> float:
    module = cls(MODEL, **dm.data_info())
    monitor = TrainingMonitor()
    extra = [LineProgress(stream=open(os.devnull, "w"))] if lines else []  # noqa: SIM115
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=lines, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[monitor, *extra])
    trainer.fit(module, datamodule=dm)
    return monitor.elapsed / steps * 1e6


def full(data_dir: str, steps: int, run_dir: Path) -> float:
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = train.config_from_argv([
        "--model", MODEL, "--data-dir", data_dir, "--batch-size", str(BATCH), "--max-steps",
        str(steps), "--limit-val-batches", "0", "--no-test", "--no-progress-bar",
        "--run-dir", str(run_dir)])
    return train.run(cfg)["train_time_sec"] / steps * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("D2L_DATA_DIR", "data"))
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", nargs="*", help="run only these paths (e.g. plain bare bare+lines)")
    a = p.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    dm = build_datamodule("fashion_mnist", data_dir=a.data_dir, batch_size=BATCH)
    dm.setup()
    tmp = Path(tempfile.mkdtemp(prefix="overhead-"))
    runners = {"plain": lambda: plain(dm, a.steps), "bare": lambda: bare(dm, a.steps),
               "bare+log": lambda: bare(dm, a.steps, LoggingEveryStep),
               "bare+lines": lambda: bare(dm, a.steps, lines=True),
               "train.py": lambda: full(a.data_dir, a.steps, tmp / "run")}
    if a.only:
        runners = {k: v for k, v in runners.items() if k in a.only}
    us: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(a.rounds):
        for name, fn in runners.items():
            us[name].append(fn())
    shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in us.items()}
    print(f"{MODEL}, batch {BATCH}, {a.steps} steps x {a.rounds} rounds, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
    print("| path | us/step (median) | over plain |\n|---|---|---|")
    for k, v in med.items():
        over = f"{v - med['plain']:+.0f}" if "plain" in med else "n/a"
        print(f"| {k} | {v:.0f} | {over} |")
    if {"bare", "bare+lines"} <= us.keys():  # paired: the same round, one after the other
        diffs = [y - x for x, y in zip(us["bare"], us["bare+lines"])]
        print(f"bare+lines - bare, per round: {', '.join(f'{d:+.0f}' for d in diffs)} us; "
              f"median {statistics.median(diffs):+.0f}")


if __name__ == "__main__":
    main()
