"""Console scripts: ``d2l-train``, ``d2l-predict``, ``d2l-export``, ``d2l-plot``.

Each is the repository's CLI of the same name (``train.py``, ``predict.py``, ``export.py``,
``python -m training.plot``), run with the installed code first on ``sys.path`` (see
:func:`d2l_lightning.activate`).
"""

from __future__ import annotations

import importlib
import sys

from . import activate


def _run(module: str) -> None:
    activate()
    sys.exit(importlib.import_module(module).main())


def train() -> None:
    """``d2l-train``: ``python train.py``."""
    _run("train")


def predict() -> None:
    """``d2l-predict``: ``python predict.py``."""
    _run("predict")


def export() -> None:
    """``d2l-export``: ``python export.py``."""
    _run("export")


def plot() -> None:
    """``d2l-plot``: ``python -m training.plot``."""
    _run("training.plot")
