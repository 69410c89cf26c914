"""Densely connected networks (d2l §8.7)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import init_cnn
from .registry import Recipe, register


def conv_block(in_channels: int, num_channels: int) -> nn.Sequential:
    """Pre-activation BN -> ReLU -> 3x3 conv (d2l §8.7)."""
    return nn.Sequential(
        nn.BatchNorm2d(in_channels), nn.ReLU(),
        nn.Conv2d(in_channels, num_channels, kernel_size=3, padding=1),
    )


class DenseBlock(nn.Module):
    """``num_convs`` conv blocks, each seeing the concatenation of all earlier outputs.

    Args:
        num_convs: conv blocks in the dense block.
        in_channels: input channels.
        num_channels: growth rate, channels each conv block adds.

    """

    def __init__(self, num_convs: int, in_channels: int, num_channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(*(
            conv_block(in_channels + i * num_channels, num_channels) for i in range(num_convs)
        ))
        self.out_channels = in_channels + num_convs * num_channels

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, C + num_convs * num_channels, H, W)``."""
        for blk in self.net:
            Y = blk(X)
            X = torch.cat((X, Y), dim=1)  # concatenate on channels
        return X


def transition_block(in_channels: int, num_channels: int) -> nn.Sequential:
    """BN -> ReLU -> 1x1 conv to ``num_channels`` -> 2x2 average pool halving the side."""
    return nn.Sequential(
        nn.BatchNorm2d(in_channels), nn.ReLU(),
        nn.Conv2d(in_channels, num_channels, kernel_size=1),
        nn.AvgPool2d(kernel_size=2, stride=2),
    )


class DenseNet(nn.Module):
    """DenseNet as in d2l §8.7: ResNet's stem, dense blocks joined by transition blocks.

    Args:
        num_classes: output logits.
        in_channels: image channels.
        image_size: input side length (unused by the layers; kept for the common signature).
        num_channels: stem width (the book: 64).
        growth_rate: channels each conv block adds (the book: 32).
        arch: conv blocks per dense block (the book: ``(4, 4, 4, 4)``).

    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 96,
        num_channels: int = 64,
        growth_rate: int = 32,
        arch: Sequence[int] = (4, 4, 4, 4),
    ) -> None:
        super().__init__()
        del image_size  # global average pooling makes the layers size-independent
        self.net = nn.Sequential(nn.Sequential(
            nn.Conv2d(in_channels, num_channels, kernel_size=7, stride=2, padding=3),
            nn.BatchNorm2d(num_channels), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        ))
        for i, num_convs in enumerate(arch):
            self.net.add_module(f"dense_blk{i + 1}",
                                DenseBlock(num_convs, num_channels, growth_rate))
            num_channels += num_convs * growth_rate
            if i != len(arch) - 1:  # halve channels and side between dense blocks
                self.net.add_module(f"tran_blk{i + 1}",
                                    transition_block(num_channels, num_channels // 2))
                num_channels //= 2
        self.net.add_module("last", nn.Sequential(
            nn.BatchNorm2d(num_channels), nn.ReLU(),
            nn.AdaptiveAvgPool2d((1, 1)),
            nn.Flatten(),  # (B, C, 1, 1) -> (B, C)
            nn.Linear(num_channels, num_classes),
        ))
        self.net.apply(init_cnn)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, H, W)`` images to ``(B, num_classes)`` logits."""
        return self.net(X)


@register(
    "densenet",
    task="image_classification",
    data="fashion_mnist",
    section="8.7",
    recipes={
        "d2l": Recipe(optimizer="sgd", lr=0.1, batch_size=128, max_epochs=10, resize=96),
    },
    smoke_size=32,
)
def densenet(num_classes: int = 10, in_channels: int = 1, image_size: int = 96,
             num_channels: int = 64, growth_rate: int = 32,
             arch: Sequence[int] = (4, 4, 4, 4)) -> DenseNet:
    """DenseNet (four dense blocks of four convs, growth rate 32) at 96x96."""
    return DenseNet(num_classes, in_channels, image_size, num_channels, growth_rate, tuple(arch))
