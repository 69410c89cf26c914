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

from .base import TensorDataModule
from .bert_text import EVAL_DRAWS, SPLIT_FILES, PretrainCorpus, draw_examples, pretrain_corpora
from .corpora import WIKITEXT2
from .download import DataError, resolve_data_dir
from .loader import TensorBatchLoader
from .text import Vocab


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
        on_device: see :class:`datamodules.base.TensorDataModule` (each epoch's draw crosses
            once).
    """

    def __init__(self, data_dir: str | Path | None = None, batch_size: int = 512, seed: int = 0,
                 max_len: int = 64, min_freq: int = 5, max_examples: int | None = None,
                 on_device: bool | str = "auto") -> None:
        super().__init__(batch_size, seed, on_device)
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
        self.vocab, corpora = pretrain_corpora(self.data_dir, self.max_len, self.min_freq,
                                               self.max_examples)
        self.corpora = {SPLIT_FILES[s]: c for s, c in corpora.items()}  # train, valid, test
        self.train_set = self._draw("train", 0)
        self.val_set = self._draw("valid", EVAL_DRAWS["val"])
        self.test_set = self._draw("test", EVAL_DRAWS["test"])

    def _draw(self, split: str, epoch: int) -> tuple[torch.Tensor, ...]:
        return draw_examples(self.corpora[split], self.vocab, self.seed, epoch)

    def train_dataloader(self) -> EpochLoader:
        """Training batches; NSP pairs and masks re-drawn each epoch from ``(seed, epoch)``."""
        if self.vocab is None:
            raise RuntimeError("BERTPretrainDataModule.setup() has not run")
        rank, world = 0, 1
        if self.trainer is not None:
            rank, world = self.trainer.global_rank, self.trainer.world_size
        return EpochLoader(lambda epoch: self._draw("train", epoch), self.batch_size,
                           self.train_set, seed=self.seed, rank=rank, world_size=world, even=True,
                           device=self.data_device())

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
