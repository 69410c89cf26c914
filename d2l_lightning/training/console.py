"""Lightning's console messages: the ones that do not apply here, and where the rest go.

Used by ``train.py``: :func:`quiet_warnings` at start-up, :func:`info_to_stdout` once Lightning
is imported.
"""

from __future__ import annotations

import logging
import sys


def quiet_warnings() -> None:
    """Drop Lightning messages that do not apply here.

    Our loaders need no workers; a resumed run's checkpoints/ folder is expected to hold its
    checkpoints (new runs never reuse a folder with checkpoints, see ``prepare_run_dir``).
    """
    import warnings

    for msg in ("Checkpoint directory .* exists and is not empty.*",
                ".*overridden `on_after_batch_transfer`.*",
                ".*does not have many workers.*", ".*LeafSpec.*",
                ".*smaller than the logging interval.*"):
        warnings.filterwarnings("ignore", message=msg)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage())


def info_to_stdout() -> None:
    """Lightning's information lines to stdout, so stderr holds only problems.

    Called once Lightning is imported (it adds its stream handlers on import, to
    ``lightning.pytorch`` and ``lightning.fabric``, or to ``lightning`` when the root logger
    has none; ``--help`` and refusals never import it).
    """
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
                logger.addHandler(InfoToStdout())


class InfoToStdout(logging.StreamHandler):
    """Lightning's log lines: information to stdout, warnings and errors to stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record`` to the stream of its level (looked up now: tests swap them)."""
        self.stream = sys.stdout if record.levelno < logging.WARNING else sys.stderr
        super().emit(record)
