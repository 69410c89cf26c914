"""BERT pretraining examples from paragraphs (d2l §15.9), Lightning-free.

The special tokens of the vocabulary, the paragraph reader, the sentence-pair corpus of each
WikiText-2 split (:func:`pretrain_corpora`) and the per-epoch draw of next-sentence pairs and
masked positions; :mod:`datamodules.bert` serves them as a DataModule, ``predict.py eval``
reads the same validation and test draws.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .download import DataError
from .text import Vocab, tokenize

#: reserved tokens of the BERT vocabulary, in index order after ``<unk>``
SPECIAL_TOKENS = ("<pad>", "<mask>", "<cls>", "<sep>")
MASK_RATE, MASK_TOKEN_RATE, RANDOM_TOKEN_RATE = 0.15, 0.8, 0.1
#: WikiText file of each split, and the draw (an "epoch" of the generator) of its examples:
#: training examples are drawn again each epoch, validation and test ones once
SPLIT_FILES = {"train": "train", "val": "valid", "test": "test"}
EVAL_DRAWS = {"val": 1_000_000, "test": 2_000_000}


def read_paragraphs(lines: list[str]) -> list[list[list[str]]]:
    """d2l ``_read_wiki``: lines with >= 2 sentences, lower-cased, split into word tokens.

    Empty sentences are dropped (a paragraph must keep two), unlike the book.
    """
    paragraphs = []
    for line in lines:
        if len(line.split(" . ")) < 2:
            continue
        sentences = [s for s in tokenize(line.strip().lower().split(" . "), "word") if s]
        if len(sentences) >= 2:
            paragraphs.append(sentences)
    return paragraphs


class PretrainCorpus:
    """Sentences of one split as flat token ids, and the consecutive pairs that fit ``max_len``.

    Args:
        paragraphs: output of :func:`read_paragraphs`.
        vocab: the pretraining vocabulary.
        max_len: longest ``<cls> A <sep> B <sep>``.
    """

    def __init__(self, paragraphs: list[list[list[str]]], vocab: Vocab, max_len: int) -> None:
        sentences = [s for p in paragraphs for s in p]
        if not sentences:
            raise DataError("no paragraph with two sentences in the WikiText split")
        self.flat = torch.tensor(vocab[[t for s in sentences for t in s]], dtype=torch.long)
        self.lengths = torch.tensor([len(s) for s in sentences])
        self.starts = torch.cumsum(self.lengths, 0) - self.lengths
        last = torch.tensor([i == len(p) - 1 for p in paragraphs for i in range(len(p))])
        a = torch.nonzero(~last).squeeze(1)  # every sentence that has a next one
        fits = self.lengths[a] + self.lengths[a + 1] + 3 <= max_len
        self.first = a[fits]
        self.num_paragraphs, self.num_sentences = len(paragraphs), len(sentences)
        self.max_len = max_len
        self.lengths_sorted, self.by_length = torch.sort(self.lengths, stable=True)

    def __len__(self) -> int:
        return len(self.first)


def make_examples(corpus: PretrainCorpus, vocab: Vocab, generator: torch.Generator,
                  ) -> tuple[torch.Tensor, ...]:
    """Draw one epoch of NSP pairs and MLM masks (the batch tuple of the module docstring)."""
    g, L = generator, corpus.max_len
    pad, mask, cls, sep = (vocab[t] for t in SPECIAL_TOKENS)
    a = corpus.first
    N = len(a)
    la = corpus.lengths[a]
    # NSP: the true next sentence, or a random one among those short enough to fit.
    is_next = torch.rand(N, generator=g) < 0.5
    room = corpus.max_len - 3 - la
    fitting = torch.searchsorted(corpus.lengths_sorted, room, right=True)  # >= 1
    pick = (torch.rand(N, generator=g) * fitting).long().clamp_max(fitting - 1)
    b = torch.where(is_next, a + 1, corpus.by_length[pick])
    lb = corpus.lengths[b]
    valid_lens = la + lb + 3

    t = torch.arange(L)[None, :]  # (1, L)
    la_, lb_ = la[:, None], lb[:, None]
    in_a = (t >= 1) & (t <= la_)
    in_b = (t >= la_ + 2) & (t <= la_ + lb_ + 1)
    src = torch.where(in_a, corpus.starts[a][:, None] + t - 1,
                      corpus.starts[b][:, None] + t - la_ - 2)
    src = src.clamp(0, len(corpus.flat) - 1)
    tokens = torch.where(in_a | in_b, corpus.flat[src], pad)  # (N, L)
    tokens[:, 0] = cls
    tokens[t.expand(N, L) == la_ + 1] = sep
    tokens[t.expand(N, L) == la_ + lb_ + 2] = sep
    segments = ((t >= la_ + 2) & (t < valid_lens[:, None])).long()

    # MLM: a random subset of the word positions, first num_preds of a random order.
    P = round(L * MASK_RATE)
    candidates = in_a | in_b
    num_preds = torch.round(valid_lens * MASK_RATE).long().clamp(min=1)
    num_preds = torch.minimum(num_preds, candidates.sum(1))
    keys = torch.rand(N, L, generator=g).masked_fill(~candidates, 2.0)
    order = keys.argsort(dim=1)[:, :P]  # (N, P) word positions first, in random order
    real = torch.arange(P)[None, :] < num_preds[:, None]
    pred_positions = torch.where(real, order, 0)
    labels = torch.where(real, tokens.gather(1, pred_positions), 0)
    r = torch.rand(N, P, generator=g)
    random_words = torch.randint(len(SPECIAL_TOKENS) + 1, len(vocab), (N, P), generator=g)
    replaced = torch.where(r < MASK_TOKEN_RATE, mask,
                           torch.where(r < MASK_TOKEN_RATE + RANDOM_TOKEN_RATE, random_words,
                                       labels))
    inputs = tokens.clone()
    # padded slots point at position 0 and write back <cls>
    inputs.scatter_(1, pred_positions, torch.where(real, replaced, cls))
    return inputs, segments, valid_lens, pred_positions, real.float(), labels, is_next.long()


def unigram_baseline(mlm_weights: torch.Tensor, mlm_labels: torch.Tensor,
                     token: int | None = None) -> tuple[int, float]:
    """MLM accuracy of always predicting one token (default: the most frequent label)."""
    labels = mlm_labels[mlm_weights > 0]
    if token is None:
        token = int(torch.bincount(labels).argmax())
    return token, float((labels == token).float().mean())


def pretrain_corpora(data_dir: str | Path, max_len: int, min_freq: int,
                     max_examples: int | None = None) -> tuple[Vocab, dict[str, PretrainCorpus]]:
    """The vocabulary and the sentence-pair corpus of each WikiText-2 split (d2l §15.9).

    The one definition of :class:`datamodules.bert.BERTPretrainDataModule`'s data, which
    ``predict.py eval`` reads too: the vocabulary of the training sentences (``min_freq``,
    reserved :data:`SPECIAL_TOKENS`), the first ``max_examples`` training pairs.

    Raises:
        DataError: no training pair fits ``max_len``, or missing files.
    """
    from .corpora import read_wikitext

    paragraphs = {split: read_paragraphs(read_wikitext("wikitext2", name, data_dir))
                  for split, name in SPLIT_FILES.items()}
    vocab = Vocab([s for p in paragraphs["train"] for s in p], min_freq=min_freq,
                  reserved_tokens=SPECIAL_TOKENS)
    corpora = {split: PretrainCorpus(p, vocab, max_len) for split, p in paragraphs.items()}
    train = corpora["train"]
    if max_examples:
        train.first = train.first[:max_examples]
    if len(train) == 0:
        raise DataError(f"no training sentence pair fits max_len={max_len}")
    return vocab, corpora


def draw_examples(corpus: PretrainCorpus, vocab: Vocab, seed: int,
                  epoch: int) -> tuple[torch.Tensor, ...]:
    """One draw of a split's examples from ``(seed, epoch)`` (see :data:`EVAL_DRAWS`)."""
    return make_examples(corpus, vocab, torch.Generator().manual_seed(seed * 100_003 + epoch))
