"""Training-time monitoring: throughput over training steps, and a stop on non-finite loss.

One callback does both: Lightning dispatches every hook to every callback, so each extra
callback costs a few microseconds per hook, several hooks per step.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class TrainingMonitor(Callback):
    """Time training steps and stop with a clear message when the loss is not finite.

    The clock runs from each training epoch's start to its end and pauses while validation
    runs; the sample count covers all ranks (``world_size`` times this rank's samples).

    Args:
        check_every_n_steps: how often to look at the loss on an accelerator, where each look
            waits for the device; on the CPU every step is checked (it costs nothing there).
    """

    def __init__(self, check_every_n_steps: int = 10) -> None:
        self.check_every_n_steps = max(check_every_n_steps, 1)
        self.elapsed = 0.0
        self.samples = 0
        self._t0: float | None = None

    def _start(self) -> None:
        self._t0 = time.perf_counter()

    def _stop(self, pl_module: L.LightningModule) -> None:
        if self._t0 is not None:
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)
            self.elapsed += time.perf_counter() - self._t0
            self._t0 = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the clock."""
        self._start()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        """Count the batch's targets (its last element) and check the loss.

        Targets are counted element-wise: images for classifiers, target tokens for sequence
        models (padding included), so ``samples_per_sec`` is tokens/s for text tasks.
        """
        self.samples += batch[-1].numel() * trainer.world_size
        if pl_module.device.type != "cpu" and batch_idx % self.check_every_n_steps:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not math.isfinite(float(loss.detach())):
            raise NonFiniteLossError(
                f"the training loss became {float(loss):g} at step {trainer.global_step} "
                f"(epoch {trainer.current_epoch}); try a lower --lr or --gradient-clip-val"
            )

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Pause during validation inside a training epoch."""
        if trainer.training:
            self._stop(pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Resume after validation inside a training epoch."""
        if trainer.training and not trainer.sanity_checking:
            self._start()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Stop the clock."""
        self._stop(pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Publish the run summary as ``run/*`` callback metrics.

        Lightning hands callback metrics back to the main process under ``ddp_spawn``, where
        this callback's own attributes and the trainer's step counters stay behind.
        """
        summary = {"run/train_samples_per_sec": self.samples_per_sec,
                   "run/train_time_sec": self.elapsed,
                   "run/global_step": trainer.global_step, "run/epochs": trainer.current_epoch}
        trainer.callback_metrics.update({k: torch.tensor(float(v)) for k, v in summary.items()})

    @property
    def samples_per_sec(self) -> float:
        """Samples per second so far (0 before any step)."""
        return self.samples / self.elapsed if self.elapsed > 0 else 0.0
