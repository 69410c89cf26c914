"""Sample text from a language model each validation epoch (d2l §9.5 ``predict``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from .wandb_logging import wandb_logger


class SampleGeneration(Callback):
    """Greedy and temperature / top-k continuations of a fixed prefix.

    After each validation epoch (not the sanity check) global rank 0 prints them through the
    logger, appends them to ``RUN_DIR/samples.txt`` (``trainer.default_root_dir``) and, when a
    ``WandbLogger`` is present, logs every row so far as the W&B table ``samples``. The task
    module provides ``encode_prompt(text)`` and ``ids_to_text(ids)``; decoding is
    :func:`models.generate.generate`, as in ``predict.py generate``.

    Args:
        prefix: the prompt, e.g. ``"time traveller "``.
        num_tokens: tokens generated per sample (a few dozen keep it cheap).
        temperature: temperature of the sampled continuation.
        top_k: sample among the ``top_k`` most likely tokens (0: all).
        seed: sampling seed (plus the epoch, so epochs differ but reruns repeat).
    """

    def __init__(self, prefix: str = "time traveller ", num_tokens: int = 40,
                 temperature: float = 0.8, top_k: int = 5, seed: int = 0) -> None:
        self.prefix, self.num_tokens = prefix, num_tokens
        self.temperature, self.top_k, self.seed = temperature, top_k, seed
        self.rows: list[list[Any]] = []

    def samples(self, pl_module: L.LightningModule, epoch: int) -> list[tuple[str, str]]:
        """``(mode, text)`` pairs: the greedy and the sampled continuation of the prefix."""
        from d2l_lightning.models.generate import generate

        prefix = pl_module.encode_prompt(self.prefix).to(pl_module.device)
        gen = torch.Generator(device=pl_module.device).manual_seed(self.seed + epoch)
        out = []
        for mode, temperature, top_k in (
                ("greedy", 0.0, 0),
                (f"T={self.temperature:g} top-k={self.top_k}", self.temperature, self.top_k)):
            ids = generate(pl_module.model, prefix, self.num_tokens, temperature=temperature,
                           top_k=top_k, generator=gen)
            out.append((mode, pl_module.ids_to_text(ids.cpu())))
        return out

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Generate, print, append to ``samples.txt`` and (W&B) log the table."""
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        epoch, step = trainer.current_epoch, trainer.global_step
        lines = []
        for mode, text in self.samples(pl_module, epoch):
            self.rows.append([epoch, step, mode, self.prefix, text])
            lines.append(f"epoch {epoch} step {step} {mode}: {self.prefix!r} -> {text!r}")
        for line in lines:
            rank_zero_info(line)
        root = Path(trainer.default_root_dir)
        root.mkdir(parents=True, exist_ok=True)
        with open(root / "samples.txt", "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        logger = wandb_logger(trainer)
        if logger is not None:
            logger.log_table("samples", columns=["epoch", "step", "mode", "prefix", "text"],
                             data=[list(r) for r in self.rows])
