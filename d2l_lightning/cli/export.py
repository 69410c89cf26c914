"""Export any checkpoint of train.py to plain PyTorch, as a finished run exports itself.

    python export.py runs/RUN/checkpoints/best-03-1234.ckpt [--out DIR] [--force]

The export folder holds ``model.safetensors`` and ``config.json`` (see ``predict.py``); an
existing export is never replaced without ``--force``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any


class CheckpointError(Exception):
    """A file that is no checkpoint of train.py export.py can read (one sentence)."""


def export_checkpoint(ckpt: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    """Export a checkpoint of ours the way the run's own export callback does."""
    from d2l_lightning.callbacks.export import save_module_exports
    from d2l_lightning.models.export import CONFIG_NAME

    out = Path(out_dir)
    if (out / CONFIG_NAME).exists() and not force:
        raise FileExistsError(f"{out} already holds an export; pass --force to replace it")
    return save_module_exports(read_module(Path(ckpt)), out, run_config(Path(ckpt)))


def read_module(ckpt: Path) -> Any:
    """The LightningModule of a checkpoint of train.py, read with ``weights_only=True``.

    As :func:`lit_models.load_checkpoint`, with each way a file can fail told in one sentence.

    Raises:
        CheckpointError: a file that needs full unpickling (a ``torch.save(model)`` file), is
            no checkpoint at all, or whose hyper-parameters or weights do not make a model.
    """
    import pickle
    import warnings

    import torch

    from d2l_lightning.compat import upgrade_hparams, upgrade_state_dict
    from d2l_lightning.lit_models import task_module
    from d2l_lightning.models import get_spec

    try:
        with warnings.catch_warnings():  # a plain pickle (not torch.save's): torch warns that
            # its protocol is not torch's default before refusing it, which we do in one sentence
            warnings.filterwarnings("ignore", message="Detected pickle protocol",
                                    category=UserWarning)
            saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        raise CheckpointError(
            f"{ckpt} holds Python objects that only a full unpickling would rebuild ("
            + (f"{found.group(1)}, " if found else "") + "as a torch.save(model) file does), "
            "and export.py reads checkpoints with weights_only=True, which never runs code "
            "from a file: export a checkpoint that train.py wrote (RUN/checkpoints/*.ckpt)"
        ) from None
    except Exception as e:  # a truncated, empty or foreign file: EOFError, RuntimeError...
        raise CheckpointError(f"{ckpt} is not a checkpoint torch can read "
                              f"({_first_line(e, named=True)})") from None
    hparams = saved.get("hyper_parameters") if isinstance(saved, dict) else None
    state = saved.get("state_dict") if isinstance(saved, dict) else None
    if not isinstance(hparams, dict) or not isinstance(state, dict):
        raise CheckpointError(f"{ckpt} is not a checkpoint of train.py (it lacks "
                              "'hyper_parameters' or 'state_dict')")
    hparams = upgrade_hparams(hparams)  # checkpoints of earlier versions
    try:
        task = get_spec(str(hparams.get("arch"))).task
    except KeyError:
        raise CheckpointError(f"{ckpt} was written by a model this version does not know "
                              f"({hparams.get('arch')!r})") from None
    try:
        module = task_module(task)(**hparams)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{ckpt}: its hyper_parameters do not make a model "
                              f"({_first_line(e)})") from None
    try:
        module.load_state_dict(upgrade_state_dict(state))
    except RuntimeError as e:
        lines = str(e).strip().splitlines()
        detail = " ".join(line.strip() for line in lines[1:3]) or _first_line(e)
        raise CheckpointError(f"{ckpt}: its weights do not match the '{hparams['arch']}' "
                              f"model of its hyper_parameters ({detail})") from None
    return module


def _first_line(e: BaseException, named: bool = False) -> str:
    """The first line of an exception's message (its type's name first with ``named``)."""
    text = str(e.args[0] if isinstance(e, KeyError) and e.args else e).strip()
    first = (text.splitlines() or [""])[0][:200]
    if named or not first:
        return f"{type(e).__name__}: {first}" if first else type(e).__name__
    return first


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
    from d2l_lightning.models import ExportError

    try:
        path = export_checkpoint(ckpt, out, args.force)
    except (FileExistsError, CheckpointError, ExportError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # each file is written atomically: none is left half-written
        print(f"error: stopped by SIGINT (Ctrl-C); no file in {out} is half-written, but run "
              "the command again (with --force) for a complete export", file=sys.stderr)
        return 130
    print(f"exported {ckpt} to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
