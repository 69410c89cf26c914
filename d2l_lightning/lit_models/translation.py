"""Sequence-to-sequence (machine translation) task family, d2l §10.7-§11.7."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.text import SacreBLEUScore

from d2l_lightning.datamodules.fra_eng_text import (
    BOOK_PAIRS,
    BOS,
    EOS,
    PAD,
    PREPROCESS,
    bleu_texts,
    translate,
)
from d2l_lightning.datamodules.text import UNK, Vocab
from d2l_lightning.models.bleu import bleu
from d2l_lightning.models.decoding import greedy_decode, search

from .base import TaskModule


class TranslationTask(TaskModule):
    """Teacher-forced cross-entropy ignoring ``<pad>``, token accuracy, decoding and BLEU.

    Validation logs ``val/loss``, ``val/acc`` (non-pad tokens), ``val/bleu`` (corpus BLEU,
    sacreBLEU with ``tokenize="none"`` on the d2l word tokens, 0-100, greedy, over the first
    ``bleu_max_sentences`` validation pairs) and ``val/book_bleu`` (mean d2l BLEU(k=2) of the
    book's four sentences). Test logs ``test/bleu`` (greedy, whole split) and, with
    ``beam_size > 1``, ``test/bleu_beam``. References are the target rows up to ``<eos>``
    (truncated at ``num_steps`` like the training targets); their ``<unk>`` never matches.

    Args:
        arch: registry name of the model.
        src_vocab: source vocabulary (``Vocab.to_json()``).
        tgt_vocab: target vocabulary.
        num_steps: tokens per sentence of the data (its ``num_steps``).
        model_kwargs: constructor arguments of the model besides the vocabulary sizes.
        label_smoothing: cross-entropy label smoothing.
        beam_size: beam width of ``test/bleu_beam`` and of the export's default (1: greedy).
        length_penalty: GNMT length-penalty alpha of beam search.
        max_decode_len: most generated tokens (default: ``num_steps``).
        bleu_max_sentences: validation pairs decoded for ``val/bleu`` each epoch (> 0).
        **optim: optimisation arguments of :class:`TaskModule`.
    """

    monitor = ("val/bleu", "max")
    task = "seq2seq"
    data_args = ("src_vocab", "tgt_vocab", "num_steps")
    model_data_args = ("src_vocab_size", "tgt_vocab_size")

    def __init__(self, arch: str = "seq2seq_gru", src_vocab: list[str] | None = None,
                 tgt_vocab: list[str] | None = None, num_steps: int = 9,
                 model_kwargs: dict[str, Any] | None = None, label_smoothing: float = 0.0,
                 beam_size: int = 1, length_penalty: float = 0.0,
                 max_decode_len: int | None = None, bleu_max_sentences: int = 1000,
                 **optim: Any) -> None:
        super().__init__(**optim)
        if not src_vocab or not tgt_vocab:
            raise ValueError("TranslationTask needs src_vocab and tgt_vocab (from the DataModule)")
        if bleu_max_sentences < 1:
            raise ValueError("bleu_max_sentences must be positive (val/bleu is the monitor)")
        self.save_hyperparameters()
        self.src_vocab, self.tgt_vocab = Vocab.from_tokens(src_vocab), Vocab.from_tokens(tgt_vocab)
        self.pad, self.bos, self.eos = (self.tgt_vocab[t] for t in (PAD, BOS, EOS))
        self._build(arch, {"src_vocab_size": len(src_vocab), "tgt_vocab_size": len(tgt_vocab)},
                    model_kwargs)
        self._init_train_sums(3)  # loss sum, token count, correct tokens
        V = len(tgt_vocab)
        self.val_acc = MulticlassAccuracy(V, average="micro", ignore_index=self.pad)
        self.test_acc = MulticlassAccuracy(V, average="micro", ignore_index=self.pad)
        self.val_bleu = SacreBLEUScore(tokenize="none")
        self.test_bleu = SacreBLEUScore(tokenize="none")
        self.test_bleu_beam = SacreBLEUScore(tokenize="none")
        self._val_decoded = 0
        self.samples: list[tuple[str, str, str]] = []  # (source, reference, hypothesis)
        self.book_samples: list[tuple[str, str, str, float]] = []

    @property
    def max_len(self) -> int:
        """Most generated tokens."""
        return self.hparams.max_decode_len or self.hparams.num_steps

    def _loss(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src, tgt_in, src_valid_len, tgt_out = batch
        logits = self(src, tgt_in, src_valid_len)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=self.pad,
                               label_smoothing=self.hparams.label_smoothing)
        return logits, loss, tgt_out != self.pad

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        """Mean cross-entropy over non-pad target tokens."""
        logits, loss, mask = self._loss(batch)
        correct = ((logits.argmax(-1) == batch[-1]) & mask).sum()
        self._accumulate_train(loss, correct, n=mask.sum())
        return loss

    def _texts(self, src: torch.Tensor, tgt_out: torch.Tensor,
               hyps: list[list[int]]) -> list[tuple[str, str, str]]:
        return bleu_texts(src, tgt_out, hyps, self.src_vocab, self.tgt_vocab)

    def _eval_step(self, batch, split: str) -> None:
        logits, loss, mask = self._loss(batch)
        self.log(f"{split}/loss", loss, on_epoch=True, prog_bar=split == "val", sync_dist=True,
                 batch_size=int(mask.sum()))
        acc = self.val_acc if split == "val" else self.test_acc
        acc.update(logits.argmax(-1).flatten(), batch[-1].flatten())
        self.log(f"{split}/acc", acc, on_epoch=True, prog_bar=split == "val")

    def validation_step(self, batch, batch_idx: int) -> None:
        """Loss and accuracy on the whole split; greedy BLEU on its first sentences."""
        self._eval_step(batch, "val")
        n = min(self.hparams.bleu_max_sentences - self._val_decoded, len(batch[0]))
        if n > 0:
            src, _, src_valid_len, tgt_out = (t[:n] for t in batch)
            hyps = greedy_decode(self.model, src, src_valid_len, self.bos, self.eos, self.max_len)
            rows = self._texts(src, tgt_out, hyps)
            self.val_bleu.update([r[2] for r in rows], [[r[1]] for r in rows])
            if self._val_decoded == 0:
                self.samples = rows[:8]
            self._val_decoded += n

    def on_validation_epoch_end(self) -> None:
        """``val/bleu`` and the book's four sentences (``val/book_bleu``)."""
        self.log("val/bleu", self.val_bleu.compute() * 100, prog_bar=True)
        self.val_bleu.reset()
        self._val_decoded = 0
        hyps = self.translate([s for s, _ in BOOK_PAIRS])
        self.book_samples = [(s, r, h, bleu(h, r, k=2)) for (s, r), h in zip(BOOK_PAIRS, hyps)]
        self.log("val/book_bleu", sum(b[3] for b in self.book_samples) / len(BOOK_PAIRS))

    def test_step(self, batch, batch_idx: int) -> None:
        """Loss, accuracy, greedy BLEU (and beam BLEU with ``beam_size > 1``) on every pair."""
        self._eval_step(batch, "test")
        src, _, src_valid_len, tgt_out = batch
        hyps = greedy_decode(self.model, src, src_valid_len, self.bos, self.eos, self.max_len)
        rows = self._texts(src, tgt_out, hyps)
        self.test_bleu.update([r[2] for r in rows], [[r[1]] for r in rows])
        if self.hparams.beam_size > 1:
            hyps = search(self.model, src, src_valid_len, self.bos, self.eos, self.max_len,
                          self.hparams.beam_size, self.hparams.length_penalty)
            rows = self._texts(src, tgt_out, hyps)
            self.test_bleu_beam.update([r[2] for r in rows], [[r[1]] for r in rows])

    def on_test_epoch_end(self) -> None:
        """Corpus BLEU of the whole test split."""
        self.log("test/bleu", self.test_bleu.compute() * 100)
        self.test_bleu.reset()
        if self.hparams.beam_size > 1:
            self.log("test/bleu_beam", self.test_bleu_beam.compute() * 100)
            self.test_bleu_beam.reset()

    def translate(self, sentences: list[str], beam_size: int = 1,
                  return_attention: bool = False):
        """English sentences -> French (:func:`datamodules.fra_eng_text.translate`)."""
        hp = self.hparams
        return translate(self.model, sentences, self.src_vocab, self.tgt_vocab, hp.num_steps,
                         self.max_len, beam_size, hp.length_penalty, return_attention)

    def configure_callbacks(self) -> list[Callback]:
        """The translation table and attention heatmaps."""
        from d2l_lightning.callbacks.translation import TranslationTable

        return [TranslationTable()]

    def export_config(self) -> dict[str, Any]:
        """Both vocabularies, special tokens, lengths and preprocessing, for ``predict.py``."""
        hp = self.hparams
        cfg = super().export_config()
        cfg.update(src_vocab=list(hp.src_vocab), tgt_vocab=list(hp.tgt_vocab),
                   num_steps=hp.num_steps, max_decode_len=self.max_len,
                   special_tokens={"unk": UNK, "pad": PAD, "bos": BOS, "eos": EOS},
                   preprocess=PREPROCESS, beam_size=hp.beam_size,
                   length_penalty=hp.length_penalty)
        return cfg
