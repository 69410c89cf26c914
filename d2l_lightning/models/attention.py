"""Attention building blocks shared by the sequence models (d2l ch. 11).

Masked softmax (§11.3), additive and scaled dot-product attention (§11.3), multi-head attention
(§11.5), sinusoidal positional encoding (§11.6) and the Transformer encoder block (§11.7).
Everything is batch-first: ``(B, T, H)``. Masks follow d2l's ``valid_lens``: key positions at or
past a sequence's valid length get zero weight; ``causal=True`` additionally hides later keys.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def attention_mask(valid_lens: torch.Tensor | None, num_queries: int, num_keys: int,
                   causal: bool = False, device: torch.device | None = None) -> torch.Tensor | None:
    """Boolean mask, ``True`` where a query may attend to a key.

    Args:
        valid_lens: ``(B,)`` valid keys per sequence, or ``(B, Q)`` per query; ``None``: all.
        num_queries: ``Q``.
        num_keys: ``K``.
        causal: query ``i`` sits at position ``K - Q + i`` and sees keys up to there (so a
            cached decoder step, ``Q = 1``, sees every key).
        device: where to build the mask.

    Returns:
        ``(B, 1, Q, K)`` (or ``(1, 1, Q, K)`` when only causal), or ``None`` for no mask.
    """
    mask = None
    keys = torch.arange(num_keys, device=device)
    if valid_lens is not None:
        vl = valid_lens.to(device)
        if vl.dim() == 1:  # (B,) -> (B, 1, 1, K)
            mask = (keys[None, :] < vl[:, None])[:, None, None, :]
        else:  # (B, Q) -> (B, 1, Q, K)
            mask = (keys[None, None, :] < vl[:, :, None])[:, None]
    if causal:
        queries = torch.arange(num_queries, device=device) + (num_keys - num_queries)
        tri = (keys[None, :] <= queries[:, None])[None, None]  # (1, 1, Q, K)
        mask = tri if mask is None else mask & tri
    return mask


def masked_softmax(X: torch.Tensor, valid_lens: torch.Tensor | None = None,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over the last axis with exact zeros at masked keys (d2l §11.3).

    Args:
        X: scores ``(B, Q, K)`` or ``(B, heads, Q, K)``.
        valid_lens: ``(B,)`` or ``(B, Q)`` valid keys (d2l's argument).
        mask: a boolean mask broadcastable to ``X`` (``True`` = keep); used instead of
            ``valid_lens`` when given.
    """
    if mask is None and valid_lens is not None:
        q, k = X.shape[-2], X.shape[-1]
        mask = attention_mask(valid_lens, q, k, device=X.device)
        if X.dim() == 3:
            mask = mask[:, 0]  # (B, Q or 1, K)
    if mask is None:
        return F.softmax(X, dim=-1)
    # The book fills with -1e6; the dtype's minimum gives exact zeros in any precision. A row
    # with no valid key falls back to uniform weights instead of NaN.
    X = X.masked_fill(~mask, torch.finfo(X.dtype).min)
    return F.softmax(X, dim=-1)


class AdditiveAttention(nn.Module):
    """Additive (Bahdanau) attention, d2l §11.3.2.

    Args:
        num_hiddens: hidden size of the scoring MLP.
        dropout: dropout on the attention weights.
        key_size: key feature size.
        query_size: query feature size.
    """

    def __init__(self, num_hiddens: int, dropout: float = 0.0, key_size: int | None = None,
                 query_size: int | None = None) -> None:
        super().__init__()
        self.W_k = nn.Linear(key_size or num_hiddens, num_hiddens, bias=False)
        self.W_q = nn.Linear(query_size or num_hiddens, num_hiddens, bias=False)
        self.w_v = nn.Linear(num_hiddens, 1, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.attention_weights: torch.Tensor | None = None

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                valid_lens: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, Q, q)``, ``(B, K, k)``, ``(B, K, v)`` -> ``(B, Q, v)``."""
        features = torch.tanh(self.W_q(queries)[:, :, None, :] + self.W_k(keys)[:, None, :, :])
        scores = self.w_v(features).squeeze(-1)  # (B, Q, K)
        self.attention_weights = masked_softmax(scores, valid_lens)
        return torch.bmm(self.dropout(self.attention_weights), values)


class DotProductAttention(nn.Module):
    """Scaled dot-product attention, d2l §11.3.3 (the explicit form, keeps its weights).

    Args:
        dropout: dropout on the attention weights.
    """

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.attention_weights: torch.Tensor | None = None

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                valid_lens: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(..., Q, d)``, ``(..., K, d)``, ``(..., K, v)`` -> ``(..., Q, v)``."""
        scores = queries @ keys.transpose(-2, -1) / math.sqrt(queries.shape[-1])
        self.attention_weights = masked_softmax(scores, valid_lens, mask)
        return self.dropout(self.attention_weights) @ values


class MultiHeadAttention(nn.Module):
    """Multi-head attention, d2l §11.5, batch-first, over the sequence axis only.

    Heads attend within each example: ``(B, T, H)`` is split into ``(B, heads, T, H/heads)``;
    the batch axis is never mixed into the attention axis. The fast path is
    :func:`torch.nn.functional.scaled_dot_product_attention`; ``need_weights=True`` takes the
    explicit path and keeps ``attention_weights`` ``(B, heads, Q, K)`` for heatmaps.

    Args:
        num_hiddens: model width ``H`` (divisible by ``num_heads``).
        num_heads: heads.
        dropout: dropout on the attention weights (training only).
        bias: biases in the four projections (d2l: none).
    """

    def __init__(self, num_hiddens: int, num_heads: int, dropout: float = 0.0,
                 bias: bool = False) -> None:
        super().__init__()
        if num_hiddens % num_heads:
            raise ValueError(f"num_hiddens={num_hiddens} is not divisible by "
                             f"num_heads={num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.W_q = nn.Linear(num_hiddens, num_hiddens, bias=bias)
        self.W_k = nn.Linear(num_hiddens, num_hiddens, bias=bias)
        self.W_v = nn.Linear(num_hiddens, num_hiddens, bias=bias)
        self.W_o = nn.Linear(num_hiddens, num_hiddens, bias=bias)
        self.attention_weights: torch.Tensor | None = None

    def split_heads(self, X: torch.Tensor) -> torch.Tensor:
        """``(B, T, H)`` -> ``(B, heads, T, H/heads)``."""
        B, T, H = X.shape
        return X.view(B, T, self.num_heads, H // self.num_heads).transpose(1, 2)

    def merge_heads(self, X: torch.Tensor) -> torch.Tensor:
        """``(B, heads, T, d)`` -> ``(B, T, heads * d)``."""
        B, h, T, d = X.shape
        return X.transpose(1, 2).reshape(B, T, h * d)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                valid_lens: torch.Tensor | None = None, causal: bool = False,
                need_weights: bool = False,
                cache: tuple[torch.Tensor, torch.Tensor] | None = None,
                ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Attend from ``queries`` ``(B, Q, H)`` to ``keys``/``values`` ``(B, K, H)``.

        Args:
            queries: ``(B, Q, H)``.
            keys: ``(B, K, H)``.
            values: ``(B, K, H)``.
            valid_lens: ``(B,)`` or ``(B, Q)`` valid key counts (padding mask).
            causal: hide keys after each query's position (decoders).
            need_weights: keep ``attention_weights`` (explicit path).
            cache: projected ``(keys, values)`` ``(B, heads, K0, d)`` of earlier positions;
                when given, the new keys/values are appended and the method returns
                ``(output, new_cache)`` (key/value caching for generation).
        """
        q = self.split_heads(self.W_q(queries))  # (B, heads, Q, d)
        k = self.split_heads(self.W_k(keys))
        v = self.split_heads(self.W_v(values))
        if cache is not None:
            k = torch.cat([cache[0], k], dim=2)
            v = torch.cat([cache[1], v], dim=2)
        mask = attention_mask(valid_lens, q.shape[2], k.shape[2], causal, q.device)
        p = self.dropout if self.training else 0.0
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
            self.attention_weights = masked_softmax(scores, mask=mask)
            out = F.dropout(self.attention_weights, p, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        out = self.W_o(self.merge_heads(out))  # (B, Q, H)
        return out if cache is None else (out, (k, v))


class PositionalEncoding(nn.Module):
    """Sinusoidal positional encoding added to the inputs, d2l §11.6.3.

    Args:
        num_hiddens: model width.
        dropout: dropout after adding the encoding.
        max_len: longest supported sequence.
    """

    def __init__(self, num_hiddens: int, dropout: float = 0.0, max_len: int = 1000) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        pos = torch.arange(max_len, dtype=torch.float32)[:, None]
        freq = torch.pow(10000, torch.arange(0, num_hiddens, 2, dtype=torch.float32)
                         / num_hiddens)
        P = torch.zeros(1, max_len, num_hiddens)
        P[0, :, 0::2] = torch.sin(pos / freq)
        P[0, :, 1::2] = torch.cos(pos / freq[: num_hiddens // 2])
        self.register_buffer("P", P, persistent=False)

    def forward(self, X: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """``(B, T, H)`` plus the encodings of positions ``offset .. offset + T - 1``."""
        T = X.shape[1]
        if offset + T > self.P.shape[1]:
            raise ValueError(f"sequence of length {offset + T} exceeds max_len={self.P.shape[1]}")
        return self.dropout(X + self.P[:, offset:offset + T].to(X.dtype))


class PositionWiseFFN(nn.Module):
    """Two dense layers applied at every position, d2l §11.7.2.

    Args:
        num_hiddens: model width.
        ffn_num_hiddens: hidden width.
        activation: ``relu`` (the book's Transformer) or ``gelu`` (ViT, BERT, GPT).
        dropout: dropout after the activation and after the output layer (d2l §11.8's ViT MLP);
            0 in the blocks that drop the whole sub-layer output instead.
    """

    def __init__(self, num_hiddens: int, ffn_num_hiddens: int, activation: str = "relu",
                 dropout: float = 0.0) -> None:
        super().__init__()
        if activation not in ("relu", "gelu"):  # a typo must not silently train a ReLU model
            raise ValueError(f"unknown activation '{activation}'; choose from: relu, gelu")
        self.dense1 = nn.Linear(num_hiddens, ffn_num_hiddens)
        self.act = nn.GELU() if activation == "gelu" else nn.ReLU()
        self.dense2 = nn.Linear(ffn_num_hiddens, num_hiddens)
        self.dropout = nn.Dropout(dropout)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """``(B, T, H)`` -> ``(B, T, H)``."""
        return self.dropout(self.dense2(self.dropout(self.act(self.dense1(X)))))


class TransformerEncoderBlock(nn.Module):
    """Self-attention + FFN, each with residual and layer norm, d2l §11.7.4.

    One block serves every encoder here: post-norm (the book's Transformer §11.7, BERT §15.8),
    pre-norm (ViT §11.8, GPT), causal with a key/value cache (GPT). Dropout always acts on the
    attention weights; then either on each sub-layer's output (the book's ``AddNorm``, GPT-2),
    or, with ``mlp_dropout``, only inside the FFN after its activation and its output layer
    (d2l §11.8's ``ViTMLP``; the attention output is not dropped there).

    Args:
        num_hiddens: model width.
        ffn_num_hiddens: FFN hidden width.
        num_heads: attention heads.
        dropout: dropout probability.
        norm_first: pre-norm (GPT/ViT style) instead of the book's post-norm.
        bias: biases in the attention projections.
        activation: ``relu`` (book) or ``gelu`` (ViT/BERT/GPT).
        mlp_dropout: the ViT dropout layout described above.
    """

    def __init__(self, num_hiddens: int, ffn_num_hiddens: int, num_heads: int,
                 dropout: float = 0.0, norm_first: bool = False, bias: bool = False,
                 activation: str = "relu", mlp_dropout: bool = False) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.attention = MultiHeadAttention(num_hiddens, num_heads, dropout, bias)
        self.norm1 = nn.LayerNorm(num_hiddens)
        self.ffn = PositionWiseFFN(num_hiddens, ffn_num_hiddens, activation,
                                   dropout if mlp_dropout else 0.0)
        self.norm2 = nn.LayerNorm(num_hiddens)
        self.dropout = nn.Dropout(0.0 if mlp_dropout else dropout)

    def forward(self, X: torch.Tensor, valid_lens: torch.Tensor | None = None,
                causal: bool = False, need_weights: bool = False,
                cache: tuple[torch.Tensor, torch.Tensor] | None = None,
                ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``(B, T, H)`` -> ``(B, T, H)``; padded keys (``valid_lens``) get no attention.

        With a ``cache`` (the ``(B, heads, T0, d)`` keys and values of earlier positions; empty
        tensors for none), returns ``(output, cache extended to T0 + T)`` as
        :class:`MultiHeadAttention` does.
        """
        h = self.norm1(X) if self.norm_first else X
        a = self.attention(h, h, h, valid_lens, causal, need_weights, cache)
        if cache is not None:
            a, cache = a
        if self.norm_first:
            X = X + self.dropout(a)
            out = X + self.dropout(self.ffn(self.norm2(X)))
        else:
            Y = self.norm1(X + self.dropout(a))
            out = self.norm2(Y + self.dropout(self.ffn(Y)))
        return out if cache is None else (out, cache)
