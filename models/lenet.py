"""LeNet-5 (d2l §7.6) and LeNet with batch normalisation (d2l §8.5)."""

from __future__ import annotations

import torch
from torch import nn

from .layers import choose, init_cnn
from .registry import Recipe, register

_ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}
_POOLS = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}


class LeNet(nn.Module):
    """LeNet-5 as in d2l §7.6: two conv/pool stages and three dense layers.

    Args:
        num_classes: output logits.
        in_channels: image channels.
        image_size: input side length (the book: 28).
        activation: ``"sigmoid"`` (the book) or ``"relu"``.
        pool: ``"avg"`` (the book) or ``"max"``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        activation: str = "sigmoid",
        pool: str = "avg",
    ) -> None:
        super().__init__()
        act = choose(_ACTIVATIONS, activation, "activation")
        pooling = choose(_POOLS, pool, "pool")
        side = ((image_size // 2) - 4) // 2  # conv(pad 2) keeps size; pool /2; conv -4; pool /2
        if side < 1:
            raise ValueError(f"LeNet needs images of at least 12 pixels, got {image_size}")
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2), act(),
            pooling(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5), act(),
            pooling(kernel_size=2, stride=2),
            nn.Flatten(),  # (B, 16, s, s) -> (B, 16*s*s)
            nn.Linear(16 * side * side, 120), act(),
            nn.Linear(120, 84), act(),
            nn.Linear(84, num_classes),
        )
        self.net.apply(init_cnn)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, H, W)`` images to ``(B, num_classes)`` logits."""
        return self.net(X)


class BNLeNet(nn.Module):
    """LeNet with batch normalisation after every conv and hidden dense layer (d2l §8.5).

    Arguments as :class:`LeNet`; as in the book, the first convolution has no padding.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        activation: str = "sigmoid",
        pool: str = "avg",
    ) -> None:
        super().__init__()
        act = choose(_ACTIVATIONS, activation, "activation")
        pooling = choose(_POOLS, pool, "pool")
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"BNLeNet needs images of at least 16 pixels, got {image_size}")
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5), nn.BatchNorm2d(6), act(),
            pooling(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5), nn.BatchNorm2d(16), act(),
            pooling(kernel_size=2, stride=2),
            nn.Flatten(),  # (B, 16, s, s) -> (B, 16*s*s)
            nn.Linear(16 * side * side, 120), nn.BatchNorm1d(120), act(),
            nn.Linear(120, 84), nn.BatchNorm1d(84), act(),
            nn.Linear(84, num_classes),
        )
        self.net.apply(init_cnn)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, H, W)`` images to ``(B, num_classes)`` logits."""
        return self.net(X)


_MODERN = {"activation": "relu", "pool": "max"}


@register(
    "lenet",
    task="image_classification",
    data="fashion_mnist",
    section="7.6",
    recipes={
        "d2l": Recipe(optimizer="sgd", lr=0.1, batch_size=128, max_epochs=10),
        "modern": Recipe(
            optimizer="adamw", lr=2e-3, batch_size=128, max_epochs=10, weight_decay=0.01,
            scheduler="cosine", model_kwargs=_MODERN,
        ),
    },
)
def lenet(num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
          activation: str = "sigmoid", pool: str = "avg") -> LeNet:
    """LeNet-5 (sigmoid, average pooling)."""
    return LeNet(num_classes, in_channels, image_size, activation, pool)


@register(
    "lenet_bn",
    task="image_classification",
    data="fashion_mnist",
    section="8.5",
    recipes={
        "d2l": Recipe(optimizer="sgd", lr=0.1, batch_size=128, max_epochs=10),
        "modern": Recipe(
            optimizer="adamw", lr=2e-3, batch_size=128, max_epochs=10, weight_decay=0.01,
            scheduler="cosine", model_kwargs=_MODERN,
        ),
    },
)
def lenet_bn(num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
             activation: str = "sigmoid", pool: str = "avg") -> BNLeNet:
    """LeNet with batch normalisation."""
    return BNLeNet(num_classes, in_channels, image_size, activation, pool)
