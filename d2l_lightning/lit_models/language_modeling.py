"""Language modelling task family (d2l ch. 9-11): next-token cross-entropy and perplexity."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from d2l_lightning.datamodules.text import Vocab, encode_prompt, join_tokens
from d2l_lightning.models.decoding import map_tensors

from .base import TaskModule


def detach_state(state: Any) -> Any:
    """Detach every tensor of a hidden state."""
    return map_tensors(state, torch.Tensor.detach)


class LanguageModelingTask(TaskModule):
    """Next-token cross-entropy; perplexity = exp(total NLL / total target tokens) per split.

    Batches are ``(X, Y)``, ``(B, T)`` token ids with ``Y`` the next tokens; the model returns
    ``(logits (B, T, V), state)``. With sequential partitioning (``carry_state``) a recurrent
    model's state is carried to the next batch, detached (truncated BPTT, d2l §9.7); it starts
    from zero at every training epoch and every evaluation loop, and whenever the batch size
    changes. Perplexity is never a mean of per-batch perplexities: the loss sums and token
    counts are accumulated over the epoch (and synced across ranks) first.

    Args:
        arch: registry name of the model.
        vocab: the vocabulary (``Vocab.to_json()``); saved in checkpoints, not sent to loggers.
        model_kwargs: constructor arguments of the model (``vocab_size`` is added).
        carry_state: the data is sequentially partitioned (carried only if the model is
            ``recurrent``).
        token_level: ``char`` or ``word``: how prompts are tokenized and samples joined.
        text_preprocess: preprocessing of prompts, as the training text
            (``datamodules.text.TEXT_PREPROCESSORS``).
        sample_prefix: prompt of the sample-generation callback.
        sample_tokens: tokens generated per sample each validation epoch (0: no callback).
        **optim: optimisation arguments of :class:`TaskModule`.
    """

    monitor = ("val/ppl", "min")
    task = "language_modeling"
    data_args = ("vocab", "carry_state", "token_level", "text_preprocess", "sample_prefix")
    model_data_args = ("vocab_size",)

    def __init__(
        self,
        arch: str = "lstm",
        vocab: list[str] | None = None,
        model_kwargs: dict[str, Any] | None = None,
        carry_state: bool = False,
        token_level: str = "char",
        text_preprocess: str = "none",
        sample_prefix: str = "time traveller ",
        sample_tokens: int = 40,
        **optim: Any,
    ) -> None:
        super().__init__(**optim)
        if not vocab:
            raise ValueError("LanguageModelingTask needs the vocabulary: "
                             "DataModule.data_info()['vocab']")
        self.save_hyperparameters()
        self.vocab = Vocab.from_tokens(vocab)
        self._build(arch, {"vocab_size": len(vocab)}, model_kwargs)
        self.carries_state = bool(carry_state and self.model.recurrent)
        self._init_train_sums(2)  # NLL sum, target tokens
        # token-weighted mean NLL per evaluation split (synced across ranks by torchmetrics)
        self.val_nll = MeanMetric()
        self.test_nll = MeanMetric()
        self._states: dict[str, Any] = {}

    # --- prompts (shared with the sample callback; predict.py does the same from the export)
    def encode_prompt(self, text: str) -> torch.Tensor:
        """Prompt -> ``(T,)`` token ids, preprocessed and tokenized like the training text."""
        hp = self.hparams
        return encode_prompt(text, self.vocab, hp.token_level, hp.text_preprocess)

    def ids_to_text(self, ids: torch.Tensor) -> str:
        """Token ids -> text (characters joined, or words spaced)."""
        return join_tokens(self.vocab.to_tokens(ids.flatten()), self.hparams.token_level)

    # --- steps
    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        """Mean next-token NLL of the batch; carries the state of ``split`` when it should."""
        x, y = batch
        state = None
        if self.carries_state:
            rows, state = self._states.get(split, (None, None))
            if rows != x.shape[0]:  # first batch, or the batch size changed
                state = None
        logits, new_state = self.model(x, state)  # (B, T, V)
        if self.carries_state:
            self._states[split] = (x.shape[0], detach_state(new_state))
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def on_train_epoch_start(self) -> None:
        """Reset the training sums and the carried state."""
        super().on_train_epoch_start()
        self._states.pop("train", None)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Also keep the carried training state, so a mid-epoch resume continues it."""
        super().on_save_checkpoint(checkpoint)
        if "train" in self._states:
            rows, state = self._states["train"]
            checkpoint["carried_state"] = {"rows": rows, "state": state}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the carried training state of a mid-epoch checkpoint."""
        super().on_load_checkpoint(checkpoint)
        carried = checkpoint.get("carried_state")
        if carried is not None:
            self._resume_state = (carried["rows"], carried["state"])

    def on_train_start(self) -> None:
        """As :class:`TaskModule`, plus the carried state (moved to this module's device)."""
        super().on_train_start()
        resumed = self.__dict__.pop("_resume_state", None)
        if resumed is not None:
            rows, state = resumed
            self._states["train"] = (rows, map_tensors(state, lambda t: t.to(self.device)))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        """Cross-entropy over every target token (``train/loss`` every few steps)."""
        loss = self._loss(batch, "train")
        self._accumulate_train(loss, n=batch[1].numel())
        return loss

    def on_train_epoch_end(self) -> None:
        """Exact epoch NLL over all ranks: ``train/loss_epoch`` and ``train/ppl``."""
        loss_sum, count = self._reduced_train_sums().tolist()
        if count:
            nll = loss_sum / count
            self.log("train/loss_epoch", nll, on_epoch=True, sync_dist=True)
            self.log("train/ppl", math.exp(min(nll, 700.0)), on_epoch=True, sync_dist=True)

    def on_validation_epoch_start(self) -> None:
        """Evaluation starts from a fresh state."""
        self._states.pop("val", None)

    def on_test_epoch_start(self) -> None:
        """Evaluation starts from a fresh state."""
        self._states.pop("test", None)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Accumulate the token-weighted NLL of the validation split."""
        self.val_nll.update(self._loss(batch, "val"), batch[1].numel())

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Accumulate the token-weighted NLL of the test split."""
        self.test_nll.update(self._loss(batch, "test"), batch[1].numel())

    def _log_eval(self, split: str, metric: MeanMetric) -> None:
        if not metric.update_called:
            return
        nll = metric.compute()  # synced across ranks: total NLL / total tokens
        metric.reset()
        # already equal on every rank; sync_dist (a mean of equal values) silences Lightning
        self.log(f"{split}/loss", nll, prog_bar=split == "val", sync_dist=True)
        self.log(f"{split}/ppl", nll.exp(), prog_bar=split == "val", sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        """``val/loss`` and ``val/ppl`` of the whole split."""
        self._log_eval("val", self.val_nll)

    def on_test_epoch_end(self) -> None:
        """``test/loss`` and ``test/ppl`` of the whole split."""
        self._log_eval("test", self.test_nll)

    def configure_callbacks(self) -> list[Any]:
        """Sample generation from ``sample_prefix`` each validation epoch."""
        from d2l_lightning.callbacks.generation import SampleGeneration

        trainer = self._trainer
        if not self.hparams.sample_tokens or (trainer is not None and any(
                isinstance(c, SampleGeneration) for c in trainer.callbacks)):
            return []  # off, or attached by an earlier fit / test call

        return [SampleGeneration(self.hparams.sample_prefix, self.hparams.sample_tokens)]

    def export_config(self) -> dict[str, Any]:
        """Adds the vocabulary and how to encode prompts (for ``predict.py generate``)."""
        hp = self.hparams
        cfg = super().export_config()
        cfg["vocab"] = self.vocab.to_json()
        cfg["text"] = {"level": hp.token_level, "preprocess": hp.text_preprocess,
                       "prefix": hp.sample_prefix}
        return cfg
