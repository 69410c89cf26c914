"""Masked-language-model task family: BERT pretraining (d2l §15.8-15.10)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from d2l_lightning.datamodules.bert_text import SPECIAL_TOKENS
from d2l_lightning.models.bert import bert_losses

from .base import TaskModule


class MaskedLMTask(TaskModule):
    """BERT pretraining: masked-LM + next-sentence losses (sum), accuracies and MLM perplexity.

    Batches: ``(tokens, segments, valid_lens, pred_positions, mlm_weights, mlm_labels,
    nsp_labels)`` (see :mod:`datamodules.bert`).

    Args:
        arch: registry name (``bert_tiny``, ``bert_small``).
        vocab: the vocabulary's index -> token list (saved in checkpoints, not logged).
        max_len: longest input the position embedding covers (the DataModule's ``max_len``).
        model_kwargs: other constructor arguments of the model (sizes, dropout, activation).
        **optim: optimisation arguments of :class:`TaskModule`.
    """

    monitor = ("val/mlm_loss", "min")
    task = "masked_lm"
    data_args = ("vocab", "max_len")
    model_data_args = ("vocab_size", "max_len")

    def __init__(self, arch: str = "bert_tiny", vocab: Sequence[str] = (), max_len: int = 64,
                 model_kwargs: dict[str, Any] | None = None, **optim: Any) -> None:
        super().__init__(**optim)
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ValueError(f"the vocabulary lacks the special tokens {missing}")
        self.save_hyperparameters()
        self._build(arch, {"vocab_size": len(vocab), "max_len": max_len}, model_kwargs)
        # loss*n, n, mlm nll sum, mlm slots, mlm correct, nsp nll sum, nsp correct
        self._init_train_sums(7)
        for split in ("val", "test"):
            setattr(self, f"{split}_metrics", nn.ModuleDict({
                "mlm_loss": MeanMetric(), "nsp_loss": MeanMetric(),
                "mlm_acc": MulticlassAccuracy(len(vocab), average="micro"),
                "nsp_acc": MulticlassAccuracy(2, average="micro")}))

    def _shared(self, batch: tuple[torch.Tensor, ...]):
        tokens, segments, valid_lens, pred_positions, weights, mlm_y, nsp_y = batch
        _, mlm_logits, nsp_logits = self.model(tokens, segments, valid_lens, pred_positions)
        mlm_loss, nsp_loss, n_real = bert_losses(mlm_logits, nsp_logits, weights, mlm_y, nsp_y)
        return mlm_logits, nsp_logits, mlm_loss, nsp_loss, n_real

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        """Loss = MLM loss + NSP loss (``train/loss`` every ``log_every_n_steps``)."""
        mlm_logits, nsp_logits, mlm_loss, nsp_loss, n_real = self._shared(batch)
        loss = mlm_loss + nsp_loss
        weights, mlm_y, nsp_y = batch[4], batch[5], batch[6]
        n = len(nsp_y)
        mlm_correct = ((mlm_logits.argmax(-1) == mlm_y) * (weights > 0)).sum()
        self._accumulate_train(loss, mlm_loss.detach() * n_real, n_real, mlm_correct,
                               nsp_loss.detach() * n, (nsp_logits.argmax(-1) == nsp_y).sum(), n=n)
        return loss

    def on_train_epoch_end(self) -> None:
        """Epoch means over all ranks (MLM ones weighted by prediction slots)."""
        loss_sum, count, mlm_sum, slots, mlm_correct, nsp_sum, nsp_correct = (
            self._reduced_train_sums().tolist())
        if count:
            self.log("train/loss_epoch", loss_sum / count, on_epoch=True)
            self.log("train/nsp_loss", nsp_sum / count, on_epoch=True)
            self.log("train/nsp_acc", nsp_correct / count, on_epoch=True)
        if slots:
            self.log("train/mlm_loss", mlm_sum / slots, on_epoch=True)
            self.log("train/mlm_acc", mlm_correct / slots, on_epoch=True)
            self.log("train/mlm_ppl", math.exp(min(mlm_sum / slots, 50.0)), on_epoch=True)

    def _eval_step(self, batch: tuple[torch.Tensor, ...], split: str) -> None:
        mlm_logits, nsp_logits, mlm_loss, nsp_loss, n_real = self._shared(batch)
        weights, mlm_y, nsp_y = batch[4], batch[5], batch[6]
        m = getattr(self, f"{split}_metrics")
        real = weights > 0
        m["mlm_loss"].update(mlm_loss, n_real)  # token-weighted over the epoch
        m["nsp_loss"].update(nsp_loss, len(nsp_y))
        m["mlm_acc"].update(mlm_logits[real], mlm_y[real])
        m["nsp_acc"].update(nsp_logits, nsp_y)

    def _log_eval(self, split: str) -> None:
        m = getattr(self, f"{split}_metrics")
        values = {k: metric.compute() for k, metric in m.items()}
        values["mlm_ppl"] = torch.exp(values["mlm_loss"].clamp(max=50.0))
        values["loss"] = values["mlm_loss"] + values["nsp_loss"]
        self.log_dict({f"{split}/{k}": v for k, v in values.items()}, prog_bar=split == "val")
        for metric in m.values():
            metric.reset()

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        """Accumulate validation losses and accuracies (synced across ranks at epoch end)."""
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        """``val/mlm_loss`` (token-weighted), ``val/mlm_ppl``, ``val/mlm_acc``, ``val/nsp_*``."""
        self._log_eval("val")

    def test_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        """As validation, on the test split."""
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        """Log the test metrics."""
        self._log_eval("test")

    def export_config(self) -> dict[str, Any]:
        """Adds the vocabulary, ``max_len`` and the special tokens."""
        cfg = super().export_config()
        cfg.update(vocab=list(self.hparams.vocab), max_len=self.hparams.max_len,
                   special_tokens=list(SPECIAL_TOKENS), lowercase=True)
        return cfg

    def extra_exports(self) -> dict[str, tuple[nn.Module, dict[str, Any]]]:
        """The encoder alone, for downstream use (``export/encoder/``, arch ``bert_encoder``)."""
        cfg = self.export_config()
        cfg.update(arch="bert_encoder", task="text_encoding", pretrained_arch=cfg["arch"])
        return {"encoder": (self.model.encoder, cfg)}
