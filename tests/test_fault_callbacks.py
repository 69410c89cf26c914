"""The fault callbacks hook by hook: atomic checkpoints, signals in and around a fit, step
checkpoints, signals in and around a fit and the exit message (the step checkpoints, DDP and real
fits: test_signal_fits.py; metrics.csv and the export: test_csv_and_export_callbacks.py).

Stand-in trainers drive the hooks where a real fit is not the point; a few tiny real fits (4
training and 2 validation batches an epoch, no sanity check) check the whole way of a signal.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from callback_helpers import Exportable, FakeTrainer, Recorder, kill, signal_state  # noqa: F401
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from d2l_lightning.callbacks.faults import (
    AtomicCheckpointIO,
    SigtermCheckpoint,
    stop_signal,
    terminated_message,
)
from d2l_lightning.training.faults import SIGTERM_OUTSIDE_TRAINING

RESUME = "python train.py --resume last --run-dir"


# --- AtomicCheckpointIO ---------------------------------------------------------------------

def test_atomic_save_writes_the_checkpoint_in_a_new_folder_and_overwrites_it(tmp_path) -> None:
    path = tmp_path / "a" / "b" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"w": torch.arange(3.0), "step": 4}, path)
    io.save_checkpoint({"w": torch.arange(5.0), "step": 9}, str(path))  # exists: replaced
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["step"] == 9 and ckpt["w"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_atomic_save_renames_a_flushed_and_synced_temporary_file(tmp_path, monkeypatch) -> None:
    """The bytes are on disk (flushed, then fsync'd) in a hidden file of the same folder before
    the rename."""
    path = tmp_path / "best.ckpt"
    synced, replaced = [], []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_size)
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        replaced.append((Path(src).parent, Path(src).name.startswith(".best.ckpt."),
                         Path(src).stat().st_size, Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(8)}, path)
    size = path.stat().st_size
    assert size > 0 and synced == [size]
    assert replaced == [(tmp_path, True, size, path)]


def test_atomic_save_takes_no_storage_options(tmp_path) -> None:
    with pytest.raises(TypeError) as info:
        AtomicCheckpointIO().save_checkpoint({"w": 1}, tmp_path / "x.ckpt", storage_options={})
    assert str(info.value) == "AtomicCheckpointIO takes no storage_options"
    assert not (tmp_path / "x.ckpt").exists()


def test_failed_atomic_save_keeps_the_previous_bytes_and_names_the_file(tmp_path,
                                                                        monkeypatch) -> None:
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"w": torch.ones(4)}, path)
    before = path.read_bytes()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as info:
        io.save_checkpoint({"w": torch.zeros(4)}, path)
    e = info.value
    assert (e.errno, e.strerror, e.filename) == (errno.ENOSPC, "No space left on device",
                                                 str(path))
    assert e.__cause__ is None and e.__suppress_context__
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


# --- SigtermCheckpoint: hook by hook ---------------------------------------------------------

def test_sigint_is_taken_during_a_call_and_the_previous_handler_given_back(tmp_path) -> None:
    mine = Recorder()
    signal.signal(signal.SIGINT, mine)
    cb = SigtermCheckpoint(tmp_path / "last.ckpt")
    cb.setup(FakeTrainer(), None, "fit")
    assert SIGTERM_OUTSIDE_TRAINING.trainer_active is True
    cb.on_sanity_check_start(None, None)
    cb.on_train_start(None, None)  # taken twice: the first handler is still the one kept
    cb.on_test_start(None, None)
    assert signal.getsignal(signal.SIGINT) == cb._on_sigint
    cb.teardown(FakeTrainer(), None, "fit")
    assert signal.getsignal(signal.SIGINT) is mine
    assert SIGTERM_OUTSIDE_TRAINING.trainer_active is False
    assert (cb._previous, cb._held, cb._pending) == (None, {}, None)


def test_a_sigint_handler_set_by_someone_else_meanwhile_is_left_alone(tmp_path) -> None:
    signal.signal(signal.SIGINT, Recorder())
    cb = SigtermCheckpoint(tmp_path / "last.ckpt")
    cb.on_train_start(None, None)
    theirs = Recorder()
    signal.signal(signal.SIGINT, theirs)
    cb.teardown(None, None, "fit")
    assert signal.getsignal(signal.SIGINT) is theirs


def test_sigint_is_not_taken_outside_the_main_thread(tmp_path) -> None:
    mine = Recorder()
    signal.signal(signal.SIGINT, mine)
    cb, errors = SigtermCheckpoint(tmp_path / "last.ckpt"), []

    def run() -> None:
        try:
            cb.on_train_start(None, None)
            cb.on_validation_start(FakeTrainer(), None)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert errors == [] and signal.getsignal(signal.SIGINT) is mine and cb._held == {}


def test_first_ctrl_c_goes_to_the_sigterm_handler_and_a_second_stops_at_once(tmp_path) -> None:
    lightning = Recorder()
    signal.signal(signal.SIGTERM, lightning)
    cb = SigtermCheckpoint(tmp_path / "last.ckpt")
    cb.on_train_start(None, None)
    kill(signal.SIGINT)
    assert cb.signum == signal.SIGINT and [s for s, _ in lightning.calls] == [signal.SIGINT]
    with pytest.raises(KeyboardInterrupt):
        kill(signal.SIGINT)
    assert len(lightning.calls) == 1


def test_ctrl_c_hands_its_frame_to_the_sigterm_handler(tmp_path) -> None:
    lightning, frame = Recorder(), object()
    signal.signal(signal.SIGTERM, lightning)
    SigtermCheckpoint(tmp_path / "last.ckpt")._on_sigint(signal.SIGINT, frame)
    assert lightning.calls == [(signal.SIGINT, frame)]


def test_ctrl_c_without_a_sigterm_handler_stops_at_once(tmp_path) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    cb = SigtermCheckpoint(tmp_path / "last.ckpt")
    cb.on_train_start(None, None)
    with pytest.raises(KeyboardInterrupt):
        kill(signal.SIGINT)


@pytest.mark.parametrize("fn, sanity", [("validate", False), ("fit", True)])
def test_signals_are_not_held_outside_a_fits_validation(fn, sanity, tmp_path) -> None:
    term, intr = Recorder(), Recorder()
    signal.signal(signal.SIGTERM, term)
    signal.signal(signal.SIGINT, intr)
    cb = SigtermCheckpoint(tmp_path / "last.ckpt")
    cb.on_validation_start(FakeTrainer(fn=fn, sanity=sanity, sigterm=True), None)
    assert signal.getsignal(signal.SIGTERM) is term and signal.getsignal(signal.SIGINT) is intr
    assert cb._pending is None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_signal_during_validation_is_passed_on_when_it_ends(signum, tmp_path) -> None:
    term, intr = Recorder(), Recorder()
    signal.signal(signal.SIGTERM, term)
    signal.signal(signal.SIGINT, intr)
    cb, trainer = SigtermCheckpoint(tmp_path / "last.ckpt"), FakeTrainer()
    cb.on_validation_start(trainer, None)
    assert signal.getsignal(signal.SIGTERM) == cb._hold == signal.getsignal(signal.SIGINT)
    kill(signum)
    assert (term.calls, intr.calls, cb._pending) == ([], [], signum)  # held
    cb.on_validation_end(trainer, None)
    assert signal.getsignal(signal.SIGTERM) is term and signal.getsignal(signal.SIGINT) is intr
    assert term.calls == [(signal.SIGTERM, None)] and intr.calls == []
    assert cb.signum == (signal.SIGINT if signum == signal.SIGINT else None)
    assert cb._pending is None and cb._held == {}


def test_signals_are_held_with_a_trainer_that_has_no_signal_connector(tmp_path) -> None:
    """Lightning's ``_signal_connector`` is private: without it, signals are still held."""
    trainer = SimpleNamespace(state=SimpleNamespace(fn="fit"), sanity_checking=False,
                              received_sigterm=True)
    cb = SigtermCheckpoint(tmp_path / "last.ckpt")
    cb.on_validation_start(trainer, None)
    assert signal.getsignal(signal.SIGTERM) == cb._hold == signal.getsignal(signal.SIGINT)
    assert cb._pending is None


def test_validation_without_a_signal_passes_nothing_on(tmp_path) -> None:
    term = Recorder()
    signal.signal(signal.SIGTERM, term)
    cb, trainer = SigtermCheckpoint(tmp_path / "last.ckpt"), FakeTrainer()
    cb.on_validation_start(trainer, None)
    cb.on_validation_end(trainer, None)
    assert term.calls == [] and cb.signum is None and not trainer.received_sigterm


def test_a_second_ctrl_c_during_validation_stops_at_once(tmp_path) -> None:
    cb = SigtermCheckpoint(tmp_path / "last.ckpt")
    cb.on_validation_start(FakeTrainer(), None)
    kill(signal.SIGTERM)
    kill(signal.SIGINT)  # the first Ctrl-C: held
    assert cb._pending == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):
        kill(signal.SIGINT)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_signal_in_the_step_before_validation_waits_for_its_end(signum, tmp_path) -> None:
    term = Recorder()
    signal.signal(signal.SIGTERM, term)
    cb = SigtermCheckpoint(tmp_path / "last.ckpt")
    cb.signum = signum if signum == signal.SIGINT else None  # as _on_sigint leaves it
    trainer = FakeTrainer(sigterm=True)
    cb.on_validation_start(trainer, None)
    assert trainer._signal_connector.received_sigterm is False  # no stop after one val batch
    assert cb._pending == signum
    cb.on_validation_end(trainer, None)
    assert term.calls == [(signal.SIGTERM, None)]
    assert cb.signum == (signal.SIGINT if signum == signal.SIGINT else None)


@pytest.mark.parametrize("before", [None, signal.SIGINT])
def test_sigterm_stop_in_fit_saves_last_at_the_step(before, tmp_path) -> None:
    signal.signal(signal.SIGINT, mine := Recorder())
    cb = SigtermCheckpoint(tmp_path / "last.ckpt")
    cb.setup(None, None, "fit")
    cb.on_train_start(None, None)
    cb.signum = before
    trainer = FakeTrainer(global_step=7)
    cb.on_exception(trainer, None, SIGTERMException())
    assert trainer.saved == [(tmp_path / "last.ckpt", False)] and cb.step == 7
    assert cb.signum == (before or signal.SIGTERM)
    assert signal.getsignal(signal.SIGINT) is mine and not SIGTERM_OUTSIDE_TRAINING.trainer_active


@pytest.mark.parametrize("fn, sanity", [("test", False), ("validate", False), ("fit", True)])
def test_sigterm_stop_outside_fit_training_saves_nothing(fn, sanity, tmp_path) -> None:
    cb, trainer = SigtermCheckpoint(tmp_path / "last.ckpt"), FakeTrainer(fn, sanity, global_step=3)
    cb.on_exception(trainer, None, SIGTERMException())
    assert trainer.saved == [] and cb.step is None and cb.signum == signal.SIGTERM


def test_another_exception_saves_nothing_and_gives_sigint_back(tmp_path) -> None:
    signal.signal(signal.SIGINT, mine := Recorder())
    cb, trainer = SigtermCheckpoint(tmp_path / "last.ckpt"), FakeTrainer(global_step=3)
    cb.setup(None, None, "fit")
    cb.on_train_start(None, None)
    cb.on_exception(trainer, None, ValueError("boom"))
    assert trainer.saved == [] and (cb.step, cb.signum) == (None, None)
    assert signal.getsignal(signal.SIGINT) is mine and not SIGTERM_OUTSIDE_TRAINING.trainer_active


# --- the message and the exit signal ---------------------------------------------------------

def _saver(tmp_path: Path, step: int | None, signum: int | None) -> SigtermCheckpoint:
    cb = SigtermCheckpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    cb.step, cb.signum = step, signum
    return cb


@pytest.mark.parametrize("step, signum, name", [
    (14, signal.SIGTERM, "SIGTERM"), (0, signal.SIGINT, "SIGINT (Ctrl-C)"),
    (3, None, "SIGTERM")])
def test_message_names_the_signal_the_step_and_the_resume_command(step, signum, name,
                                                                   tmp_path) -> None:
    run, cb = tmp_path / "run", _saver(tmp_path, step, signum)
    trainer = FakeTrainer(callbacks=[Callback(), cb])
    assert terminated_message(trainer, run) == (
        f"stopped by {name} at step {step}, saved to {run}/checkpoints/last.ckpt; "
        f"continue with: {RESUME} {run}")
    assert stop_signal(trainer) == (signum or signal.SIGTERM)


def test_message_after_training_says_to_test_again(tmp_path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    trainer = FakeTrainer(callbacks=[_saver(tmp_path, None, signal.SIGINT)])
    assert terminated_message(trainer, run) == (
        f"stopped by SIGINT (Ctrl-C) after training, before results.json; test with: "
        f"{RESUME} {run}")


@pytest.mark.parametrize("callbacks", [[], [Callback()]])
def test_message_before_the_first_step_and_without_a_saver(callbacks, tmp_path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints" / "last.ckpt").mkdir(parents=True)  # a folder is no checkpoint
    trainer = FakeTrainer(callbacks=callbacks)
    assert terminated_message(trainer, run) == (
        f"stopped by SIGTERM before the first training step; nothing to resume in {run}")
    assert stop_signal(trainer) == signal.SIGTERM
