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
        batch_norm: batch normalisation after every conv and hidden dense layer (d2l §8.5,
            :class:`BNLeNet`; as in that section, the first convolution is then unpadded).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
                 activation: str = "sigmoid", pool: str = "avg",
                 batch_norm: bool = False) -> None:
        super().__init__()
        act = choose(_ACTIVATIONS, activation, "activation")
        pooling = choose(_POOLS, pool, "pool")
        pad = 0 if batch_norm else 2
        side = ((image_size + 2 * pad - 4) // 2 - 4) // 2  # conv -4+2pad; pool /2; conv -4; /2
        if side < 1:
            raise ValueError(f"{type(self).__name__} needs images of at least "
                             f"{16 - 2 * pad} pixels, got {image_size}")

        def norm(n: int, dims: int) -> list[nn.Module]:
            return [(nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(n)] if batch_norm else []

        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=pad), *norm(6, 2), act(),
            pooling(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5), *norm(16, 2), act(),
            pooling(kernel_size=2, stride=2),
            nn.Flatten(),  # (B, 16, s, s) -> (B, 16*s*s)
            nn.Linear(16 * side * side, 120), *norm(120, 1), act(),
            nn.Linear(120, 84), *norm(84, 1), act(),
            nn.Linear(84, num_classes),
        )
        self.net.apply(init_cnn)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, H, W)`` images to ``(B, num_classes)`` logits."""
        return self.net(X)


class BNLeNet(LeNet):
    """LeNet with batch normalisation after every conv and hidden dense layer (d2l §8.5)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
                 activation: str = "sigmoid", pool: str = "avg") -> None:
        super().__init__(num_classes, in_channels, image_size, activation, pool, batch_norm=True)


_MODERN = {"activation": "relu", "pool": "max"}


# The book's recipe, and ours: ReLU, max-pooling, AdamW with cosine decay (docs/results.md).
_RECIPES = {
    "d2l": Recipe(optimizer="sgd", lr=0.1, batch_size=128, max_epochs=10),
    "modern": Recipe(optimizer="adamw", lr=2e-3, batch_size=128, max_epochs=10,
                     weight_decay=0.01, scheduler="cosine", model_kwargs=_MODERN),
}


# d2l 0.17 §6.6, whose printed "test acc 0.779" (55,297 examples/s) is the book's LeNet
# number: SGD lr 0.9, batch 256, 10 epochs, on load_data_fashion_mnist's data (all 60,000
# training images, the test set for evaluation, ToTensor's [0, 1] pixels).
_V017 = Recipe(optimizer="sgd", lr=0.9, batch_size=256, max_epochs=10,
               data="fashion_mnist", data_kwargs={"setting": "book"})


@register("lenet", task="image_classification", data="fashion_mnist", section="7.6",
          recipes={**_RECIPES, "d2l-0.17": _V017})
def lenet(num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
          activation: str = "sigmoid", pool: str = "avg") -> LeNet:
    """LeNet-5 (sigmoid, average pooling)."""
    return LeNet(num_classes, in_channels, image_size, activation, pool)


@register("lenet_bn", task="image_classification", data="fashion_mnist", section="8.5",
          recipes=_RECIPES)
def lenet_bn(num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
             activation: str = "sigmoid", pool: str = "avg") -> BNLeNet:
    """LeNet with batch normalisation."""
    return BNLeNet(num_classes, in_channels, image_size, activation, pool)
