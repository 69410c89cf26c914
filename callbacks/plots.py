"""Figures in the run folder: ``curves.png`` after fit, ``confusion_matrix.png`` after test.

Drawn by :mod:`training.plot` from ``metrics.csv`` (matplotlib imported lazily). A figure that
cannot be drawn warns once and never fails the run.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn


class RunPlots(Callback):
    """Write ``RUN/curves.png`` when fit ends and ``RUN/confusion_matrix.png`` when test ends.

    Args:
        run_dir: the run folder (its ``metrics.csv`` is read).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.written: list[Path] = []

    def _warn(self, what: str, e: Exception) -> None:
        rank_zero_warn(f"could not draw {what} ({type(e).__name__}: {e}); training is not "
                       "affected")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """``curves.png``: loss, the monitored metric, the learning rate."""
        if not trainer.is_global_zero or trainer.fast_dev_run:  # no metrics.csv to draw
            return
        from training.plot import plot_run

        for logger in trainer.loggers:  # rows still buffered by a logger
            logger.save()
        try:
            plot_run(self.run_dir, self.run_dir / "curves.png",
                     monitor=getattr(pl_module, "monitor", (None,))[0])
        except Exception as e:  # a figure is never worth a failed run
            self._warn("curves.png", e)
            return
        self.written.append(self.run_dir / "curves.png")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """``confusion_matrix.png`` of a classifier's test split."""
        cm = getattr(pl_module, "confusion_matrix", None)
        if not trainer.is_global_zero or cm is None or trainer.fast_dev_run:
            return
        from training.plot import plot_confusion_matrix

        names = list(pl_module.hparams.get("class_names") or range(len(cm)))
        try:
            plot_confusion_matrix(cm.tolist(), names, self.run_dir / "confusion_matrix.png")
        except Exception as e:
            self._warn("confusion_matrix.png", e)
            return
        self.written.append(self.run_dir / "confusion_matrix.png")
