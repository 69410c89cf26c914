"""What every logger gets as the run's hyper-parameters: the resolved config and its provenance.

W&B's run config and TensorBoard's HParams receive every section of the config (so runs can be
grouped and filtered by ``data.batch_size``, ``run.seed``, ``model.recipe``...) plus ``meta``:
the model's parameter counts, the code's commit and the package versions. W&B gets the nested
mapping (shown as ``data.batch_size``); TensorBoard, whose HParams take scalars, the same keys
flattened with dots, lists and mappings written as JSON.
"""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path
from typing import Any

#: the folder holding the package (a checkout, or site-packages)
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def versions() -> dict[str, str | None]:
    """Python, torch (and its CUDA), Lightning, torchmetrics, this package and its commit."""
    import lightning
    import torch
    import torchmetrics

    import d2l_lightning

    return {"python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "lightning": lightning.__version__,
            "torchmetrics": torchmetrics.__version__, "d2l_lightning": d2l_lightning.__version__,
            "commit": git_commit()}


def git_commit() -> str | None:
    """``git describe --always --dirty`` of the package's checkout (``None`` when installed)."""
    if not (PACKAGE_ROOT / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=PACKAGE_ROOT,
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def run_metadata(module: Any) -> dict[str, Any]:
    """The model's parameter counts and the software that ran it (``results.json``'s ``meta``)."""
    params = list(module.model.parameters())
    return {"params": sum(p.numel() for p in params),
            "trainable_params": sum(p.numel() for p in params if p.requires_grad),
            "versions": versions()}


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"data": {"batch_size": 64}}`` -> ``{"data.batch_size": 64}``; lists as JSON text."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple, dict)):
            out[name] = json.dumps(value, default=str)
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[name] = value if value is not None else "None"
        else:
            out[name] = str(value)
    return out


def run_hparams(cfg: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """The hyper-parameters of a run: every section of its config, and ``meta``."""
    return json.loads(json.dumps({**cfg, "meta": meta}, default=str))


def log_run_config(trainer: Any, cfg: dict[str, Any], meta: dict[str, Any]) -> None:
    """Log the whole config (and ``meta``) to every logger of ``trainer``, before fit."""
    from lightning.pytorch.loggers import TensorBoardLogger

    params = run_hparams(cfg, meta)
    for logger in trainer.loggers:
        logger.log_hyperparams(flatten(params) if isinstance(logger, TensorBoardLogger)
                               else params)
