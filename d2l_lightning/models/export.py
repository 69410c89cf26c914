"""Export to, and load from, plain PyTorch: ``config.json`` + ``model.safetensors``.

An export folder holds the weights of the pure ``models/`` module (no Lightning prefixes) and
everything needed to rebuild and feed it: registry name, constructor arguments, preprocessing and
class names. Loading needs torch and safetensors only.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from d2l_lightning.compat import upgrade_state_dict

from .registry import build_model, get_spec

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1


class ExportError(Exception):
    """An export folder is missing, incomplete, or does not match its config."""


def save_export(model: nn.Module, config: dict[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write ``model``'s weights and ``config`` to ``out_dir`` (each file atomically).

    Args:
        model: the pure ``models/`` module.
        config: must hold ``arch`` and ``model_kwargs``; anything else (``task``,
            ``preprocess``, ``class_names``...) is carried along for inference.
        out_dir: export folder, created if needed.
    """
    from safetensors.torch import save_file

    for key in ("arch", "model_kwargs"):
        if key not in config:
            raise ExportError(f"export config needs '{key}'")
    # safetensors refuses shared storage (tied weights): store clones, contiguous.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ExportError(f"refusing to export weights that hold NaN or inf ({bad[0]}"
                          + (f" and {len(bad) - 1} more" if len(bad) > 1 else "") + ")")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    full = {"format_version": FORMAT_VERSION, **config}
    atomic_write(out / WEIGHTS_NAME, lambda p: save_file(state, str(p)))
    atomic_write(out / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(full, indent=2)))
    return out


def read_export_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check an export's ``config.json``."""
    folder = Path(path)
    cfg_path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise ExportError(f"export folder '{folder}' does not exist")
    if not cfg_path.is_file() or not (folder / WEIGHTS_NAME).is_file():
        raise ExportError(
            f"'{folder}' is not an export folder: it needs {CONFIG_NAME} and {WEIGHTS_NAME} "
            "(written by train.py into RUN_DIR/export/)"
        )
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ExportError(f"{cfg_path} is not valid JSON ({e})") from None
    if not isinstance(cfg, dict) or "arch" not in cfg or "model_kwargs" not in cfg:
        raise ExportError(f"{cfg_path} lacks 'arch' or 'model_kwargs'")
    return cfg


def load_exported(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild an exported model with torch alone.

    Args:
        path: export folder (``RUN_DIR/export``).
        map_location: device for the weights.

    Returns:
        ``(model, config)``: the module in eval mode and the export's config dict.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cfg = read_export_config(path)
    try:
        get_spec(cfg["arch"])
    except KeyError as e:
        raise ExportError(f"{Path(path) / CONFIG_NAME}: {e.args[0]}") from None
    check_against_weights(cfg, path)  # before any memory is allocated for the model
    model = build_model(cfg["arch"], **cfg["model_kwargs"])
    try:
        state = load_file(str(Path(path) / WEIGHTS_NAME), device=str(map_location))
    except (SafetensorError, OSError) as e:
        raise ExportError(f"cannot read {Path(path) / WEIGHTS_NAME}: {e}") from None
    try:
        model.load_state_dict(upgrade_state_dict(state), strict=True)  # older exports too
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3])
        raise ExportError(
            f"the weights in {Path(path) / WEIGHTS_NAME} do not match the '{cfg['arch']}' "
            f"model described by its config ({detail})"
        ) from None
    return model.to(map_location).eval(), cfg


def umask_file_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask (0644 under umask 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def check_against_weights(cfg: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse a ``config.json`` that does not describe its ``model.safetensors``.

    The model is built on the ``meta`` device (no memory) and its size is compared with the
    tensor shapes declared in the safetensors header, so an untrusted config with a huge size
    is refused before anything is allocated.

    Raises:
        ExportError: constructor arguments the model refuses, or a parameter count that
            differs from the file's.
    """
    from safetensors import SafetensorError, safe_open

    folder = Path(path)
    kwargs = cfg["model_kwargs"]
    if not isinstance(kwargs, dict):
        raise ExportError(f"{folder / CONFIG_NAME}: 'model_kwargs' must be a mapping")
    try:
        with safe_open(str(folder / WEIGHTS_NAME), framework="pt") as f:
            declared = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
    except (SafetensorError, OSError) as e:
        raise ExportError(f"cannot read {folder / WEIGHTS_NAME}: {e}") from None
    try:
        with torch.device("meta"):
            model = build_model(cfg["arch"], **kwargs)
    except (TypeError, ValueError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(f"{folder / CONFIG_NAME}: its model_kwargs do not build a "
                          f"'{cfg['arch']}' model ({first})") from None
    expected = sum(t.numel() for t in model.state_dict().values())
    if expected != declared:
        raise ExportError(f"the weights in {folder / WEIGHTS_NAME} do not match the "
                          f"'{cfg['arch']}' model described by its config (the config makes "
                          f"{expected:,} values, the file holds {declared:,})")


def atomic_write(target: Path, write: Callable[[str], Any]) -> None:
    """``write(tmp)`` a temporary file in ``target``'s folder, then rename it over ``target``.

    A failed write leaves ``target`` as it was and no temporary file behind (exports, and the
    checkpoints of :class:`callbacks.faults.AtomicCheckpointIO`).

    ``mkstemp`` creates the file mode 600; it gets the mode a plainly written file would have,
    so a lab-mate can read an export as they can read the checkpoints.
    """
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, umask_file_mode())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
