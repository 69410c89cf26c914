"""Runs: the public API (:func:`fit`, :func:`validate`, :func:`test`) and what it is built on.

- :mod:`.run`: ``fit(config) -> results`` and the builders it shares with :mod:`.evaluate`
  (``validate``/``test`` of a run again): data, task module, Trainer.
- :mod:`.schema`: the fixed config sections (``optim``, ``trainer``, ``run``), each setting
  declared once; :mod:`.trainer_args`: ``lightning.Trainer``'s arguments as a table.
- :mod:`.config`: config files and the command line as layers of one six-section config,
  resolved against the model's recipe and checked (:mod:`.checks`, :mod:`.objects` for the
  loggers, callbacks and plugins a config names); :mod:`.flags` and :mod:`.command_line`:
  the command line.
- :mod:`.runs`: run folders and resume; :mod:`.sweep`: grid and random searches;
  :mod:`.cluster`: several processes and machines; :mod:`.faults`: hardware and disk faults;
  :mod:`.hparams`: what the loggers get; :mod:`.listing`: ``--list``; :mod:`.console`:
  Lightning's console output; :mod:`.plot`: learning curves.

Importing this package imports neither torch nor Lightning (``train.py --help`` uses it); the
API functions import them when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .evaluate import test, validate
    from .run import fit, load_config

__all__ = ["fit", "load_config", "test", "validate"]


def __getattr__(name: str) -> Any:
    if name in ("fit", "load_config"):
        from . import run

        return getattr(run, name)
    if name in ("test", "validate"):
        from . import evaluate

        return getattr(evaluate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
