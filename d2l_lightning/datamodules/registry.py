"""Dataset names -> DataModule classes, by task family (imports Lightning).

One name may serve several task families (``wikitext2``: language modelling and BERT
pretraining); the model's task picks the class. ``datamodules/__init__.py`` stays Lightning-free
so that ``predict.py`` can use the data code without it; this module is the package's top floor.
"""

from __future__ import annotations

from typing import Any

from .bert import BERTPretrainDataModule
from .fra_eng import EngFraDataModule
from .image_folder import ImageFolderDataModule
from .synthetic import SyntheticRegressionDataModule
from .time_machine import TimeMachineDataModule
from .vision import FashionMNISTDataModule, MNISTDataModule
from .wikitext import WikiText2DataModule, WikiText103DataModule

DATAMODULES: dict[str, dict[str, type]] = {
    "mnist": {"image_classification": MNISTDataModule},
    "fashion_mnist": {"image_classification": FashionMNISTDataModule},
    "image_folder": {"image_classification": ImageFolderDataModule},
    "synthetic_regression": {"regression": SyntheticRegressionDataModule},
    "time_machine": {"language_modeling": TimeMachineDataModule},
    "wikitext2": {"language_modeling": WikiText2DataModule, "masked_lm": BERTPretrainDataModule},
    "wikitext103": {"language_modeling": WikiText103DataModule},
    "fra_eng": {"seq2seq": EngFraDataModule},
}


def data_names(task: str | None = None) -> list[str]:
    """Registered dataset names, optionally of one task family."""
    return [n for n, tasks in DATAMODULES.items() if task is None or task in tasks]


def data_tasks(name: str) -> list[str]:
    """Task families a dataset serves; unknown names raise ``KeyError`` listing the valid ones."""
    if name not in DATAMODULES:
        raise KeyError(f"unknown data '{name}'; choose from: " + ", ".join(DATAMODULES))
    return list(DATAMODULES[name])


def datamodule_class(name: str, task: str | None = None) -> type:
    """The DataModule class of ``name`` for ``task`` (default: its first task)."""
    tasks = data_tasks(name)
    task = task or tasks[0]
    if task not in tasks:
        raise KeyError(f"data '{name}' serves {', '.join(tasks)}, not {task}")
    return DATAMODULES[name][task]


def build_datamodule(name: str, task: str | None = None, **kwargs: Any):
    """Instantiate the DataModule registered as ``name`` (for ``task``)."""
    return datamodule_class(name, task)(**kwargs)
