"""One run config in six sections, from flags, config files and the model's recipe.

A run is described by a mapping of six sections, each handed to one consumer:

========= ===========================================================================
section   consumer
========= ===========================================================================
model     the architecture's builder (``name`` and ``recipe`` pick the builder and recipe)
data      the DataModule (``name`` picks it; ``run.seed`` is passed as its ``seed``)
task      the task family's LightningModule: loss, metrics, decoding, preprocessing
optim     the same LightningModule's optimizer, schedule and gradient clipping
trainer   ``lightning.Trainer`` (plus ``compile``, which ``train.py`` applies to the model)
run       the run folder, seed, loggers and checkpoints (read by ``train.py`` itself)
========= ===========================================================================

Every flag of :func:`training.flags.build_parser` belongs to exactly one section (its ``dest`` is
``"section.key"``); ``--model-arg``/``--data-arg``/``--task-arg KEY=VALUE`` and
``--SECTION.KEY=VALUE`` reach any other key. Values are layered, later winning: the
``trainer``/``run`` flag defaults, the model's recipe, ``--config`` files in order, then the
command line. :func:`resolve` checks every key against the constructor that takes it and fills
in that constructor's defaults, so the resolved config names every setting of the run.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .checks import check_constructor_section, check_values
from .flags import build_parser, flag_actions

SECTIONS = ("model", "data", "task", "optim", "trainer", "run")
#: Recipe field -> section (``model_kwargs`` and ``data_kwargs`` go to ``model`` and ``data``)
RECIPE_SECTIONS = {
    "optimizer": "optim", "lr": "optim", "weight_decay": "optim", "momentum": "optim",
    "scheduler": "optim", "label_smoothing": "optim", "gradient_clip_val": "optim",
    "plateau_factor": "optim", "plateau_patience": "optim",
    "batch_size": "data", "max_epochs": "trainer", "resize": "task",
}

Config = dict[str, dict[str, Any]]


class ConfigError(Exception):
    """A configuration train.py refuses (exit code 2, one sentence)."""


@dataclass
class Layer:
    """One source of config values: a file, the recipe, the command line.

    Attributes:
        label: how messages name the source, e.g. ``config runs/a/config.yaml``.
        values: ``{section: {key: value}}``.
        sources: per-key labels where they differ from ``label`` (``--lr``).
        optional: keys that may be dropped when their consumer cannot take them (a recipe's
            unchanged defaults, e.g. ``label_smoothing: 0.0`` for a language model).
    """

    label: str
    values: Config = field(default_factory=dict)
    sources: dict[tuple[str, str], str] = field(default_factory=dict)
    optional: set[tuple[str, str]] = field(default_factory=set)

    def set(self, section: str, key: str, value: Any, source: str | None = None) -> None:
        """Set one key (``source`` labels it in messages)."""
        self.values.setdefault(section, {})[key] = value
        if source:
            self.sources[section, key] = source

    def items(self):
        """``(section, key, value)`` triples."""
        for section, values in self.values.items():
            for key, value in values.items():
                yield section, key, value


@dataclass
class Request:
    """What one ``train.py`` command line asks for."""

    cli: Layer
    configs: list[str]
    print_config: bool = False
    list_models: str | None = None
    resume: str | None = None
    sweep: str | None = None


def parse_command_line(argv: Sequence[str] | None = None) -> Request:
    """Parse flags into a :class:`Request`; the command line's values form one layer."""
    import yaml

    parser = build_parser()
    ns, rest = parser.parse_known_args(argv)
    cli = Layer("the command line")

    def put(section: str, key: str, value: Any, source: str) -> None:
        earlier = cli.sources.get((section, key))
        if earlier and earlier.split()[0] != source.split()[0]:
            parser.error(f"{earlier} and {source} both set {section}.{key}")
        cli.set(section, key, value, source)

    for dest, value in vars(ns).items():
        section, dot, key = dest.partition(".")
        if not dot:
            continue
        flag = next(a.option_strings[0] for a in parser._actions if a.dest == dest)
        if key == "*":  # --model-arg KEY=VALUE ...
            for k, v in value:
                put(section, k, v, f"{flag} {k}")
        else:
            put(section, key, value, flag)
    i = 0
    while i < len(rest):  # --SECTION.KEY=VALUE or --SECTION.KEY VALUE
        token = rest[i]
        name, eq, text = token[2:].partition("=")
        section, dot, key = name.partition(".")
        if not token.startswith("--") or section not in SECTIONS or not key.isidentifier():
            parser.error(f"unrecognized arguments: {' '.join(rest[i:])}")
        if not eq:
            if i + 1 >= len(rest) or rest[i + 1].startswith("--"):
                parser.error(f"argument {token}: expected a value")
            text, i = rest[i + 1], i + 1
        put(section, key, yaml.safe_load(text), f"--{name}")
        i += 1
    return Request(cli, ns.config, ns.print_config, ns.list, ns.resume, ns.sweep)


def load_config_file(path: str | Path) -> Layer:
    """A config file as a layer; any problem is one :class:`ConfigError` sentence."""
    import yaml

    path = Path(path)
    label = f"config {path}"
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"config file {path} does not parse as YAML ({first})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, "
                          f"not a {type(data).__name__}")
    if isinstance(data.get("model"), str):  # written by train.py before the sections existed
        data = _from_flat(data, path)
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
            layer.set(section, str(key), value)
    return layer


def _from_flat(flat: dict[str, Any], path: Path) -> Config:
    """Map a flat ``config.yaml`` of an earlier train.py onto the sections."""
    by_key = {key: section for section, key in flag_actions(build_parser())}
    by_key.pop("name", None)
    out: Config = {s: {} for s in SECTIONS}
    for key, value in flat.items():
        if value is None:  # an unset flag: the recipe or the constructor decides, as then
            continue
        if key in ("model", "data"):
            out[key]["name"] = value
        elif key in ("model_kwargs", "data_kwargs"):
            out[key.split("_")[0]].update(value or {})
        elif key == "no_test":
            out["run"]["test"] = not value
        elif key in ("task", "section", "list", "resume", "model_arg", "data_arg"):
            continue  # derived from the model, or a command rather than a setting
        elif key in by_key:
            out[by_key[key]][key] = value
        else:
            raise ConfigError(f"config {path}: unknown key '{key}' (a flat config of an "
                              "earlier train.py)")
    return out


def recipe_layer(spec: Any, recipe_name: str) -> Layer:
    """The recipe's values, by section; unchanged ``Recipe`` defaults are optional."""
    from models import Recipe

    recipe = spec.recipe(recipe_name)
    layer = Layer(f"recipe '{recipe_name}' of {spec.name}")
    for f in fields(Recipe):
        value = getattr(recipe, f.name)
        if f.name in ("model_kwargs", "data_kwargs"):
            for k, v in value.items():
                layer.set(f.name.split("_")[0], k, v)
            continue
        section = RECIPE_SECTIONS[f.name]
        layer.set(section, f.name, value)
        if value == f.default:
            layer.optional.add((section, f.name))
    return layer


def _merge(layers: Sequence[Layer]) -> tuple[Config, dict[tuple[str, str], str], set]:
    values: Config = {s: {} for s in SECTIONS}
    sources: dict[tuple[str, str], str] = {}
    optional: set[tuple[str, str]] = set()
    for layer in layers:
        for section, key, value in layer.items():
            values.setdefault(section, {})[key] = value
            sources[section, key] = layer.sources.get((section, key), layer.label)
            optional.discard((section, key))
        optional |= layer.optional
    return values, sources, optional


def resolve(layers: Sequence[Layer]) -> Config:
    """The full config of a run from its layers (later layers win).

    Picks the model, its recipe and the data, puts the flag defaults and the recipe under the
    layers, checks every key against the constructor that takes it (type included) and fills
    in the remaining constructor defaults.

    Raises:
        ConfigError: an unknown model, recipe, data or key, a wrong type, or a key that the
            chosen model, DataModule or task module cannot take.
    """
    from datamodules.registry import data_names, data_tasks
    from models import get_spec

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
    data, src = pick("data", "name", spec.data)
    try:
        served = data_tasks(str(data))
    except KeyError as e:
        raise ConfigError(f"{src}: {e.args[0]}") from None
    if spec.task not in served:
        raise ConfigError(f"{src}: model '{spec.name}' ({spec.task}) cannot train on data "
                          f"'{data}' ({', '.join(served)}); valid data for it: "
                          + ", ".join(data_names(spec.task)))

    parser = build_parser()
    flags = flag_actions(parser)
    defaults = Layer("defaults")
    for (section, key), action in flags.items():
        if section in ("trainer", "run"):
            defaults.set(section, key, action.config_default)
    values, sources, optional = _merge([defaults, recipe, *layers])
    values["model"].update(name=spec.name, recipe=str(recipe_name))
    values["data"]["name"] = str(data)
    consumers = _consumers(spec, task_cls, str(data))
    cfg: Config = {}
    for section in SECTIONS:
        cfg[section] = check_constructor_section(
            section, values[section], consumers[section], flags, sources, optional)
    check_values(cfg, sources)
    return cfg


def _task_class(spec: Any) -> type:
    from lit_models import TASK_MODULES

    if spec.cannot_train:
        raise ConfigError(f"model '{spec.name}' cannot train with train.py: "
                          f"{spec.cannot_train}")
    if spec.task not in TASK_MODULES:
        raise ConfigError(f"model '{spec.name}' ({spec.task}) cannot train with train.py, "
                          "which trains " + ", ".join(TASK_MODULES) + " models")
    return TASK_MODULES[spec.task]


def _consumers(spec: Any, task_cls: type, data: str) -> dict[str, Any]:
    """What takes each section: ``(label, parameters or None, reserved keys)``."""
    from datamodules.registry import datamodule_class
    from lit_models import TaskModule

    from .checks import Consumer

    own = inspect.signature(task_cls.__init__).parameters
    optim = dict(inspect.signature(TaskModule.__init__).parameters)
    if "label_smoothing" in own:
        optim["label_smoothing"] = own["label_smoothing"]
    not_task = {"self", "arch", "model_kwargs", "label_smoothing", *task_cls.data_args}
    return {
        "model": Consumer(f"model '{spec.name}'", spec.builder, reserved=("name", "recipe"),
                          from_data=task_cls.model_data_args),
        "data": Consumer(f"data '{data}'", datamodule_class(data, spec.task).__init__,
                         reserved=("name",), excluded=("self", "seed")),
        "task": Consumer(f"the {spec.task} task", task_cls.__init__,
                         excluded=tuple(own.keys() & not_task), from_data=task_cls.data_args,
                         extra=False),
        "optim": Consumer(f"optim of the {spec.task} task", None, params=optim,
                          excluded=("self",), hints_from=(TaskModule.__init__,
                                                          task_cls.__init__)),
        "trainer": Consumer("section 'trainer'", None),
        "run": Consumer("section 'run'", None),
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
