"""The Trainer's objects named in a config: loggers, callbacks, plugins and the profiler.

A config names them, as Lightning's own ``LightningCLI`` does, by class with their arguments::

    trainer:
      logger: {csv: {}, tensorboard: {}, wandb: {project: d2l, tags: [lenet]}}
      callbacks: {EarlyStopping: {patience: 2}, StochasticWeightAveraging: {swa_lrs: 0.01}}
      plugins: {MixedPrecision: {precision: bf16-mixed, device: cpu}}
      profiler: simple

A name is a class of ``lightning.pytorch.callbacks`` (``loggers``, ``plugins``,
``profilers``) or a dotted path to any subclass of Lightning's base class (a user's own); a
list of names or of LightningCLI's ``{class_path, init_args}`` entries is read the same way.
:func:`check_objects` checks each one against its class when the config is resolved (unknown
names and arguments, wrong types, missing required arguments are one sentence) and writes the
class defaults into the config, so ``config.yaml`` says what ran. ``NAME: false`` drops an
entry set by an earlier layer.

Loggers: ``csv`` is the run's ``metrics.csv`` (always written), ``tensorboard`` and ``wandb``
are Lightning's loggers set up for the run folder (TensorBoard in ``tensorboard/``, W&B offline
without a key or network, its run id kept for resumes). A callback that takes a ``monitor``
gets the task's monitored metric (and its ``mode``) unless told otherwise; ``ModelCheckpoint``
configures the run's best-checkpoint callback (its folder is the run's ``checkpoints/``).
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
from pathlib import Path
from typing import Any

from .checks import Sources
from .errors import ConfigError
from .types import conform, hints_of, type_name

#: the trainer keys whose values name objects
OBJECT_KEYS = ("logger", "callbacks", "plugins", "profiler")
#: our names of loggers and the Lightning class names that mean the same set-up
LOGGER_ALIASES = {"TensorBoardLogger": "tensorboard", "WandbLogger": "wandb",
                  "MetricsCSVLogger": "csv"}
#: arguments of our logger set-ups that the run itself chooses
RUN_LOGGER_ARGS = {"tensorboard": ("save_dir", "name", "version"),
                   "wandb": ("save_dir", "id", "version", "resume", "offline", "config",
                             "settings")}
WANDB_DEFAULTS = {"project": "d2l-lightning", "name": None, "tags": []}
#: the run's best-checkpoint callback (``ModelCheckpoint`` entries change these)
BEST_CHECKPOINT = {"filename": "best-{epoch:02d}-{step}", "save_top_k": 1,
                   "auto_insert_metric_name": False}


def _namespace(kind: str) -> tuple[Any, type]:
    """The Lightning module that holds a kind's classes, and their base class."""
    from lightning.pytorch import callbacks, loggers, plugins, profilers

    # the plugin bases are several (precision, environment, checkpoint IO): any class of
    # lightning.pytorch.plugins
    return {"callbacks": (callbacks, callbacks.Callback), "logger": (loggers, loggers.Logger),
            "plugins": (plugins, object), "profiler": (profilers, profilers.Profiler)}[kind]


def find_class(name: str, kind: str, label: str) -> type:
    """The class a config names: a Lightning class of ``kind``, or a dotted path to one.

    Raises:
        ConfigError: no such class, or not one of ``kind``.
    """
    module, base = _namespace(kind)
    cls: Any = None
    if "." in name:
        where, _, attr = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(where), attr, None)
        except ImportError as e:
            raise ConfigError(f"{label}: cannot import {where} ({e})") from None
    else:
        cls = getattr(module, name, None)
    if not (isinstance(cls, type) and issubclass(cls, base)) or cls is base:
        known = sorted(n for n in getattr(module, "__all__", dir(module))
                       if isinstance(getattr(module, n, None), type)
                       and issubclass(getattr(module, n), base) and getattr(module, n) is not base)
        raise ConfigError(f"{label}: '{name}' is not a {kind.rstrip('s')} class of "
                          f"{module.__name__} (choose from: {', '.join(known)}) nor a dotted "
                          "path to one")
    return cls


def _plain(value: Any) -> bool:
    """Whether a default can be written into a config (YAML scalars, lists, mappings)."""
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(map(_plain, value))
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def check_args(cls: type, args: dict[str, Any], label: str, fixed: tuple[str, ...] = (),
               filled: dict[str, Any] | None = None) -> dict[str, Any]:
    """``args`` checked against ``cls.__init__``, with its defaults (and ``filled``) added.

    Raises:
        ConfigError: an unknown argument (unless the class takes ``**kwargs``), one the run
            sets itself (``fixed``), a wrong type, or a required argument missing.
    """
    if not isinstance(args, dict):
        raise ConfigError(f"{label}: the arguments must be a mapping, not {args!r}")
    params = {k: p for k, p in inspect.signature(cls.__init__).parameters.items()
              if k != "self" and p.kind not in (p.VAR_POSITIONAL,)}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    params = {k: p for k, p in params.items() if p.kind is not p.VAR_KEYWORD}
    hints = hints_of(cls.__init__)
    out = {}
    for key, value in args.items():
        if key in fixed:
            raise ConfigError(f"{label}: '{key}' is set by the run ({', '.join(fixed)} are)")
        if key not in params and not takes_any:
            raise ConfigError(f"{label}: {cls.__name__} takes no '{key}' (its arguments: "
                              f"{', '.join(params) or 'none'})")
        try:
            out[key] = conform(value, hints[key]) if key in hints else value
        except TypeError:
            raise ConfigError(f"{label}: {cls.__name__}'s '{key}' must be "
                              f"{type_name(hints[key])}, got {value!r}") from None
    for key, value in (filled or {}).items():
        if key in params or takes_any:
            out.setdefault(key, value)
    for key, p in params.items():
        if key in out or key in fixed:
            continue
        if p.default is p.empty:
            raise ConfigError(f"{label}: {cls.__name__} needs '{key}'")
        if _plain(p.default):
            out[key] = list(p.default) if isinstance(p.default, tuple) else p.default
    return out


def entries(value: Any, label: str) -> dict[str, Any]:
    """A mapping ``{name: arguments}`` from any of the accepted forms (see the module doc)."""
    if value in (None, False):
        return {}
    if isinstance(value, str):
        return {value: {}}
    if isinstance(value, dict):
        return {str(k): ({} if v is None or v is True else v) for k, v in value.items()
                if v is not False}
    if isinstance(value, list):
        out: dict[str, Any] = {}
        for item in value:
            if isinstance(item, str):
                out[item] = {}
            elif isinstance(item, dict) and "class_path" in item:
                out[str(item["class_path"])] = item.get("init_args") or {}
            elif isinstance(item, dict) and len(item) == 1:
                out.update(entries(item, label))
            else:
                raise ConfigError(f"{label}: cannot read {item!r} as a class name or a "
                                  "{class_path, init_args} mapping")
        return out
    raise ConfigError(f"{label}: expected a mapping of class names to their arguments, a "
                      f"list of them, or a name, not {value!r}")


def check_objects(cfg: dict[str, dict[str, Any]], sources: Sources,
                  monitor: tuple[str, str]) -> None:
    """Check and complete the trainer's loggers, callbacks, plugins and profiler in place.

    Raises:
        ConfigError: one sentence naming the source of the bad entry.
    """
    tr = cfg["trainer"]

    def label(key: str, name: str = "") -> str:
        src = sources.get(("trainer", f"{key}.{name}"), sources.get(("trainer", key), "default"))
        return f"{src}: trainer.{key}" + (f".{name}" if name else "")

    raw = tr.get("logger")
    if raw is False or raw == {} or raw == [] or isinstance(raw, dict) and any(
            raw.get(name) is False for name in ("csv", "MetricsCSVLogger")):
        raise ConfigError(f"{label('logger')}: metrics.csv is always written; the least is "
                          "the csv logger alone")
    loggers: dict[str, Any] = {"csv": {}}
    for name, args in entries(raw, label("logger")).items():
        key = LOGGER_ALIASES.get(name, name)
        if key == "csv":
            if args:
                raise ConfigError(f"{label('logger', name)}: the csv logger (metrics.csv) "
                                  "takes no arguments")
            continue
        if key in ("tensorboard", "wandb"):
            from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

            cls = TensorBoardLogger if key == "tensorboard" else WandbLogger
            filled = WANDB_DEFAULTS if key == "wandb" else {"default_hp_metric": False}
            loggers[key] = check_args(cls, args, label("logger", name), RUN_LOGGER_ARGS[key],
                                      filled)
            continue
        cls = find_class(name, "logger", label("logger", name))
        save_dir = {"save_dir": None} if "save_dir" in inspect.signature(cls).parameters else {}
        loggers[name] = check_args(cls, args, label("logger", name), filled=save_dir)
    tr["logger"] = loggers

    metric, mode = monitor
    callbacks = {}
    for name, args in entries(tr.get("callbacks"), label("callbacks")).items():
        cls = find_class(name, "callbacks", label("callbacks", name))
        params = inspect.signature(cls).parameters
        given = args if isinstance(args, dict) else {}
        filled = {}
        if "monitor" in params and "monitor" not in given:
            filled["monitor"] = metric
            if "mode" in params and "mode" not in given:
                filled["mode"] = mode
        from lightning.pytorch.callbacks import ModelCheckpoint

        fixed: tuple[str, ...] = ()
        if issubclass(cls, ModelCheckpoint):  # the run's best checkpoint, in checkpoints/
            filled, fixed = {**filled, **BEST_CHECKPOINT}, ("dirpath",)
        callbacks[name] = check_args(cls, args, label("callbacks", name), fixed, filled)
    tr["callbacks"] = callbacks
    accumulating = [n for n in callbacks if n.rsplit(".", 1)[-1] == "GradientAccumulationScheduler"]
    if accumulating and tr["accumulate_grad_batches"] != 1:  # Lightning refuses it in fit
        raise ConfigError(f"{label('callbacks', accumulating[0])}: the callback and "
                          f"trainer.accumulate_grad_batches {tr['accumulate_grad_batches']} "
                          "both set how many batches a step accumulates; keep one of them")

    plugins = entries(tr.get("plugins"), label("plugins"))
    tr["plugins"] = {name: check_args(find_class(name, "plugins", label("plugins", name)),
                                      args, label("plugins", name))
                     for name, args in plugins.items()} or None
    profiler = tr.get("profiler")
    if isinstance(profiler, (dict, list)):
        tr["profiler"] = {name: check_args(find_class(name, "profiler", label("profiler")),
                                           args, label("profiler"))
                          for name, args in entries(profiler, label("profiler")).items()}
    elif profiler is not None and not isinstance(profiler, str):
        raise ConfigError(f"{label('profiler')}: expected a profiler name (simple, advanced, "
                          f"pytorch) or a mapping of a class to its arguments, not {profiler!r}")
    json.dumps(tr, default=str)  # what config.yaml will hold


def build_callbacks(cfg: dict[str, dict[str, Any]]) -> tuple[list[Any], dict[str, Any]]:
    """The config's callbacks, and the arguments of the best-checkpoint callback (if given)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    out, best = [], {}
    for name, args in cfg["trainer"]["callbacks"].items():
        cls = find_class(name, "callbacks", f"trainer.callbacks.{name}")
        if issubclass(cls, ModelCheckpoint):
            best = {"cls": cls, **args}
        else:
            out.append(cls(**args))
    return out, best


def build_plugins(cfg: dict[str, dict[str, Any]]) -> list[Any]:
    """The config's plugins."""
    return [find_class(name, "plugins", f"trainer.plugins.{name}")(**args)
            for name, args in (cfg["trainer"]["plugins"] or {}).items()]


def build_profiler(cfg: dict[str, dict[str, Any]]) -> Any:
    """The config's profiler: a name Lightning knows, an instance, or ``None``."""
    profiler = cfg["trainer"]["profiler"]
    if not isinstance(profiler, dict):
        return profiler
    (name, args), = profiler.items()
    return find_class(name, "profiler", "trainer.profiler")(**args)


def build_loggers(cfg: dict[str, dict[str, Any]], run_dir: Path) -> list[Any]:
    """``metrics.csv``, then TensorBoard, W&B (not started yet) and any other logger."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from d2l_lightning.callbacks.csv_logger import MetricsCSVLogger

    out: list[Any] = [MetricsCSVLogger(run_dir)]
    for name, args in cfg["trainer"]["logger"].items():
        if name == "csv":
            continue
        if name == "tensorboard":  # the same folder on resume: the same TensorBoard run
            out.append(TensorBoardLogger(run_dir, name="tensorboard", version="", **args))
        elif name == "wandb":
            from d2l_lightning.callbacks.wandb_logging import make_wandb_logger

            id_file = run_dir / "wandb" / "run_id"
            run_id = id_file.read_text().strip() if id_file.is_file() else None
            out.append(make_wandb_logger(run_dir, run_id=run_id, **args))
        else:
            cls = find_class(name, "logger", f"trainer.logger.{name}")
            kw = dict(args)
            if "save_dir" in kw and kw["save_dir"] is None:
                kw["save_dir"] = str(run_dir)
            out.append(cls(**kw))
    return out
