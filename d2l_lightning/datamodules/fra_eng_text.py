"""English-French text pipeline of d2l §10.5, Lightning-free (``predict.py`` uses it).

Preprocessing, word tokenization, truncation/padding to ``num_steps`` with valid lengths, the
source-grouped train/val/test split of the whole corpus, the encoded splits of both settings
(:func:`fra_eng_splits`, which the DataModule and ``predict.py eval`` share), the texts BLEU
reads (:func:`bleu_texts`) and :func:`translate` (text to text).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .download import DataError
from .text import UNK, Vocab

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIALS = (PAD, BOS, EOS)
PREPROCESS = "d2l_fra_eng"  # name stored in exports
#: d2l §10.7.6's four sentences and their references (all in the book's training data).
BOOK_PAIRS = (("go .", "va !"), ("i lost .", "j'ai perdu ."), ("he's calm .", "il est calme ."),
              ("i'm home .", "je suis chez moi ."))
#: references keep their unknown words as this token, which no hypothesis can produce
UNK_REF = "<unk:ref>"


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


@dataclass
class FraEngSplits:
    """The encoded splits of the corpus and their vocabularies.

    Attributes:
        pairs: the preprocessed ``(english, french)`` pairs of each split.
        src_vocab: source vocabulary.
        tgt_vocab: target vocabulary.
        tensors: ``(src, tgt_in, src_valid_len, tgt_out)`` of each split (see
            :mod:`datamodules.fra_eng`).
    """

    pairs: dict[str, list[tuple[str, str]]]
    src_vocab: Vocab
    tgt_vocab: Vocab
    tensors: dict[str, tuple[torch.Tensor, ...]]


def fra_eng_splits(data_dir: str | Path, seed: int, num_steps: int,
                   max_examples: int | None = None, val_size: int | None = None,
                   test_size: int = 5000, min_freq: int = 2) -> FraEngSplits:
    """Preprocess, split, build the vocabularies, encode: the one definition of the splits.

    :class:`datamodules.fra_eng.EngFraDataModule` (whose docstring describes the two settings)
    and ``predict.py eval`` read the corpus through this function.

    Raises:
        DataError: an empty corpus, or split sizes that do not fit it.
    """
    from .corpora import read_fra_eng

    pairs = parse_pairs(read_fra_eng(data_dir), max_examples)
    if not pairs:
        raise DataError(f"fra-eng: the corpus under {Path(data_dir) / 'fra-eng'} holds no "
                        "'English<TAB>French' line; delete it so it is downloaded again, "
                        "or point --data-dir at a complete copy")
    if max_examples:
        val = val_size if val_size is not None else len(pairs) // 5
        if not 0 <= val < len(pairs):
            raise DataError(f"fra-eng: val_size {val} does not fit {len(pairs)} pairs")
        idx = {"train": list(range(len(pairs) - val)),
               "val": list(range(len(pairs) - val, len(pairs))) if val else
               list(range(len(pairs)))}  # 0: d2l 0.17, everything trains (in-sample val)
        idx["test"] = idx["val"]
    else:
        val = val_size if val_size is not None else 5000
        tr, va, te = split_by_source([p[0] for p in pairs], val, test_size, seed)
        if not tr or not va or not te:
            raise DataError(f"fra-eng: {len(pairs)} pairs are too few for val_size {val} "
                            f"and test_size {test_size}")
        idx = {"train": tr, "val": va, "test": te}
    tokens = {k: ([tokenize_sentence(pairs[i][0]) for i in v],
                  [tokenize_sentence(pairs[i][1]) for i in v]) for k, v in idx.items()}
    # Full corpus: vocabularies of the training split only. Book setting: of all N pairs,
    # as d2l builds them before splitting (so "he's" of "he's calm ." is known).
    if max_examples:
        src_tok = [tokenize_sentence(p[0]) for p in pairs]
        tgt_tok = [tokenize_sentence(p[1]) for p in pairs]
    else:
        src_tok, tgt_tok = tokens["train"]
    src_vocab, tgt_vocab = build_vocab(src_tok, min_freq), build_vocab(tgt_tok, min_freq)
    tensors = {}
    for split, (src_tok, tgt_tok) in tokens.items():
        src, src_valid_len = encode_source(src_tok, src_vocab, num_steps)
        tgt_in, tgt_out = encode_target(tgt_tok, tgt_vocab, num_steps)
        tensors[split] = (src, tgt_in, src_valid_len, tgt_out)
    return FraEngSplits({k: [pairs[i] for i in v] for k, v in idx.items()}, src_vocab,
                        tgt_vocab, tensors)


def bleu_texts(src: torch.Tensor, tgt_out: torch.Tensor, hyps: Sequence[Sequence[int]],
               src_vocab: Vocab, tgt_vocab: Vocab) -> list[tuple[str, str, str]]:
    """``(source, reference, hypothesis)`` texts of a batch, as BLEU reads them.

    References are the target rows up to ``<eos>``; their ``<unk>`` becomes :data:`UNK_REF`, so
    it never matches a hypothesis.
    """
    rows = []
    for s, t, h in zip(src.tolist(), tgt_out.tolist(), hyps):
        ref = detokenize(t, tgt_vocab).replace(UNK, UNK_REF)
        rows.append((detokenize(s, src_vocab), ref, detokenize(h, tgt_vocab)))
    return rows


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
