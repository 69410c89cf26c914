"""Figures in the run folder: ``curves.png`` after fit, a classifier's test figures after test.

The test figures are ``confusion_matrix.png`` and ``predictions.png`` (the first 16 test
images with their predicted labels).

Drawn by :mod:`training.plot` from ``metrics.csv`` (matplotlib imported lazily). A figure that
cannot be drawn warns once and never fails the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
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
        self._first_batch: tuple | None = None

    def _warn(self, what: str, e: Exception) -> None:
        rank_zero_warn(f"could not draw {what} ({type(e).__name__}: {e}); training is not "
                       "affected")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """``curves.png``: loss, the monitored metric, the learning rate."""
        if not trainer.is_global_zero or trainer.fast_dev_run:  # no metrics.csv to draw
            return
        from d2l_lightning.training.plot import plot_run

        for logger in trainer.loggers:  # rows still buffered by a logger
            logger.save()
        try:
            plot_run(self.run_dir, self.run_dir / "curves.png",
                     monitor=getattr(pl_module, "monitor", (None,))[0])
        except Exception as e:  # a figure is never worth a failed run
            self._warn("curves.png", e)
            return
        self.written.append(self.run_dir / "curves.png")

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                          outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        """Keep a classifier's first 16 test images with their predictions."""
        if batch_idx or not trainer.is_global_zero or not isinstance(outputs, dict) or (
                getattr(pl_module, "task", "") != "image_classification"):
            return
        hp = pl_module.hparams
        x, y = batch[0][:16].float(), batch[-1][:16]
        mean = torch.as_tensor(hp.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.as_tensor(hp.std, device=x.device).view(1, -1, 1, 1)
        pixels = (x * std + mean).clamp(0, 1).cpu().numpy()  # undo the normalisation
        probs = outputs["logits"][:16].float().softmax(-1).cpu()
        self._first_batch = (pixels, y.tolist(), probs.argmax(-1).tolist(),
                             probs.max(-1).values.tolist())

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A classifier's ``confusion_matrix.png`` and ``predictions.png``."""
        cm = pl_module.test_confusion_matrix()
        if not trainer.is_global_zero or cm is None or trainer.fast_dev_run:
            return
        from d2l_lightning.training.plot import plot_confusion_matrix, plot_predictions

        names = [str(n) for n in (pl_module.hparams.get("class_names") or range(len(cm)))]
        try:
            plot_confusion_matrix(cm.tolist(), names, self.run_dir / "confusion_matrix.png")
            self.written.append(self.run_dir / "confusion_matrix.png")
            if self._first_batch is not None:
                pixels, y, pred, conf = self._first_batch
                plot_predictions(pixels, [names[i] for i in y], [names[i] for i in pred], conf,
                                 self.run_dir / "predictions.png")
                self.written.append(self.run_dir / "predictions.png")
        except Exception as e:
            self._warn("the test figures", e)
