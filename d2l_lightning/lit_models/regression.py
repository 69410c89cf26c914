"""Regression task family (d2l ch. 3)."""

from __future__ import annotations

from typing import Any

import torch

from .base import TaskModule


class RegressionTask(TaskModule):
    """Mean squared error, as d2l's concise linear regression (§3.5, ``nn.MSELoss``).

    Args:
        arch: registry name of the model.
        num_inputs: feature count.
        model_kwargs: other constructor arguments of the model.
        **optim: optimisation arguments of :class:`TaskModule`.
    """

    task = "regression"
    data_args = ("num_inputs",)
    model_data_args = ("num_inputs",)

    def __init__(self, arch: str = "linear_regression", num_inputs: int = 2,
                 model_kwargs: dict[str, Any] | None = None, **optim: Any) -> None:
        super().__init__(**optim)
        self.save_hyperparameters()
        self._build(arch, {"num_inputs": num_inputs}, model_kwargs)
        self._init_train_sums(2)  # loss sum, count

    @staticmethod
    def loss(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Squared error, mean over the batch (twice §3.4's halved loss, as §3.5)."""
        return torch.nn.functional.mse_loss(y_hat, y)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        X, y = batch
        loss = self.loss(self(X), y)
        self.log(f"{split}/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=len(y))
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        """Logs ``train/loss`` every ``log_every_n_steps``."""
        X, y = batch
        loss = self.loss(self(X), y)
        self._accumulate_train(loss, n=len(y))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Logs ``val/loss`` (mean over the split, synced across ranks)."""
        self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Logs ``test/loss``."""
        self._step(batch, "test")
