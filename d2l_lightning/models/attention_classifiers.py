"""Attention-based image classifiers: a row Transformer (d2l §11.7) and a ViT (d2l §11.8).

Both attend *within* each image: every image becomes a batch-first token sequence
``(B, T, num_hiddens)`` with ``T > 1`` (rows or patches), and self-attention mixes the tokens of
one image only, never different images of the batch.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import PositionalEncoding, TransformerEncoderBlock
from .registry import Recipe, register


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
        self.pos_encoding = PositionalEncoding(num_hiddens, dropout, max_len=image_size)
        self.blks = nn.Sequential(*(
            TransformerEncoderBlock(num_hiddens, ffn_num_hiddens, num_heads, dropout)
            for _ in range(num_blks)
        ))
        self.head = nn.Linear(num_hiddens, num_classes)

    def encode(self, X: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, H, W)`` images to ``(B, H, num_hiddens)`` row representations."""
        B, C, H, W = X.shape
        X = X.permute(0, 2, 1, 3).reshape(B, H, C * W)  # (B, H, C*W): one token per row
        return self.blks(self.pos_encoding(self.embedding(X)))  # (B, T, num_hiddens)

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
        self.blks = nn.Sequential(*(  # d2l §11.8's pre-norm ViT block
            TransformerEncoderBlock(num_hiddens, mlp_num_hiddens, num_heads, blk_dropout,
                                    norm_first=True, bias=use_bias, activation="gelu",
                                    mlp_dropout=True)
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


_ADAMW = Recipe(optimizer="adamw", lr=1e-3, batch_size=128, max_epochs=10, weight_decay=0.05,
                scheduler="cosine", gradient_clip_val=1.0)


@register(
    "row_transformer",
    task="image_classification",
    data="mnist",
    section="11.7",
    recipes={"d2l": _ADAMW},
)
def row_transformer(num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
                    num_hiddens: int = 128, ffn_num_hiddens: int = 256, num_heads: int = 4,
                    num_blks: int = 2, dropout: float = 0.1) -> RowTransformer:
    """Row Transformer: encoder blocks over the 28 image rows as tokens, mean-pooled."""
    return RowTransformer(num_classes, in_channels, image_size, num_hiddens, ffn_num_hiddens,
                          num_heads, num_blks, dropout)


@register(
    "vit",
    task="image_classification",
    data="mnist",
    section="11.8",
    recipes={
        "d2l": _ADAMW,
        # The book's own run (§11.8, on Fashion-MNIST: pass --data fashion_mnist).
        "book": Recipe(
            optimizer="sgd", lr=0.1, batch_size=128, max_epochs=10, resize=96,
            model_kwargs={"patch_size": 16, "num_hiddens": 512, "mlp_num_hiddens": 2048,
                          "num_heads": 8, "num_blks": 2, "emb_dropout": 0.1,
                          "blk_dropout": 0.1},
        ),
    },
)
def vit(num_classes: int = 10, in_channels: int = 1, image_size: int = 28, patch_size: int = 4,
        num_hiddens: int = 128, mlp_num_hiddens: int = 256, num_heads: int = 4,
        num_blks: int = 4, emb_dropout: float = 0.1, blk_dropout: float = 0.1,
        use_bias: bool = False) -> ViT:
    """Small Vision Transformer: 4x4 patches, <cls> token, pre-norm blocks."""
    return ViT(num_classes, in_channels, image_size, patch_size, num_hiddens, mlp_num_hiddens,
               num_heads, num_blks, emb_dropout, blk_dropout, use_bias)
