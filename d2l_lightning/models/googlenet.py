"""GoogLeNet: multi-branch Inception blocks (d2l §8.4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import init_cnn
from .registry import Recipe, register


class Inception(nn.Module):
    """Four parallel paths concatenated on channels (d2l §8.4).

    Args:
        in_channels: input channels.
        c1: 1x1 conv path width.
        c2: ``(1x1 reduce, 3x3)`` widths of the second path.
        c3: ``(1x1 reduce, 5x5)`` widths of the third path.
        c4: 1x1 conv width after the 3x3 max-pool of the fourth path.

    """

    def __init__(self, in_channels: int, c1: int, c2: tuple[int, int], c3: tuple[int, int],
                 c4: int) -> None:
        super().__init__()
        self.b1_1 = nn.Conv2d(in_channels, c1, kernel_size=1)
        self.b2_1 = nn.Conv2d(in_channels, c2[0], kernel_size=1)
        self.b2_2 = nn.Conv2d(c2[0], c2[1], kernel_size=3, padding=1)
        self.b3_1 = nn.Conv2d(in_channels, c3[0], kernel_size=1)
        self.b3_2 = nn.Conv2d(c3[0], c3[1], kernel_size=5, padding=2)
        self.b4_1 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.b4_2 = nn.Conv2d(in_channels, c4, kernel_size=1)
        self.out_channels = c1 + c2[1] + c3[1] + c4

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, c1 + c2[1] + c3[1] + c4, H, W)``."""
        b1 = F.relu(self.b1_1(X))
        b2 = F.relu(self.b2_2(F.relu(self.b2_1(X))))
        b3 = F.relu(self.b3_2(F.relu(self.b3_1(X))))
        b4 = F.relu(self.b4_2(self.b4_1(X)))
        return torch.cat((b1, b2, b3, b4), dim=1)


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)


class GoogLeNet(nn.Module):
    """GoogLeNet as in d2l §8.4: a stem, nine Inception blocks, global average pooling.

    Every stage halves the side with padded pooling, so any input size works; the book trains
    at 96x96 (final map 3x3) instead of the original 224.

    Args:
        num_classes: output logits.
        in_channels: image channels.
        image_size: input side length (unused by the layers; kept for the common signature).

    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 96) -> None:
        super().__init__()
        del image_size  # global average pooling makes the layers size-independent
        self.b1 = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3), nn.ReLU(), _pool(),
        )
        self.b2 = nn.Sequential(
            nn.Conv2d(64, 64, kernel_size=1), nn.ReLU(),
            nn.Conv2d(64, 192, kernel_size=3, padding=1), nn.ReLU(), _pool(),
        )
        self.b3 = nn.Sequential(
            Inception(192, 64, (96, 128), (16, 32), 32),  # -> 256 channels
            Inception(256, 128, (128, 192), (32, 96), 64),  # -> 480
            _pool(),
        )
        self.b4 = nn.Sequential(
            Inception(480, 192, (96, 208), (16, 48), 64),  # -> 512
            Inception(512, 160, (112, 224), (24, 64), 64),  # -> 512
            Inception(512, 128, (128, 256), (24, 64), 64),  # -> 512
            Inception(512, 112, (144, 288), (32, 64), 64),  # -> 528
            Inception(528, 256, (160, 320), (32, 128), 128),  # -> 832
            _pool(),
        )
        self.b5 = nn.Sequential(
            Inception(832, 256, (160, 320), (32, 128), 128),  # -> 832
            Inception(832, 384, (192, 384), (48, 128), 128),  # -> 1024
            nn.AdaptiveAvgPool2d((1, 1)),
            nn.Flatten(),  # (B, 1024, 1, 1) -> (B, 1024)
        )
        self.head = nn.Linear(1024, num_classes)
        self.apply(init_cnn)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, H, W)`` images to ``(B, num_classes)`` logits."""
        return self.head(self.b5(self.b4(self.b3(self.b2(self.b1(X))))))


@register(
    "googlenet",
    task="image_classification",
    data="fashion_mnist",
    section="8.4",
    recipes={
        "d2l": Recipe(optimizer="sgd", lr=0.1, batch_size=128, max_epochs=10, resize=96),
    },
    smoke_size=32,
)
def googlenet(num_classes: int = 10, in_channels: int = 1, image_size: int = 96) -> GoogLeNet:
    """GoogLeNet (Inception v1 without auxiliary heads) at 96x96."""
    return GoogLeNet(num_classes, in_channels, image_size)
