"""The encoder blocks of ``row_transformer`` and ``vit`` before the shared toolbox (frozen copy).

``models/attention_classifiers.py`` built both models from these private blocks on
``nn.MultiheadAttention``; exports and checkpoints saved then must still load
(``models.attention.upgrade_state_dict``). Today's models with these blocks put back have the old
weight names and outputs, so the tests can make such an export and compare its outputs with
today's model after the key map. Everything outside the blocks is unchanged.
"""
# ruff: noqa: D101, D102, D103

from __future__ import annotations

import torch
from torch import nn


class PositionWiseFFN(nn.Module):
    """The same two-layer MLP applied to every token (d2l §11.7)."""

    def __init__(self, num_hiddens: int, ffn_num_hiddens: int) -> None:
        super().__init__()
        self.dense1 = nn.Linear(num_hiddens, ffn_num_hiddens)
        self.relu = nn.ReLU()
        self.dense2 = nn.Linear(ffn_num_hiddens, num_hiddens)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """``(B, T, num_hiddens)`` -> ``(B, T, num_hiddens)``."""
        return self.dense2(self.relu(self.dense1(X)))


class TransformerEncoderBlock(nn.Module):
    """Post-norm encoder block of d2l §11.7: self-attention and FFN, each with add & norm.

    Args:
        num_hiddens: token width.
        ffn_num_hiddens: hidden width of the position-wise FFN.
        num_heads: attention heads (must divide ``num_hiddens``).
        dropout: dropout on each sub-layer output (and on attention weights).
        use_bias: biases in the attention projections (the book: none).

    """

    def __init__(self, num_hiddens: int, ffn_num_hiddens: int, num_heads: int,
                 dropout: float, use_bias: bool = False) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(num_hiddens, num_heads, dropout=dropout,
                                               bias=use_bias, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.ln1 = nn.LayerNorm(num_hiddens)
        self.ffn = PositionWiseFFN(num_hiddens, ffn_num_hiddens)
        self.dropout2 = nn.Dropout(dropout)
        self.ln2 = nn.LayerNorm(num_hiddens)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """``(B, T, num_hiddens)`` -> same shape; attention runs over the T axis."""
        Y, _ = self.attention(X, X, X, need_weights=False)
        X = self.ln1(X + self.dropout1(Y))
        return self.ln2(X + self.dropout2(self.ffn(X)))


class ViTMLP(nn.Module):
    """Dense -> GELU -> dropout -> dense -> dropout (d2l §11.8)."""

    def __init__(self, num_hiddens: int, mlp_num_hiddens: int, dropout: float) -> None:
        super().__init__()
        self.dense1 = nn.Linear(num_hiddens, mlp_num_hiddens)
        self.gelu = nn.GELU()
        self.dropout1 = nn.Dropout(dropout)
        self.dense2 = nn.Linear(mlp_num_hiddens, num_hiddens)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """``(B, T, num_hiddens)`` -> same shape."""
        return self.dropout2(self.dense2(self.dropout1(self.gelu(self.dense1(X)))))


class ViTBlock(nn.Module):
    """Pre-norm encoder block (d2l §11.8): ``X + attn(ln1(X))``, then ``X + mlp(ln2(X))``."""

    def __init__(self, num_hiddens: int, mlp_num_hiddens: int, num_heads: int,
                 dropout: float, use_bias: bool = False) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(num_hiddens)
        self.attention = nn.MultiheadAttention(num_hiddens, num_heads, dropout=dropout,
                                               bias=use_bias, batch_first=True)
        self.ln2 = nn.LayerNorm(num_hiddens)
        self.mlp = ViTMLP(num_hiddens, mlp_num_hiddens, dropout)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """``(B, T, num_hiddens)`` -> same shape; attention runs over the T axis."""
        Y = self.ln1(X)
        X = X + self.attention(Y, Y, Y, need_weights=False)[0]
        return X + self.mlp(self.ln2(X))
