"""Runs: the public API (:func:`fit`, :func:`validate`, :func:`test`) and what it is built on.

- :mod:`.run`: ``fit(config) -> results``, ``validate``/``test`` of a run again, and the
  builders they share (data, task module, Trainer).
- :mod:`.schema`: the fixed config sections (``optim``, ``trainer``, ``run``), each setting
  declared once; :mod:`.trainer_args`: ``lightning.Trainer``'s arguments as a table.
- :mod:`.config`: config files and the command line as layers of one six-section config,
  resolved against the model's recipe and checked (:mod:`.checks`, :mod:`.objects` for the
  loggers, callbacks and plugins a config names); :mod:`.flags`: the command line.
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
    from .run import fit, load_config, test, validate

__all__ = ["fit", "load_config", "test", "validate"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
