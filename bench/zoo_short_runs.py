"""Short real-data runs of every image model: does the training loss fall?

Each model trains on Fashion-MNIST (MNIST for the attention classifiers, their default data)
through our own path (DataModule + ImageClassificationTask + Trainer) with its d2l recipe's
optimizer, learning rate and resolution, for ``--steps`` steps at a CPU-sized batch. The table
gives the mean loss of the first and last ``--window`` steps and the wall time.

    python -m bench.zoo_short_runs --data-dir ../shared/data [--models lenet,alexnet]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from d2l_lightning.datamodules.registry import build_datamodule
from d2l_lightning.lit_models import ImageClassificationTask
from d2l_lightning.models import get_spec, model_names
from d2l_lightning.training.console import quiet_warnings


class LossRecorder(Callback):
    """Keep every training step's loss."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        self.losses.append(float(outputs["loss"]))


def short_run(name: str, data_dir: str, steps: int, batch: int) -> tuple[list[float], float, int]:
    """Train ``name`` for ``steps`` steps; return the losses, seconds and resolution."""
    spec = get_spec(name)
    r = spec.recipe("d2l")
    L.seed_everything(0, verbose=False)
    dm = build_datamodule(spec.data, data_dir=data_dir, batch_size=batch)
    module = ImageClassificationTask(
        name, **dm.data_info(), resize=r.resize, model_kwargs=r.model_kwargs,
        optimizer=r.optimizer, lr=r.lr, weight_decay=r.weight_decay, momentum=r.momentum,
        label_smoothing=r.label_smoothing)
    rec = LossRecorder()
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[rec], gradient_clip_val=r.gradient_clip_val)
    t0 = time.time()
    trainer.fit(module, datamodule=dm)
    return rec.losses, time.time() - t0, r.resize or 28


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("D2L_DATA_DIR", "data"))
    p.add_argument("--models", help="comma-separated (default: every image model)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batch-large", type=int, default=16, help="batch at 224 px")
    a = p.parse_args()
    quiet_warnings()  # the ones train.py drops; any other warning shows
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    names = a.models.split(",") if a.models else model_names("image_classification")
    print("| model | data | resolution | batch | steps | first-window loss | last-window loss "
          "| fell | wall (s) |\n|---|---|---|---|---|---|---|---|---|", flush=True)
    for name in names:
        res = get_spec(name).recipe("d2l").resize or 28
        batch = a.batch_large if res >= 224 else a.batch
        losses, secs, res = short_run(name, a.data_dir, a.steps, batch)
        first = statistics.mean(losses[: a.window])
        last = statistics.mean(losses[-a.window:])
        print(f"| {name} | {get_spec(name).data} | {res} | {batch} | {len(losses)} | "
              f"{first:.3f} | {last:.3f} | {'yes' if last < first else 'no'} | {secs:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
