"""One run config in six sections, from flags, config files and the model's recipe.

A run is described by a mapping of six sections, each handed to one consumer:

========= ===========================================================================
section   consumer
========= ===========================================================================
model     the architecture's builder (``name`` and ``recipe`` pick the builder and recipe)
data      the DataModule (``name`` picks it; ``run.seed`` is passed as its ``seed``)
task      the task family's LightningModule: loss, metrics, decoding, preprocessing
optim     the same LightningModule's optimizer and schedule (:class:`.schema.Optim`)
trainer   ``lightning.Trainer``: every keyword argument, loggers and callbacks by name
run       what :func:`d2l_lightning.training.fit` does around it (:class:`.schema.Run`)
========= ===========================================================================

Every flag of :func:`.flags.build_parser` sets one key of one section (its ``dest`` is
``"section.key"``); ``--model-arg``/``--data-arg``/``--task-arg KEY=VALUE`` and
``--SECTION.KEY=VALUE`` reach any other key (``--trainer.callbacks.EarlyStopping.patience=2``
an argument of a callback). Values are layered, later winning: the schema's defaults, the
model's recipe, ``--config`` files in order, then the command line; mappings (loggers,
callbacks and their arguments) are merged key by key, and ``NAME: false`` drops an entry of an
earlier layer. :func:`resolve` checks every key against what takes it and fills in the
defaults, so the resolved config names every setting of the run.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .checks import Consumer, check_constructor_section, check_fixed_section, check_values
from .errors import ConfigError
from .flags import build_parser, flag_actions
from .schema import FIXED

SECTIONS = ("model", "data", "task", "optim", "trainer", "run")
#: Recipe field -> section (``model_kwargs``, ``data_kwargs`` and ``data`` go to ``model`` and
#: ``data``)
RECIPE_SECTIONS = {
    "optimizer": "optim", "lr": "optim", "weight_decay": "optim", "momentum": "optim",
    "scheduler": "optim", "plateau_factor": "optim", "plateau_patience": "optim",
    "label_smoothing": "task", "resize": "task",
    "batch_size": "data", "max_epochs": "trainer", "gradient_clip_val": "trainer",
}
#: the run configs shipped with the package (``--config fashion_mnist/lenet_bn-modern``)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"

Config = dict[str, dict[str, Any]]
log = logging.getLogger("d2l_lightning")


@dataclass
class Layer:
    """One source of config values: a file, the recipe, the command line.

    Attributes:
        label: how messages name the source, e.g. ``config runs/a/config.yaml``.
        values: ``{section: {key: value}}``; an argument of a logger or callback is a nested
            mapping (``{"trainer": {"callbacks": {"EarlyStopping": {"patience": 2}}}}``).
        sources: per-key labels where they differ from ``label`` (``--lr``); a nested key is
            written with dots (``("trainer", "callbacks.EarlyStopping.patience")``).
        optional: keys that may be dropped when their consumer cannot take them (a recipe's
            unchanged defaults, e.g. ``label_smoothing: 0.0`` for a language model).
    """

    label: str
    values: Config = field(default_factory=dict)
    sources: dict[tuple[str, str], str] = field(default_factory=dict)
    optional: set[tuple[str, str]] = field(default_factory=set)

    def set(self, section: str, key: str | tuple[str, ...], value: Any,
            source: str | None = None) -> None:
        """Set one key; ``a.b.c`` (or ``("a", "b", "c")``) sets ``b.c`` inside key ``a``.

        ``source`` labels it in messages. A tuple keeps a dotted class name in one piece
        (``("callbacks", "my_pkg.MyCallback")``).
        """
        parts = key if isinstance(key, tuple) else tuple(key.split("."))
        key = ".".join(parts)
        *path, last = parts
        where = self.values.setdefault(section, {})
        for part in path:
            if not isinstance(where.get(part), dict):
                where[part] = {}
            where = where[part]
        where[last] = value
        if source:
            self.sources[section, key] = source

    def items(self):
        """``(section, key, value)`` triples of the top-level keys."""
        for section, values in self.values.items():
            for key, value in values.items():
                yield section, key, value


def shipped_configs() -> list[str]:
    """The names of the shipped configs, e.g. ``fashion_mnist/lenet_bn-modern``."""
    return sorted(p.relative_to(CONFIGS).with_suffix("").as_posix()
                  for p in CONFIGS.rglob("*.yaml"))


def config_path(name: str | Path, what: str = "config") -> Path:
    """A config file named by a path, or by the name of a shipped config.

    A file at ``name`` wins; else ``name`` (``.yaml`` optional) under :data:`CONFIGS`.

    Raises:
        ConfigError: neither exists (or ``name`` is a folder).
    """
    path = Path(name)
    if path.is_file():
        return path
    shipped = CONFIGS / (str(name) if str(name).endswith(".yaml") else f"{name}.yaml")
    if not path.is_absolute() and ".." not in path.parts and shipped.is_file():
        return shipped
    if path.is_dir():
        raise ConfigError(f"{what} {name} is a folder, not a file")
    raise ConfigError(f"{what} {name} is neither a file nor a shipped config (the shipped "
                      "ones: train.py --list-configs)")


def read_yaml(path: Path, what: str) -> Any:
    """A YAML file's data; a file that cannot be read or parsed is one ConfigError sentence.

    A key given twice, an alias bomb and runaway nesting are refused too (see
    :func:`.types.load_yaml`).
    """
    import yaml

    from .types import YamlRefusedError, load_yaml

    try:
        return load_yaml(path.read_text(encoding="utf-8"))
    except YamlRefusedError as e:
        raise ConfigError(f"{what} {path}: {e}") from None
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{what} {path} does not parse as YAML ({first})") from None


def load_config_file(path: str | Path) -> Layer:
    """A config file (a path or a shipped name) as a layer; problems are one sentence.

    Files of earlier versions are read in today's sections (:func:`d2l_lightning.compat.
    upgrade_config`).

    Raises:
        ConfigError: the file is missing, does not parse, or is not sectioned as a config.
    """
    from d2l_lightning.compat import CompatError, upgrade_config

    path = config_path(path)
    label = f"config {path}"
    data = read_yaml(path, "config file")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, "
                          f"not a {type(data).__name__}")
    try:
        data = upgrade_config(data)
    except CompatError as e:
        raise ConfigError(f"{label}: {e}") from None
    layer = Layer(label)
    for section, values in data.items():
        if section not in SECTIONS:
            raise ConfigError(f"{label}: unknown section '{section}' "
                              f"(sections: {', '.join(SECTIONS)})")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{label}: section '{section}' must be a mapping of keys, "
                              f"not a {type(values).__name__}")
        for key, value in values.items():
            layer.values.setdefault(section, {})[str(key)] = value
    return layer


def recipe_layer(spec: Any, recipe_name: str) -> Layer:
    """The recipe's values, by section; unchanged ``Recipe`` defaults are optional."""
    from d2l_lightning.models import Recipe

    recipe = spec.recipe(recipe_name)
    layer = Layer(f"recipe '{recipe_name}' of {spec.name}")
    for f in fields(Recipe):
        value = getattr(recipe, f.name)
        if f.name in ("model_kwargs", "data_kwargs"):
            for k, v in value.items():
                layer.set(f.name.split("_")[0], k, v)
            continue
        if f.name == "data":  # picks the DataModule (see resolve)
            continue
        section = RECIPE_SECTIONS[f.name]
        layer.set(section, f.name, value)
        if value == f.default:
            layer.optional.add((section, f.name))
    return layer


def _merge_into(into: dict[str, Any], values: dict[str, Any]) -> None:
    """Merge ``values`` into ``into``: mappings key by key, anything else replaced.

    A mapping is copied whole (nested ones too), so a later layer never writes into an earlier
    layer or the schema's defaults.
    """
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge_into(into[key], value)
        else:
            into[key] = copy.deepcopy(value) if isinstance(value, dict) else value


def _merge(layers: Sequence[Layer]) -> tuple[Config, dict[tuple[str, str], str], set]:
    values: Config = {s: {} for s in SECTIONS}
    sources: dict[tuple[str, str], str] = {}
    optional: set[tuple[str, str]] = set()
    for layer in layers:
        for section, key, value in layer.items():
            target = values.setdefault(section, {})
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                _merge_into(target[key], value)
            else:
                target[key] = copy.deepcopy(value) if isinstance(value, dict) else value
            sources[section, key] = layer.sources.get((section, key), layer.label)
            optional.discard((section, key))
        for (section, key), label in layer.sources.items():  # --callback NAME KEY=VALUE...
            if "." in key:
                sources[section, key] = label
        optional |= layer.optional
    return values, sources, optional


def resolve(layers: Sequence[Layer], notes: list[str] | None = None) -> Config:
    """The full config of a run from its layers (later layers win).

    Picks the model, its recipe and the data (the recipe's dataset unless ``data.name`` is
    set, which a note then points out), puts the schema's defaults and the recipe under the
    layers, checks every key against what takes it (type included), fills in the remaining
    defaults, and checks the loggers and callbacks against their classes. Notes go to
    ``notes`` when given, else to the ``d2l_lightning`` logger as warnings.

    Raises:
        ConfigError: an unknown model, recipe, data or key, a wrong type or value, or a key
            that the chosen model, DataModule or task module cannot take.
    """
    from d2l_lightning.datamodules.registry import data_names, data_tasks
    from d2l_lightning.models import get_spec

    from .objects import check_objects

    users, sources, _ = _merge(layers)

    def pick(section: str, key: str, default: Any) -> tuple[Any, str]:
        if key in users[section]:
            return users[section][key], sources[section, key]
        return default, "default"

    name, src = pick("model", "name", "lenet")
    try:
        spec = get_spec(str(name))
    except KeyError as e:
        raise ConfigError(f"{src}: {e.args[0]}") from None
    task_cls = _task_class(spec)
    recipe_name, src = pick("model", "recipe", "d2l")
    try:
        recipe = recipe_layer(spec, str(recipe_name))
    except KeyError as e:
        raise ConfigError(f"{src}: {e.args[0]}") from None
    recipe_data = spec.recipe(str(recipe_name)).data
    data, src = pick("data", "name", recipe_data or spec.data)
    try:
        served = data_tasks(str(data))
    except KeyError as e:
        raise ConfigError(f"{src}: {e.args[0]}") from None
    if spec.task not in served:
        raise ConfigError(f"{src}: model '{spec.name}' ({spec.task}) cannot train on data "
                          f"'{data}' ({', '.join(served)}); valid data for it: "
                          + ", ".join(data_names(spec.task)))
    if recipe_data and data != recipe_data:
        said = (f"recipe '{recipe_name}' of {spec.name} is made for data '{recipe_data}'; "
                f"training on '{data}' as {src} says")
        log.warning(said) if notes is None else notes.append(said)

    defaults = Layer("defaults")
    for section in ("trainer", "run"):
        for key, spec_key in FIXED[section].items():
            if not spec_key.from_recipe:
                defaults.set(section, key, spec_key.default)
    values, sources, optional = _merge([defaults, recipe, *layers])
    values["model"].update(name=spec.name, recipe=str(recipe_name))
    values["data"]["name"] = str(data)
    consumers = _consumers(spec, task_cls, str(data))
    homes = _homes()
    cfg: Config = {}
    for section in SECTIONS:
        if section in consumers:
            cfg[section] = check_constructor_section(section, values[section],
                                                     consumers[section], sources, optional,
                                                     homes)
        else:
            cfg[section] = check_fixed_section(section, values[section], FIXED[section],
                                               _trainer_hints() if section == "trainer" else {},
                                               sources, optional, homes)
    check_values(cfg, sources)
    check_objects(cfg, sources, task_cls.monitor)
    return cfg


def _trainer_hints() -> dict[str, Any]:
    """``lightning.Trainer``'s evaluated type hints, which check the trainer section.

    Its objects (loggers, callbacks, plugins, profiler) are named in a config and checked by
    :func:`.objects.check_objects` instead.
    """
    import lightning as L

    from .objects import OBJECT_KEYS
    from .types import hints_of

    return {k: v for k, v in hints_of(L.Trainer.__init__).items() if k not in OBJECT_KEYS}


def _homes() -> dict[str, set[str]]:
    """Which sections each key of a flag or of a fixed section belongs to."""
    homes: dict[str, set[str]] = {}
    for section, key in flag_actions(build_parser()):
        homes.setdefault(key.split(".")[0], set()).add(section)
    for section, keys in FIXED.items():
        for key in keys:
            homes.setdefault(key, set()).add(section)
    return homes


def _task_class(spec: Any) -> type:
    from d2l_lightning.lit_models import TASK_MODULES

    if spec.cannot_train:
        raise ConfigError(f"model '{spec.name}' cannot train with train.py: "
                          f"{spec.cannot_train}")
    if spec.task not in TASK_MODULES:
        raise ConfigError(f"model '{spec.name}' ({spec.task}) cannot train with train.py, "
                          "which trains " + ", ".join(TASK_MODULES) + " models")
    return TASK_MODULES[spec.task]


def _consumers(spec: Any, task_cls: type, data: str) -> dict[str, Consumer]:
    """What takes each constructor section (``model``, ``data``, ``task``)."""
    from d2l_lightning.datamodules.registry import datamodule_class

    own = inspect.signature(task_cls.__init__).parameters
    not_task = {"self", "arch", "model_kwargs", *task_cls.data_args}
    return {
        "model": Consumer(f"model '{spec.name}'", spec.builder, reserved=("name", "recipe"),
                          from_data=task_cls.model_data_args),
        "data": Consumer(f"data '{data}'", datamodule_class(data, spec.task).__init__,
                         reserved=("name",), excluded=("self", "seed")),
        "task": Consumer(f"the {spec.task} task", task_cls.__init__,
                         excluded=tuple(own.keys() & not_task), from_data=task_cls.data_args,
                         extra=False),
    }


def dump_config(cfg: Config, header: str = "") -> str:
    """YAML of a resolved config, sections in schema order, with ``header`` as comments."""
    import json

    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def flow_scalars(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
        flow = all(not isinstance(v, (list, dict)) for v in data)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)

    Dumper.add_representer(list, flow_scalars)
    plain = json.loads(json.dumps(cfg, default=str))  # tuples -> lists, paths -> strings
    body = yaml.dump({s: plain[s] for s in SECTIONS if s in plain}, Dumper=Dumper,
                     sort_keys=False, default_flow_style=False, width=100)
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    return "\n".join([*lines, body]) if lines else body


__all__ = ["CONFIGS", "SECTIONS", "Config", "ConfigError", "Layer", "config_path",
           "dump_config", "load_config_file", "recipe_layer",
           "resolve", "shipped_configs"]
