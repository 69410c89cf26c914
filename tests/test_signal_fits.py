"""Step checkpoints, DDP's agreement on a signal (a stand-in all-reduce), and tiny real fits
(4 training and 2 validation batches an epoch, no sanity check) that follow a signal all the way."""

from __future__ import annotations

import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from callback_helpers import Exportable, FakeTrainer, Recorder, kill, signal_state  # noqa: F401
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from safetensors.torch import load_file

from d2l_lightning.callbacks.export import ExportCallback
from d2l_lightning.callbacks.faults import (
    AtomicCheckpointIO,
    DistributedSignals,
    SigtermCheckpoint,
    StepCheckpoint,
    terminated_message,
)
from d2l_lightning.training.faults import SIGTERM_OUTSIDE_TRAINING

RESUME = "python train.py --resume last --run-dir"


# --- StepCheckpoint --------------------------------------------------------------------------

def test_step_checkpoint_passes_every_batch_but_the_epochs_last(tmp_path, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(ModelCheckpoint, "on_train_batch_end",
                        lambda self, *args: calls.append(args))
    cb, trainer = StepCheckpoint(tmp_path, every_n_train_steps=1), FakeTrainer()
    for i in range(4):
        cb.on_train_batch_end(trainer, "module", f"out{i}", f"batch{i}", i)
    assert calls == [(trainer, "module", f"out{i}", f"batch{i}", i) for i in range(3)]


# --- DistributedSignals ----------------------------------------------------------------------

class FakeLauncher:
    def __init__(self) -> None:
        self.killed: list[int] = []

    def kill(self, signum: int) -> None:
        self.killed.append(signum)


@pytest.fixture
def all_reduce(monkeypatch) -> list:
    """``all_reduce`` over this rank and another whose flag the test sets (``calls[0]``)."""
    calls: list[Any] = [0.0]

    def fake(tensor: torch.Tensor, op: Any = None) -> None:
        calls.append((tensor.tolist(), op, tensor.device))
        tensor.fill_(max(float(tensor.max()), calls[0]))

    monkeypatch.setattr(torch.distributed, "all_reduce", fake)
    return calls


@pytest.mark.parametrize("here, there, stop", [(False, False, False), (False, True, True),
                                               (True, False, True), (True, True, True)])
def test_ranks_agree_after_each_step_that_one_of_them_got_a_signal(here, there, stop,
                                                                   all_reduce) -> None:
    cb, trainer = DistributedSignals(), FakeTrainer(fn="fit")
    cb.noted, all_reduce[0] = here, float(there)
    cb.on_train_batch_end(trainer, None, None, None, 0)
    assert trainer.received_sigterm is stop
    assert all_reduce[1:] == [([float(here)], torch.distributed.ReduceOp.MAX, torch.device("cpu"))]
    trainer = FakeTrainer(fn="test")
    cb.on_test_batch_end(trainer, None, None, None, 0)
    assert trainer.received_sigterm is stop and len(all_reduce) == 3


@pytest.mark.skipif(not torch.cuda.is_available() or not torch.distributed.is_nccl_available(),
                    reason="needs CUDA and NCCL")
def test_ranks_agree_on_the_trainers_device(tmp_path) -> None:
    """NCCL reduces only GPU tensors: the flag is made on the rank's device (on the CPU, the
    default device, a flag without it would pass unnoticed)."""
    dist = torch.distributed
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        cb, trainer = DistributedSignals(), FakeTrainer()
        trainer.strategy.root_device = torch.device("cuda", 0)
        cb.noted = True
        cb.on_train_batch_end(trainer, None, None, None, 0)
        assert trainer.received_sigterm is True
    finally:
        dist.destroy_process_group()


def test_the_handler_notes_a_signal_and_passes_it_on_once(tmp_path) -> None:
    cb, trainer = DistributedSignals(), FakeTrainer()
    trainer.strategy.launcher = FakeLauncher()
    cb.on_sanity_check_start(trainer, None)
    assert signal.getsignal(signal.SIGTERM) == cb._note and cb.noted is False
    for _ in range(3):
        kill(signal.SIGTERM)
    assert cb.noted is True and trainer.strategy.launcher.killed == [signal.SIGTERM]


def test_a_fit_without_sanity_check_starts_with_no_signal_noted(all_reduce) -> None:
    cb, trainer = DistributedSignals(), FakeTrainer()
    trainer.strategy.launcher = FakeLauncher()
    cb.on_train_start(trainer, None)
    cb.on_train_batch_end(trainer, None, None, None, 0)
    assert trainer.received_sigterm is False and all_reduce[1][0] == [0.0]
    cb._note(signal.SIGINT, None)
    assert trainer.strategy.launcher.killed == [signal.SIGINT]


def test_a_signal_noted_in_the_sanity_check_is_kept_for_training() -> None:
    cb, trainer = DistributedSignals(), FakeTrainer()
    cb.on_sanity_check_start(trainer, None)
    cb._note(signal.SIGTERM, None)  # no launcher: nothing to pass on
    cb.on_train_start(trainer, None)
    assert cb.noted is True and signal.getsignal(signal.SIGTERM) == cb._note
    cb.on_test_start(trainer, None)  # a new call starts clean
    assert cb.noted is False and cb._trainer is trainer


def test_a_signal_before_any_trainer_call_is_only_noted() -> None:
    cb = DistributedSignals()
    cb._note(signal.SIGTERM, None)
    assert cb.noted is True and cb._trainer is None


# --- tiny real fits ----------------------------------------------------------------------------

class SignalAt(Callback):
    """Send ``signum`` to this process after a training step or before a validation batch."""

    def __init__(self, signum: int, step: int | None = None, val_batch: int | None = None):
        self.signum, self.step, self.val_batch = signum, step, val_batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            kill(self.signum)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx,
                                  dataloader_idx=0) -> None:
        if trainer.current_epoch == 0 and batch_idx == self.val_batch:
            kill(self.signum)


def _fit(tmp_path: Path, *callbacks: Callback, module: L.LightningModule | None = None,
         **kwargs: Any) -> L.Trainer:
    kwargs = {"max_epochs": 2, "num_sanity_val_steps": 0, "enable_checkpointing": any(
        isinstance(c, ModelCheckpoint) for c in callbacks), **kwargs}
    trainer = L.Trainer(logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path,
                        accelerator="cpu", callbacks=list(callbacks),
                        plugins=[AtomicCheckpointIO()], **kwargs)
    trainer.fit(module or Exportable())
    return trainer


@pytest.mark.parametrize("signum, step, val_batch, saved_at, validated", [
    (signal.SIGTERM, 2, None, 2, []),
    (signal.SIGINT, 2, None, 2, []),
    (signal.SIGTERM, 4, None, 4, [(0, 0), (0, 1)]),
    (signal.SIGINT, 4, None, 4, [(0, 0), (0, 1)]),
    (signal.SIGTERM, None, 0, 4, [(0, 0), (0, 1)]),
    (signal.SIGINT, None, 1, 4, [(0, 0), (0, 1)])],
    ids=["sigterm-in-training", "ctrl-c-in-training", "sigterm-at-the-epochs-last-step",
         "ctrl-c-at-the-epochs-last-step", "sigterm-in-validation",
         "ctrl-c-in-validation"])
def test_a_signal_in_a_fit_keeps_last_at_its_step_after_any_validation(
        signum, step, val_batch, saved_at, validated, tmp_path,
        signal_state) -> None:  # noqa: F811 (the fixture)
    run = tmp_path / "run"
    cb, module = SigtermCheckpoint(run / "checkpoints" / "last.ckpt"), Exportable()
    with pytest.raises(SIGTERMException):
        _fit(tmp_path, cb, SignalAt(signum, step, val_batch), module=module)
    assert module.validated == validated and cb.step == saved_at
    assert torch.load(cb.path, weights_only=False)["global_step"] == saved_at
    name = "SIGINT (Ctrl-C)" if signum == signal.SIGINT else "SIGTERM"
    message = terminated_message(SimpleNamespace(callbacks=[cb]), run)
    assert message == (f"stopped by {name} at step {saved_at}, saved to {cb.path}; "
                       f"continue with: {RESUME} {run}")
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == signal_state[:2]


def test_a_fit_gives_the_signal_handlers_back(
        tmp_path, signal_state) -> None:  # noqa: F811 (the fixture)
    cb = SigtermCheckpoint(tmp_path / "last.ckpt")
    _fit(tmp_path, cb, max_epochs=1)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == signal_state[:2]
    assert cb.step is None and not (tmp_path / "last.ckpt").exists()
    assert SIGTERM_OUTSIDE_TRAINING.trainer_active is False


def test_step_checkpoints_fall_every_n_steps_but_not_on_an_epochs_last(tmp_path,
                                                                       monkeypatch) -> None:
    saved = []
    real = ModelCheckpoint._save_checkpoint

    def record(self, trainer, filepath) -> None:
        saved.append((trainer.global_step, Path(filepath).name))
        real(self, trainer, filepath)

    monkeypatch.setattr(ModelCheckpoint, "_save_checkpoint", record)
    _fit(tmp_path, StepCheckpoint(tmp_path / "ckpt", every_n_train_steps=2, save_top_k=0,
                                  save_last=True, enable_version_counter=False))
    assert saved == [(2, "last.ckpt"), (6, "last.ckpt")]  # not 4 and 8, the epochs' last


def test_export_is_written_at_the_end_of_fit_with_the_trained_weights(tmp_path) -> None:
    seen = []

    class Early(Callback):
        def on_train_end(self, trainer, pl_module) -> None:
            seen.append((tmp_path / "export").exists())

    module = Exportable()
    _fit(tmp_path, Early(), ExportCallback(tmp_path / "export"), module=module, max_epochs=1)
    assert seen == [False]
    assert torch.equal(load_file(tmp_path / "export" / "model.safetensors")["weight"],
                       module.model.weight.detach())
