"""Faults during training: atomic checkpoint files, and a checkpoint when SIGTERM arrives.

Lightning writes a local checkpoint to a temporary file under ``/tmp`` and then moves it; when
the run folder is on another file system, the move is a copy, and a full disk leaves a
truncated checkpoint behind. :class:`AtomicCheckpointIO` writes next to the target and renames.

A cluster scheduler stops a job with SIGTERM. Lightning's own handler only ends the loops (with
exit status 0); :class:`SigtermCheckpoint` writes ``last.ckpt`` at the current step first, and
``train.py`` exits non-zero saying how to resume. Ctrl-C (SIGINT) takes the same way (Lightning
would stop at once, keeping nothing); a second Ctrl-C stops at once.

No checkpoint is taken between an epoch's last training step and the end of its validation
(a signal then is held until the validation ends; :class:`StepCheckpoint` skips that step):
Lightning would resume such a checkpoint in the next epoch, the missed validation never run.
"""

from __future__ import annotations

import io
import os
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from d2l_lightning.models.export import atomic_write
from d2l_lightning.training.faults import SIGTERM_OUTSIDE_TRAINING, signal_name


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file in the checkpoint's folder, then an atomic rename.

    A failed write (disk full, read-only folder) leaves every earlier file as it was and no
    temporary file behind.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to ``path`` atomically."""
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()  # torch.save reports a failed file write as a RuntimeError
        torch.save(checkpoint, buffer)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                f.write(buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())

        try:
            atomic_write(path, write)
        except OSError as e:  # disk full, file too large: name the checkpoint
            raise OSError(e.errno, e.strerror, str(path)) from None


class SigtermCheckpoint(Callback):
    """On SIGTERM or SIGINT (Ctrl-C) during fit, write ``last.ckpt`` at the current step.

    Lightning raises ``SIGTERMException`` at the end of the batch in which the signal came, so
    the checkpoint is the state after that batch, as a step checkpoint would hold it. SIGINT is
    passed to Lightning's SIGTERM handler (which also stops a DDP run's other processes).

    Args:
        path: the checkpoint to write, usually ``RUN_DIR/checkpoints/last.ckpt``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.step: int | None = None
        self.signum: int | None = None  # the signal that stopped the run
        self._previous: Any = None
        self._held: dict[int, Any] = {}  # handlers set aside during a fit's validation
        self._pending: int | None = None  # a signal that came during it

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """From here on Lightning's handler takes SIGTERM (train.py's would stop at once)."""
        SIGTERM_OUTSIDE_TRAINING.trainer_active = True

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Give SIGINT and SIGTERM back."""
        self._end()

    # SIGINT is taken once Lightning has recorded the handlers it restores when the call ends
    # (so it never restores ours): before the sanity check, training and the test.
    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Take over SIGINT."""
        self._take_sigint()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Take over SIGINT (no sanity check ran)."""
        self._take_sigint()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Take over SIGINT during the test as well."""
        self._take_sigint()

    def _take_sigint(self) -> None:
        if threading.current_thread() is threading.main_thread():
            current = signal.signal(signal.SIGINT, self._on_sigint)
            if current != self._on_sigint:
                self._previous = current

    def _end(self) -> None:
        """Give SIGINT back and forget the call's state (teardown, or an exception)."""
        SIGTERM_OUTSIDE_TRAINING.trainer_active = False
        if self._previous is not None and signal.getsignal(signal.SIGINT) == self._on_sigint:
            signal.signal(signal.SIGINT, self._previous)
        self._previous, self._held, self._pending = None, {}, None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Hold signals during a fit's validation, so no checkpoint is taken halfway through it.

        A signal that came in the step just before is held as well: the run stops when the
        validation ends, at a clean end of the epoch (Lightning would stop after one batch).
        """
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        if threading.current_thread() is not threading.main_thread():
            return
        self._held = {s: signal.signal(s, self._hold) for s in (signal.SIGTERM, signal.SIGINT)}
        connector = getattr(trainer, "_signal_connector", None)
        if trainer.received_sigterm and connector is not None:  # came in the step before
            connector.received_sigterm = False  # else Lightning stops after one val batch
            self._pending = signal.SIGINT if self.signum == signal.SIGINT else signal.SIGTERM

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Give the signals back, and pass on one that came during the validation."""
        held, self._held = self._held, {}
        for s, handler in held.items():
            signal.signal(s, handler)
        pending, self._pending = self._pending, None
        if pending is not None:
            if pending == signal.SIGINT:
                self.signum = signal.SIGINT
            handler = held.get(signal.SIGTERM)  # Lightning's: the run stops at the next check
            if callable(handler):
                handler(signal.SIGTERM, None)

    def _hold(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self._pending == signal.SIGINT:  # a second Ctrl-C
            signal.default_int_handler(signum, frame)
        self._pending = signum

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.signum == signal.SIGINT:  # a second Ctrl-C: stop now
            signal.default_int_handler(signum, frame)
        self.signum = signal.SIGINT
        handler = signal.getsignal(signal.SIGTERM)  # Lightning's, during a trainer call
        if callable(handler):
            handler(signum, frame)
        else:
            signal.default_int_handler(signum, frame)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        """Save ``last.ckpt`` when the exception is Lightning's SIGTERM stop during fit.

        Lightning calls no ``teardown`` after an exception: the signal state ends here.
        """
        self._end()
        if not isinstance(exception, SIGTERMException):
            return
        if self.signum is None:
            self.signum = signal.SIGTERM
        if trainer.state.fn != "fit" or trainer.sanity_checking:  # nothing worth keeping
            return
        trainer.save_checkpoint(self.path, weights_only=False)
        self.step = trainer.global_step


def stop_signal(trainer: L.Trainer) -> int:
    """The signal that stopped the run (SIGTERM unless it was Ctrl-C)."""
    saver = next((cb for cb in trainer.callbacks if isinstance(cb, SigtermCheckpoint)), None)
    return saver.signum if saver is not None and saver.signum else signal.SIGTERM


def terminated_message(trainer: L.Trainer, run_dir: Path) -> str:
    """The one line that says where a signal stopped the run and how to continue it."""
    saver = next((cb for cb in trainer.callbacks if isinstance(cb, SigtermCheckpoint)), None)
    name = signal_name(stop_signal(trainer))
    resume = f"python train.py --resume last --run-dir {run_dir}"
    if saver is not None and saver.step is not None:
        return (f"stopped by {name} at step {saver.step}, saved to {saver.path}; "
                f"continue with: {resume}")
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():  # during the test after fit: training had finished
        return f"stopped by {name} after training, before results.json; test with: {resume}"
    return f"stopped by {name} before the first training step; nothing to resume in {run_dir}"


class DistributedSignals(Callback):
    """Under DDP, a signal takes effect on every rank at the same step.

    Lightning's SIGTERM handler broadcasts from inside the signal handler, which can interrupt a
    collective of rank 0 (a metric's sync) and hang every rank, and its checks of the flag in the
    evaluation loops and at an epoch's end run on each rank alone (one rank leaves a loop the
    others are still in). Here the handler only notes the signal (and passes it on to the other
    local processes, as Lightning's does); after each training or test step the ranks agree with
    one all-reduce, and Lightning's flag is set on all of them at once.
    """

    def __init__(self) -> None:
        self.noted = False
        self._trainer: L.Trainer | None = None

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Replace Lightning's SIGTERM handler (registered by now; Lightning restores it)."""
        self._take(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The same, when no sanity check ran (a signal noted in it is kept)."""
        noted = self.noted
        self._take(trainer)
        self.noted = noted

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The same for the test."""
        self._take(trainer)

    def _take(self, trainer: L.Trainer) -> None:
        self._trainer, self.noted = trainer, False
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._note)

    def _note(self, signum: int, frame: Any) -> None:
        launcher = self._trainer.strategy.launcher if self._trainer is not None else None
        if not self.noted and launcher is not None:
            launcher.kill(signum)
        self.noted = True

    def _agree(self, trainer: L.Trainer) -> None:
        flag = torch.tensor([float(self.noted)], device=trainer.strategy.root_device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() and hasattr(trainer, "_signal_connector"):
            trainer._signal_connector.received_sigterm = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        """Agree on the signal after each training step."""
        self._agree(trainer)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                          outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        """Agree on the signal after each test step."""
        self._agree(trainer)


class StepCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every ``every_n_train_steps`` steps, except at an epoch's last step.

    A checkpoint taken between an epoch's last training step and its validation resumes, in
    Lightning 2.6, into the next epoch with that epoch's validation skipped and, with our
    resumable loaders, the next epoch's batches as well. The end-of-epoch ``last.ckpt``, after
    the validation, stands in for the one skipped here.
    """

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        """Save as ModelCheckpoint does, unless this is the epoch's last training batch."""
        if batch_idx + 1 >= trainer.num_training_batches:
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
