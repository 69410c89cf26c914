"""Synthetic linear-regression data, ``y = Xw + b + noise`` (d2l §3.3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .base import TensorDataModule
from .splits import synthetic_regression


class SyntheticRegressionDataModule(TensorDataModule):
    """Seeded draws of ``X ~ N(0, I)`` and ``y = Xw + b + noise * N(0, 1)``.

    Args:
        w: true weights (d2l: ``[2, -3.4]``).
        b: true bias (d2l: 4.2).
        noise: noise standard deviation (d2l: 0.01).
        num_train: training examples (d2l: 1000); validation and test use ``num_val`` each.
        num_val: validation (and test) examples.
        batch_size: batch size (d2l: 32).
        seed: seed of the draws and the shuffling.
        on_device: see :class:`datamodules.base.TensorDataModule`.
    """

    def __init__(self, w: Sequence[float] = (2.0, -3.4), b: float = 4.2, noise: float = 0.01,
                 num_train: int = 1000, num_val: int = 1000, batch_size: int = 32,
                 seed: int = 0, on_device: bool | str = "auto") -> None:
        super().__init__(batch_size, seed, on_device)
        self.w = torch.tensor(list(w), dtype=torch.float32)
        self.b, self.noise = float(b), float(noise)
        self.num_train, self.num_val = num_train, num_val

    def setup(self, stage: str | None = None) -> None:
        """Draw the three splits from one seeded generator."""
        if self.train_set is not None:
            return
        splits = synthetic_regression(self.w.tolist(), self.b, self.noise, self.num_train,
                                      self.num_val, self.seed)
        self.train_set, self.val_set, self.test_set = (splits[s] for s in ("train", "val", "test"))

    @property
    def num_inputs(self) -> int:
        """Feature count."""
        return len(self.w)

    def data_info(self) -> dict[str, Any]:
        """What a model needs to know about the data."""
        return {"num_inputs": self.num_inputs}
