"""The attention classifiers as they were before the shared Transformer toolbox (frozen copy).

``models/attention_classifiers.py`` built ``row_transformer`` and ``vit`` from private blocks on
``nn.MultiheadAttention``; exports and checkpoints saved then must still load
(``models.attention.upgrade_state_dict``). These classes are that code, unchanged, so the tests
can make such an export and compare its outputs with today's model after the key map.
"""
# ruff: noqa: D101, D102, D103

from __future__ import annotations

import torch
from torch import nn


def sinusoidal_positions(num_steps: int, num_hiddens: int) -> torch.Tensor:
    """Return the sine/cosine positional encoding of d2l §11.6, ``(1, num_steps, num_hiddens)``."""
    P = torch.zeros(1, num_steps, num_hiddens)
    X = torch.arange(num_steps, dtype=torch.float32).reshape(-1, 1) / torch.pow(
        10000, torch.arange(0, num_hiddens, 2, dtype=torch.float32) / num_hiddens)
    P[:, :, 0::2] = torch.sin(X)
    P[:, :, 1::2] = torch.cos(X[:, : num_hiddens // 2])
    return P


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


class RowTransformer(nn.Module):
    """Transformer encoder over image rows: each of the H rows is one token.

    A row of ``C * W`` pixels is linearly embedded to ``num_hiddens``, the sinusoidal positions
    of d2l §11.6 are added, ``num_blks`` post-norm encoder blocks (d2l §11.7) mix the rows, and
    the mean over tokens is classified.

    Args:
        num_classes: output logits.
        in_channels: image channels.
        image_size: input side length; the sequence has ``image_size`` tokens.
        num_hiddens: token width.
        ffn_num_hiddens: FFN hidden width.
        num_heads: attention heads.
        num_blks: encoder blocks.
        dropout: dropout on the embeddings and inside every block.

    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        num_hiddens: int = 128,
        ffn_num_hiddens: int = 256,
        num_heads: int = 4,
        num_blks: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if image_size < 2:
            raise ValueError(f"a row Transformer needs at least 2 rows, got {image_size}")
        self.embedding = nn.Linear(in_channels * image_size, num_hiddens)
        self.register_buffer("P", sinusoidal_positions(image_size, num_hiddens),
                             persistent=False)
        self.dropout = nn.Dropout(dropout)
        self.blks = nn.Sequential(*(
            TransformerEncoderBlock(num_hiddens, ffn_num_hiddens, num_heads, dropout)
            for _ in range(num_blks)
        ))
        self.head = nn.Linear(num_hiddens, num_classes)

    def encode(self, X: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, H, W)`` images to ``(B, H, num_hiddens)`` row representations."""
        B, C, H, W = X.shape
        X = X.permute(0, 2, 1, 3).reshape(B, H, C * W)  # (B, H, C*W): one token per row
        X = self.dropout(self.embedding(X) + self.P[:, :H])  # (B, T, num_hiddens)
        return self.blks(X)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, H, W)`` images to ``(B, num_classes)`` logits (mean over rows)."""
        return self.head(self.encode(X).mean(dim=1))  # (B, T, D) -> (B, D) -> logits


class PatchEmbedding(nn.Module):
    """Split into ``patch_size`` squares and project each to ``num_hiddens`` (one strided conv)."""

    def __init__(self, in_channels: int, image_size: int, patch_size: int,
                 num_hiddens: int) -> None:
        super().__init__()
        if image_size < patch_size:
            raise ValueError(f"image_size {image_size} is smaller than patch_size {patch_size}")
        self.num_patches = (image_size // patch_size) ** 2
        self.conv = nn.Conv2d(in_channels, num_hiddens, kernel_size=patch_size,
                              stride=patch_size)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, num_patches, num_hiddens)``."""
        return self.conv(X).flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, h*w, D)


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


class ViT(nn.Module):
    """Vision Transformer (d2l §11.8): patch tokens plus a ``<cls>`` token, pre-norm blocks.

    The ``<cls>`` representation after the last block goes through LayerNorm and a dense head.
    Positional embeddings are learned; they start at ``N(0, 0.02^2)`` (the book: ``N(0, 1)``).

    Args:
        num_classes: output logits.
        in_channels: image channels.
        image_size: input side length (the remainder of ``image_size / patch_size`` is cut).
        patch_size: patch side; ``(image_size // patch_size) ** 2`` patch tokens.
        num_hiddens: token width.
        mlp_num_hiddens: MLP hidden width.
        num_heads: attention heads.
        num_blks: encoder blocks.
        emb_dropout: dropout on the embedded tokens.
        blk_dropout: dropout inside the blocks.
        use_bias: biases in the attention projections (the book: none).

    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        patch_size: int = 4,
        num_hiddens: int = 128,
        mlp_num_hiddens: int = 256,
        num_heads: int = 4,
        num_blks: int = 4,
        emb_dropout: float = 0.1,
        blk_dropout: float = 0.1,
        use_bias: bool = False,
    ) -> None:
        super().__init__()
        self.patch_embedding = PatchEmbedding(in_channels, image_size, patch_size, num_hiddens)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, num_hiddens))
        num_steps = self.patch_embedding.num_patches + 1  # patches plus <cls>
        self.pos_embedding = nn.Parameter(torch.randn(1, num_steps, num_hiddens) * 0.02)
        self.dropout = nn.Dropout(emb_dropout)
        self.blks = nn.Sequential(*(
            ViTBlock(num_hiddens, mlp_num_hiddens, num_heads, blk_dropout, use_bias)
            for _ in range(num_blks)
        ))
        self.head = nn.Sequential(nn.LayerNorm(num_hiddens), nn.Linear(num_hiddens, num_classes))

    def encode(self, X: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, H, W)`` images to ``(B, 1 + num_patches, num_hiddens)`` tokens."""
        X = self.patch_embedding(X)  # (B, N, D)
        X = torch.cat((self.cls_token.expand(X.shape[0], -1, -1), X), dim=1)  # (B, 1+N, D)
        return self.blks(self.dropout(X + self.pos_embedding))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, H, W)`` images to ``(B, num_classes)`` logits from the ``<cls>`` token."""
        return self.head(self.encode(X)[:, 0])
