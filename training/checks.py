"""Checking one config section against what takes it: keys, types, defaults.

A section's keys are the consumer's constructor parameters (``model``, ``data``, ``task``,
``optim``) or its flags (``trainer``, ``run``). A constructor's value is checked against the
parameter's type hint (and the flag's choices, if it has a flag); a flag-only value is
converted exactly as the flag converts it on the command line. A float may be written as
``1e-3`` (PyYAML reads that as a string) or as an int.
"""

from __future__ import annotations

import argparse
import collections.abc
import inspect
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Consumer:
    """What takes one section.

    Attributes:
        label: how messages name it, e.g. ``model 'lenet'``.
        target: the function whose parameters are the section's keys (``None``: the
            section's flags are its keys).
        reserved: keys that pick the consumer rather than configure it (``name``).
        excluded: parameters that are not config keys (``self``, ``seed``...).
        from_data: parameters the data provides; setting one is refused.
        params: explicit parameters instead of ``target``'s.
        hints_from: functions whose type hints apply (default: ``target``).
        extra: a ``**kwargs`` target takes unknown keys (model builders); task modules pass
            their ``**kwargs`` on to the optimisation arguments, so they do not.
    """

    label: str
    target: Callable[..., Any] | None
    reserved: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ("self",)
    from_data: tuple[str, ...] = ()
    params: dict[str, inspect.Parameter] | None = None
    hints_from: tuple[Callable[..., Any], ...] = ()
    extra: bool = True


def _hints(functions: tuple[Callable[..., Any], ...]) -> dict[str, Any]:
    hints: dict[str, Any] = {}
    for fn in functions:
        try:
            hints.update(typing.get_type_hints(fn))
        except Exception:  # an annotation that cannot be evaluated: no type check for it
            continue
    return hints


def conform(value: Any, hint: Any) -> Any:
    """``value`` as type ``hint`` (int -> float and numeric strings -> float allowed).

    Raises:
        TypeError: the value does not fit the hint.
    """
    if hint is Any or hint is inspect.Parameter.empty:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(hint):
            try:
                return conform(value, arm)
            except TypeError:
                continue
        raise TypeError
    if hint is type(None):
        if value is None:
            return None
        raise TypeError
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise TypeError
    if hint is str or hint is Path:
        if isinstance(value, str):
            return value
        raise TypeError
    if origin in (list, tuple, collections.abc.Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TypeError
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return [conform(v, args[0]) for v in value] if args else list(value)
    if origin is dict or hint is dict:
        if isinstance(value, dict):
            return value
        raise TypeError
    return value  # an annotation this checker does not know: accept


def _type_name(hint: Any) -> str:
    text = str(hint).replace("typing.", "").replace("collections.abc.", "")
    return text.replace("<class '", "").replace("'>", "").replace("NoneType", "None")


def convert_flag_value(action: argparse.Action, value: Any) -> Any:
    """A config value checked and converted exactly as its flag would be.

    Raises:
        ValueError: with the reason, when the flag would refuse it.
    """
    if value is None:
        if action.config_default is None:
            return None
        raise ValueError("expected a value, not null")
    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):
        if isinstance(value, bool):
            return value
        raise ValueError(f"expected true or false, got {value!r}")
    many = action.nargs in ("*", "+")
    if many and not isinstance(value, list):
        raise ValueError(f"expected a list, got {value!r}")
    items = value if many else [value]
    out = []
    for item in items:
        if isinstance(item, (list, dict)) or isinstance(item, bool) and action.type is not None:
            raise ValueError(f"expected a single value, got {item!r}")
        if action.type is not None:
            try:
                item = action.type(str(item))
            except (ValueError, TypeError, argparse.ArgumentTypeError):
                raise ValueError(f"invalid {getattr(action.type, '__name__', 'value')} value: "
                                 f"{item!r}") from None
        elif not isinstance(item, str):
            raise ValueError(f"expected a string, got {item!r}")
        if action.choices is not None and item not in action.choices:
            raise ValueError(f"invalid choice {item!r} (choose from "
                             f"{', '.join(map(str, action.choices))})")
        out.append(item)
    return out if many else out[0]


def check_constructor_section(section: str, values: dict[str, Any], consumer: Consumer,
                              flags: dict[tuple[str, str], argparse.Action],
                              sources: dict[tuple[str, str], Any],
                              optional: set[tuple[str, str]]) -> dict[str, Any]:
    """Check ``values`` against ``consumer`` and fill its defaults; return the section.

    Raises:
        training.config.ConfigError: one sentence naming the source of the bad key.
    """
    from .config import ConfigError

    def fail(key: str, why: str) -> None:
        raise ConfigError(f"{sources.get((section, key), 'default')}: {why}")

    def unknown(key: str, options: Any) -> None:
        homes = {s for s, k in flags if k == key and s != section}
        if len(homes) == 1:  # e.g. label_smoothing under task, seed under data
            fail(key, f"'{key}' belongs in section '{homes.pop()}', not '{section}'")
        fail(key, f"{consumer.label} takes no '{key}' (its options: "
             f"{', '.join(options) or 'none'})")

    if consumer.target is None and consumer.params is None:  # trainer, run: the flags
        known = {k: a for (s, k), a in flags.items() if s == section}
        out = {}
        for key, value in values.items():
            if key not in known:
                unknown(key, known)
            try:
                out[key] = convert_flag_value(known[key], value)
            except ValueError as e:
                fail(key, f"{section}.{key}: {e}")
        return {k: out[k] for k in known if k in out}

    params = consumer.params
    if params is None:
        params = dict(inspect.signature(consumer.target).parameters)
    extra = consumer.extra and any(p.kind is p.VAR_KEYWORD for p in params.values())
    accepted = {k: p for k, p in params.items()
                if k not in consumer.excluded and k not in consumer.from_data
                and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    hints = _hints(consumer.hints_from or ((consumer.target,) if consumer.target else ()))
    out: dict[str, Any] = {k: values[k] for k in consumer.reserved if k in values}
    extras: dict[str, Any] = {}
    for key, value in values.items():
        if key in consumer.reserved:
            continue
        if key not in accepted:
            if (section, key) in optional:
                continue  # a default of the recipe or of a flag that does not apply here
            if key in consumer.from_data:
                fail(key, f"{section}.{key} comes from the data and cannot be set")
            if extra:
                extras[key] = value
                continue
            unknown(key, accepted)
        try:  # the constructor's type decides (a flag may take less, e.g. one int)
            out[key] = conform(value, hints.get(key, Any))
        except TypeError:
            fail(key, f"{section}.{key}: expected {_type_name(hints[key])}, got {value!r}")
        choices = flags[section, key].choices if (section, key) in flags else None
        if choices is not None and out[key] not in choices:
            fail(key, f"{section}.{key}: invalid choice {value!r} (choose from "
                 f"{', '.join(map(str, choices))})")
    for key, p in accepted.items():  # the constructor's own defaults, named in the config
        if key not in out and p.default is not p.empty:
            try:
                out[key] = conform(p.default, hints.get(key, Any))  # tuples -> lists, as YAML
            except TypeError:
                out[key] = p.default
    order = [*consumer.reserved, *accepted]
    return {**{k: out[k] for k in order if k in out}, **extras}


def _at_least(low: float) -> Callable[[Any], bool]:
    def test(v: Any) -> bool:  # a list (e.g. the widths of an MLP's layers): each value
        if isinstance(v, (list, tuple)):
            return all(map(test, v))
        return isinstance(v, (int, float)) and math.isfinite(v) and v >= low
    return test


def _fraction(v: Any) -> bool:
    if isinstance(v, (list, tuple)):
        return all(map(_fraction, v))
    return isinstance(v, (int, float)) and 0 <= v < 1


def _devices(v: Any) -> bool:
    if isinstance(v, int):
        return v >= 1 or v == -1
    if isinstance(v, str):
        return v == "auto" or all(p.strip().isdigit() for p in v.split(",") if p.strip()) \
            and any(p.strip() for p in v.split(","))
    return isinstance(v, list) and all(isinstance(i, int) and i >= 0 for i in v)


#: ``(section, key) -> (test, what it must be)``; ``None`` values are skipped (unset)
VALUE_RULES: dict[tuple[str, str], tuple[Callable[[Any], bool], str]] = {
    ("data", "batch_size"): (_at_least(1), "at least 1"),
    ("data", "val_size"): (_at_least(0), "0 or more"),
    ("data", "num_steps"): (_at_least(1), "at least 1"),
    ("data", "max_examples"): (_at_least(1), "at least 1"),
    ("data", "max_len"): (_at_least(1), "at least 1"),
    ("data", "on_device"): (lambda v: v == "auto", "auto, true or false"),  # bools pass
    ("model", "num_hiddens"): (_at_least(1), "at least 1"),
    ("model", "num_layers"): (_at_least(1), "at least 1"),
    ("model", "dropout"): (_fraction, "in [0, 1)"),
    ("task", "beam_size"): (_at_least(1), "at least 1"),
    ("optim", "lr"): (_at_least(0), "a finite number, 0 or more"),
    ("optim", "weight_decay"): (_at_least(0), "a finite number, 0 or more"),
    ("optim", "momentum"): (_at_least(0), "a finite number, 0 or more"),
    ("optim", "label_smoothing"): (_fraction, "in [0, 1)"),
    ("optim", "plateau_factor"): (lambda v: _fraction(v) and v > 0, "in (0, 1)"),
    ("optim", "plateau_patience"): (lambda v: isinstance(v, int) and v >= 0, "an integer, 0 or "
                                    "more"),
    ("optim", "gradient_clip_val"): (lambda v: _at_least(0)(v) and v > 0,
                                     "a finite number above 0"),
    ("trainer", "max_epochs"): (lambda v: v == -1 or _at_least(1)(v),
                                "at least 1 (or -1 with --max-steps)"),
    ("trainer", "max_steps"): (lambda v: v == -1 or _at_least(1)(v), "at least 1 (or -1: off)"),
    ("trainer", "accumulate_grad_batches"): (_at_least(1), "at least 1"),
    ("trainer", "num_nodes"): (_at_least(1), "at least 1"),
    ("trainer", "dist_timeout"): (_at_least(1), "a number of seconds, at least 1"),
    ("trainer", "devices"): (_devices, "a count of at least 1, -1 (all), 'auto', or device "
                             "indices such as 0,1"),
    ("trainer", "accelerator"): (lambda v: v in ACCELERATORS,
                                 "one of " + ", ".join(("auto", "cpu", "gpu", "cuda", "mps",
                                                        "tpu"))),
    ("trainer", "fast_dev_run"): (_at_least(0), "0 or more"),
    ("run", "ckpt_every_n_steps"): (_at_least(0), "0 or more"),
    ("run", "diverged_after"): (_at_least(0), "0 or more"),
}
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
#: models that ``--compile`` cannot train, with the reason (refused before any run folder);
#: ``tests/test_compile.py`` compiles one model of every task family
NO_COMPILE: dict[str, str] = {}


def check_values(cfg: dict[str, dict[str, Any]], sources: dict[tuple[str, str], Any]) -> None:
    """Refuse values no run can use (a batch size of 0, a NaN learning rate...).

    Raises:
        training.config.ConfigError: one sentence naming the source of the value.
    """
    from .config import ConfigError

    for (section, key), (test, must) in VALUE_RULES.items():
        value = cfg.get(section, {}).get(key)
        if value is None or isinstance(value, bool):
            continue
        if not test(value):
            raise ConfigError(f"{sources.get((section, key), 'default')}: {section}.{key} "
                              f"must be {must}, got {value!r}")
    for split in ("train", "val", "test"):  # an int counts batches, a float is a fraction
        key = f"limit_{split}_batches"
        value = cfg.get("trainer", {}).get(key)
        low = 0 if split != "train" else 1e-300
        if value is not None and not (low <= value <= (1.0 if isinstance(value, float)
                                                        else math.inf)):
            raise ConfigError(f"{sources.get(('trainer', key), 'default')}: trainer.{key} "
                              f"must be a batch count or a fraction in [0, 1]"
                              + (" above 0 (training needs a batch)" if split == "train" else "")
                              + f", got {value!r}")
    data = cfg.get("data", {})
    if data.get("setting") == "book" and data.get("val_size"):  # see datamodules.idx
        raise ConfigError(f"{sources.get(('data', 'val_size'), 'default')}: the book data "
                          "setting validates on the test set; val_size "
                          f"{data['val_size']} does not apply to it")
    tr = cfg.get("trainer", {})
    model = cfg.get("model", {}).get("name")
    if tr.get("compile") and model in NO_COMPILE:
        raise ConfigError(f"{sources.get(('trainer', 'compile'), 'default')}: model '{model}' "
                          f"cannot be compiled: {NO_COMPILE[model]}; train it without --compile")
    if tr.get("max_epochs") == -1 and tr.get("max_steps", -1) == -1:
        raise ConfigError(f"{sources.get(('trainer', 'max_epochs'), 'default')}: "
                          "trainer.max_epochs -1 (no limit) needs --max-steps N")

