"""What a run shows on the console: a live bar in a terminal, plain lines in a log file.

The training loss never goes through ``self.log`` (see ``lit_models/base.py``), so neither bar
would show it; both read the running epoch mean from the task module's training sums, and the
throughput from :class:`~callbacks.monitoring.TrainingMonitor`, at most every
``refresh_seconds`` (each look at the loss waits for an accelerator).

- :class:`LineProgress` (stderr is not a terminal: a batch job, ``> log 2>&1``): one line per
  epoch after validation, and within an epoch every ``every_n_steps`` steps (0: every
  ``every_seconds``): epoch/step, train loss, val metrics, samples/s (tokens/s for text),
  elapsed and ETA. Between lines it costs one integer compare and one clock read per step.
- :func:`terminal_progress_bar`: Lightning's rich (else tqdm) bar with the same loss and
  throughput added to its metrics.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from torch import nn

#: task families whose ``TrainingMonitor`` counts target tokens, not examples
TOKEN_TASKS = ("language_modeling", "seq2seq")


def model_summary(model: nn.Module, name: str) -> str:
    """One line: parameters, trainable (and frozen) ones, size (parameters + buffers) in MB."""
    from d2l_lightning.models.transfer import parameter_summary

    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    size = sum(t.numel() * t.element_size() for t in [*params, *model.buffers()]) / 1e6
    detail = parameter_summary(model) if trainable < total else f"{trainable:,} trainable"
    return (f"model {name} ({type(model).__name__}): {total:,} parameters ({detail}), "
            f"{size:.2f} MB")


def _duration(seconds: float) -> str:
    """``1:02:03`` or ``2:03``."""
    s = int(seconds)
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def _number(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"


class _Readings:
    """The running train loss, the throughput, elapsed time and ETA of a fit."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.first_step = 0
        self.monitor = None

    def begin(self, trainer: L.Trainer) -> None:
        from .monitoring import TrainingMonitor

        self.start = time.monotonic()
        self.first_step = trainer.global_step
        self.monitor = next((c for c in trainer.callbacks if isinstance(c, TrainingMonitor)),
                            None)

    @staticmethod
    def train_loss(pl_module: L.LightningModule) -> float | None:
        sums = getattr(pl_module, "_train_sums", None)
        if sums is None:
            return None
        loss_sum, count = sums[:2].tolist()
        return loss_sum / count if count else None

    def throughput(self) -> float | None:
        return (self.monitor.samples_per_sec or None) if self.monitor is not None else None

    @staticmethod
    def unit(pl_module: L.LightningModule) -> str:
        return "tokens/s" if getattr(pl_module, "task", "") in TOKEN_TASKS else "samples/s"

    def eta(self, trainer: L.Trainer) -> float | None:
        """Seconds left, from the wall time per optimizer step so far (validation included)."""
        done = trainer.global_step - self.first_step
        per_epoch = trainer.num_training_batches
        if done <= 0 or not isinstance(per_epoch, int) or trainer.max_epochs in (None, -1):
            total = trainer.max_steps if trainer.max_steps > 0 else None
        else:
            steps_per_epoch = math.ceil(per_epoch / trainer.accumulate_grad_batches)
            total = steps_per_epoch * trainer.max_epochs
            if trainer.max_steps > 0:
                total = min(total, trainer.max_steps)
        if not total or done <= 0:
            return None
        return max(total - trainer.global_step, 0) * (time.monotonic() - self.start) / done


class LineProgress(ProgressBar):
    """Plain progress lines for logs: one per epoch, and every N steps (or seconds) inside one.

    Args:
        every_n_steps: steps between lines within an epoch; 0: every ``every_seconds``.
        every_seconds: seconds between lines within an epoch when ``every_n_steps`` is 0.
        stream: where the lines go (default: ``sys.stdout``, flushed per line).
    """

    def __init__(self, every_n_steps: int = 0, every_seconds: float = 30.0,
                 stream: Any = None) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps
        self.every_seconds = every_seconds
        self.stream = stream
        self.readings = _Readings()
        self._enabled = True
        self._next_time = math.inf
        self._line_step: int | None = None  # the step of the last epoch line

    def disable(self) -> None:
        """No lines (ranks other than 0)."""
        self._enabled = False

    def enable(self) -> None:
        """Lines again."""
        self._enabled = True

    def print(self, *args: Any, **kwargs: Any) -> None:
        """Print to the progress stream."""
        if self._enabled:
            print(*args, file=self.stream or sys.stdout, flush=True, **kwargs)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the clocks."""
        self.readings.begin(trainer)
        self._next_time = time.monotonic() + self.every_seconds

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        """A step line every ``every_n_steps`` steps, or when ``every_seconds`` have passed."""
        if self.every_n_steps:
            if (batch_idx + 1) % self.every_n_steps or not self._enabled:
                return
        elif time.monotonic() < self._next_time or not self._enabled:
            return
        self._next_time = time.monotonic() + self.every_seconds
        if batch_idx + 1 < trainer.num_training_batches:  # the epoch line follows otherwise
            self.print(self.line(trainer, pl_module, final=False))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The epoch line, once the epoch's validation metrics are known."""
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._epoch_line(trainer, pl_module, validated=True)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The epoch line of an epoch whose end was not validated.

        Validation off or empty, or ``check_val_every_n_epoch`` > 1 (Lightning validates before
        this hook); an earlier epoch's val metrics are not shown again.
        """
        if self._line_step != trainer.global_step:
            self._epoch_line(trainer, pl_module, validated=False)

    def _epoch_line(self, trainer: L.Trainer, pl_module: L.LightningModule,
                    validated: bool) -> None:
        self._line_step = trainer.global_step
        self._next_time = time.monotonic() + self.every_seconds
        self.print(self.line(trainer, pl_module, final=validated))

    def line(self, trainer: L.Trainer, pl_module: L.LightningModule, final: bool) -> str:
        """``epoch 2/10 step 1200 | train/loss 0.51 | val/acc 0.83 | 9,870 samples/s | ...``."""
        epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else "?"
        parts = [f"epoch {trainer.current_epoch + 1}/{epochs} step {trainer.global_step}"]
        loss = self.readings.train_loss(pl_module)
        if loss is not None:
            parts.append(f"train/loss {_number(loss)}")
        if final:
            metrics = trainer.callback_metrics
            parts += [f"{k} {_number(float(metrics[k]))}" for k in sorted(metrics)
                      if k.startswith("val/")]
        speed = self.readings.throughput()
        if speed is not None:
            parts.append(f"{speed:,.0f} {self.readings.unit(pl_module)}")
        text = f"elapsed {_duration(time.monotonic() - self.readings.start)}"
        eta = self.readings.eta(trainer)
        if eta is not None:
            text += f" ETA {_duration(eta)}"
        return " | ".join([*parts, text])


class TerminalProgress:
    """Mixin for Lightning's bars: adds ``train/loss`` (running epoch mean) and the throughput.

    Both are read at most every ``refresh_seconds``; the bar's own ``v_num`` is dropped. The
    training bar is redrawn at most every ``draw_seconds`` (and at an epoch's or the run's last
    step): Lightning redraws it after every step, which cost 1.0 ms (tqdm) and 1.4 ms (rich)
    per step in a terminal on our CPU (``docs/results.md``). Each redraw sets the bar to the
    current step, so skipped ones lose nothing.
    """

    refresh_seconds = 0.5
    draw_seconds = 0.1

    def __init__(self, **bar_options: Any) -> None:
        super().__init__(**bar_options)
        self.readings = _Readings()
        self._shown: dict[str, Any] = {}
        self._next = 0.0
        self._next_draw = 0.0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        """Redraw the bar if ``draw_seconds`` have passed or the epoch or run ends here."""
        now = time.monotonic()
        last = (batch_idx + 1 >= trainer.num_training_batches
                or 0 < trainer.max_steps <= trainer.global_step)
        if now < self._next_draw and not last:
            return
        self._next_draw = now + self.draw_seconds
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the clocks."""
        super().on_train_start(trainer, pl_module)
        self.readings.begin(trainer)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        """The bar's metrics plus the running train loss and the throughput."""
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        now = time.monotonic()
        if trainer.training and now >= self._next:
            self._next = now + self.refresh_seconds
            loss, speed = self.readings.train_loss(pl_module), self.readings.throughput()
            self._shown = {}
            if loss is not None:
                self._shown["train/loss"] = round(loss, 4)
            if speed is not None:
                self._shown[self.readings.unit(pl_module)] = round(speed)
        return {**self._shown, **items}


class RichTerminalProgress(TerminalProgress, RichProgressBar):
    """Lightning's rich bar with the train loss and the throughput.

    Its live display redraws itself 10 times a second (Lightning's default: 100, in a thread
    that competes with training for the CPU).
    """

    def __init__(self) -> None:
        super().__init__(refresh_rate=round(1 / self.draw_seconds))


class TQDMTerminalProgress(TerminalProgress, TQDMProgressBar):
    """Lightning's tqdm bar with the train loss and the throughput."""


def terminal_progress_bar() -> ProgressBar:
    """The rich bar when rich is installed, else the tqdm one (as Lightning chooses)."""
    from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

    return RichTerminalProgress() if _RICH_AVAILABLE else TQDMTerminalProgress()
