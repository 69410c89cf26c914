"""Faults of a run: missing hardware, a full disk, SIGTERM (see docs/reliability.md).

``train.py`` turns each into one sentence on stderr and a non-zero exit status.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

from .config import Config, ConfigError
from .runs import RUN_DIR_ENV

#: errors of a full disk or a folder that cannot be written: one sentence, not a traceback
WRITE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                errno.EDQUOT)


def check_hardware(cfg: Config) -> None:
    """Refuse an accelerator this machine lacks; warn about set-ups that slow a run down.

    The warnings: more CPU processes than cores; bfloat16 on a CPU without AVX512-BF16 or AMX,
    where torch emulates it (usually much slower than float32: pytorch/pytorch#118499, #146508).

    Raises:
        ConfigError: ``--accelerator gpu`` (or ``mps``) where there is none; ``--devices -1``
            or device indices (GPUs) for a run on the CPU, where Lightning takes only a count.
    """
    import torch

    tr = cfg["trainer"]
    acc = tr["accelerator"]
    if acc in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--accelerator {acc}: this machine has no CUDA GPU that torch can "
                          "use; choose --accelerator cpu (or auto)")
    if acc == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--accelerator mps: this machine has no MPS device; choose "
                          "--accelerator cpu (or auto)")
    on_cpu = acc == "cpu" or acc == "auto" and not torch.cuda.is_available()
    devices = tr["devices"]
    if (acc == "cpu" or on_cpu and not torch.backends.mps.is_available()) and not (
            devices == "auto" or isinstance(devices, int) and devices >= 1
            or isinstance(devices, str) and devices.strip().isdigit() and int(devices) >= 1):
        raise ConfigError(f"--devices {devices}: -1 (every GPU) and device indices such as 0,1 "
                          "select GPUs, and this run trains on the CPU; give a number of CPU "
                          "processes of at least 1, or auto")
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)
    if on_cpu and isinstance(tr["devices"], int) and tr["devices"] > cores \
            and RUN_DIR_ENV not in os.environ:
        print(f"warning: --devices {tr['devices']} starts {tr['devices']} training processes "
              f"on {cores} CPU cores; they will compete for the cores", file=sys.stderr)
    if on_cpu and tr["precision"] in ("bf16-mixed", "bf16-true", "16-mixed") \
            and not _cpu_has_bf16() and RUN_DIR_ENV not in os.environ:
        print(f"warning: --precision {tr['precision']} runs bfloat16 on the CPU, and this CPU "
              "has neither AVX512-BF16 nor AMX, so torch emulates it (usually slower than "
              "--precision 32-true)", file=sys.stderr)


def _cpu_has_bf16() -> bool:
    """Whether the CPU computes bfloat16 in hardware (AVX512-BF16 or AMX); True if unknown."""
    import torch

    probes = [getattr(torch.cpu, name, None)
              for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    probes = [p for p in probes if p is not None]
    return not probes or any(p() for p in probes)


def remove_empty_folders(folder: Path) -> None:
    """Remove ``folder`` and its sub-folders if they hold no file (a run that never started)."""
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
        if not any(sub.iterdir()):
            sub.rmdir()
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


class TerminatedError(Exception):
    """SIGTERM (a scheduler's stop) or SIGINT (Ctrl-C) stopped the run.

    Args:
        message: where it stopped and how to continue.
        signum: the signal (the exit status is 128 + signum).
    """

    def __init__(self, message: str, signum: int = 15) -> None:
        super().__init__(message)
        self.signum = signum


def signal_name(signum: int | None) -> str:
    """``SIGTERM``, ``SIGINT (Ctrl-C)``."""
    import signal

    return "SIGINT (Ctrl-C)" if signum == signal.SIGINT else "SIGTERM"


class SigtermOutsideTraining:
    """SIGTERM outside the trainer's loops (data preparation, a download, export): one sentence.

    ``train.py`` installs it for the whole command. While a trainer runs, :class:`~d2l_lightning.
    callbacks.faults.SigtermCheckpoint` marks it inactive: Lightning's own handler (which calls
    this one too) then stops the loops and a checkpoint is kept.
    """

    def __init__(self) -> None:
        self.trainer_active = False

    def __call__(self, signum: int, frame: object) -> None:
        """Stop the command, unless a trainer handles the signal."""
        if not self.trainer_active:
            raise TerminatedError(
                "stopped by SIGTERM outside training (data preparation, test set-up or "
                "export); nothing was left half-written: run the command again (with "
                "--resume last --run-dir RUN if the run has a checkpoint)", 15)


#: the handler ``train.py`` installs
SIGTERM_OUTSIDE_TRAINING = SigtermOutsideTraining()
