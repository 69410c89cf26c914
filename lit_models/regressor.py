"""Regression task family (d2l ch. 3)."""

from __future__ import annotations

from typing import Any

import torch

from .base import TaskModule


class Regressor(TaskModule):
    """Squared loss ``(y_hat - y)^2 / 2`` averaged over the batch, as d2l §3.1.

    Args:
        arch: registry name of the model.
        num_inputs: feature count.
        model_kwargs: extra constructor arguments.
        optimizer, lr, weight_decay, momentum, scheduler, compile: as ``ImageClassifier``.
    """

    task = "regression"

    def __init__(self, arch: str = "linear_regression", num_inputs: int = 2,
                 model_kwargs: dict[str, Any] | None = None, optimizer: str = "sgd",
                 lr: float = 0.03, weight_decay: float = 0.0, momentum: float = 0.0,
                 scheduler: str = "none", compile: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._build(arch, {"num_inputs": num_inputs, **(model_kwargs or {})})

    @staticmethod
    def loss(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Half squared error, mean over the batch."""
        return ((y_hat - y) ** 2 / 2).mean()

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        X, y = batch
        loss = self.loss(self(X), y)
        self.log(f"{split}/loss", loss, on_step=split == "train", on_epoch=True,
                 prog_bar=True, sync_dist=split != "train", batch_size=len(y))
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        """Logs ``train/loss``."""
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Logs ``val/loss``."""
        self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Logs ``test/loss``."""
        self._step(batch, "test")
