"""Greedy decoding and beam search for the translation models (d2l §10.7.6, §10.8), plain torch.

Works on the interface of :mod:`models.seq2seq`: ``encode(src, src_valid_len) -> memory`` and
``decode_step(tokens (B, 1), memory, state) -> (logits (B, 1, V), state)``, where memory and
state are (nested tuples of) batch-first tensors. Whole batches of sentences are decoded at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch


class Translator(Protocol):
    """What decoding needs from a translation model (d2l §10.6's encoder-decoder interface).

    Attributes:
        has_attention: the decoder attends to the encoder outputs (heatmaps are possible).
        keep_attention: set by :func:`greedy_decode`: keep the step's cross-attention.
        step_attention: the last step's cross-attention ``(B, layers, heads, S)``, if kept.
    """

    has_attention: bool
    keep_attention: bool
    step_attention: torch.Tensor | None

    def encode(self, src: torch.Tensor, src_valid_len: torch.Tensor) -> Any:
        """The encoder's memory (nested tuples of batch-first tensors)."""

    def decode_step(self, tokens: torch.Tensor, memory: Any, state: Any
                    ) -> tuple[torch.Tensor, Any]:
        """``(logits (B, 1, V), new state)`` of the next ``(B, 1)`` tokens."""


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn`` to every tensor of nested tuples / lists / dicts (other values pass)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(o, fn) for o in obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    return obj


def _strip(rows: torch.Tensor, eos: int) -> list[list[int]]:
    """Token rows -> lists cut before the first ``<eos>``."""
    out = []
    for row in rows.tolist():
        out.append(row[:row.index(eos)] if eos in row else row)
    return out


@torch.no_grad()
def greedy_decode(model: Translator, src: torch.Tensor, src_valid_len: torch.Tensor, bos: int,
                  eos: int, max_len: int, return_attention: bool = False):
    """Most likely next token at each step (d2l ``predict_step``), for a batch.

    Args:
        model: a translation model (in eval mode).
        src: ``(B, S)`` source indices.
        src_valid_len: ``(B,)``.
        bos: index of ``<bos>``.
        eos: index of ``<eos>``.
        max_len: most tokens generated (``<eos>`` included).
        return_attention: also return each sentence's cross-attention
            ``(layers, heads, T, S)`` over its generated tokens and ``<eos>`` (models with
            ``has_attention``).

    Returns:
        One token list per sentence, without ``<eos>`` (and the attention list).
    """
    memory = model.encode(src, src_valid_len)
    tokens = torch.full((src.shape[0], 1), bos, dtype=torch.long, device=src.device)
    state, outputs, attention = None, [], []
    finished = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
    model.keep_attention = return_attention
    try:
        for _ in range(max_len):
            logits, state = model.decode_step(tokens, memory, state)
            tokens = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
            tokens = tokens.masked_fill(finished[:, None], eos)
            outputs.append(tokens)
            if return_attention:
                if model.step_attention is None:
                    raise ValueError(f"{type(model).__name__} has no cross-attention to return")
                attention.append(model.step_attention)  # (B, layers, heads, S)
            finished |= tokens[:, 0] == eos
            if finished.all():
                break
    finally:
        model.keep_attention = False
    seqs = _strip(torch.cat(outputs, 1), eos)
    if not return_attention:
        return seqs
    att = torch.stack(attention, 3)  # (B, layers, heads, T, S)
    return seqs, [att[i, :, :, :len(s) + 1].cpu() for i, s in enumerate(seqs)]  # with <eos>


def length_penalty(lengths: torch.Tensor, alpha: float) -> torch.Tensor:
    """GNMT length penalty ``((5 + len) / 6) ** alpha`` (Wu et al., 2016); 1 when alpha is 0."""
    return ((5.0 + lengths.float()) / 6.0) ** alpha


@torch.no_grad()
def beam_search(model: Translator, src: torch.Tensor, src_valid_len: torch.Tensor, bos: int,
                eos: int, max_len: int, beam_size: int = 4,
                alpha: float = 0.0) -> list[list[int]]:
    """Beam search (d2l §10.8) over a batch of sentences.

    Beams are ranked by summed log-probabilities while searching; a beam that emitted ``<eos>``
    is frozen (it extends only by ``<eos>`` at no cost and its length stops growing). At the end
    the best of the ``beam_size`` beams by ``score / length_penalty(len, alpha)`` is returned,
    ``len`` counting the ``<eos>``. With ``beam_size=1`` this is exactly greedy decoding.

    Returns:
        One token list per sentence, without ``<eos>``.
    """
    B, K = src.shape[0], beam_size
    device = src.device
    memory = model.encode(src, src_valid_len)
    expand = torch.arange(B, device=device).repeat_interleave(K)  # (B*K,)
    memory = map_tensors(memory, lambda t: t.index_select(0, expand))
    tokens = torch.full((B * K, 1), bos, dtype=torch.long, device=device)
    # Only the first beam is live at the start, so the K beams do not all repeat it.
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0
    lengths = torch.zeros(B, K, dtype=torch.long, device=device)
    finished = torch.zeros(B, K, dtype=torch.bool, device=device)
    seqs = torch.empty(B, K, 0, dtype=torch.long, device=device)
    state = None
    for _ in range(max_len):
        logits, state = model.decode_step(tokens, memory, state)
        logp = torch.log_softmax(logits[:, -1].float(), -1).view(B, K, -1)  # (B, K, V)
        V = logp.shape[-1]
        frozen = torch.full_like(logp[0, 0], float("-inf"))
        frozen[eos] = 0.0
        logp = torch.where(finished[..., None], frozen, logp)
        cand = (scores[..., None] + logp).view(B, K * V)
        scores, flat = cand.topk(K, dim=-1)  # (B, K), sorted: beam 0 is the best
        beam, token = flat // V, flat % V
        seqs = torch.cat([seqs.gather(1, beam[..., None].expand(-1, -1, seqs.shape[2])),
                          token[..., None]], 2)
        was_finished = finished.gather(1, beam)
        lengths = lengths.gather(1, beam) + (~was_finished).long()
        finished = was_finished | (token == eos)
        rows = (torch.arange(B, device=device)[:, None] * K + beam).view(-1)  # (B*K,)
        state = map_tensors(state, lambda t, rows=rows: t.index_select(0, rows))
        tokens = token.view(B * K, 1)
        if finished.all():
            break
    final = scores / length_penalty(lengths, alpha)
    best = final.argmax(-1) if alpha else torch.zeros(B, dtype=torch.long, device=device)
    return _strip(seqs[torch.arange(B, device=device), best], eos)


def search(model: Translator, src: torch.Tensor, src_valid_len: torch.Tensor, bos: int, eos: int,
           max_len: int, beam_size: int = 1, alpha: float = 0.0) -> list[list[int]]:
    """Greedy decoding for ``beam_size`` 1, else beam search."""
    if beam_size <= 1:
        return greedy_decode(model, src, src_valid_len, bos, eos, max_len)
    return beam_search(model, src, src_valid_len, bos, eos, max_len, beam_size, alpha)
