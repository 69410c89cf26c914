"""LightningDataModules and the Lightning-free data code they share.

Importing this package does not import Lightning: DataModule classes load on first use, so
``predict.py`` can use :mod:`datamodules.idx` and :mod:`datamodules.download` with torch alone.
"""

from __future__ import annotations

import importlib
from typing import Any

from .download import DataError, resolve_data_dir

# CLI name -> (module, class, task family)
_DATAMODULES: dict[str, tuple[str, str, str]] = {
    "mnist": ("datamodules.vision", "MNISTDataModule", "image_classification"),
    "fashion_mnist": ("datamodules.vision", "FashionMNISTDataModule", "image_classification"),
    "synthetic_regression": (
        "datamodules.synthetic", "SyntheticRegressionDataModule", "regression"),
}


def data_names(task: str | None = None) -> list[str]:
    """Registered dataset names, optionally of one task family."""
    return [n for n, (_, _, t) in _DATAMODULES.items() if task is None or t == task]


def data_task(name: str) -> str:
    """Task family a dataset serves; unknown names raise ``KeyError`` listing the valid ones."""
    if name not in _DATAMODULES:
        raise KeyError(f"unknown data '{name}'; choose from: " + ", ".join(_DATAMODULES))
    return _DATAMODULES[name][2]


def build_datamodule(name: str, **kwargs: Any):
    """Instantiate the DataModule registered as ``name`` (imports Lightning)."""
    data_task(name)
    module, cls, _ = _DATAMODULES[name]
    return getattr(importlib.import_module(module), cls)(**kwargs)


__all__ = ["DataError", "build_datamodule", "data_names", "data_task", "resolve_data_dir"]
