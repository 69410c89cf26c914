"""Train any registered model on a compatible dataset with one Lightning Trainer.

Examples:
    python train.py                                  # LeNet, Fashion-MNIST, d2l recipe
    python train.py --model lenet_bn --recipe modern # the improved recipe
    python train.py --model mlp --data mnist --max-epochs 3 --logger wandb
    python train.py --list                           # every model with its recipe

Unset hyper-parameters come from the model's recipe (``--recipe``, default ``d2l``). Each run
folder holds config.yaml, metrics.csv, checkpoints/ (last.ckpt and the best by the validation
metric), results.json and export/ (plain-PyTorch weights; see predict.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from datamodules import DataError, build_datamodule, data_names, data_tasks, datamodule_params
from models import ExportError, format_table, get_spec, model_names

RUN_DIR_ENV = "_D2L_RUN_DIR"  # hands the run folder to DDP child processes
STRATEGIES = ("auto", "ddp", "ddp_spawn", "fsdp")


class ConfigError(Exception):
    """Flags that Lightning cannot run (exit code 2)."""


PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "bf16-true", "64-true")


def _limit(value: str) -> int | float:
    """``--limit-*-batches``: an int is a batch count, a float a fraction."""
    return float(value) if "." in value else int(value)


# Named flags routed into the model's constructor, the DataModule's, or the task module's.
MODEL_FLAGS = ("num_hiddens", "num_layers", "dropout")
DATA_FLAGS = ("val_size", "num_steps", "level", "sampler", "max_examples", "max_len")
TASK_FLAGS = ("beam_size", "length_penalty")


def _key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with a YAML-typed value (``3``, ``0.5``, ``true``, ``word``)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    return key, yaml.safe_load(value)


def build_parser() -> argparse.ArgumentParser:
    """The CLI; unset (``None``) values are filled from the recipe."""
    from lit_models import OPTIMIZERS, SCHEDULERS

    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Unset hyper-parameters come from the recipe; see --list.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default="lenet", choices=model_names(), metavar="NAME",
                   help="registered model: " + ", ".join(model_names()))
    g.add_argument("--data", choices=data_names(), metavar="NAME",
                   help="dataset (default: the model's): " + ", ".join(data_names()))
    g.add_argument("--recipe", default="d2l", help="named recipe of the model (d2l, modern...)")
    g.add_argument("--data-dir", help="data root (else $D2L_DATA_DIR, else ./data)")
    g.add_argument("--val-size", type=int, help="validation examples (default: 1/12 of train)")
    g.add_argument("--resize", type=int, help="input side length (default: the recipe's)")
    g.add_argument("--list", action="store_true", help="print the model registry and exit")
    g = p.add_argument_group("sequence models and text data (default: the recipe's)")
    g.add_argument("--num-hiddens", type=int, help="model width")
    g.add_argument("--num-layers", type=int, help="stacked layers (deep RNN, Transformer)")
    g.add_argument("--dropout", type=float, help="dropout")
    g.add_argument("--num-steps", type=int, help="tokens per sequence (d2l num_steps)")
    g.add_argument("--level", choices=("char", "word"), help="token level of Time Machine")
    g.add_argument("--sampler", choices=("random", "sequential"),
                   help="language-model batches: random windows or sequential partitioning")
    g.add_argument("--max-examples", type=int, help="use only the first N examples (fra-eng)")
    g.add_argument("--max-len", type=int, help="longest input sequence (BERT)")
    g.add_argument("--beam-size", type=int, help="beam search width for evaluation (1: greedy)")
    g.add_argument("--length-penalty", type=float, help="beam search length penalty alpha")
    g.add_argument("--model-arg", type=_key_value, action="append", default=[],
                   metavar="KEY=VALUE", help="any other model constructor argument")
    g.add_argument("--data-arg", type=_key_value, action="append", default=[],
                   metavar="KEY=VALUE", help="any other DataModule argument")
    g = p.add_argument_group("optimisation (default: the recipe's)")
    g.add_argument("--max-epochs", type=int)
    g.add_argument("--max-steps", type=int, default=-1, help="stop after N steps (-1: off)")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--optimizer", choices=OPTIMIZERS)
    g.add_argument("--scheduler", choices=SCHEDULERS)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--momentum", type=float)
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--gradient-clip-val", type=float)
    g.add_argument("--accumulate-grad-batches", type=int, default=1)
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("hardware")
    g.add_argument("--accelerator", default="auto", help="auto, cpu, gpu, mps...")
    g.add_argument("--devices", default="auto", help="count, list such as 0,1, or auto")
    g.add_argument("--strategy", default="auto", choices=STRATEGIES)
    g.add_argument("--num-nodes", type=int, default=1)
    g.add_argument("--precision", default="32-true", choices=PRECISIONS)
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--channels-last", action="store_true", help="channels-last convolutions")
    g.add_argument("--deterministic", action="store_true", help="deterministic algorithms")
    g = p.add_argument_group("run")
    g.add_argument("--run-dir", help="run folder (default: runs/MODEL-DATA-TIMESTAMP)")
    g.add_argument("--resume", metavar="PATH|last",
                   help="checkpoint to resume, or 'last' (of --run-dir, else the newest run)")
    g.add_argument("--ckpt-every-n-steps", type=int, default=0,
                   help="also refresh last.ckpt every N training steps (0: each epoch)")
    g.add_argument("--limit-train-batches", type=_limit)
    g.add_argument("--limit-val-batches", type=_limit)
    g.add_argument("--limit-test-batches", type=_limit)
    g.add_argument("--fast-dev-run", type=int, nargs="?", const=1, default=0, metavar="N",
                   help="run N (default 1) batches of each split, write nothing but the export")
    g.add_argument("--no-test", action="store_true", help="skip the test split after fit")
    g = p.add_argument_group("logging")
    g.add_argument("--logger", default="csv", choices=("csv", "tensorboard", "wandb"),
                   help="CSV metrics are always written; this adds TensorBoard or W&B")
    g.add_argument("--wandb-project", default="d2l-lightning")
    g.add_argument("--wandb-name")
    g.add_argument("--wandb-tags", nargs="*", default=[])
    g.add_argument("--progress-bar", action=argparse.BooleanOptionalAction,
                   default=sys.stderr.isatty(), help="show the progress bar")
    return p


def resolve_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Check model/data compatibility and fill unset flags from the recipe."""
    import inspect

    from lit_models import task_module

    spec = get_spec(args.model)
    if spec.name == "bi_lstm":  # an encoder only: it has already read x_{t+1} (d2l §10.4)
        from models.rnn import BIDIRECTIONAL_LM_REFUSAL

        parser.error(BIDIRECTIONAL_LM_REFUSAL)
    data = args.data or spec.data
    if spec.task not in data_tasks(data):
        parser.error(f"model '{spec.name}' ({spec.task}) cannot train on data '{data}' "
                     f"({', '.join(data_tasks(data))}); valid data for it: "
                     + ", ".join(data_names(spec.task)))
    try:
        recipe = spec.recipe(args.recipe)
    except KeyError as e:
        parser.error(e.args[0])
    cfg = vars(args).copy()
    model_kwargs = {**recipe.model_kwargs,
                    **{k: cfg[k] for k in MODEL_FLAGS if cfg[k] is not None},
                    **dict(cfg.pop("model_arg"))}
    data_kwargs = {**recipe.data_kwargs,
                   **{k: cfg[k] for k in DATA_FLAGS if cfg[k] is not None},
                   **dict(cfg.pop("data_arg"))}
    # A flag the model, the DataModule or the task module cannot take is an error, not ignored.
    builder = inspect.signature(spec.builder).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in builder.values()):
        for key in model_kwargs.keys() - builder.keys():
            parser.error(f"model '{spec.name}' takes no '{key}' "
                         f"(its options: {', '.join(builder)})")
    accepted = datamodule_params(data, spec.task)
    for key in data_kwargs.keys() - accepted:
        parser.error(f"data '{data}' takes no '{key}' (its options: "
                     f"{', '.join(sorted(accepted - {'data_dir', 'batch_size', 'seed'}))})")
    task_params = inspect.signature(task_module(spec.task).__init__).parameters
    for key in TASK_FLAGS:
        if cfg[key] is not None and key not in task_params:
            parser.error(f"--{key.replace('_', '-')} does not apply to {spec.task} models")
    cfg.update(data=data, task=spec.task, section=spec.section, model_kwargs=model_kwargs,
               data_kwargs=data_kwargs)
    for key in ("max_epochs", "batch_size", "lr", "optimizer", "scheduler", "weight_decay",
                "momentum", "label_smoothing", "gradient_clip_val", "resize"):
        if cfg[key] is None:
            cfg[key] = getattr(recipe, key)
    for key in TASK_FLAGS:  # unset: leave the task module's default
        if cfg[key] is None:
            del cfg[key]
    return cfg


def config_from_argv(argv: list[str]) -> dict[str, Any]:
    """Parse and resolve ``train.py`` arguments (for running in-process, e.g. benchmarks)."""
    parser = build_parser()
    return resolve_config(parser.parse_args(argv), parser)


def find_resume(resume: str, run_dir: str | None, runs_root: Path = Path("runs")) -> Path:
    """Resolve ``--resume``: a checkpoint path, or ``last`` of a run folder / the newest run."""
    if resume != "last":
        path = Path(resume)
    elif run_dir:
        path = Path(run_dir) / "checkpoints" / "last.ckpt"
    else:
        found = sorted(runs_root.glob("*/checkpoints/last.ckpt"), key=lambda q: q.stat().st_mtime)
        if not found:
            raise FileNotFoundError(f"--resume last: no run under {runs_root}/ has a last.ckpt")
        path = found[-1]
    if not path.is_file():
        raise FileNotFoundError(f"--resume: checkpoint {path} does not exist")
    return path


def prepare_run_dir(cfg: dict[str, Any], resume_ckpt: Path | None) -> Path:
    """Pick the run folder; never reuse a folder that holds another run."""
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited:  # a DDP child: the parent already chose and checked it
        return Path(inherited)
    if cfg["run_dir"]:
        run_dir = Path(cfg["run_dir"])
    elif resume_ckpt is not None:
        run_dir = resume_ckpt.parent.parent
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / f"{cfg['model']}-{cfg['data']}-{stamp}"
        n = 1
        while run_dir.exists():
            n += 1
            run_dir = Path("runs") / f"{cfg['model']}-{cfg['data']}-{stamp}-{n}"
    if resume_ckpt is None and (run_dir / "config.yaml").exists():
        raise FileExistsError(f"{run_dir} already holds a run; choose another --run-dir, "
                              "or continue it with --resume last")
    run_dir.mkdir(parents=True, exist_ok=True)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    return run_dir


def build_module(cfg: dict[str, Any], data_info: dict[str, Any]):
    """The task family's LightningModule, from primitive arguments only."""
    import inspect

    from lit_models import task_module

    cls = task_module(cfg["task"])
    # An unset flag (None) never hides what the data reports (e.g. a vocabulary's max_len).
    flags = {k: v for k, v in cfg.items() if v is not None or k not in data_info}
    candidates = {**data_info, **flags, "arch": cfg["model"]}
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in candidates.items() if k in accepted})


def build_trainer(cfg: dict[str, Any], run_dir: Path, module):
    """Trainer with CSV (+ TensorBoard / W&B) logging, checkpoints, export and monitoring."""
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from callbacks import ExportCallback, TrainingMonitor

    loggers: list[Any] = [CSVLogger(run_dir, name="", version="")]
    callbacks: list[Any] = [TrainingMonitor(), ExportCallback(run_dir / "export")]
    if cfg["logger"] == "tensorboard":
        loggers.append(TensorBoardLogger(run_dir, name="tensorboard", version=""))
    elif cfg["logger"] == "wandb":
        from callbacks.wandb_logging import WandbPredictionTable, make_wandb_logger

        loggers.append(make_wandb_logger(run_dir, cfg["wandb_project"], cfg["wandb_name"],
                                         cfg["wandb_tags"], _plain(cfg)))
        callbacks.append(WandbPredictionTable())
    metric, mode = module.monitor
    ckpt_dir = run_dir / "checkpoints"
    callbacks.append(ModelCheckpoint(
        ckpt_dir, filename="best-{epoch:02d}-{step}", monitor=metric, mode=mode, save_top_k=1,
        auto_insert_metric_name=False))
    # last.ckpt every epoch. Lightning 2.6's `save_last=True` on the monitored callback above
    # rewrites it only in epochs that improve the metric, which would leave it stale.
    callbacks.append(ModelCheckpoint(ckpt_dir, filename="last", monitor=None, save_top_k=1,
                                     enable_version_counter=False))
    if cfg["ckpt_every_n_steps"]:
        callbacks.append(ModelCheckpoint(ckpt_dir, every_n_train_steps=cfg["ckpt_every_n_steps"],
                                         save_top_k=0, save_last=True))
    if cfg["scheduler"] != "none":
        callbacks.append(LearningRateMonitor("step"))
    devices = cfg["devices"]
    devices = int(devices) if str(devices).isdigit() else devices
    limits = {k: cfg[f"limit_{k}_batches"] for k in ("train", "val", "test")
              if cfg[f"limit_{k}_batches"] is not None}
    return L.Trainer(
        accelerator=cfg["accelerator"], devices=devices, strategy=cfg["strategy"],
        num_nodes=cfg["num_nodes"], precision=cfg["precision"], max_epochs=cfg["max_epochs"],
        max_steps=cfg["max_steps"],
        gradient_clip_val=cfg["gradient_clip_val"],
        accumulate_grad_batches=cfg["accumulate_grad_batches"],
        fast_dev_run=cfg["fast_dev_run"], deterministic=cfg["deterministic"] or None,
        logger=loggers, callbacks=callbacks, default_root_dir=run_dir,
        enable_progress_bar=cfg["progress_bar"], enable_model_summary=False,
        log_every_n_steps=10, **{f"limit_{k}_batches": v for k, v in limits.items()})


def _plain(cfg: dict[str, Any]) -> dict[str, Any]:
    """JSON/YAML-safe copy of the config."""
    return json.loads(json.dumps(cfg, default=str))


def _metrics(values: dict[str, Any], prefix: str) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if k.startswith(prefix)}


def run(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """Fit, test, export; return the results written to ``results.json`` (``None`` off rank 0)."""
    hands_off_run_dir = RUN_DIR_ENV not in os.environ  # else a DDP child of such a run
    try:
        return _run(cfg)
    finally:
        if hands_off_run_dir:
            os.environ.pop(RUN_DIR_ENV, None)


def _run(cfg: dict[str, Any]) -> dict[str, Any] | None:
    import lightning as L
    import yaml

    L.seed_everything(cfg["seed"], workers=True, verbose=False)
    resume_ckpt = find_resume(cfg["resume"], cfg["run_dir"]) if cfg["resume"] else None
    dm = build_datamodule(cfg["data"], cfg["task"], data_dir=cfg["data_dir"],
                          batch_size=cfg["batch_size"], seed=cfg["seed"], **cfg["data_kwargs"])
    dm.prepare_data()  # fail here, before any process is spawned, if the data is missing
    try:  # before the run folder exists, so a refused configuration leaves nothing behind
        module = build_module(cfg, dm.data_info())
    except ValueError as e:  # options the model cannot take together, e.g. impossible tying
        raise ConfigError(f"model '{cfg['model']}': {e}") from None
    run_dir = prepare_run_dir(cfg, resume_ckpt)
    try:
        trainer = build_trainer(cfg, run_dir, module)
    except (ValueError, RuntimeError) as e:  # e.g. fsdp without a GPU, an unknown accelerator
        raise ConfigError(str(e).strip().splitlines()[0]) from None
    if trainer.is_global_zero:  # a resumed run keeps the original config.yaml
        name = "config.yaml"
        n = 1
        while resume_ckpt is not None and (run_dir / name).exists():
            name, n = f"config.resume{n if n > 1 else ''}.yaml", n + 1
        (run_dir / name).write_text(yaml.safe_dump(_plain(cfg), sort_keys=False))
    trainer.fit(module, datamodule=dm, ckpt_path=resume_ckpt, weights_only=True)
    val = _metrics(trainer.callback_metrics, "val/")
    run_summary = _metrics(trainer.callback_metrics, "run/")  # from TrainingMonitor
    test = {}
    if not cfg["no_test"]:
        tested = trainer.test(module, datamodule=dm, verbose=False)[0]
        test = {k: float(v) for k, v in tested.items()}
    results = {
        "model": cfg["model"], "data": cfg["data"], "recipe": cfg["recipe"],
        "epochs": int(run_summary.get("run/epochs", 0)),
        "global_step": int(run_summary.get("run/global_step", 0)),
        "train_time_sec": round(run_summary.get("run/train_time_sec", 0.0), 3),
        "train_samples_per_sec": round(run_summary.get("run/train_samples_per_sec", 0.0), 1),
        **val, **test,
        "dataset_sizes": dm.sizes(),
        "resumed_from": str(resume_ckpt) if resume_ckpt else None,
        "run_dir": str(run_dir), "export_dir": str(run_dir / "export"),
    }
    cm = getattr(module, "confusion_matrix", None)
    if cm is not None:
        results["test/confusion_matrix"] = cm.tolist()
    if not trainer.is_global_zero:
        return None
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    return results


def _quiet_warnings() -> None:
    """Drop Lightning messages that do not apply here.

    Our loaders need no workers, the run folder is shared by design, the CSV logger is always on.
    """
    import logging
    import warnings

    for msg in (".*exists and is not empty.*", ".*overridden `on_after_batch_transfer`.*",
                ".*does not have many workers.*", ".*LeafSpec.*",
                ".*smaller than the logging interval.*"):
        warnings.filterwarnings("ignore", message=msg)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage())


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    _quiet_warnings()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        print(format_table())
        return 0
    cfg = resolve_config(args, parser)
    try:
        results = run(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (DataError, ExportError, FileNotFoundError, FileExistsError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        from callbacks import NonFiniteLossError

        if isinstance(e, NonFiniteLossError):
            print(f"error: stopped: {e}", file=sys.stderr)
            return 1
        raise
    if results is not None:
        shown = {k: round(v, 4) for k, v in results.items()
                 if k.startswith(("val/", "test/")) and isinstance(v, float)}
        print(f"\n{cfg['model']} on {cfg['data']}: {shown}")
        print(f"train: {results['train_samples_per_sec']:.0f} samples/s, "
              f"{results['epochs']} epochs, {results['train_time_sec']:.1f} s")
        print(f"run folder: {results['run_dir']}")
        print(f"export:     {results['export_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
