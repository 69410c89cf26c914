"""Encoder-decoder Transformer for machine translation, d2l §11.7 (Vaswani et al., 2017).

Same interface as :mod:`models.seq2seq`. Padding masks in encoder self-attention and in the
decoder's cross-attention (``src_valid_len``), a causal mask in decoder self-attention; the
decoder's incremental ``decode_step`` keeps a key/value cache per block.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .attention import (
    MultiHeadAttention,
    PositionalEncoding,
    PositionWiseFFN,
    TransformerEncoderBlock,
)
from .registry import Recipe, register
from .seq2seq import FULL_DATA, v017_recipe


class TransformerDecoderBlock(nn.Module):
    """Causal self-attention, cross-attention, FFN; each with residual + layer norm (post-norm).

    Args:
        num_hiddens: model width.
        ffn_num_hiddens: FFN hidden width.
        num_heads: attention heads.
        dropout: dropout on attention weights and sub-layer outputs.
    """

    def __init__(self, num_hiddens: int, ffn_num_hiddens: int, num_heads: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.attention1 = MultiHeadAttention(num_hiddens, num_heads, dropout)
        self.norm1 = nn.LayerNorm(num_hiddens)
        self.attention2 = MultiHeadAttention(num_hiddens, num_heads, dropout)
        self.norm2 = nn.LayerNorm(num_hiddens)
        self.ffn = PositionWiseFFN(num_hiddens, ffn_num_hiddens)
        self.norm3 = nn.LayerNorm(num_hiddens)
        self.dropout = nn.Dropout(dropout)

    def forward(self, X: torch.Tensor, enc_outputs: torch.Tensor, src_valid_len: torch.Tensor,
                cache: tuple[torch.Tensor, torch.Tensor] | None = None,
                need_weights: bool = False):
        """``(B, T, H)`` -> ``(B, T, H)``; with ``cache`` returns ``(Y, new_cache)``."""
        if cache is None:
            X2 = self.attention1(X, X, X, causal=True)
        else:
            X2, cache = self.attention1(X, X, X, causal=True, cache=cache)
        Y = self.norm1(X + self.dropout(X2))
        Y2 = self.attention2(Y, enc_outputs, enc_outputs, src_valid_len,
                             need_weights=need_weights)
        Z = self.norm2(Y + self.dropout(Y2))
        out = self.norm3(Z + self.dropout(self.ffn(Z)))
        return out if cache is None else (out, cache)


@register("transformer_mt", task="seq2seq", data="fra_eng", section="11.7", recipes={
    "d2l": Recipe(optimizer="adam", lr=0.0015, batch_size=128, max_epochs=30,
                  gradient_clip_val=1.0, data_kwargs={"num_steps": 9, "max_examples": 640}),
    "full": Recipe(optimizer="adam", lr=0.0015, batch_size=256, max_epochs=1,
                   gradient_clip_val=1.0, data_kwargs=FULL_DATA,
                   model_kwargs={"num_hiddens": 128, "ffn_num_hiddens": 256, "dropout": 0.1}),
    # d2l 0.17 §10.7 (its train_seq2seq also Xavier-initialises every Linear; we do not)
    "d2l-0.17": v017_recipe(200, {"num_hiddens": 32, "ffn_num_hiddens": 64, "num_heads": 4,
                                  "num_layers": 2, "dropout": 0.1}),
})
class TransformerMT(nn.Module):
    """Transformer encoder-decoder, d2l §11.7.

    Args:
        src_vocab_size: source vocabulary size.
        tgt_vocab_size: target vocabulary size.
        num_hiddens: model width (book: 256).
        ffn_num_hiddens: FFN width (book: 64).
        num_heads: attention heads (book: 4).
        num_layers: encoder and decoder blocks each (book: 2).
        dropout: dropout (book: 0.2).
        max_len: longest sequence for the positional encoding.
    """

    has_attention = True

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, num_hiddens: int = 256,
                 ffn_num_hiddens: int = 64, num_heads: int = 4, num_layers: int = 2,
                 dropout: float = 0.2, max_len: int = 1000) -> None:
        super().__init__()
        self.num_hiddens = num_hiddens
        self.src_embedding = nn.Embedding(src_vocab_size, num_hiddens)
        self.tgt_embedding = nn.Embedding(tgt_vocab_size, num_hiddens)
        self.pos_encoding = PositionalEncoding(num_hiddens, dropout, max_len)
        self.encoder_blocks = nn.ModuleList(
            TransformerEncoderBlock(num_hiddens, ffn_num_hiddens, num_heads, dropout)
            for _ in range(num_layers))
        self.decoder_blocks = nn.ModuleList(
            TransformerDecoderBlock(num_hiddens, ffn_num_hiddens, num_heads, dropout)
            for _ in range(num_layers))
        self.dense = nn.Linear(num_hiddens, tgt_vocab_size)
        self.keep_attention = False
        self.step_attention: torch.Tensor | None = None

    def _embed(self, embedding: nn.Embedding, tokens: torch.Tensor, offset: int = 0):
        # The book scales embeddings by sqrt(num_hiddens) before adding positions.
        return self.pos_encoding(embedding(tokens) * math.sqrt(self.num_hiddens), offset)

    def encode(self, src: torch.Tensor, src_valid_len: torch.Tensor):
        """Memory: ``(enc_outputs (B, S, H), src_valid_len (B,))``; padded keys are masked."""
        X = self._embed(self.src_embedding, src)  # (B, S, H)
        for blk in self.encoder_blocks:
            X = blk(X, src_valid_len)
        return X, src_valid_len

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor,
                src_valid_len: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``(B, T, V_tgt)`` (causal decoder self-attention)."""
        enc_outputs, valid_len = self.encode(src, src_valid_len)
        X = self._embed(self.tgt_embedding, tgt_in)  # (B, T, H)
        for blk in self.decoder_blocks:
            X = blk(X, enc_outputs, valid_len)
        return self.dense(X)

    def decode_step(self, tokens: torch.Tensor, memory, state):
        """One step with a key/value cache; ``state`` holds one ``(k, v)`` pair per block."""
        enc_outputs, valid_len = memory
        B = tokens.shape[0]
        if state is None:
            heads = self.decoder_blocks[0].attention1.num_heads
            empty = enc_outputs.new_zeros(B, heads, 0, self.num_hiddens // heads)
            state = tuple((empty, empty) for _ in self.decoder_blocks)
        offset = state[0][0].shape[2]
        X = self._embed(self.tgt_embedding, tokens, offset)  # (B, 1, H)
        new_state, weights = [], []
        for blk, cache in zip(self.decoder_blocks, state):
            X, cache = blk(X, enc_outputs, valid_len, cache, need_weights=self.keep_attention)
            new_state.append(cache)
            if self.keep_attention:
                weights.append(blk.attention2.attention_weights[:, :, -1])  # (B, heads, S)
        if self.keep_attention:
            self.step_attention = torch.stack(weights, 1)  # (B, layers, heads, S)
        return self.dense(X), tuple(new_state)
