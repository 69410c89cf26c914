"""Checking one config section against what takes it: keys, types, values, defaults.

The fixed sections (``optim``, ``trainer``, ``run``) are checked against their schema
(:mod:`.schema`; ``trainer`` against ``lightning.Trainer``'s own type hints); ``model``,
``data`` and ``task`` against the constructor that takes them, whose type hints decide. A float
may be written as ``1e-3`` (PyYAML reads that as a string) or as an int.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import MISSING, dataclass
from typing import Any

from .errors import ConfigError
from .schema import COUNT, COUNT0, FRACTION, Check, Key, at_least
from .types import conform, hints_of, type_name

#: a source label per ``(section, key)`` (``--lr``, ``config runs/a/config.yaml``...)
Sources = dict[tuple[str, str], str]


@dataclass
class Consumer:
    """The constructor that takes one of the sections ``model``, ``data``, ``task``.

    Attributes:
        label: how messages name it, e.g. ``model 'lenet'``.
        target: the function whose parameters are the section's keys.
        reserved: keys that pick the consumer rather than configure it (``name``).
        excluded: parameters that are not config keys (``self``, ``seed``...).
        from_data: parameters the data provides; setting one is refused.
        extra: a ``**kwargs`` target takes unknown keys (model builders); task modules pass
            their ``**kwargs`` on to the ``optim`` section, so they do not.
    """

    label: str
    target: Callable[..., Any]
    reserved: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ("self",)
    from_data: tuple[str, ...] = ()
    extra: bool = True


def _fail(sources: Sources, section: str, key: str, why: str) -> None:
    raise ConfigError(f"{sources.get((section, key), 'default')}: {why}")


def _unknown(sources: Sources, section: str, key: str, label: str, options: Any,
             homes: dict[str, set[str]]) -> None:
    elsewhere = homes.get(key, set()) - {section}
    if len(elsewhere) == 1:  # e.g. label_smoothing under optim, seed under data
        _fail(sources, section, key, f"'{key}' belongs in section '{elsewhere.pop()}', not "
              f"'{section}'")
    _fail(sources, section, key, f"{label} takes no '{key}' (its options: "
          f"{', '.join(options) or 'none'})")


def check_fixed_section(section: str, values: dict[str, Any], keys: dict[str, Key],
                        hints: dict[str, Any], sources: Sources, optional: set[tuple[str, str]],
                        homes: dict[str, set[str]]) -> dict[str, Any]:
    """Check a fixed section against its schema and fill its defaults; return the section.

    ``hints`` override the keys' own (``trainer``: Lightning's evaluated hints).

    Raises:
        ConfigError: one sentence naming the source of the bad key.
    """
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in keys:
            if (section, key) in optional:
                continue
            _unknown(sources, section, key, f"section '{section}'", keys, homes)
        hint = hints.get(key, keys[key].hint)
        try:
            out[key] = conform(value, hint) if not isinstance(hint, str) else value
        except TypeError:
            _fail(sources, section, key, f"{section}.{key}: expected {type_name(hint)}, got "
                  f"{value!r}")
        said = keys[key].check.problem(out[key]) if keys[key].check else None
        if said:
            _fail(sources, section, key, f"{section}.{key} {said}")
    for key, spec in keys.items():
        if key not in out and spec.default is not MISSING:
            out[key] = spec.default
    return {k: out[k] for k in keys if k in out}


def check_constructor_section(section: str, values: dict[str, Any], consumer: Consumer,
                              sources: Sources, optional: set[tuple[str, str]],
                              homes: dict[str, set[str]]) -> dict[str, Any]:
    """Check ``values`` against ``consumer``'s parameters and fill its defaults.

    Raises:
        ConfigError: one sentence naming the source of the bad key.
    """
    params = dict(inspect.signature(consumer.target).parameters)
    extra = consumer.extra and any(p.kind is p.VAR_KEYWORD for p in params.values())
    accepted = {k: p for k, p in params.items()
                if k not in consumer.excluded and k not in consumer.from_data
                and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    hints = hints_of(consumer.target)
    out: dict[str, Any] = {k: values[k] for k in consumer.reserved if k in values}
    extras: dict[str, Any] = {}
    for key, value in values.items():
        if key in consumer.reserved:
            continue
        if key not in accepted:
            if (section, key) in optional:
                continue  # a default of the recipe that does not apply here
            if key in consumer.from_data:
                _fail(sources, section, key, f"{section}.{key} comes from the data and cannot "
                      "be set")
            if extra:
                extras[key] = value
                continue
            _unknown(sources, section, key, consumer.label, accepted, homes)
        try:  # the constructor's type decides (a flag may take less, e.g. one int)
            out[key] = conform(value, hints.get(key, Any))
        except TypeError:
            _fail(sources, section, key, f"{section}.{key}: expected "
                  f"{type_name(hints[key])}, got {value!r}")
    for key, p in accepted.items():  # the constructor's own defaults, named in the config
        if key not in out and p.default is not p.empty:
            try:
                out[key] = conform(p.default, hints.get(key, Any))  # tuples -> lists, as YAML
            except TypeError:
                out[key] = p.default
    order = [*consumer.reserved, *accepted]
    return {**{k: out[k] for k in order if k in out}, **extras}


#: value rules of constructor arguments that several models, DataModules or task modules share
#: (their constructors take them under these names); ``None`` values are skipped (unset)
CONSTRUCTOR_RULES: dict[tuple[str, str], Check] = {
    ("data", "batch_size"): COUNT,
    ("data", "val_size"): COUNT0,
    ("data", "num_steps"): COUNT,
    ("data", "max_examples"): COUNT,
    ("data", "max_len"): COUNT,
    ("data", "on_device"): Check(lambda v: v == "auto", "auto, true or false"),  # bools pass
    ("model", "num_hiddens"): COUNT,
    ("model", "num_layers"): COUNT,
    ("model", "dropout"): FRACTION,
    ("task", "beam_size"): COUNT,
    ("task", "label_smoothing"): FRACTION,
    ("task", "resize"): COUNT,
}


def check_values(cfg: dict[str, dict[str, Any]], sources: Sources) -> None:
    """Refuse values no run can use, and combinations of sections that contradict each other.

    Raises:
        ConfigError: one sentence naming the source of the value.
    """
    val_size = cfg.get("data", {}).get("val_size")  # image data validate on 1 or more
    if (cfg.get("data", {}).get("name") in ("mnist", "fashion_mnist", "image_folder")
            and isinstance(val_size, (int, float)) and val_size < 1):
        _fail(sources, "data", "val_size", "data.val_size must be at least 1 (validation "
              f"examples), got {val_size}; leave it unset for the default, 1/12 of the "
              "training set")
    for (section, key), check in CONSTRUCTOR_RULES.items():
        said = check.problem(cfg.get(section, {}).get(key))
        if said:
            _fail(sources, section, key, f"{section}.{key} {said}")
    data, tr, run = cfg.get("data", {}), cfg.get("trainer", {}), cfg.get("run", {})
    if data.get("setting") == "book" and data.get("val_size"):  # see datamodules.idx
        _fail(sources, "data", "val_size", "the book data setting validates on the test set; "
              f"val_size {data['val_size']} does not apply to it")
    if tr.get("max_epochs") == -1 and tr.get("max_steps", -1) == -1:
        _fail(sources, "trainer", "max_epochs", "trainer.max_epochs -1 (no limit) needs "
              "--max-steps N")
    if tr.get("enable_progress_bar") is False and run.get("progress_bar") is not None:
        _fail(sources, "run", "progress_bar", "run.progress_bar chooses between the bar and "
              "plain lines, which trainer.enable_progress_bar false turns off; give one of them")


__all__ = ["COUNT", "COUNT0", "CONSTRUCTOR_RULES", "Check", "ConfigError", "Consumer",
           "at_least", "check_constructor_section", "check_fixed_section", "check_values"]
