"""A run's end for TensorBoard and W&B: final metrics, figures, text samples, the model.

:func:`publish_run` is called once by ``training.fit`` on rank 0 after fit and test, when the run
folder holds its figures (``curves.png``, ``confusion_matrix.png``, ``predictions.png``,
``attention/*.png``), ``samples.txt`` (language models) and ``export/``:

- TensorBoard: the run's config as hparams with the final ``val/*`` and ``test/*`` metrics,
  each figure as an image, the samples as text;
- W&B: the run summary holds the final metrics, the confusion matrix as W&B's own chart, the
  figures as images (the attention heatmaps are logged by ``TranslationTable``), and
  ``export/`` as a ``model`` artifact (uploaded by ``wandb sync`` when the run is offline).

Writing media must not fail a run: a failure warns once per logger and the run goes on (its
files in the run folder are complete either way).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn

FIGURES = ("curves.png", "confusion_matrix.png", "predictions.png")


def figures(run_dir: Path) -> list[Path]:
    """The run's figures: the fixed ones that exist, then ``attention/*.png``."""
    return [p for p in (run_dir / n for n in FIGURES) if p.is_file()] + sorted(
        run_dir.glob("attention/*.png"))


def _pixels(path: Path):
    """A PNG as an ``(H, W, 3)`` uint8 array."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _tensorboard(logger: Any, run_dir: Path, metrics: dict[str, float], step: int,
                 params: dict[str, Any]) -> None:
    # at the last step, where the final values are already logged: no point at step 0
    logger.log_hyperparams(params, metrics, step=step)
    exp = logger.experiment
    for path in figures(run_dir):
        tag = str(path.relative_to(run_dir).with_suffix(""))
        exp.add_image(tag, _pixels(path), global_step=step, dataformats="HWC")
    samples = run_dir / "samples.txt"
    if samples.is_file():  # markdown: indented lines stay verbatim
        text = "\n".join("    " + line for line in samples.read_text().splitlines()[-50:])
        exp.add_text("samples", text, global_step=step)
    exp.flush()


def _wandb(logger: Any, module: Any, run_dir: Path, metrics: dict[str, float]) -> None:
    import wandb

    run = logger.experiment
    run.summary.update(metrics)
    cm = module.test_confusion_matrix()
    media: dict[str, Any] = {}
    if cm is not None:
        names = [str(n) for n in (module.hparams.get("class_names") or range(len(cm)))]
        y_true, y_pred = [], []
        for i, row in enumerate(cm.tolist()):
            for j, count in enumerate(row):
                y_true += [i] * int(count)
                y_pred += [j] * int(count)
        media["test/confusion_matrix_chart"] = wandb.plot.confusion_matrix(
            y_true=y_true, preds=y_pred, class_names=names, title="test confusion matrix")
    for path in figures(run_dir):  # attention heatmaps: logged by TranslationTable already
        if path.parent == run_dir:
            media[f"figures/{path.stem}"] = wandb.Image(str(path))
    if media:
        run.log(media)
    export = run_dir / "export"
    if (export / "config.json").is_file():
        art = wandb.Artifact(f"model-{run.id}", type="model",
                             metadata={"arch": module.hparams.get("arch"), **metrics})
        art.add_dir(str(export))
        run.log_artifact(art)


def publish_run(trainer: Any, module: Any, run_dir: str | Path, metrics: dict[str, float],
                params: dict[str, Any]) -> None:
    """Send the final metrics and media to the TensorBoard and W&B loggers (rank 0 only).

    TensorBoard's HParams get ``params`` (the run's flattened config) with the final metrics.
    """
    if not trainer.is_global_zero or trainer.fast_dev_run:
        return
    run_dir = Path(run_dir)
    for logger in trainer.loggers:
        kind = type(logger).__name__
        try:
            if kind == "TensorBoardLogger":
                _tensorboard(logger, run_dir, metrics, trainer.global_step, params)
            elif kind == "WandbLogger":
                _wandb(logger, module, run_dir, metrics)
        except Exception as e:  # media are never worth a failed run
            rank_zero_warn(f"{kind}: could not write the final metrics and media "
                           f"({type(e).__name__}: {e}); the run folder is complete")
