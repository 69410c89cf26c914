"""English-French text pipeline of d2l §10.5, Lightning-free (``predict.py`` uses it).

Preprocessing, word tokenization, truncation/padding to ``num_steps`` with valid lengths, the
source-grouped train/val/test split of the whole corpus, and :func:`translate` (text to text).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from torch import nn

from .text import Vocab

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIALS = (PAD, BOS, EOS)
PREPROCESS = "d2l_fra_eng"  # name stored in exports


def preprocess_fra_eng(text: str) -> str:
    """d2l §10.5 ``_preprocess``: non-breaking spaces to spaces, lower-case, space before ``,.!?``.

    A space is inserted before each of ``,.!?`` not already preceded by a space.
    """
    text = text.replace("\u202f", " ").replace("\xa0", " ")
    lower = text.lower()
    out = [" " + c if i > 0 and c in ",.!?" and text[i - 1] != " " else c
           for i, c in enumerate(lower)]
    return "".join(out)


def tokenize_sentence(sentence: str) -> list[str]:
    """Split a preprocessed sentence on spaces, skipping empty tokens (d2l ``_tokenize``)."""
    return [t for t in sentence.split(" ") if t]


def parse_pairs(raw: str, max_examples: int | None = None) -> list[tuple[str, str]]:
    """Preprocessed ``(english, french)`` pairs of ``fra.txt`` (first ``max_examples``)."""
    pairs = []
    for line in preprocess_fra_eng(raw).split("\n"):
        parts = line.split("\t")
        if len(parts) >= 2:
            pairs.append((parts[0].strip(), parts[1].strip()))
            if max_examples and len(pairs) >= max_examples:
                break
    return pairs


def split_by_source(sources: Sequence[str], val_size: int, test_size: int,
                    seed: int) -> tuple[list[int], list[int], list[int]]:
    """Seeded train/val/test indices; all pairs of one English source go to the same split.

    Source groups are visited in a seeded random order and filled into test, then val, until
    each holds at least its size; the rest is training data. Indices stay in corpus order.
    """
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(sources):
        groups.setdefault(s, []).append(i)
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    test, val, train = [], [], []
    for k in keys:
        if len(test) < test_size:
            test += groups[k]
        elif len(val) < val_size:
            val += groups[k]
        else:
            train += groups[k]
    return sorted(train), sorted(val), sorted(test)


def pad_or_trim(tokens: list[str], num_steps: int) -> list[str]:
    """Truncate to ``num_steps`` tokens or right-pad with ``<pad>`` (d2l)."""
    return tokens[:num_steps] if len(tokens) > num_steps else tokens + [PAD] * (num_steps -
                                                                              len(tokens))


def encode_source(sentences: Sequence[Sequence[str]], vocab: Vocab,
                  num_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> ``src (N, num_steps)`` with ``<eos>`` and padding, ``valid_len (N,)``."""
    rows = [vocab[pad_or_trim([*s, EOS], num_steps)] for s in sentences]
    src = torch.tensor(rows, dtype=torch.long).view(len(rows), num_steps)
    return src, (src != vocab[PAD]).sum(1)


def encode_target(sentences: Sequence[Sequence[str]], vocab: Vocab,
                  num_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> teacher-forcing ``tgt_in`` and ``tgt_out``, both ``(N, num_steps)``."""
    rows = [vocab[[BOS, *pad_or_trim([*s, EOS], num_steps)]] for s in sentences]
    tgt = torch.tensor(rows, dtype=torch.long).view(len(rows), num_steps + 1)
    return tgt[:, :-1], tgt[:, 1:]


def build_vocab(sentences: Sequence[Sequence[str]], min_freq: int = 2) -> Vocab:
    """d2l vocabulary: ``<unk> <pad> <bos> <eos>`` then tokens seen ``min_freq`` times."""
    return Vocab(sentences, min_freq=min_freq, reserved_tokens=list(SPECIALS))


def detokenize(indices: Sequence[int], vocab: Vocab) -> str:
    """Indices -> space-joined tokens, stopping at ``<eos>`` and skipping ``<pad>``/``<bos>``."""
    eos, pad, bos = vocab[EOS], vocab[PAD], vocab[BOS]
    out = []
    for i in indices:
        i = int(i)
        if i == eos:
            break
        if i not in (pad, bos):
            out.append(vocab.idx_to_token[i])
    return " ".join(out)


def translate(model: nn.Module, sentences: Sequence[str], src_vocab: Vocab, tgt_vocab: Vocab,
              num_steps: int, max_len: int | None = None, beam_size: int = 1,
              length_penalty: float = 0.0, return_attention: bool = False):
    """English sentences -> French with a translation model (d2l §10.7.6's ``predict_step``).

    The one path from text to text, used by the task module, its callback, ``predict.py
    translate`` and the benchmarks: preprocess (d2l §10.5, so raw and already preprocessed
    input give the same result), tokenize, encode to ``num_steps``, search (greedy, or beam
    search for ``beam_size > 1``), detokenize. The model runs in eval mode (restored after).

    Args:
        model: a translation model (``encode``/``decode_step``, see ``models/seq2seq.py``).
        sentences: English sentences.
        src_vocab: source vocabulary.
        tgt_vocab: target vocabulary.
        num_steps: source length of training (longer inputs are cut, as in training).
        max_len: most generated tokens (default: ``num_steps``).
        beam_size: beam width (1: greedy).
        length_penalty: GNMT alpha of beam search.
        return_attention: also return, per sentence, ``(source tokens, target tokens,
            cross-attention (layers, heads, T, S))`` (greedy decoding, attention models only).

    Returns:
        The translations, and with ``return_attention`` the per-sentence attention details.
    """
    from d2l_lightning.models.decoding import greedy_decode, search

    lines = [tokenize_sentence(preprocess_fra_eng(s)) for s in sentences]
    src, valid = encode_source(lines, src_vocab, num_steps)
    device = next(model.parameters()).device
    src, valid = src.to(device), valid.to(device)
    bos, eos, max_len = tgt_vocab[BOS], tgt_vocab[EOS], max_len or num_steps
    was_training = model.training
    model.eval()
    try:
        if return_attention:
            if beam_size > 1:
                raise ValueError("attention weights come from greedy decoding (beam_size 1)")
            hyps, weights = greedy_decode(model, src, valid, bos, eos, max_len,
                                          return_attention=True)
        else:
            hyps = search(model, src, valid, bos, eos, max_len, beam_size, length_penalty)
    finally:
        model.train(was_training)
    texts = [detokenize(h, tgt_vocab) for h in hyps]
    if not return_attention:
        return texts
    details = []
    for i, (hyp, w) in enumerate(zip(hyps, weights)):  # w: (layers, heads, T, S)
        src_tokens = src_vocab.to_tokens(src[i, : int(valid[i])].cpu())
        tgt_tokens = [*tgt_vocab.to_tokens(hyp), EOS][: w.shape[2]]
        details.append((src_tokens, tgt_tokens, w[:, :, :, : len(src_tokens)]))
    return texts, details
