"""Stand-ins shared by the callback tests: a trainer's parts, a signal recorder, a tiny module."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from d2l_lightning.training.faults import SIGTERM_OUTSIDE_TRAINING


@pytest.fixture(autouse=True)
def signal_state():
    """Whatever a test (or a broken callback) does, SIGINT/SIGTERM are given back after it."""
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM),
              SIGTERM_OUTSIDE_TRAINING.trainer_active)
    yield before
    signal.signal(signal.SIGINT, before[0])
    signal.signal(signal.SIGTERM, before[1])
    SIGTERM_OUTSIDE_TRAINING.trainer_active = before[2]


class Recorder:
    """A signal handler that records its arguments."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, Any]] = []

    def __call__(self, signum: int, frame: Any) -> None:
        self.calls.append((signum, frame))


class FakeTrainer:
    """The parts of a Trainer the callbacks read."""

    def __init__(self, fn: str = "fit", sanity: bool = False, sigterm: bool = False,
                 global_step: int = 0, callbacks: list | None = None) -> None:
        self.state = SimpleNamespace(fn=fn)
        self.sanity_checking = sanity
        self._signal_connector = SimpleNamespace(received_sigterm=sigterm)
        self.global_step = global_step
        self.callbacks = callbacks or []
        self.saved: list[tuple[Path, Any]] = []
        self.num_training_batches = 4
        self.is_global_zero = True
        self.strategy = SimpleNamespace(launcher=None, root_device=torch.device("cpu"))

    @property
    def received_sigterm(self) -> bool:
        return self._signal_connector.received_sigterm

    def save_checkpoint(self, path: Any, weights_only: Any = "unset") -> None:
        self.saved.append((Path(path), weights_only))


def kill(signum: int) -> None:
    os.kill(os.getpid(), signum)


class Exportable(L.LightningModule):
    """A module with an exported part, trained a little in the fits below."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Linear(2, 1)
        self.head = nn.Linear(1, 1)
        self.validated: list[tuple[int, int]] = []

    def export_config(self) -> dict[str, Any]:
        return {"arch": "linear", "model_kwargs": {"n": 2}}

    def extra_exports(self) -> dict[str, tuple[nn.Module, dict[str, Any]]]:
        return {"head": (self.head, {"arch": "head", "model_kwargs": {}})}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.head(self.model(x)), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.validated.append((self.current_epoch, batch_idx))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(8, 2, generator=g),
                                        torch.randn(8, 1, generator=g)), batch_size=2)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.zeros(4, 2), torch.zeros(4, 1)), batch_size=2)
