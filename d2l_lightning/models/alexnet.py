"""AlexNet (d2l §8.1)."""

from __future__ import annotations

import torch
from torch import nn

from .layers import conv_out, init_cnn
from .registry import Recipe, register


def alexnet_feature_side(image_size: int) -> int:
    """Side of AlexNet's last feature map for a square ``image_size`` input (224 -> 5).

    Raises:
        ValueError: if a pooling window would not fit (inputs under 65 pixels).

    """
    side = conv_out(image_size, 11, stride=4, padding=1)  # conv 11x11 / 4
    for _ in range(3):  # the three 3x3 / 2 max-pools; the other convs keep the size
        if side < 3:
            raise ValueError(f"AlexNet needs images of at least 65 pixels, got {image_size}")
        side = conv_out(side, 3, stride=2)
    return side


class AlexNet(nn.Module):
    """AlexNet as in d2l §8.1: five convolutions, three max-pools, two 4096-wide dense layers.

    The book hard-codes the flatten size for 224x224 inputs (``256 * 5 * 5 = 6400``); here it is
    computed from ``image_size`` by :func:`alexnet_feature_side`, so the layers are exactly the
    book's at 224 and smaller inputs (at least 65 pixels) give a smaller first dense layer.

    Args:
        num_classes: output logits.
        in_channels: image channels (Fashion-MNIST: 1).
        image_size: input side length (the book: 224).
        num_hiddens: width of the two hidden dense layers (the book: 4096).
        dropout: dropout after each hidden dense layer (the book: 0.5).

    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 224,
                 num_hiddens: int = 4096, dropout: float = 0.5) -> None:
        super().__init__()
        side = alexnet_feature_side(image_size)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 96, kernel_size=11, stride=4, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(96, 256, kernel_size=5, padding=2), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 384, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (B, 256, s, s) -> (B, 256*s*s)
            nn.Linear(256 * side * side, num_hiddens), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(num_hiddens, num_hiddens), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(num_hiddens, num_classes),
        )
        self.apply(init_cnn)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, H, W)`` images to ``(B, num_classes)`` logits."""
        return self.classifier(self.features(X))


@register(
    "alexnet",
    task="image_classification",
    data="fashion_mnist",
    section="8.1",
    recipes={
        "d2l": Recipe(optimizer="sgd", lr=0.01, batch_size=128, max_epochs=10, resize=224),
    },
    smoke_size=72,
)
def alexnet(num_classes: int = 10, in_channels: int = 1, image_size: int = 224,
            num_hiddens: int = 4096, dropout: float = 0.5) -> AlexNet:
    """AlexNet (ReLU, max-pooling, dropout 0.5) at 224x224."""
    return AlexNet(num_classes, in_channels, image_size, num_hiddens, dropout)
