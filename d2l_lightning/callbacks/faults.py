"""Faults during training: atomic checkpoint files, and a checkpoint when SIGTERM arrives.

Lightning writes a local checkpoint to a temporary file under ``/tmp`` and then moves it; when
the run folder is on another file system, the move is a copy, and a full disk leaves a
truncated checkpoint behind. :class:`AtomicCheckpointIO` writes next to the target and renames.

A cluster scheduler stops a job with SIGTERM. Lightning's own handler only ends the loops (with
exit status 0); :class:`SigtermCheckpoint` writes ``last.ckpt`` at the current step first, and
``train.py`` exits non-zero saying how to resume.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from d2l_lightning.models.export import atomic_write


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
    """On SIGTERM during fit, write ``last.ckpt`` at the current step.

    Lightning raises ``SIGTERMException`` at the end of the batch in which the signal came, so
    the checkpoint is the state after that batch, as a step checkpoint would hold it.

    Args:
        path: the checkpoint to write, usually ``RUN_DIR/checkpoints/last.ckpt``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.step: int | None = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        """Save ``last.ckpt`` when the exception is Lightning's SIGTERM stop during fit."""
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        if trainer.sanity_checking:  # before any step: nothing worth keeping
            return
        trainer.save_checkpoint(self.path, weights_only=False)
        self.step = trainer.global_step


def terminated_message(trainer: L.Trainer, run_dir: Path) -> str:
    """The one line that says where a SIGTERM stopped the run and how to continue it."""
    saver = next((cb for cb in trainer.callbacks if isinstance(cb, SigtermCheckpoint)), None)
    resume = f"python train.py --resume last --run-dir {run_dir}"
    if saver is not None and saver.step is not None:
        return (f"stopped by SIGTERM at step {saver.step}, saved to {saver.path}; "
                f"continue with: {resume}")
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():  # during the test after fit: training had finished
        return f"stopped by SIGTERM after training, before results.json; test with: {resume}"
    return f"stopped by SIGTERM before the first training step; nothing to resume in {run_dir}"
