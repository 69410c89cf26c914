"""VGG networks built from repeated blocks (d2l §8.2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import init_cnn
from .registry import Recipe, register

VGG11_ARCH = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))


def vgg_block(num_convs: int, in_channels: int, out_channels: int) -> nn.Sequential:
    """``num_convs`` 3x3 same-padding conv + ReLU layers, then a 2x2 max-pool halving the size."""
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU()]
        in_channels = out_channels
    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG as in d2l §8.2: VGG blocks, then two dense layers with dropout.

    Each block halves the side, so the flatten size is ``C * (image_size // 2**len(arch))**2``,
    computed here instead of the book's lazy layer (224 -> 7x7 for five blocks).

    Args:
        arch: ``(num_convs, out_channels)`` per block.
        num_classes: output logits.
        in_channels: image channels.
        image_size: input side length (the book: 224); at least ``2**len(arch)``.
        num_hiddens: width of the two hidden dense layers (the book: 4096).
        dropout: dropout after each hidden dense layer (the book: 0.5).

    """

    def __init__(
        self,
        arch: Sequence[tuple[int, int]] = VGG11_ARCH,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 224,
        num_hiddens: int = 4096,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        side = image_size // 2 ** len(arch)
        if side < 1:
            raise ValueError(
                f"VGG with {len(arch)} blocks needs images of at least {2 ** len(arch)} pixels, "
                f"got {image_size}"
            )
        blocks = []
        channels = in_channels
        for num_convs, out_channels in arch:
            blocks.append(vgg_block(num_convs, channels, out_channels))
            channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (B, C, s, s) -> (B, C*s*s)
            nn.Linear(channels * side * side, num_hiddens), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(num_hiddens, num_hiddens), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(num_hiddens, num_classes),
        )
        self.apply(init_cnn)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, H, W)`` images to ``(B, num_classes)`` logits."""
        return self.classifier(self.features(X))


def _vgg11_arch(ratio: int) -> tuple[tuple[int, int], ...]:
    if ratio < 1 or any(c % ratio for _, c in VGG11_ARCH):
        raise ValueError(f"ratio must divide every VGG-11 width (64..512), got {ratio}")
    return tuple((n, c // ratio) for n, c in VGG11_ARCH)


_D2L = Recipe(optimizer="sgd", lr=0.01, batch_size=128, max_epochs=10, resize=224)


@register(
    "vgg11",
    task="image_classification",
    data="fashion_mnist",
    section="8.2",
    recipes={"d2l": _D2L},
    smoke_size=32,
)
def vgg11(num_classes: int = 10, in_channels: int = 1, image_size: int = 224, ratio: int = 1,
          num_hiddens: int = 4096, dropout: float = 0.5) -> VGG:
    """VGG-11 at full width (8 convs, 64 to 512 channels)."""
    return VGG(_vgg11_arch(ratio), num_classes, in_channels, image_size, num_hiddens, dropout)


@register(
    "vgg11_small",
    task="image_classification",
    data="fashion_mnist",
    section="8.2",
    recipes={"d2l": _D2L},
    smoke_size=32,
)
def vgg11_small(num_classes: int = 10, in_channels: int = 1, image_size: int = 224,
                ratio: int = 4, num_hiddens: int = 4096, dropout: float = 0.5) -> VGG:
    """VGG-11 with a quarter of the channels, as the book trains it."""
    return VGG(_vgg11_arch(ratio), num_classes, in_channels, image_size, num_hiddens, dropout)
