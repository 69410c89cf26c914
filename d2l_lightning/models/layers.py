"""Small helpers shared by the CNN architectures (d2l ch. 7-8), so no model file imports another."""

from __future__ import annotations

from torch import nn


def init_cnn(module: nn.Module) -> None:
    """Xavier-uniform weights for conv and linear layers, as d2l's ``init_cnn``."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.xavier_uniform_(module.weight)


def conv_out(size: int, kernel_size: int, stride: int = 1, padding: int = 0) -> int:
    """Side length after a convolution or pooling window (floor mode, as PyTorch)."""
    return (size + 2 * padding - kernel_size) // stride + 1


def choose(table: dict[str, type[nn.Module]], key: str, what: str) -> type[nn.Module]:
    """``table[key]``, or a ``ValueError`` naming ``what`` and the valid keys."""
    if key not in table:
        raise ValueError(f"unknown {what} '{key}'; choose from: {', '.join(table)}")
    return table[key]
