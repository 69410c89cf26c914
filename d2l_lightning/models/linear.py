"""Linear models: linear regression (d2l §3.4–3.5) and softmax regression (d2l §4.4–4.5)."""

from __future__ import annotations

import torch
from torch import nn

from .registry import Recipe, register


class LinearRegression(nn.Module):
    """``y = Xw + b`` with d2l's initialisation (w ~ N(0, 0.01²), b = 0), d2l §3.5."""

    def __init__(self, num_inputs: int = 2, sigma: float = 0.01) -> None:
        super().__init__()
        self.net = nn.Linear(num_inputs, 1)
        nn.init.normal_(self.net.weight, 0.0, sigma)
        nn.init.zeros_(self.net.bias)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Map ``(B, num_inputs)`` features to ``(B, 1)`` predictions."""
        return self.net(X)


class SoftmaxRegression(nn.Module):
    """One linear layer on flattened pixels, returning logits (d2l §4.5).

    The softmax lives inside the cross-entropy loss (d2l §4.5.3's numerically stable
    ``LogSumExp`` form); applying it here as well would apply it twice.
    """

    def __init__(self, num_inputs: int, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(num_inputs, num_classes))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, H, W)`` images to ``(B, num_classes)`` logits."""
        return self.net(X)


@register(
    "linear_regression",
    task="regression",
    data="synthetic_regression",
    section="3.5",
    recipes={"d2l": Recipe(optimizer="sgd", lr=0.03, batch_size=32, max_epochs=3)},
)
def linear_regression(num_inputs: int = 2) -> LinearRegression:
    """Linear regression trained by minibatch SGD on synthetic data."""
    return LinearRegression(num_inputs)


@register(
    "softmax_regression",
    task="image_classification",
    data="fashion_mnist",
    section="4.5",
    recipes={"d2l": Recipe(optimizer="sgd", lr=0.1, batch_size=256, max_epochs=10)},
)
def softmax_regression(
    num_classes: int = 10, in_channels: int = 1, image_size: int = 28
) -> SoftmaxRegression:
    """Softmax regression on flattened pixels."""
    return SoftmaxRegression(in_channels * image_size * image_size, num_classes)
