"""LightningDataModules and the Lightning-free data code they share.

Importing this package does not import Lightning: DataModule classes load on first use, so
``predict.py`` can use :mod:`datamodules.idx`, :mod:`datamodules.text` and
:mod:`datamodules.corpora` with torch alone.
"""

from __future__ import annotations

import importlib
from typing import Any

from .download import DataError, resolve_data_dir

# CLI name -> {task family: (module, class)}. One name may serve several task families (e.g.
# ``wikitext2``: language modelling and BERT pretraining); the model's task picks the class.
_DATAMODULES: dict[str, dict[str, tuple[str, str]]] = {
    "mnist": {"image_classification": ("datamodules.vision", "MNISTDataModule")},
    "fashion_mnist": {"image_classification": ("datamodules.vision", "FashionMNISTDataModule")},
    "synthetic_regression": {
        "regression": ("datamodules.synthetic", "SyntheticRegressionDataModule")},
    "time_machine": {
        "language_modeling": ("datamodules.timemachine", "TimeMachineDataModule")},
    "wikitext2": {"language_modeling": ("datamodules.wikitext", "WikiText2DataModule"),
                  "masked_lm": ("datamodules.bert", "BERTPretrainDataModule")},
    "wikitext103": {"language_modeling": ("datamodules.wikitext", "WikiText103DataModule")},
    "fra_eng": {"seq2seq": ("datamodules.fra_eng", "EngFraDataModule")},
}


def data_names(task: str | None = None) -> list[str]:
    """Registered dataset names, optionally of one task family."""
    return [n for n, tasks in _DATAMODULES.items() if task is None or task in tasks]


def data_tasks(name: str) -> list[str]:
    """Task families a dataset serves; unknown names raise ``KeyError`` listing the valid ones."""
    if name not in _DATAMODULES:
        raise KeyError(f"unknown data '{name}'; choose from: " + ", ".join(_DATAMODULES))
    return list(_DATAMODULES[name])


def data_task(name: str) -> str:
    """The (first) task family a dataset serves."""
    return data_tasks(name)[0]


def datamodule_class(name: str, task: str | None = None) -> type:
    """The DataModule class of ``name`` for ``task`` (default: its first task; imports it)."""
    tasks = data_tasks(name)
    task = task or tasks[0]
    if task not in tasks:
        raise KeyError(f"data '{name}' serves {', '.join(tasks)}, not {task}")
    module, cls = _DATAMODULES[name][task]
    return getattr(importlib.import_module(module), cls)


def build_datamodule(name: str, task: str | None = None, **kwargs: Any):
    """Instantiate the DataModule registered as ``name`` (for ``task``; imports Lightning)."""
    return datamodule_class(name, task)(**kwargs)


__all__ = ["DataError", "build_datamodule", "data_names", "data_task", "data_tasks",
           "datamodule_class", "resolve_data_dir"]
