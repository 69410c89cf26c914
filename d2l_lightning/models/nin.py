"""Network in Network (d2l §8.3)."""

from __future__ import annotations

import torch
from torch import nn

from .layers import conv_out, init_cnn
from .registry import Recipe, register


def nin_block(in_channels: int, out_channels: int, kernel_size: int, stride: int,
              padding: int) -> nn.Sequential:
    """One convolution followed by two 1x1 convolutions (per-pixel MLP), each with ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
    )


class NiN(nn.Module):
    """NiN as in d2l §8.3: four NiN blocks and global average pooling, no dense layers.

    The last block has ``num_classes`` channels whose spatial averages are the logits. As in the
    book, it ends with a ReLU, so logits are non-negative.

    Args:
        num_classes: output logits.
        in_channels: image channels.
        image_size: input side length (the book: 224); at least 67 for the three max-pools.
        dropout: dropout before the last block (the book: 0.5).

    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 224,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        side = conv_out(image_size, 11, stride=4)
        for _ in range(3):
            if side < 3:
                raise ValueError(f"NiN needs images of at least 67 pixels, got {image_size}")
            side = conv_out(side, 3, stride=2)
        self.net = nn.Sequential(
            nin_block(in_channels, 96, kernel_size=11, stride=4, padding=0),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nin_block(96, 256, kernel_size=5, stride=1, padding=2),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nin_block(256, 384, kernel_size=3, stride=1, padding=1),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Dropout(dropout),
            nin_block(384, num_classes, kernel_size=3, stride=1, padding=1),
            nn.AdaptiveAvgPool2d((1, 1)),
            nn.Flatten(),  # (B, num_classes, 1, 1) -> (B, num_classes)
        )
        self.net.apply(init_cnn)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, H, W)`` images to ``(B, num_classes)`` logits."""
        return self.net(X)


@register(
    "nin",
    task="image_classification",
    data="fashion_mnist",
    section="8.3",
    recipes={
        "d2l": Recipe(optimizer="sgd", lr=0.05, batch_size=128, max_epochs=10, resize=224),
    },
    smoke_size=72,
)
def nin(num_classes: int = 10, in_channels: int = 1, image_size: int = 224,
        dropout: float = 0.5) -> NiN:
    """Network in Network (1x1-conv blocks, global average pooling) at 224x224."""
    return NiN(num_classes, in_channels, image_size, dropout)
