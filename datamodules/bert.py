"""BERT pretraining data from WikiText-2 (d2l §15.9), vectorized with torch.

Paragraphs are lines with at least two sentences (split on ``' . '``), lower-cased word tokens;
the vocabulary comes from the training sentences (``min_freq=5``, reserved ``<pad> <mask> <cls>
<sep>``). Every consecutive sentence pair of a paragraph that fits ``<cls> A <sep> B <sep>`` in
``max_len`` is one example; each epoch re-draws, from ``(seed, epoch)``, whether B is the true
next sentence (50%) or a random sentence that also fits, and which 15% of the tokens are
predicted (80% ``<mask>``, 10% a random word, 10% unchanged; never ``<cls>``, ``<sep>`` or
``<pad>``). Validation and test examples come from the official splits, drawn once.

Batch (all batch-first, target last)::

    (tokens (B, L), segments (B, L), valid_lens (B,), pred_positions (B, P),
     mlm_weights (B, P), mlm_labels (B, P), nsp_labels (B,))

with ``L = max_len`` and ``P = round(0.15 * max_len)`` prediction slots, of which the first
``max(1, round(0.15 * valid_len))`` are real (weight 1); padded slots have weight 0, position 0
and label 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from models.bert import SPECIAL_TOKENS

from .base import TensorDataModule
from .corpora import WIKITEXT2, read_wikitext
from .download import DataError, resolve_data_dir
from .loader import TensorBatchLoader
from .text import Vocab, tokenize

MASK_RATE, MASK_TOKEN_RATE, RANDOM_TOKEN_RATE = 0.15, 0.8, 0.1


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


class EpochLoader(TensorBatchLoader):
    """A :class:`TensorBatchLoader` whose tensors are re-drawn for every epoch.

    ``make(epoch)`` must return tensors of the same length each epoch; resuming mid-epoch
    re-draws that epoch's tensors exactly (they depend on ``(seed, epoch)`` only).
    """

    def __init__(self, make: Callable[[int], tuple[torch.Tensor, ...]], batch_size: int,
                 first: tuple[torch.Tensor, ...] | None = None, **kwargs: Any) -> None:
        self._make, self._made_for = make, 0
        super().__init__(first if first is not None else make(0), batch_size, shuffle=True,
                         **kwargs)

    def _batches(self, start: int) -> Iterator[tuple[torch.Tensor, ...]]:
        # Drawn when the epoch's first batch is, not at ``iter()``: a resumed run may set the
        # epoch (``load_state_dict``) after Lightning has called ``iter()`` on the loader.
        if self.sampler.epoch != self._made_for:
            self.tensors = self._make(self.sampler.epoch)
            self._made_for = self.sampler.epoch
        return super()._batches(start)


class BERTPretrainDataModule(TensorDataModule):
    """WikiText-2 BERT pretraining examples (d2l §15.9), ``DATA_DIR/wikitext-2/``.

    Args:
        data_dir: data root (``--data-dir``, else ``$D2L_DATA_DIR``, else ``./data``).
        batch_size: batch size (the book: 512).
        seed: seed of the per-epoch NSP/MLM draws and the shuffling.
        max_len: longest input, ``<cls>`` and two ``<sep>`` included (the book: 64).
        min_freq: vocabulary frequency threshold (the book: 5).
        max_examples: use only the first N training pairs (quick runs).
    """

    def __init__(self, data_dir: str | Path | None = None, batch_size: int = 512, seed: int = 0,
                 max_len: int = 64, min_freq: int = 5, max_examples: int | None = None) -> None:
        super().__init__(batch_size, seed)
        if max_len < 5:
            raise DataError(f"max_len={max_len} cannot hold <cls> A <sep> B <sep>")
        self.data_dir = resolve_data_dir(data_dir)
        self.max_len, self.min_freq, self.max_examples = max_len, min_freq, max_examples
        self.vocab: Vocab | None = None
        self.corpora: dict[str, PretrainCorpus] = {}

    def prepare_data(self) -> None:
        """Download missing files (one clear :class:`DataError` offline)."""
        WIKITEXT2.prepare(self.data_dir)

    def setup(self, stage: str | None = None) -> None:
        """Read the splits, build the vocabulary, draw validation and test examples once."""
        if self.vocab is not None:
            return
        splits = {s: read_paragraphs(read_wikitext("wikitext2", s, self.data_dir))
                  for s in ("train", "valid", "test")}
        self.vocab = Vocab([s for p in splits["train"] for s in p], min_freq=self.min_freq,
                           reserved_tokens=SPECIAL_TOKENS)
        for split, paragraphs in splits.items():
            self.corpora[split] = PretrainCorpus(paragraphs, self.vocab, self.max_len)
        train = self.corpora["train"]
        if self.max_examples:
            train.first = train.first[: self.max_examples]
        if len(train) == 0:
            raise DataError(f"no training sentence pair fits max_len={self.max_len}")
        self.train_set = self._draw("train", 0)
        self.val_set = self._draw("valid", 1_000_000)
        self.test_set = self._draw("test", 2_000_000)

    def _draw(self, split: str, epoch: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return make_examples(self.corpora[split], self.vocab, g)

    def train_dataloader(self) -> EpochLoader:
        """Training batches; NSP pairs and masks re-drawn each epoch from ``(seed, epoch)``."""
        if self.vocab is None:
            raise RuntimeError("BERTPretrainDataModule.setup() has not run")
        rank, world = 0, 1
        if self.trainer is not None:
            rank, world = self.trainer.global_rank, self.trainer.world_size
        return EpochLoader(lambda epoch: self._draw("train", epoch), self.batch_size,
                           self.train_set, seed=self.seed, rank=rank, world_size=world, even=True)

    def data_info(self) -> dict[str, Any]:
        """The vocabulary and ``max_len`` for the task module."""
        self.setup()
        return {"vocab": self.vocab.to_json(), "max_len": self.max_len}

    def sizes(self) -> dict[str, int]:
        """Examples per split, plus paragraphs, sentences and vocabulary size."""
        out = super().sizes()
        for split, c in self.corpora.items():
            out[f"{split}_paragraphs"] = c.num_paragraphs
            out[f"{split}_sentences"] = c.num_sentences
        if self.vocab is not None:
            out["vocab"] = len(self.vocab)
        return out
