"""One LightningModule per task family, built from ``arch: str`` and primitive kwargs."""

from __future__ import annotations

from pathlib import Path

import torch

from d2l_lightning.compat import upgrade_hparams, upgrade_state_dict
from d2l_lightning.models import get_spec

from .base import TaskModule
from .image_classification import ImageClassificationTask
from .language_modeling import LanguageModelingTask
from .masked_lm import MaskedLMTask
from .regression import RegressionTask
from .translation import TranslationTask

TASK_MODULES: dict[str, type[TaskModule]] = {
    "image_classification": ImageClassificationTask,
    "language_modeling": LanguageModelingTask,
    "regression": RegressionTask,
    "seq2seq": TranslationTask,
    "masked_lm": MaskedLMTask,
}


def task_module(task: str) -> type[TaskModule]:
    """The LightningModule class of a task family."""
    if task not in TASK_MODULES:
        raise KeyError(f"no LightningModule for task '{task}'; known: {', '.join(TASK_MODULES)}")
    return TASK_MODULES[task]


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> TaskModule:
    """Rebuild the LightningModule of any checkpoint of ours (weights-only loading, read once)."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    hparams = upgrade_hparams(ckpt["hyper_parameters"])  # checkpoints of earlier versions
    module = task_module(get_spec(hparams["arch"]).task)(**hparams)
    module.load_state_dict(upgrade_state_dict(ckpt["state_dict"]))
    return module


__all__ = ["TASK_MODULES", "ImageClassificationTask",
           "LanguageModelingTask", "MaskedLMTask", "RegressionTask", "TaskModule",
           "TranslationTask", "load_checkpoint", "task_module"]
