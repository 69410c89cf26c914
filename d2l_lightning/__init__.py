"""The installed form of this repository: one top-level name, ``d2l_lightning``.

A checkout keeps the layout of the design card (``models/``, ``lit_models/``, ``datamodules/``,
``callbacks/``, ``training/``, ``train.py`` at the top). ``pip install .`` ships those same files
under ``d2l_lightning/_src/`` (``pyproject.toml`` maps them there), so the distribution adds no
top-level ``models`` or ``callbacks`` that would shadow a user's own ``models.py``, or be
shadowed by it. The console scripts (:mod:`d2l_lightning.cli`) put ``_src`` first on their own
process's ``sys.path`` before importing the code, whose imports stay as written
(``from models import ...``).
"""

from __future__ import annotations

import sys
from pathlib import Path

#: where the code lives: ``_src`` in an installed wheel, the repository root in a checkout
SOURCE = Path(__file__).resolve().parent / "_src"
if not SOURCE.is_dir():
    SOURCE = Path(__file__).resolve().parent.parent


def activate() -> Path:
    """Make ``models``, ``train``, ... importable in this process, ahead of any same name.

    The console scripts call it; a notebook that wants ``from models import load_exported``
    from an installed copy calls it too (and then its own ``models.py`` is no longer found by
    that name, in that process).
    """
    path = str(SOURCE)
    if path in sys.path:
        sys.path.remove(path)
    sys.path.insert(0, path)
    return SOURCE
