"""BERT (d2l §15.8): encoder, masked-LM and next-sentence heads, plus plain-torch input helpers.

The model returns logits only; :func:`bert_losses` (the masked-LM loss averaged over real
prediction slots, and the next-sentence loss) is shared by ``lit_models.masked_lm`` and
``predict.py eval``. :func:`encode_bert_input` and :func:`fill_mask` are shared by training
code, tests and ``predict.py`` (torch only, no Lightning).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .attention import TransformerEncoderBlock
from .registry import Recipe, register


class BERTEncoder(nn.Module):
    """Token + segment + learned position embeddings, then post-norm encoder blocks (§15.8.1).

    The position embedding is a trained ``nn.Parameter`` (the book's learnable positions,
    §15.8.1). Padded positions (at or past ``valid_lens``) are never
    attended to, so a sentence's encodings do not depend on how much padding follows it.

    Args:
        vocab_size: vocabulary size.
        num_hiddens: model width.
        ffn_num_hiddens: FFN hidden width.
        num_heads: attention heads.
        num_layers: encoder blocks.
        dropout: dropout in the blocks.
        max_len: longest input (positions learned).
        activation: FFN activation, ``gelu`` (BERT paper) or ``relu`` (the book).
    """

    def __init__(self, vocab_size: int, num_hiddens: int = 128, ffn_num_hiddens: int = 256,
                 num_heads: int = 2, num_layers: int = 2, dropout: float = 0.2,
                 max_len: int = 64, activation: str = "gelu") -> None:
        super().__init__()
        self.max_len = max_len
        self.token_embedding = nn.Embedding(vocab_size, num_hiddens)
        self.segment_embedding = nn.Embedding(2, num_hiddens)
        self.pos_embedding = nn.Parameter(torch.randn(1, max_len, num_hiddens))
        self.blks = nn.ModuleList(
            TransformerEncoderBlock(num_hiddens, ffn_num_hiddens, num_heads, dropout,
                                    norm_first=False, bias=True, activation=activation)
            for _ in range(num_layers))

    def forward(self, tokens: torch.Tensor, segments: torch.Tensor,
                valid_lens: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, L)`` token and segment ids, ``(B,)`` valid lengths -> ``(B, L, H)``."""
        seq_len = tokens.shape[1]
        if seq_len > self.max_len:
            raise ValueError(f"input of length {seq_len} exceeds max_len={self.max_len}")
        X = self.token_embedding(tokens) + self.segment_embedding(segments)
        X = X + self.pos_embedding[:, :seq_len]  # (B, L, H)
        for blk in self.blks:
            X = blk(X, valid_lens)
        return X


class MaskLM(nn.Module):
    """Masked-LM head (§15.8.5): MLP + LayerNorm at the prediction positions only."""

    def __init__(self, vocab_size: int, num_hiddens: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(num_hiddens, num_hiddens), nn.ReLU(),
                                 nn.LayerNorm(num_hiddens), nn.Linear(num_hiddens, vocab_size))

    def forward(self, X: torch.Tensor, pred_positions: torch.Tensor) -> torch.Tensor:
        """``(B, L, H)`` encodings, ``(B, P)`` positions -> ``(B, P, vocab)`` logits."""
        batch_idx = torch.arange(X.shape[0], device=X.device)[:, None]  # (B, 1)
        return self.mlp(X[batch_idx, pred_positions])  # gather -> (B, P, H)


class BERTModel(nn.Module):
    """BERT for pretraining (§15.8.5): encoder, masked-LM head, next-sentence head on ``<cls>``.

    Args: as :class:`BERTEncoder`.
    """

    def __init__(self, vocab_size: int, num_hiddens: int = 128, ffn_num_hiddens: int = 256,
                 num_heads: int = 2, num_layers: int = 2, dropout: float = 0.2,
                 max_len: int = 64, activation: str = "gelu") -> None:
        super().__init__()
        self.encoder = BERTEncoder(vocab_size, num_hiddens, ffn_num_hiddens, num_heads,
                                   num_layers, dropout, max_len, activation)
        self.mlm = MaskLM(vocab_size, num_hiddens)
        self.hidden = nn.Sequential(nn.Linear(num_hiddens, num_hiddens), nn.Tanh())
        self.nsp = nn.Linear(num_hiddens, 2)

    def forward(self, tokens: torch.Tensor, segments: torch.Tensor,
                valid_lens: torch.Tensor | None = None,
                pred_positions: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Return ``(encoded (B, L, H), mlm_logits (B, P, V) or None, nsp_logits (B, 2))``."""
        encoded = self.encoder(tokens, segments, valid_lens)
        mlm_logits = self.mlm(encoded, pred_positions) if pred_positions is not None else None
        nsp_logits = self.nsp(self.hidden(encoded[:, 0]))  # from <cls>
        return encoded, mlm_logits, nsp_logits


def bert_losses(mlm_logits: torch.Tensor, nsp_logits: torch.Tensor, mlm_weights: torch.Tensor,
                mlm_labels: torch.Tensor, nsp_labels: torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mlm_loss, nsp_loss, n_real)``: MLM cross-entropy averaged over real slots only.

    The book divides by ``mlm_weights.sum() + 1e-8`` but adds the unweighted padded slots to the
    numerator's mean elsewhere (d2l-en issue 2582); here padded slots (weight 0) contribute
    exactly nothing, whatever their labels.
    """
    nll = F.cross_entropy(mlm_logits.flatten(0, 1), mlm_labels.flatten(), reduction="none")
    w = mlm_weights.flatten().to(nll.dtype)
    n_real = w.sum()
    mlm_loss = (nll * w).sum() / n_real.clamp(min=1.0)
    return mlm_loss, F.cross_entropy(nsp_logits, nsp_labels), n_real


def get_tokens_and_segments(tokens_a: Sequence[str], tokens_b: Sequence[str] | None = None,
                            ) -> tuple[list[str], list[int]]:
    """``<cls> A <sep> [B <sep>]`` and its segment ids (d2l §15.8.1)."""
    tokens = ["<cls>", *tokens_a, "<sep>"]
    segments = [0] * len(tokens)
    if tokens_b is not None:
        tokens += [*tokens_b, "<sep>"]
        segments += [1] * (len(tokens_b) + 1)
    return tokens, segments


def encode_bert_input(token_to_idx: dict[str, int], tokens_a: Sequence[str],
                      tokens_b: Sequence[str] | None = None, max_len: int | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """One sentence (or pair) as model input; unknown words map to ``<unk>`` (index 0).

    Returns:
        ``(tokens (1, L), segments (1, L), valid_lens (1,), token strings)``.
    """
    tokens, segments = get_tokens_and_segments(tokens_a, tokens_b)
    if max_len is not None and len(tokens) > max_len:
        raise ValueError(f"the input has {len(tokens)} tokens with <cls>/<sep>; the model "
                         f"takes at most max_len={max_len}")
    ids = torch.tensor([[token_to_idx.get(t, 0) for t in tokens]])
    return ids, torch.tensor([segments]), torch.tensor([len(tokens)]), tokens


@torch.no_grad()
def fill_mask(model: BERTModel, idx_to_token: Sequence[str], tokens_a: Sequence[str],
              tokens_b: Sequence[str] | None = None, top_k: int = 5,
              max_len: int | None = None) -> list[tuple[int, list[tuple[str, float]]]]:
    """Top-k predictions at every ``<mask>`` of a sentence (or pair).

    Returns:
        One ``(position, [(token, probability), ...])`` per ``<mask>``, position counted in the
        ``<cls> ... <sep>`` sequence.
    """
    token_to_idx = {t: i for i, t in enumerate(idx_to_token)}
    ids, segments, valid_lens, tokens = encode_bert_input(token_to_idx, tokens_a, tokens_b,
                                                          max_len)
    positions = [i for i, t in enumerate(tokens) if t == "<mask>"]
    if not positions:
        raise ValueError("the input has no <mask> token")
    device = next(model.parameters()).device
    _, mlm_logits, _ = model(ids.to(device), segments.to(device), valid_lens.to(device),
                             torch.tensor([positions], device=device))
    probs = mlm_logits[0].float().softmax(-1)  # (P, V)
    top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    return [(pos, [(idx_to_token[i], p) for p, i in zip(ps, ids_)])
            for pos, ps, ids_ in zip(positions, top.values.tolist(), top.indices.tolist())]


_D2L = Recipe(optimizer="adam", lr=0.01, batch_size=512, max_epochs=1,
              data_kwargs={"max_len": 64})
# A CPU-sized pretraining setting (its runs: docs/results-bert.md).
_MODERN = Recipe(optimizer="adamw", lr=2e-3, batch_size=128, max_epochs=4, weight_decay=0.01,
                 scheduler="onecycle", gradient_clip_val=1.0, model_kwargs={"dropout": 0.1},
                 data_kwargs={"max_len": 64})


def _bert(vocab_size: int, num_hiddens: int, ffn_num_hiddens: int, num_heads: int,
          num_layers: int, dropout: float, max_len: int, activation: str) -> BERTModel:
    return BERTModel(vocab_size, num_hiddens, ffn_num_hiddens, num_heads, num_layers, dropout,
                     max_len, activation)


@register("bert_tiny", task="masked_lm", data="wikitext2", section="15.8",
          recipes={"d2l": _D2L, "modern": _MODERN})
def bert_tiny(vocab_size: int = 20000, num_hiddens: int = 128, ffn_num_hiddens: int = 256,
              num_heads: int = 2, num_layers: int = 2, dropout: float = 0.2, max_len: int = 64,
              activation: str = "gelu") -> BERTModel:
    """The book's small BERT (§15.10): 2 layers, 128 hidden, 2 heads, FFN 256."""
    return _bert(vocab_size, num_hiddens, ffn_num_hiddens, num_heads, num_layers, dropout,
                 max_len, activation)


@register("bert_small", task="masked_lm", data="wikitext2", section="15.8",
          recipes={"d2l": Recipe(optimizer="adamw", lr=5e-4, batch_size=256, max_epochs=10,
                                 weight_decay=0.01, scheduler="onecycle",
                                 gradient_clip_val=1.0, data_kwargs={"max_len": 128})})
def bert_small(vocab_size: int = 20000, num_hiddens: int = 256, ffn_num_hiddens: int = 1024,
               num_heads: int = 4, num_layers: int = 4, dropout: float = 0.1,
               max_len: int = 128, activation: str = "gelu") -> BERTModel:
    """A larger preset: 4 layers, 256 hidden, 4 heads, FFN 1024, ``max_len`` 128."""
    return _bert(vocab_size, num_hiddens, ffn_num_hiddens, num_heads, num_layers, dropout,
                 max_len, activation)


@register("bert_encoder", task="text_encoding", data="wikitext2", section="15.8",
          recipes={"d2l": _D2L},
          cannot_train="bert_encoder is the encoder of bert_tiny / bert_small: pretrain one of "
                       "them (its export holds the encoder in export/encoder/)")
def bert_encoder(vocab_size: int = 20000, num_hiddens: int = 128, ffn_num_hiddens: int = 256,
                 num_heads: int = 2, num_layers: int = 2, dropout: float = 0.2,
                 max_len: int = 64, activation: str = "gelu") -> BERTEncoder:
    """The encoder of a pretrained BERT alone (``RUN_DIR/export/encoder/``).

    Not trainable through ``train.py``: it has no pretraining heads.
    """
    return BERTEncoder(vocab_size, num_hiddens, ffn_num_hiddens, num_heads, num_layers,
                       dropout, max_len, activation)
