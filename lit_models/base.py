"""Shared LightningModule machinery: model from the registry, optimizers, schedulers, export."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from models import build_model

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "step", "cosine", "onecycle", "plateau")


def build_optimizer(params: Any, name: str, lr: float, weight_decay: float = 0.0,
                    momentum: float = 0.0) -> torch.optim.Optimizer:
    """``sgd`` (with optional momentum), ``adam`` or ``adamw``."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer '{name}'; choose from: {', '.join(OPTIMIZERS)}")


class TaskModule(L.LightningModule):
    """Base of the task-family LightningModules.

    Subclasses build ``self.model`` (a pure ``models/`` module) through :meth:`_build` and
    implement the steps. Constructor arguments are primitives, saved as hyper-parameters, so a
    checkpoint alone rebuilds the run.

    Attributes:
        monitor: ``(metric, mode)`` that selects the best checkpoint.
        task: task-family name as in the registry.
    """

    monitor: tuple[str, str] = ("val/loss", "min")
    task: str = ""

    def _build(self, arch: str, builder_kwargs: dict[str, Any]) -> None:
        self.builder_kwargs = dict(builder_kwargs)
        self.model: nn.Module = build_model(arch, **self.builder_kwargs)

    def forward(self, *args: Any) -> torch.Tensor:
        """The pure model's forward: logits, never a loss."""
        return self.model(*args)

    def configure_model(self) -> None:
        """Compile the inner module in place (``--compile``); state-dict keys stay unchanged."""
        if self.hparams.get("compile") and not getattr(self, "_compiled", False):
            self.model.compile()
            self._compiled = True

    def configure_optimizers(self) -> Any:
        """Optimizer and LR scheduler from the hyper-parameters."""
        hp = self.hparams
        opt = build_optimizer(self.parameters(), hp.optimizer, hp.lr, hp.weight_decay,
                              hp.momentum)
        name = hp.scheduler
        if name == "none":
            return opt
        if name == "step":
            epochs = max(self.trainer.max_epochs or 1, 1)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(epochs // 3, 1), gamma=0.1)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        if name == "plateau":
            metric, mode = self.monitor
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=0.1,
                                                               patience=2)
            return {"optimizer": opt,
                    "lr_scheduler": {"scheduler": sched, "monitor": metric, "interval": "epoch"}}
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        if name == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        elif name == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp.lr, total_steps=total)
        else:
            raise ValueError(f"unknown scheduler '{name}'; choose from: {', '.join(SCHEDULERS)}")
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def export_config(self) -> dict[str, Any]:
        """What ``config.json`` of an export holds; subclasses add preprocessing and labels."""
        return {"arch": self.hparams.arch, "task": self.task,
                "model_kwargs": dict(self.builder_kwargs)}
