"""Fixed per-step cost of the Lightning path, measured with a model that has almost no compute.

Softmax regression at batch 16 (µs per step, median over rounds, one process):
    plain        a hand-written loop (index_select, normalise, forward, backward, SGD step)
    bare         Trainer + our ImageClassificationTask, no logger or checkpoint, our monitor
                 (not the minimal module of ``bench/lenet_throughput.py``'s "bare" path)
    bare+log     as bare, plus one ``self.log(on_step, on_epoch)`` per step (what we avoid)
    bare+lines   as bare, plus the plain progress lines train.py prints without a terminal
                 (``callbacks.progress.LineProgress``, a line every 30 s)
    bare+rich    as bare, plus the bar train.py shows in a terminal (rich; ``bare+tqdm``: tqdm);
                 run under a terminal (e.g. ``script -qc "python bench/..." /dev/null``), or the
                 bars draw nothing
    train.py     the full path: CSV logger, checkpoints, export, monitor

    python -m bench.lightning_overhead --data-dir ../shared/data [--steps 2000 --rounds 3]
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
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from bench import step_paths
from d2l_lightning.callbacks import TrainingMonitor
from d2l_lightning.callbacks.dispatch import skip_idle_batch_hooks
from d2l_lightning.callbacks.progress import (
    LineProgress,
    RichTerminalProgress,
    TQDMTerminalProgress,
)
from d2l_lightning.datamodules.registry import build_datamodule
from d2l_lightning.lit_models import ImageClassificationTask
from d2l_lightning.training.console import quiet_warnings

MODEL, BATCH = "softmax_regression", 16


class LoggingEveryStep(ImageClassificationTask):
    """ImageClassificationTask that also calls ``self.log`` on every training step."""

    def training_step(self, batch, batch_idx):  # noqa: D102
        loss = super().training_step(batch, batch_idx)
        self.log("train/loss_every_step", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss


def bare(dm, steps: int, cls=ImageClassificationTask, lines: bool = False,
         extra: tuple = (), skip_idle: bool = False, bar: Callback | None = None) -> float:
    """µs/step of our task module and monitor (plus ``extra`` callbacks) in a bare Trainer.

    ``skip_idle``: as ``train.py``, do not dispatch the per-batch hooks callbacks leave as no-ops.
    """
    module = cls(MODEL, **dm.data_info())
    monitor = TrainingMonitor()
    if lines:
        bar = LineProgress(stream=open(os.devnull, "w"))  # noqa: SIM115
    if bar is not None:
        extra = (*extra, bar)
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=bar is not None, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[monitor, *extra])
    if skip_idle:
        skip_idle_batch_hooks(trainer.callbacks)
    trainer.fit(module, datamodule=dm)
    return monitor.elapsed / steps * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("D2L_DATA_DIR", "data"))
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", nargs="*", help="run only these paths (e.g. plain bare bare+lines)")
    a = p.parse_args()
    quiet_warnings()  # the ones train.py drops; any other warning shows
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    dm = build_datamodule("fashion_mnist", data_dir=a.data_dir, batch_size=BATCH)
    dm.setup()
    tmp = Path(tempfile.mkdtemp(prefix="overhead-"))
    batches = step_paths.Batches(*dm.train_set, BATCH, a.steps)
    runners = {"plain": lambda r: step_paths.plain(batches, MODEL, 0.1, dm.mean, dm.std),
               "bare": lambda r: bare(dm, a.steps),
               "bare+log": lambda r: bare(dm, a.steps, LoggingEveryStep),
               "bare+lines": lambda r: bare(dm, a.steps, lines=True),
               "bare+rich": lambda r: bare(dm, a.steps, bar=RichTerminalProgress()),
               "bare+tqdm": lambda r: bare(dm, a.steps, bar=TQDMTerminalProgress()),
               "train.py": lambda r: step_paths.ours(a.data_dir, a.steps, tmp / f"run{r}", MODEL,
                                                     BATCH, 0.1)}
    if a.only:
        runners = {k: v for k, v in runners.items() if k in a.only}
    us = step_paths.interleaved(runners, a.rounds)
    shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in us.items()}
    print(f"{MODEL}, batch {BATCH}, {a.steps} steps x {a.rounds} rounds, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, stderr a terminal: "
          f"{sys.stderr.isatty()}, load average {step_paths.load_average()}")
    print("| path | us/step (median) | over plain |\n|---|---|---|")
    for k, v in med.items():
        over = f"{v - med['plain']:+.0f}" if "plain" in med else "n/a"
        print(f"| {k} | {v:.0f} | {over} |")
    for k in [k for k in us if k.startswith("bare+") and "bare" in us]:  # paired per round
        diffs = step_paths.paired(us, "bare", k)["diffs_us"]
        print(f"{k} - bare, per round: {', '.join(f'{d:+.0f}' for d in diffs)} us; "
              f"median {statistics.median(diffs):+.0f}")


if __name__ == "__main__":
    main()
