"""Export to plain PyTorch at the end of fit, and ``python -m callbacks.export CKPT``.

The export folder holds ``model.safetensors`` (the pure ``models/`` module's weights, no
Lightning prefixes) and ``config.json``; :func:`models.load_exported` reads it with torch alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from models import save_export
from models.export import CONFIG_NAME


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


def export_checkpoint(ckpt: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    """Export any checkpoint of ours the same way the callback does."""
    from lit_models import load_checkpoint

    out = Path(out_dir)
    if (out / CONFIG_NAME).exists() and not force:
        raise FileExistsError(f"{out} already holds an export; pass --force to replace it")
    module = load_checkpoint(ckpt)
    return save_module_exports(module, out)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m callbacks.export CKPT [--out DIR] [--force]``."""
    p = argparse.ArgumentParser(prog="python -m callbacks.export", description=__doc__)
    p.add_argument("ckpt", help="a checkpoint of train.py, e.g. RUN_DIR/checkpoints/last.ckpt")
    p.add_argument("--out", help="export folder (default: RUN_DIR/export-<checkpoint name>)")
    p.add_argument("--force", action="store_true", help="replace an existing export")
    args = p.parse_args(argv)
    ckpt = Path(args.ckpt)
    if not ckpt.is_file():
        print(f"error: checkpoint {ckpt} does not exist", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else ckpt.parent.parent / f"export-{ckpt.stem}"
    try:
        path = export_checkpoint(ckpt, out, args.force)
    except (FileExistsError, KeyError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"exported {ckpt} to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
