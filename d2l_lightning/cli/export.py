"""Export any checkpoint of train.py to plain PyTorch, as a finished run exports itself.

    python export.py runs/RUN/checkpoints/best-03-1234.ckpt [--out DIR] [--force]

The export folder holds ``model.safetensors`` and ``config.json`` (see ``predict.py``); an
existing export is never replaced without ``--force``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def export_checkpoint(ckpt: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    """Export a checkpoint of ours the way the run's own export callback does."""
    from d2l_lightning.callbacks.export import save_module_exports
    from d2l_lightning.lit_models import load_checkpoint
    from d2l_lightning.models.export import CONFIG_NAME

    out = Path(out_dir)
    if (out / CONFIG_NAME).exists() and not force:
        raise FileExistsError(f"{out} already holds an export; pass --force to replace it")
    return save_module_exports(load_checkpoint(ckpt), out, run_config(Path(ckpt)))


def run_config(ckpt: Path) -> dict | None:
    """The resolved config of the checkpoint's run (``RUN/config.yaml``), if it has one."""
    from d2l_lightning.training.config import resolve
    from d2l_lightning.training.errors import ConfigError
    from d2l_lightning.training.runs import run_layers

    run_dir = ckpt.resolve().parent.parent
    if not (run_dir / "config.yaml").is_file():
        return None
    try:
        return resolve(run_layers(run_dir)[0])
    except ConfigError as e:
        print(f"note: the export keeps no run config ({e})", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    p = argparse.ArgumentParser(prog="export.py", description=__doc__.split("\n\n")[0])
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
