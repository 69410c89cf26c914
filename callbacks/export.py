"""Export to plain PyTorch at the end of fit (``export.py`` does the same for any checkpoint).

The export folder holds ``model.safetensors`` (the pure ``models/`` module's weights, no
Lightning prefixes) and ``config.json``; :func:`models.load_exported` reads it with torch alone.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from models import save_export


def save_module_exports(module: L.LightningModule, out_dir: str | Path) -> Path:
    """Export ``module.model`` to ``out_dir``, plus its extra parts to sub-folders.

    A task module may define ``extra_exports() -> {name: (nn.Module, config)}``; each part is
    saved to ``out_dir/name`` (other task modules export exactly as before).
    """
    out = save_export(module.model, module.export_config(), out_dir)
    extra = getattr(module, "extra_exports", None)
    for name, (part, config) in (extra() if callable(extra) else {}).items():
        save_export(part, config, out / name)
    return out


class ExportCallback(Callback):
    """Write ``out_dir`` (weights + config) from global rank 0 when fit ends.

    Task modules may export extra parts (e.g. BERT's encoder) through ``extra_exports()``.

    Args:
        out_dir: the export folder, usually ``RUN_DIR/export``.
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Export the final weights."""
        if trainer.is_global_zero:
            save_module_exports(pl_module, self.out_dir)
