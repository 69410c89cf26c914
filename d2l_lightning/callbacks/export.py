"""Export to plain PyTorch at the end of fit (``export.py`` does the same for any checkpoint).

The export folder holds ``model.safetensors`` (the pure ``models/`` module's weights, no
Lightning prefixes) and ``config.json``; :func:`models.load_exported` reads it with torch alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from d2l_lightning.models import save_export


def save_module_exports(module: L.LightningModule, out_dir: str | Path,
                        run_config: dict[str, Any] | None = None) -> Path:
    """Export ``module.model`` to ``out_dir``, plus its extra parts to sub-folders.

    A task module's ``extra_exports() -> {name: (nn.Module, config)}`` parts are saved to
    ``out_dir/name``. ``run_config`` (the run's resolved config) is kept in ``config.json`` as
    ``run_config``, so the export alone can be evaluated on the run's own data split.
    """
    extra = {} if run_config is None else {
        "run_config": json.loads(json.dumps(run_config, default=str))}
    out = save_export(module.model, {**module.export_config(), **extra}, out_dir)
    for name, (part, config) in module.extra_exports().items():
        save_export(part, config, out / name)
    return out


class ExportCallback(Callback):
    """Write ``out_dir`` (weights + config) from global rank 0 when fit ends.

    Task modules may export extra parts (e.g. BERT's encoder) through ``extra_exports()``.

    Args:
        out_dir: the export folder, usually ``RUN_DIR/export``.
        run_config: the run's resolved config, kept in ``config.json`` (see
            :func:`save_module_exports`).
    """

    def __init__(self, out_dir: str | Path, run_config: dict[str, Any] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.run_config = run_config

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Export the final weights."""
        if trainer.is_global_zero:
            save_module_exports(pl_module, self.out_dir, self.run_config)
