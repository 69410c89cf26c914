"""Residual networks: ResNet-18 and ResNet-34 (d2l §8.6)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import init_cnn
from .registry import Recipe, register

RESNET18_ARCH = ((2, 64), (2, 128), (2, 256), (2, 512))
RESNET34_ARCH = ((3, 64), (4, 128), (6, 256), (3, 512))


class Residual(nn.Module):
    """Basic residual block (d2l §8.6): two 3x3 conv + BN layers and a skip connection.

    Args:
        in_channels: input channels.
        num_channels: output channels.
        use_1x1conv: project the skip path with a 1x1 convolution (needed when the shape changes).
        strides: stride of the first convolution (2 halves the side).

    """

    def __init__(self, in_channels: int, num_channels: int, use_1x1conv: bool = False,
                 strides: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, num_channels, kernel_size=3, padding=1,
                               stride=strides)
        self.conv2 = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1)
        self.conv3 = (nn.Conv2d(in_channels, num_channels, kernel_size=1, stride=strides)
                      if use_1x1conv else None)
        self.bn1 = nn.BatchNorm2d(num_channels)
        self.bn2 = nn.BatchNorm2d(num_channels)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1(X))))) + skip(X))``."""
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
        return F.relu(Y + X)


class ResNet(nn.Module):
    """ResNet as in d2l §8.6: a GoogLeNet-like stem with BN, residual stages, global pooling.

    Every stage but the first starts with a stride-2 block that doubles the channels.

    Args:
        arch: ``(num_residuals, num_channels)`` per stage.
        num_classes: output logits.
        in_channels: image channels.
        image_size: input side length (unused by the layers; kept for the common signature).

    """

    def __init__(
        self,
        arch: Sequence[tuple[int, int]] = RESNET18_ARCH,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 96,
    ) -> None:
        super().__init__()
        del image_size  # global average pooling makes the layers size-independent
        self.net = nn.Sequential(nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3),
            nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        ))
        channels = 64
        for i, (num_residuals, num_channels) in enumerate(arch):
            blk = []
            for j in range(num_residuals):
                if j == 0 and i > 0:  # the first stage keeps the stem's resolution
                    blk.append(Residual(channels, num_channels, use_1x1conv=True, strides=2))
                else:
                    blk.append(Residual(channels, num_channels))
                channels = num_channels
            self.net.add_module(f"b{i + 2}", nn.Sequential(*blk))
        self.net.add_module("last", nn.Sequential(
            nn.AdaptiveAvgPool2d((1, 1)),
            nn.Flatten(),  # (B, C, 1, 1) -> (B, C)
            nn.Linear(channels, num_classes),
        ))
        self.net.apply(init_cnn)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, H, W)`` images to ``(B, num_classes)`` logits."""
        return self.net(X)


_D2L = Recipe(optimizer="sgd", lr=0.01, batch_size=128, max_epochs=10, resize=96)


@register(
    "resnet18",
    task="image_classification",
    data="fashion_mnist",
    section="8.6",
    recipes={
        "d2l": _D2L,
        # Standard ImageNet-style improvements; 96px keeps the book's stem meaningful.
        "modern": Recipe(
            optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, batch_size=128,
            max_epochs=10, scheduler="cosine", label_smoothing=0.1, resize=96,
        ),
    },
    smoke_size=32,
)
def resnet18(num_classes: int = 10, in_channels: int = 1, image_size: int = 96) -> ResNet:
    """ResNet-18 (four stages of two basic blocks) at 96x96."""
    return ResNet(RESNET18_ARCH, num_classes, in_channels, image_size)


@register(
    "resnet34",
    task="image_classification",
    data="fashion_mnist",
    section="8.6",
    recipes={"d2l": _D2L},
    smoke_size=32,
)
def resnet34(num_classes: int = 10, in_channels: int = 1, image_size: int = 96) -> ResNet:
    """ResNet-34 (3, 4, 6, 3 basic blocks) at 96x96."""
    return ResNet(RESNET34_ARCH, num_classes, in_channels, image_size)
