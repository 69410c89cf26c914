"""Evaluating a run again: :func:`validate` and :func:`test` (``train.py validate|test``).

The run's config (``config.yaml`` and its resume records) rebuilds the same data (split, seed,
batches) and task module; a checkpoint's weights are evaluated by a Trainer without loggers or
checkpoints. Nothing in the run folder is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import Layer, resolve
from .errors import ConfigError
from .run import build_trainer, prepare

#: what an evaluation may change of the run's config: where the data is, what runs it, how much
EVALUATION_KEYS = {
    ("data", "data_dir"), ("trainer", "accelerator"), ("trainer", "devices"),
    ("trainer", "precision"), ("trainer", "limit_val_batches"),
    ("trainer", "limit_test_batches"), ("trainer", "enable_progress_bar"),
    ("run", "progress_bar"), ("run", "progress_every"),
}


def locate_run(run: str | Path | None, ckpt: str | Path | None,
               what: str) -> tuple[Path, Path, list[Layer]]:
    """The run folder, the checkpoint (default ``last.ckpt``) and the run's config layers.

    Raises:
        ConfigError: not a run folder, no such checkpoint, a checkpoint of another model.
    """
    from .runs import check_arch, read_checkpoint, run_layers

    if run is None and ckpt is None:
        raise ConfigError(f"{what}: name the run (--run-dir RUN) or a checkpoint (--ckpt PATH)")
    if ckpt is not None and not Path(ckpt).is_file():
        raise ConfigError(f"{what}: checkpoint {ckpt} does not exist")
    arch = None
    if ckpt is not None:  # an unreadable file is named as such, not as a missing run
        arch, *_ = read_checkpoint(Path(ckpt), what)
    run_dir = Path(run) if run is not None else Path(ckpt).parent.parent
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise ConfigError(f"{what}: {run_dir} is not a run folder of train.py (it has no "
                          "config.yaml)")
    ckpt = Path(ckpt) if ckpt is not None else run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise ConfigError(f"{what}: {run_dir} has no checkpoint to evaluate ({ckpt} does not "
                          "exist)")
    layers, _ = run_layers(run_dir)
    if arch is None:  # the run's last.ckpt
        arch, *_ = read_checkpoint(ckpt, what)
    check_arch(arch, ckpt, layers, config, what)
    return run_dir, ckpt, layers


def evaluate(stage: str, run: str | Path | None = None, ckpt: str | Path | None = None,
             overrides: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Validate or test a run again from one of its checkpoints, as the run itself did.

    The run's config (``config.yaml`` and its resume records) builds the same data (split,
    seed, batches) and task module; the checkpoint's weights are evaluated. With the run's
    last checkpoint the numbers are those of its ``results.json``. Nothing in the run folder
    changes.

    Args:
        stage: ``validate`` or ``test``.
        run: the run folder.
        ckpt: the checkpoint (default: ``RUN/checkpoints/last.ckpt``).
        overrides: sections changing only where the data is and what runs it (see
            :data:`EVALUATION_KEYS`).

    Raises:
        ConfigError: not a run, a missing or foreign checkpoint, an override that would change
            the evaluation itself.
    """
    import tempfile

    import torch

    what = f"train.py {stage}"
    run_dir, ckpt, layers = locate_run(run, ckpt, what)
    changes = Layer("the command line", {s: dict(v) for s, v in (overrides or {}).items()})
    for section, key, _ in changes.items():
        if (section, key) not in EVALUATION_KEYS:
            raise ConfigError(f"{what}: {section}.{key} cannot change when evaluating a run, "
                              "which is evaluated as it was configured")
    cfg = resolve([*layers, changes])
    cfg["trainer"]["enable_checkpointing"] = False
    dm, module, _ = prepare(cfg, fresh=False)
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    module.on_load_checkpoint(saved)  # weights of earlier versions, as a resume loads them
    module.load_state_dict(saved["state_dict"])
    with tempfile.TemporaryDirectory(prefix="d2l-eval-") as scratch:  # a task's figures
        trainer = build_trainer(cfg, Path(scratch), module, evaluate=True)
        run_stage = trainer.validate if stage == "validate" else trainer.test
        out = run_stage(module, datamodule=dm, verbose=False)
    return {k: float(v) for k, v in out[0].items()} if out else {}


def validate(run: str | Path | None = None, ckpt: str | Path | None = None,
             overrides: Mapping[str, Any] | None = None) -> dict[str, float]:
    """The run's validation metrics again (``val/*``); see :func:`evaluate`."""
    return evaluate("validate", run, ckpt, overrides)


def test(run: str | Path | None = None, ckpt: str | Path | None = None,
         overrides: Mapping[str, Any] | None = None) -> dict[str, float]:
    """The run's test metrics again (``test/*``); see :func:`evaluate`."""
    return evaluate("test", run, ckpt, overrides)
