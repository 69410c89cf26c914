"""Train any registered model on a compatible dataset with one Lightning Trainer.

Examples:
    python train.py                                  # LeNet, Fashion-MNIST, d2l recipe
    python train.py --model lenet_bn --recipe modern # the improved recipe
    python train.py --model mlp --data mnist --max-epochs 3 --logger wandb
    python train.py --config configs/lenet_bn-modern.yaml --print-config
    python train.py --config runs/RUN/config.yaml --run-dir runs/replay   # replay a run
    python train.py --resume last --run-dir runs/RUN                       # continue a run
    python train.py --sweep configs/sweeps/lenet-lr-grid.yaml              # a grid search
    python train.py --list [MODEL]                   # every model and recipe

The config has six sections (model, data, task, optim, trainer, run; see
:mod:`training.config`). Each run folder holds config.yaml, metrics.csv, checkpoints/
(last.ckpt and the best by the validation metric), results.json and export/ (plain-PyTorch
weights; see predict.py).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from datamodules import DataError
from training.cluster import (
    check_run_dir_given,
    data_lock,
    is_follower,
    peer_failure,
    setup_strategy,
)
from training.config import (
    Config,
    ConfigError,
    dump_config,
    load_config_file,
    parse_command_line,
    resolve,
)
from training.console import info_to_stdout, quiet_warnings
from training.faults import (
    WRITE_ERRNOS,
    TerminatedError,
    check_hardware,
    remove_empty_folders,
    terminated_message,
)
from training.runs import RUN_DIR_ENV, ResumePlan, plan_resume, prepare_run_dir


def config_from_argv(argv: list[str]) -> Config:
    """The resolved config of a ``train.py`` command line (for in-process runs, benchmarks)."""
    request = parse_command_line(argv)
    return resolve([*map(load_config_file, request.configs), request.cli])


def build_data(cfg: Config):
    """The ``data`` section's DataModule (``run.seed`` seeds its split and shuffling)."""
    from datamodules.registry import build_datamodule
    from models import get_spec

    data = {k: v for k, v in cfg["data"].items() if k != "name"}
    return build_datamodule(cfg["data"]["name"], get_spec(cfg["model"]["name"]).task,
                            seed=cfg["run"]["seed"], **data)


def build_module(cfg: Config, data_info: dict[str, Any]):
    """The task family's LightningModule: ``model``, ``task`` and ``optim`` sections + the data."""
    from lit_models import task_module
    from models import get_spec

    cls = task_module(get_spec(cfg["model"]["name"]).task)
    unexpected = data_info.keys() - set(cls.data_args)
    if unexpected:
        raise RuntimeError(f"data_info() reports {sorted(unexpected)}, which {cls.__name__} "
                           f"does not take (its data_args: {cls.data_args})")
    model = {k: v for k, v in cfg["model"].items() if k not in ("name", "recipe")}
    return cls(arch=cfg["model"]["name"], model_kwargs=model, **data_info, **cfg["task"],
               **cfg["optim"])


def build_loggers(cfg: Config, run_dir: Path) -> list[Any]:
    """``metrics.csv`` always, plus TensorBoard or W&B (continuing the run's W&B id)."""
    from lightning.pytorch.loggers import TensorBoardLogger
    from lightning.pytorch.utilities import rank_zero_only

    from callbacks.csv_logger import MetricsCSVLogger

    run = cfg["run"]
    loggers: list[Any] = [MetricsCSVLogger(run_dir)]
    if run["logger"] == "tensorboard":  # the same folder on resume: the same TensorBoard run
        loggers.append(TensorBoardLogger(run_dir, name="tensorboard", version="",
                                         default_hp_metric=False))  # hparams get the results
    elif run["logger"] == "wandb":
        from callbacks.wandb_logging import make_wandb_logger

        id_file = run_dir / "wandb" / "run_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        logger = make_wandb_logger(run_dir, run["wandb_project"], run["wandb_name"],
                                   run["wandb_tags"], cfg, run_id=run_id)
        if run_id is None and rank_zero_only.rank == 0:
            id_file.parent.mkdir(parents=True, exist_ok=True)
            id_file.write_text(logger.experiment.id + "\n")
        loggers.append(logger)
    return loggers


def build_trainer(cfg: Config, run_dir: Path, module):
    """The ``trainer`` section as a Trainer, with the ``run`` section's loggers and checkpoints.

    ``compile`` is a trainer-level choice (how the model runs, like ``precision``) that
    Lightning has no flag for: the model is compiled in place, so state-dict keys stay the same.
    """
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    info_to_stdout()

    from callbacks import ExportCallback, TrainingMonitor
    from callbacks.dispatch import skip_idle_batch_hooks
    from callbacks.faults import AtomicCheckpointIO, SigtermCheckpoint
    from callbacks.plots import RunPlots
    from callbacks.progress import LineProgress, terminal_progress_bar

    tr, run = cfg["trainer"], cfg["run"]
    ckpt_dir = run_dir / "checkpoints"
    bar = sys.stderr.isatty() if tr["progress_bar"] is None else tr["progress_bar"]
    callbacks: list[Any] = [TrainingMonitor(diverged_after=run["diverged_after"]),
                            ExportCallback(run_dir / "export"),
                            SigtermCheckpoint(ckpt_dir / "last.ckpt"),
                            terminal_progress_bar() if bar else LineProgress(tr["progress_every"]),
                            RunPlots(run_dir)]
    if run["logger"] == "wandb":
        from callbacks.wandb_logging import WandbPredictionTable

        callbacks.append(WandbPredictionTable())
    metric, mode = module.monitor
    callbacks.append(ModelCheckpoint(
        ckpt_dir, filename="best-{epoch:02d}-{step}", monitor=metric, mode=mode, save_top_k=1,
        auto_insert_metric_name=False))
    # last.ckpt every epoch. Lightning 2.6's `save_last=True` on the monitored callback above
    # rewrites it only in epochs that improve the metric, which would leave it stale.
    callbacks.append(ModelCheckpoint(ckpt_dir, filename="last", monitor=None, save_top_k=1,
                                     enable_version_counter=False))
    if run["ckpt_every_n_steps"]:
        callbacks.append(ModelCheckpoint(ckpt_dir, every_n_train_steps=run["ckpt_every_n_steps"],
                                         save_top_k=0, save_last=True))
    if cfg["optim"]["scheduler"] != "none":
        callbacks.append(LearningRateMonitor("step"))
    if tr["compile"]:
        module.model.compile()
    torch.set_float32_matmul_precision(tr["matmul_precision"])  # process-wide: set every run
    limits = {f"limit_{k}_batches": tr[f"limit_{k}_batches"] for k in ("train", "val", "test")
              if tr[f"limit_{k}_batches"] is not None}
    trainer = L.Trainer(
        accelerator=tr["accelerator"], devices=tr["devices"], strategy=tr["strategy"],
        num_nodes=tr["num_nodes"], precision=tr["precision"], max_epochs=tr["max_epochs"],
        max_steps=tr["max_steps"], accumulate_grad_batches=tr["accumulate_grad_batches"],
        fast_dev_run=tr["fast_dev_run"], deterministic=tr["deterministic"] or None,
        logger=build_loggers(cfg, run_dir), callbacks=callbacks, default_root_dir=run_dir,
        enable_progress_bar=True,  # the bar in a terminal, else LineProgress's plain lines
        enable_model_summary=False, log_every_n_steps=10, plugins=[AtomicCheckpointIO()],
        **limits)
    setup_strategy(trainer, tr["dist_timeout"])  # --dist-timeout; torchrun's process count
    skip_idle_batch_hooks(trainer.callbacks)  # ~15 µs per callback per step (docs/results.md)
    return trainer


def _dataset_sizes(dm) -> dict[str, int]:
    """Examples per split; under ddp_spawn the data was set up in other processes only."""
    sizes = dm.sizes()
    if not sizes:
        dm.setup("fit")
        sizes = dm.sizes()
    return sizes


def _metrics(values: dict[str, Any], prefix: str) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if k.startswith(prefix)}


def _batches(trainer) -> dict[str, int]:
    """Batches per epoch (after ``--limit-*-batches``), for ``bench/reproduce.py``'s predictions."""
    import math

    val = trainer.num_val_batches
    counts = {"train_batches_per_epoch": trainer.num_training_batches,
              "val_batches_per_epoch": sum(val) if isinstance(val, list) else val}
    return {k: int(v) for k, v in counts.items() if isinstance(v, int | float) and math.isfinite(v)}


def run(cfg: Config, resume: ResumePlan | None = None) -> dict[str, Any] | None:
    """Fit, test, export; return the results written to ``results.json`` (``None`` off rank 0)."""
    hands_off_run_dir = RUN_DIR_ENV not in os.environ  # else a DDP child of such a run
    try:
        return _run(cfg, resume)
    finally:
        if hands_off_run_dir:
            os.environ.pop(RUN_DIR_ENV, None)


def _run(cfg: Config, resume: ResumePlan | None) -> dict[str, Any] | None:
    import lightning as L

    from models.transfer import TransferError, param_groups

    L.seed_everything(cfg["run"]["seed"], workers=True, verbose=False)
    dm = build_data(cfg)
    with data_lock(cfg):  # under a cluster launcher: one process of each node downloads
        dm.prepare_data()  # fail here, before any process is spawned, if the data is missing
    try:  # before the run folder exists, so a refused configuration leaves nothing behind
        module = build_module(cfg, dm.data_info())
        init = module.load_initial_weights() if resume is None else ""  # d2l §14.2
        if cfg["optim"].get("lr_mult"):  # a prefix that matches nothing: refused now
            param_groups(module.model, 1.0, cfg["optim"]["lr_mult"])
    except TransferError as e:  # a source, freeze prefix or lr factor that does not fit
        raise ConfigError(str(e)) from None
    except ValueError as e:  # options the model cannot take together, e.g. impossible tying
        raise ConfigError(f"model '{cfg['model']['name']}': {e}") from None
    if init:
        print(init, flush=True)
    check_hardware(cfg)
    planned = cfg["run"]["run_dir"]
    existed = bool(planned) and Path(planned).exists()
    run_dir, config_written = prepare_run_dir(cfg, resuming=resume is not None)
    try:
        trainer = build_trainer(cfg, run_dir, module)
    except (ValueError, RuntimeError) as e:  # e.g. fsdp without a GPU, an unknown accelerator
        if not existed and not is_follower(cfg["trainer"]["num_nodes"]):
            remove_empty_folders(run_dir)
        raise ConfigError(str(e).strip().splitlines()[0]) from None
    if str(trainer.precision) != cfg["trainer"]["precision"]:  # e.g. 16-mixed runs bf16 on CPU
        cfg["trainer"]["precision"] = str(trainer.precision)  # config.yaml records what ran
    if trainer.is_global_zero:
        from callbacks.progress import model_summary

        print(f"run folder: {run_dir}\n{model_summary(module.model, cfg['model']['name'])}",
              flush=True)
        if resume is not None:
            resume.write_record(f"resumed from {resume.ckpt} at step {resume.step}; "
                                "only what this resume changed")
        elif not config_written:
            (run_dir / "config.yaml").write_text(dump_config(cfg, (
                f"train.py config of {run_dir}\n"
                f"replay: python train.py --config {run_dir / 'config.yaml'} --run-dir NEW")),
                encoding="utf-8")
    ckpt = resume.ckpt if resume else None
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt, weights_only=True)
        val = _metrics(trainer.callback_metrics, "val/")
        train = _metrics(trainer.callback_metrics, "train/")  # the last epoch's, or last step's
        batches = _batches(trainer)
        run_summary = _metrics(trainer.callback_metrics, "run/")  # from TrainingMonitor
        test = {}
        if cfg["run"]["test"]:
            tested = trainer.test(module, datamodule=dm, verbose=False)[0]
            test = {k: float(v) for k, v in tested.items()}
    except SIGTERMException:
        raise TerminatedError(terminated_message(trainer, run_dir)) from None
    results = {
        "model": cfg["model"]["name"], "data": cfg["data"]["name"],
        "recipe": cfg["model"]["recipe"],
        "epochs": int(run_summary.get("run/epochs", 0)),
        "global_step": int(run_summary.get("run/global_step", 0)),
        "train_time_sec": round(run_summary.get("run/train_time_sec", 0.0), 3),
        "train_samples_per_sec": round(run_summary.get("run/train_samples_per_sec", 0.0), 1),
        **batches, **train, **val, **test,
        "dataset_sizes": _dataset_sizes(dm),
        "resumed_from": str(ckpt) if ckpt else None,
        "run_dir": str(run_dir), "export_dir": str(run_dir / "export"),
    }
    cm = getattr(module, "confusion_matrix", None)
    if cm is None:  # ddp_spawn: the test ran in other processes
        cm = trainer.callback_metrics.get("test/confusion_matrix")
    if cm is not None:
        results["test/confusion_matrix"] = cm.tolist()
    if trainer.is_global_zero:  # hparams with the final metrics, figures, the model artifact
        from callbacks.media import publish_run

        publish_run(trainer, module, run_dir, {**val, **test})
    for logger in trainer.loggers:  # end the W&B run this call started (in-process reuse)
        if type(logger).__name__ == "WandbLogger" and trainer.is_global_zero:
            logger.experiment.finish()
    if not trainer.is_global_zero:
        return None
    path = run_dir / "results.json"
    if path.exists():  # a resumed run that had finished before: keep where it ended then
        earlier = json.loads(path.read_text())
        results["earlier"] = [*earlier.pop("earlier", []), earlier]
    path.write_text(json.dumps(results, indent=2))
    return results


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    quiet_warnings()
    cfg: Config | None = None
    try:
        request = parse_command_line(argv)
        if request.list_models is not None:
            from training.listing import describe_model, list_models

            print(describe_model(request.list_models) if request.list_models else list_models())
            return 0
        if request.sweep:
            from training.sweep import run_sweep

            return run_sweep(request)
        plan = None
        if request.resume:  # every process must find the same run (not the newest of its own)
            check_run_dir_given(request.resume != "last"
                                or bool(request.cli.values.get("run", {}).get("run_dir")))
            plan = plan_resume(request.resume, request.cli, request.configs)
            cfg = resolve([*plan.layers, plan.changes])
            plan.check(cfg)
            cfg["run"]["run_dir"] = str(plan.run_dir)
        else:
            cfg = resolve([*map(load_config_file, request.configs), request.cli])
        if request.print_config:
            print(dump_config(cfg), end="")
            return 0
        check_run_dir_given(bool(cfg["run"]["run_dir"]), cfg["trainer"]["num_nodes"])
        if plan is not None:
            print(f"resuming {plan.run_dir} ({cfg['model']['name']} on {cfg['data']['name']}) "
                  f"from {plan.ckpt.name} at step {plan.step}", flush=True)
        results = run(cfg, plan)
    except ConfigError as e:  # one sentence, as argparse's own refusals
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    except (DataError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except TerminatedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 128 + signal.SIGTERM
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        print(f"error: cannot write {e.filename or 'the run folder'}: {e.strerror}; "
              "free some space or choose a writable --run-dir", file=sys.stderr)
        return 1
    except Exception as e:  # imported here: --help imports neither torch nor Lightning
        from callbacks import NonFiniteLossError
        from models import ExportError

        if isinstance(e, ExportError):
            print(f"error: {e}", file=sys.stderr)
            return 1
        if isinstance(e, NonFiniteLossError):
            print(f"error: stopped: {e}", file=sys.stderr)
            return 1
        said = peer_failure(e)
        if said is None:
            raise
        run_dir = cfg["run"]["run_dir"] if cfg else "RUN"
        print(f"error: another process of this distributed run died or stopped answering "
              f"({said}); continue from the last checkpoint with --resume last --run-dir "
              f"{run_dir}", file=sys.stderr)
        return 1
    if results is not None:
        shown = {k: round(v, 4) for k, v in results.items()
                 if k.startswith(("val/", "test/")) and isinstance(v, float)}
        print(f"\n{cfg['model']['name']} on {cfg['data']['name']}: {shown}")
        print(f"train: {results['train_samples_per_sec']:.0f} samples/s, "
              f"{results['epochs']} epochs, {results['train_time_sec']:.1f} s")
        print(f"run folder: {results['run_dir']}")
        print(f"export:     {results['export_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
