"""The public API of a run: :func:`fit` (and :mod:`.evaluate`'s ``validate``, ``test``).

``train.py`` is these functions plus argument handling; a notebook, a benchmark or a test calls
them directly::

    from d2l_lightning.training import fit
    results = fit({"model": {"name": "lenet"}, "trainer": {"max_epochs": 1}})
    results["test/acc"], results["export_dir"]

A config is a mapping of sections (any subset; see :mod:`.config`), the path or shipped name of
a config file, or a resolved config. Problems with it raise :class:`.errors.ConfigError` (one
sentence) before anything is written; a missing dataset raises ``DataError``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import SECTIONS, Config, Layer, dump_config, load_config_file, resolve
from .errors import ConfigError
from .runs import RUN_DIR_ENV, ResumePlan, RunFolder, choose_run_dir, make_run_dir

ConfigLike = Mapping[str, Any] | str | Path


def load_config(config: ConfigLike, overrides: Mapping[str, Any] | None = None) -> Config:
    """A resolved config from a mapping of sections, a file or a shipped config's name.

    ``overrides`` (a mapping of sections) are applied on top, as flags are on a command line.
    A config that is already resolved comes back resolved again (unchanged).

    Raises:
        ConfigError: an unknown section or key, a wrong value...
    """
    if isinstance(config, (str, Path)):
        layers = [load_config_file(config)]
    else:
        unknown = [s for s in config if s not in SECTIONS]
        if unknown:
            raise ConfigError(f"unknown section(s) {', '.join(map(str, unknown))} (sections: "
                              f"{', '.join(SECTIONS)})")
        layers = [Layer("the config", {s: dict(v) for s, v in config.items() if v})]
    if overrides:
        layers.append(Layer("the overrides", {s: dict(v) for s, v in overrides.items()}))
    return resolve(layers)


def build_data(cfg: Config):
    """The ``data`` section's DataModule (``run.seed`` seeds its split and shuffling)."""
    from d2l_lightning.datamodules.registry import build_datamodule
    from d2l_lightning.models import get_spec

    data = {k: v for k, v in cfg["data"].items() if k != "name"}
    return build_datamodule(cfg["data"]["name"], get_spec(cfg["model"]["name"]).task,
                            seed=cfg["run"]["seed"], **data)


def build_module(cfg: Config, data_info: dict[str, Any]):
    """The task family's LightningModule: ``model``, ``task`` and ``optim`` sections + the data."""
    from d2l_lightning.lit_models import task_module
    from d2l_lightning.models import get_spec

    cls = task_module(get_spec(cfg["model"]["name"]).task)
    unexpected = data_info.keys() - set(cls.data_args)
    if unexpected:
        raise RuntimeError(f"data_info() reports {sorted(unexpected)}, which {cls.__name__} "
                           f"does not take (its data_args: {cls.data_args})")
    model = {k: v for k, v in cfg["model"].items() if k not in ("name", "recipe")}
    return cls(arch=cfg["model"]["name"], model_kwargs=model, **data_info, **cfg["task"],
               **cfg["optim"])


def trainer_arguments(cfg: Config) -> dict[str, Any]:
    """The ``trainer`` section as ``lightning.Trainer`` keyword arguments, objects apart."""
    from .objects import OBJECT_KEYS

    return {k: v for k, v in cfg["trainer"].items() if k not in OBJECT_KEYS}


def build_trainer(cfg: Config, run_dir: Path, module: Any, evaluate: bool = False):
    """The ``trainer`` section as a Trainer, with the run's loggers, callbacks and checkpoints.

    ``run.compile`` compiles the model in place (state-dict keys stay the same). With
    ``evaluate``, the Trainer only validates or tests: no logger, checkpoint or export, and
    files a task's callbacks write (attention maps, samples) go to ``run_dir``.

    Raises:
        ConfigError: Lightning refuses the arguments (its first sentence).
    """
    import lightning as L
    import torch
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar

    from d2l_lightning.callbacks import ExportCallback, TrainingMonitor
    from d2l_lightning.callbacks.dispatch import skip_idle_batch_hooks
    from d2l_lightning.callbacks.faults import AtomicCheckpointIO, SigtermCheckpoint, StepCheckpoint
    from d2l_lightning.callbacks.plots import RunPlots
    from d2l_lightning.callbacks.progress import LineProgress, terminal_progress_bar

    from .cluster import setup_strategy
    from .console import info_to_stdout
    from .objects import build_callbacks, build_loggers, build_plugins, build_profiler

    info_to_stdout()
    tr, run = cfg["trainer"], cfg["run"]
    ckpt_dir = run_dir / "checkpoints"
    theirs, best = build_callbacks(cfg)
    callbacks: list[Any] = [TrainingMonitor(diverged_after=run["diverged_after"])]
    if tr["enable_progress_bar"] is not False and not any(
            isinstance(c, ProgressBar) for c in theirs):
        bar = sys.stderr.isatty() if run["progress_bar"] is None else run["progress_bar"]
        callbacks.append(terminal_progress_bar() if bar else LineProgress(run["progress_every"]))
    if not evaluate:
        callbacks += [ExportCallback(run_dir / "export", cfg), RunPlots(run_dir)]
        if "wandb" in tr["logger"]:
            from d2l_lightning.callbacks.wandb_logging import WandbPredictionTable

            callbacks.append(WandbPredictionTable())
        if tr["enable_checkpointing"] is not False:
            metric, mode = module.monitor
            kind = best.pop("cls", ModelCheckpoint)
            callbacks += [
                SigtermCheckpoint(ckpt_dir / "last.ckpt"),
                kind(dirpath=ckpt_dir, **{"filename": "best-{epoch:02d}-{step}",
                                          "monitor": metric, "mode": mode, "save_top_k": 1,
                                          "auto_insert_metric_name": False, **best}),
                # last.ckpt every epoch. Lightning 2.6's `save_last=True` on the monitored
                # callback above rewrites it only in epochs that improve the metric.
                ModelCheckpoint(ckpt_dir, filename="last", monitor=None, save_top_k=1,
                                enable_version_counter=False)]
            if run["ckpt_every_n_steps"]:
                callbacks.append(StepCheckpoint(
                    ckpt_dir, every_n_train_steps=run["ckpt_every_n_steps"], save_top_k=0,
                    save_last=True, enable_version_counter=False))
        if cfg["optim"]["scheduler"] != "none" and tr["logger"]:
            callbacks.append(LearningRateMonitor("step"))
    if run["compile"]:
        module.model.compile()
    torch.set_float32_matmul_precision(run["matmul_precision"])  # process-wide: set every run
    kwargs = trainer_arguments(cfg)
    if kwargs["default_root_dir"] is None:
        kwargs["default_root_dir"] = run_dir
    if kwargs["enable_progress_bar"] is None:
        kwargs["enable_progress_bar"] = True  # the bar in a terminal, else plain lines
    try:
        trainer = L.Trainer(
            **kwargs, logger=False if evaluate else build_loggers(cfg, run_dir),
            callbacks=[*callbacks, *theirs], profiler=build_profiler(cfg),
            plugins=[AtomicCheckpointIO(), *build_plugins(cfg)])
        setup_strategy(trainer, run["dist_timeout"])  # --dist-timeout; torchrun's count
    except (ValueError, RuntimeError, TypeError, MisconfigurationException) as e:
        raise ConfigError(f"lightning.Trainer: {str(e).strip().splitlines()[0]}") from None
    if trainer.world_size > 1 and tr["enable_checkpointing"] is not False:
        from d2l_lightning.callbacks.faults import DistributedSignals

        trainer.callbacks.append(DistributedSignals())  # Lightning's SIGTERM under DDP hangs
    skip_idle_batch_hooks(trainer.callbacks)  # ~15 µs per callback per step (docs/results.md)
    return trainer


def _metrics(values: Mapping[str, Any], prefix: str) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if k.startswith(prefix) and v.numel() == 1}


def _batches(trainer: Any) -> dict[str, int]:
    """Batches per epoch (after ``limit_*_batches``), for ``bench/reproduce.py``'s predictions."""
    import math

    val = trainer.num_val_batches
    counts = {"train_batches_per_epoch": trainer.num_training_batches,
              "val_batches_per_epoch": sum(val) if isinstance(val, list) else val}
    return {k: int(v) for k, v in counts.items() if isinstance(v, int | float) and math.isfinite(v)}


def _dataset_sizes(dm: Any) -> dict[str, int]:
    """Examples per split; under ddp_spawn the data was set up in other processes only."""
    sizes = dm.sizes()
    if not sizes:
        dm.setup("fit")
        sizes = dm.sizes()
    return sizes


def test_split(dm: Any) -> str:
    """``"test"``, or ``"validation"`` where the data's test split is its validation split.

    The Time Machine (a held-out tail), the book's fra-eng and Fashion-MNIST settings and an
    image folder without ``test/`` have no separate test data; their ``test/*`` numbers are
    then validation numbers, and ``results.json``, the loggers and the console say so.
    """
    import torch

    flag = getattr(dm, "test_is_val", None)
    if flag is not None:
        return "validation" if flag else "test"
    corpora = getattr(dm, "corpora", None) or {}
    pairs = [(corpora.get("val"), corpora.get("test"))]
    pairs.append((getattr(dm, "val_set", None), getattr(dm, "test_set", None)))
    for val, test in pairs:
        if val is None or test is None:
            continue
        val, test = ([val], [test]) if isinstance(val, torch.Tensor) else (val, test)
        if len(val) == len(test) and all(
                a is b or a.shape == b.shape and torch.equal(a, b) for a, b in zip(val, test)):
            return "validation"
    return "test"


def fit(config: ConfigLike, overrides: Mapping[str, Any] | None = None,
        resume: ResumePlan | None = None) -> dict[str, Any] | None:
    """Train, test and export one run; return what its ``results.json`` holds.

    Args:
        config: a mapping of sections, a config file or a shipped config's name (see
            :func:`load_config`), or a resolved config.
        overrides: sections applied on top of ``config``.
        resume: continue the run of this plan (``train.py --resume``) instead of a new one.

    Returns:
        The results (``None`` on the processes of a distributed run other than rank 0).

    Raises:
        ConfigError: the config, or a Trainer argument Lightning refuses, before anything is
            written.
        DataError: the data is missing and cannot be downloaded.
        TerminatedError: SIGTERM or SIGINT stopped the run (the message says how to continue).
    """
    cfg = load_config(config, overrides)
    hands_off_run_dir = RUN_DIR_ENV not in os.environ  # else a DDP child of such a run
    try:
        return _fit(cfg, resume)
    finally:
        if hands_off_run_dir:
            os.environ.pop(RUN_DIR_ENV, None)


def prepare(cfg: Config, fresh: bool) -> tuple[Any, Any, str]:
    """Seed, the data (prepared: downloads happen here) and the task module."""
    import lightning as L

    from d2l_lightning.models.transfer import TransferError, param_groups

    from .cluster import data_lock

    L.seed_everything(cfg["run"]["seed"], workers=True, verbose=False)
    dm = build_data(cfg)
    with data_lock(cfg):  # under a cluster launcher: one process of each node downloads
        dm.prepare_data()  # fail here, before any process is spawned, if the data is missing
    try:  # before the run folder exists, so a refused configuration leaves nothing behind
        module = build_module(cfg, dm.data_info())
        init = module.load_initial_weights() if fresh else ""  # d2l §14.2
        if cfg["optim"].get("lr_mult"):  # a prefix that matches nothing: refused now
            param_groups(module.model, 1.0, cfg["optim"]["lr_mult"])
    except TransferError as e:  # a source, freeze prefix or lr factor that does not fit
        raise ConfigError(str(e)) from None
    except ValueError as e:  # options the model cannot take together, e.g. impossible tying
        raise ConfigError(f"model '{cfg['model']['name']}': {e}") from None
    return dm, module, init


def _fit(cfg: Config, resume: ResumePlan | None) -> dict[str, Any] | None:
    from .faults import check_hardware

    dm, module, init = prepare(cfg, fresh=resume is None)
    if init:
        print(init, flush=True)
    check_hardware(cfg)
    folder = choose_run_dir(cfg, resuming=resume is not None)
    run_dir = folder.path
    trainer = build_trainer(cfg, run_dir, module)  # Lightning's refusals: nothing written yet
    if str(trainer.precision) != cfg["trainer"]["precision"]:  # e.g. None runs 32-true
        cfg["trainer"]["precision"] = str(trainer.precision)  # config.yaml records what ran
    make_run_dir(folder, resume)  # takes the folder's lock: one writer per run
    try:
        return _run_in(folder, cfg, resume, dm, module, trainer)
    finally:
        folder.release()


def _run_in(folder: RunFolder, cfg: Config, resume: ResumePlan | None, dm: Any, module: Any,
            trainer: Any) -> dict[str, Any] | None:
    """Train, test and publish in the locked run folder (:func:`fit`'s second half)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from d2l_lightning.callbacks import TrainingMonitor
    from d2l_lightning.callbacks.faults import stop_signal, terminated_message
    from d2l_lightning.callbacks.progress import model_summary
    from d2l_lightning.callbacks.wandb_logging import start_wandb, wandb_logger

    from .faults import TerminatedError
    from .hparams import flatten, log_run_config, run_hparams, run_metadata

    run_dir = folder.path
    if trainer.is_global_zero:
        print(f"run folder: {run_dir}\n{model_summary(module.model, cfg['model']['name'])}",
              flush=True)
        if resume is not None:
            resume.write_record(f"resumed from {resume.ckpt} at step {resume.step}; "
                                "only what this resume changed")
        elif not folder.config_written:
            (run_dir / "config.yaml").write_text(dump_config(cfg, (
                f"train.py config of {run_dir}\n"
                f"replay: python train.py --config {run_dir / 'config.yaml'} --run-dir NEW")),
                encoding="utf-8")
    start_wandb(trainer, run_dir)
    meta = run_metadata(module)
    log_run_config(trainer, cfg, meta)
    ckpt = resume.ckpt if resume else None
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt, weights_only=True)
        val = _metrics(trainer.callback_metrics, "val/")
        train = _metrics(trainer.callback_metrics, "train/")  # the last epoch's, or last step's
        batches = _batches(trainer)
        summary = _metrics(trainer.callback_metrics, "run/")  # from TrainingMonitor
        test = {}
        if cfg["run"]["test"]:
            tested = trainer.test(module, datamodule=dm, verbose=False)[0]
            test = {k: float(v) for k, v in tested.items()}
    except SIGTERMException:
        raise TerminatedError(terminated_message(trainer, run_dir),
                              stop_signal(trainer)) from None
    # a resume of a run whose training had ended trains nothing: its totals are the checkpoint's
    monitor = next((c for c in trainer.callbacks if isinstance(c, TrainingMonitor)), None) \
        or TrainingMonitor()
    results = {
        "model": cfg["model"]["name"], "data": cfg["data"]["name"],
        "recipe": cfg["model"]["recipe"],
        "epochs": int(summary.get("run/epochs", trainer.current_epoch)),
        "global_step": int(summary.get("run/global_step", trainer.global_step)),
        "train_time_sec": round(summary.get("run/train_time_sec", monitor.elapsed), 3),
        "train_samples_per_sec": round(summary.get("run/train_samples_per_sec",
                                                   monitor.samples_per_sec), 1),
        **batches, **train, **val, **test,
        "dataset_sizes": _dataset_sizes(dm), "test_split": test_split(dm),
        "resumed_from": str(ckpt) if ckpt else None,
        "run_dir": str(run_dir), "export_dir": str(run_dir / "export"),
    }
    cm = module.test_confusion_matrix()
    if cm is None:  # ddp_spawn: the test ran in other processes
        cm = trainer.callback_metrics.get("test/confusion_matrix")
    if cm is not None:
        results["test/confusion_matrix"] = cm.tolist()
    meta["test_split"] = results["test_split"]  # the loggers' copy of the run's settings
    results["meta"] = meta
    if trainer.is_global_zero:  # hparams with the final metrics, figures, the model artifact
        from d2l_lightning.callbacks.media import publish_run

        publish_run(trainer, module, run_dir, {**val, **test}, flatten(run_hparams(cfg, meta)))
    wandb = wandb_logger(trainer)
    if wandb is not None and trainer.is_global_zero:  # end the run this call started
        wandb.experiment.finish()
    if not trainer.is_global_zero:
        return None
    path = run_dir / "results.json"
    if path.exists():  # a resumed run that had finished before: keep where it ended then
        earlier = json.loads(path.read_text())
        results["earlier"] = [*earlier.pop("earlier", []), earlier]
    from d2l_lightning.models.export import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
    return results
