"""Tiny run folders in the real formats, shared by the resume and run-folder tests."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest
import torch

from d2l_lightning.training.cluster import RUN_DIR_ENV
from d2l_lightning.training.config import Layer, dump_config
from d2l_lightning.training.lock import LOCK_NAME

#: every key a resume may change, with a value for it (``run.run_dir`` is set per test)
RESUMABLE_VALUES = {
    ("trainer", "max_epochs"): 5, ("trainer", "max_steps"): 500,
    ("trainer", "limit_train_batches"): 0.5, ("trainer", "limit_val_batches"): 2,
    ("trainer", "limit_test_batches"): 3, ("trainer", "logger"): ["csv"],
    ("trainer", "enable_progress_bar"): False, ("trainer", "log_every_n_steps"): 7,
    ("data", "data_dir"): "/elsewhere", ("run", "progress_bar"): True,
    ("run", "progress_every"): 9, ("run", "ckpt_every_n_steps"): 11,
    ("run", "diverged_after"): 4, ("run", "test"): False,
}
CONFIG = {"model": {"name": "mlp", "num_hiddens": 16}, "data": {"name": "mnist"},
          "optim": {"lr": 0.1, "scheduler": "none"},
          "trainer": {"max_epochs": 3, "max_steps": -1}, "run": {"seed": 0}}
FAKE_PID = "999999"  # the pid a held lock names


@pytest.fixture(autouse=True)
def single_process():
    """No launcher around: this process is rank 0 of one (and the run-folder variable unset).

    Restored by hand afterwards: ``make_run_dir`` sets the run-folder variable itself, which
    ``monkeypatch.delenv`` of an unset variable would leave behind for the next test.
    """
    names = (RUN_DIR_ENV, "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "NODE_RANK", "GROUP_RANK")
    saved = {name: os.environ.pop(name, None) for name in names}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def save_ckpt(path: Path, arch: str = "mlp", step: int = 30, epoch: int | None = 2,
              state: dict | None = None) -> Path:
    """A checkpoint with the fields Lightning writes that a resume reads."""
    saved = {"hyper_parameters": {"arch": arch}, "global_step": step,
             "state_dict": state or {"model.net.0.weight": torch.zeros(2, 2)},
             "pytorch-lightning_version": "2.6.0", "optimizer_states": [], "loops": {}}
    if epoch is not None:
        saved["epoch"] = epoch
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(saved, path)
    return path


def write_run(run: Path, model: str = "mlp", records: int = 0, **ckpt) -> Path:
    """A run folder: ``config.yaml``, ``records`` resume records and ``checkpoints/last.ckpt``."""
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        dump_config({**CONFIG, "model": {**CONFIG["model"], "name": model}}, "train.py config"),
        encoding="utf-8")
    for n in range(1, records + 1):
        name = "config.resume.yaml" if n == 1 else f"config.resume{n}.yaml"
        (run / name).write_text(dump_config({"trainer": {"max_epochs": 3 + n}}), encoding="utf-8")
    save_ckpt(run / "checkpoints" / "last.ckpt", **ckpt)
    return run


def cli(values: dict[tuple[str, str], object], flags: bool = True) -> Layer:
    """The command line's layer; each key named by its flag (``--max-epochs``) if ``flags``."""
    layer = Layer("command line")
    for (section, key), value in values.items():
        layer.set(section, key, value, f"--{key.replace('_', '-')}" if flags else None)
    return layer


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def hold_lock():
    """Hold a folder's lock on another open file, naming :data:`FAKE_PID` (as a live writer)."""
    fds = []

    def hold(folder: Path) -> None:
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        fds.append(fd)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.pwrite(fd, f"{FAKE_PID}\n".encode("ascii"), 0)

    yield hold
    for fd in fds:
        os.close(fd)


def is_locked(folder: Path) -> bool:
    fd = os.open(folder / LOCK_NAME, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
