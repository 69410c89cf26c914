"""Training-time monitoring: throughput, a stop on non-finite loss, a warning on divergence.

A non-finite loss stops the run before the optimizer step that would apply it (the check runs
before ``backward``), and no checkpoint with NaN or inf weights is ever written (the weights
are checked before each checkpoint is saved). One callback does all of it: Lightning
dispatches every hook to every callback, so each extra callback costs a few microseconds per
hook, several hooks per step.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only


@rank_zero_only
def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class NonFiniteLossError(RuntimeError):
    """The training loss or the weights became NaN or infinite."""


def last_good_checkpoint(trainer: L.Trainer) -> str:
    """``'the last good checkpoint is PATH (step N)'``, or that none was written."""
    found: list[Path] = []
    for cb in trainer.checkpoint_callbacks:
        if getattr(cb, "dirpath", None) and Path(cb.dirpath).is_dir():
            found += Path(cb.dirpath).glob("*.ckpt")
    if not found:
        return "no checkpoint was written"
    newest = max(found, key=lambda p: p.stat().st_mtime)
    try:
        step = torch.load(newest, map_location="cpu", weights_only=True, mmap=True)["global_step"]
    except Exception:  # noqa: BLE001 - only for the message
        return f"the last checkpoint is {newest}"
    return f"the last good checkpoint is {newest} (step {step})"


class TrainingMonitor(Callback):
    """Time training steps, stop on a non-finite loss, warn when the loss diverges.

    The clock runs from each training epoch's start to its end and pauses while validation
    runs; the sample count covers all ranks (``world_size`` times this rank's samples).

    Args:
        check_every_n_steps: how often to look at the loss on an accelerator, where each look
            waits for the device; on the CPU every step is checked (it costs nothing there).
            Checkpoints are checked for non-finite weights whatever this is.
        diverged_after: warn once when the loss has stayed above ``diverge_factor`` times its
            first value for this many steps (0: never).
        diverge_factor: how far above its first value the loss counts as diverged.
    """

    def __init__(self, check_every_n_steps: int = 10, diverged_after: int = 50,
                 diverge_factor: float = 10.0) -> None:
        self.check_every_n_steps = max(check_every_n_steps, 1)
        self.diverged_after = diverged_after
        self.diverge_factor = diverge_factor
        self.elapsed = 0.0
        self.samples = 0
        self._t0: float | None = None
        self._first_loss: float | None = None
        self._above_since: int | None = None
        self._warned = False
        #: on the CPU, look at the loss every step (no device to wait for)
        self.every_step_on_cpu = True

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

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           loss: torch.Tensor) -> None:
        """Stop before a non-finite loss reaches the weights; track divergence."""
        step = trainer.global_step  # elsewhere: step 0 and every n-th, the logging steps
        if (pl_module.device.type != "cpu" or not self.every_step_on_cpu) and step and (
                step + 1) % self.check_every_n_steps:
            return
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"the training loss became {value:g} in step {step + 1} (epoch "
                f"{trainer.current_epoch}), which was not applied; "
                f"{last_good_checkpoint(trainer)}; try a lower --lr or --gradient-clip-val")
        self._track_divergence(value, step)

    def _track_divergence(self, value: float, step: int) -> None:
        if self._first_loss is None:
            self._first_loss = value
            return
        if not self.diverged_after or self._warned:
            return
        if value <= self.diverge_factor * abs(self._first_loss):
            self._above_since = None
            return
        if self._above_since is None:
            self._above_since = step
        if step - self._above_since + 1 >= self.diverged_after:
            self._warned = True
            _warn(
                f"warning: the training loss ({value:.3g} at step {step + 1}) has stayed above "
                f"{self.diverge_factor:g}x its first value ({self._first_loss:.3g}) for "
                f"{self.diverged_after} steps: the run has likely diverged; try a lower --lr")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        """Count the batch's targets (its last element).

        Targets are counted element-wise: images for classifiers, target tokens for sequence
        models (padding included), so ``samples_per_sec`` is tokens/s for text tasks.
        """
        self.samples += batch[-1].numel() * trainer.world_size

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        """Refuse to write a checkpoint whose weights hold NaN or inf."""
        tensors = [t for t in checkpoint.get("state_dict", {}).values()
                   if isinstance(t, torch.Tensor) and t.is_floating_point()]
        if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
            raise NonFiniteLossError(
                f"the weights became NaN or inf in step {trainer.global_step} (epoch "
                f"{trainer.current_epoch}) and were not saved; "
                f"{last_good_checkpoint(trainer)}; try a lower --lr or --gradient-clip-val")

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

    def state_dict(self) -> dict[str, float]:
        """Training time and samples so far, kept in checkpoints.

        A resumed run's ``train_time_sec`` and ``train_samples_per_sec`` cover the whole run.
        """
        running = time.perf_counter() - self._t0 if self._t0 is not None else 0.0
        return {"elapsed": self.elapsed + running, "samples": self.samples}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from a checkpoint's totals."""
        self.elapsed = float(state_dict.get("elapsed", 0.0))
        self.samples = int(state_dict.get("samples", 0))

    @property
    def samples_per_sec(self) -> float:
        """Samples per second so far, the epoch in progress included (0 before any step)."""
        elapsed = self.elapsed + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)
        return self.samples / elapsed if elapsed > 0 else 0.0
