"""Multilayer perceptron (d2l §5.2, dropout §5.6)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .registry import Recipe, register


class MLP(nn.Module):
    """Fully connected ReLU network on flattened pixels, returning logits.

    Args:
        num_inputs: flattened input size (``C * H * W``).
        num_outputs: number of classes.
        num_hiddens: one hidden width, or one per hidden layer (d2l §5.2 uses 256).
        dropout: dropout after each hidden activation (d2l §5.6); 0 disables it.
    """

    def __init__(
        self,
        num_inputs: int,
        num_outputs: int,
        num_hiddens: int | Sequence[int] = 256,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        widths = [num_hiddens] if isinstance(num_hiddens, int) else list(num_hiddens)
        layers: list[nn.Module] = [nn.Flatten()]
        prev = num_inputs
        for width in widths:
            layers += [nn.Linear(prev, width), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = width
        layers.append(nn.Linear(prev, num_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, H, W)`` images to ``(B, num_outputs)`` logits."""
        return self.net(X)


@register(
    "mlp",
    task="image_classification",
    data="fashion_mnist",
    section="5.2",
    recipes={
        "d2l": Recipe(optimizer="sgd", lr=0.1, batch_size=256, max_epochs=10),
        "modern": Recipe(
            optimizer="adamw", lr=1e-3, batch_size=256, max_epochs=10, weight_decay=0.05,
            scheduler="cosine", model_kwargs={"num_hiddens": [512, 256], "dropout": 0.2},
        ),
    },
)
def mlp(
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int = 28,
    num_hiddens: int | Sequence[int] = 256,
    dropout: float = 0.0,
) -> MLP:
    """MLP with one hidden layer of 256 ReLU units."""
    hiddens = num_hiddens if isinstance(num_hiddens, int) else list(num_hiddens)
    return MLP(in_channels * image_size * image_size, num_classes, hiddens, dropout)
