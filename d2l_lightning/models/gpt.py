"""GPT: a decoder-only Transformer language model (Radford et al. 2018/2019; d2l §11.9.3).

Pre-norm blocks of causal multi-head self-attention and a GELU feed-forward network
(:mod:`models.attention`), learned or sinusoidal positions, a final layer norm and a decoder
tied to the token embedding. Generation uses a key/value cache: each block keeps the projected
keys and values of the positions it has seen, so ``forward(next_token, state)`` costs one step.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .attention import PositionalEncoding, TransformerEncoderBlock
from .registry import Recipe, register

KVCache = tuple[tuple[torch.Tensor, torch.Tensor], ...]


class GPT(nn.Module):
    """Decoder-only Transformer language model.

    ``state`` is the key/value cache: one ``(k, v)`` pair of ``(B, heads, T0, d)`` tensors per
    block; its length ``T0`` is the position offset of the next input. ``state=None`` is a full
    causal pass. Never carry the cache across training batches (``recurrent = False``).

    Args:
        vocab_size: tokens.
        num_hiddens: model width.
        num_layers: decoder blocks.
        num_heads: attention heads.
        ffn_num_hiddens: FFN width (default ``4 * num_hiddens``).
        dropout: dropout probability.
        max_len: longest context (size of the position table); longer inputs raise.
        positions: ``"learned"`` (GPT) or ``"sinusoidal"`` (d2l §11.6, embeddings scaled by
            ``sqrt(num_hiddens)`` as in the book's Transformer).
        tie_weights: the decoder reuses the token embedding matrix.
    """

    recurrent, bidirectional = False, False  # the NextTokenModel interface (with max_len)

    def __init__(self, vocab_size: int, num_hiddens: int = 64, num_layers: int = 2,
                 num_heads: int = 4, ffn_num_hiddens: int | None = None, dropout: float = 0.0,
                 max_len: int = 1024, positions: str = "learned",
                 tie_weights: bool = True) -> None:
        super().__init__()
        if positions not in ("learned", "sinusoidal"):
            raise ValueError(f"unknown positions '{positions}'; choose learned or sinusoidal")
        self.max_len = max_len
        self.positions = positions
        self.num_hiddens = num_hiddens
        self.embedding = nn.Embedding(vocab_size, num_hiddens)
        if positions == "learned":
            self.pos_embedding = nn.Embedding(max_len, num_hiddens)
        else:
            self.pos_encoding = PositionalEncoding(num_hiddens, 0.0, max_len)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(  # pre-norm, causal, GPT-2's GELU and biases
            TransformerEncoderBlock(num_hiddens, ffn_num_hiddens or 4 * num_hiddens, num_heads,
                                    dropout, norm_first=True, bias=True, activation="gelu")
            for _ in range(num_layers))
        self.norm = nn.LayerNorm(num_hiddens)
        self.decoder = nn.Linear(num_hiddens, vocab_size, bias=False)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: scale the residual projections
            if name.endswith(("W_o.weight", "dense2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * num_layers))
        if tie_weights:
            self.decoder.weight = self.embedding.weight

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, X: torch.Tensor, state: KVCache | None = None
                ) -> tuple[torch.Tensor, KVCache]:
        """Token ids ``(B, T)`` -> logits ``(B, T, vocab_size)`` and the extended cache."""
        offset = 0 if state is None else state[0][0].shape[2]
        T = X.shape[1]
        if offset + T > self.max_len:
            raise ValueError(f"GPT context of {offset + T} tokens exceeds max_len="
                             f"{self.max_len}; train with num_steps <= max_len, or build the model "
                             f"with a longer max_len (--model-arg max_len=N)")
        h = self.embedding(X)  # (B, T, H)
        if self.positions == "learned":
            h = h + self.pos_embedding(torch.arange(offset, offset + T, device=X.device))
        else:
            h = self.pos_encoding(h * math.sqrt(self.num_hiddens), offset)
        h = self.dropout(h)
        if state is None:  # a full causal pass that still returns its keys and values
            heads = self.blocks[0].attention.num_heads
            empty = h.new_zeros(h.shape[0], heads, 0, self.num_hiddens // heads)
            state = tuple((empty, empty) for _ in self.blocks)
        caches = []
        for block, cache in zip(self.blocks, state):
            h, cache = block(h, causal=True, cache=cache)
            caches.append(cache)
        return self.decoder(self.norm(h)), tuple(caches)


# Not in the book: our choice for char-level Time Machine (data "time_machine"). AdamW with
# cosine decay (no warm-up) is the usual small-GPT setting; the context (num_steps) is 64 and
# max_len equals it, so generation slides over exactly the window positions trained on.
# docs/results-language-models.md compares it with an earlier batch-128 / lr-2e-3 setting.
@register(
    "gpt",
    task="language_modeling",
    data="time_machine",
    section="11.9",
    recipes={"d2l": Recipe(
        optimizer="adamw", lr=3e-3, batch_size=64, max_epochs=20, weight_decay=0.01,
        scheduler="cosine", gradient_clip_val=1.0,
        model_kwargs={"num_hiddens": 128, "num_layers": 2, "num_heads": 4, "dropout": 0.1,
                      "max_len": 64},
        data_kwargs={"num_steps": 64})},
)
def gpt(vocab_size: int = 28, num_hiddens: int = 64, num_layers: int = 2, num_heads: int = 4,
        ffn_num_hiddens: int | None = None, dropout: float = 0.0, max_len: int = 1024,
        positions: str = "learned", tie_weights: bool = True) -> GPT:
    """Decoder-only Transformer language model."""
    return GPT(vocab_size, num_hiddens, num_layers, num_heads, ffn_num_hiddens, dropout,
               max_len, positions, tie_weights)
