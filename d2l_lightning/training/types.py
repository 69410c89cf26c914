"""Config values against type hints: the one checker behind every config section.

Lightning-free and torch-free; :mod:`.schema`, :mod:`.checks` and :mod:`.objects` use it.
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal


def hints_of(fn: Callable[..., Any]) -> dict[str, Any]:
    """``fn``'s evaluated type hints (none for annotations that cannot be evaluated)."""
    try:
        return typing.get_type_hints(fn)
    except Exception:
        return {}


def conform(value: Any, hint: Any) -> Any:
    """``value`` as type ``hint`` (int -> float and numeric strings -> float allowed).

    A value from YAML or a flag is never an instance of a class such as ``Accelerator``, so a
    class hint accepts nothing here (the run's own objects are built from names).

    Raises:
        TypeError: the value does not fit the hint.
    """
    if hint is Any or hint is inspect.Parameter.empty:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        # an arm of the value's own type first: typing caches ``Union[int, float]`` and
        # ``Union[float, int]`` as one object, so the order of the arms depends on which one a
        # process happened to build first (int 20 must not become 20.0 after some import)
        arms = typing.get_args(hint)
        if type(value) in arms:
            return value
        for arm in arms:
            try:
                return conform(value, arm)
            except TypeError:
                continue
        raise TypeError
    if origin is typing.Literal:
        for choice in typing.get_args(hint):
            if value == choice and type(value) is type(choice):
                return value
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
    if origin in (list, tuple, collections.abc.Sequence, collections.abc.Iterable) \
            or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TypeError
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return [conform(v, args[0]) for v in value] if args else list(value)
    if origin in (dict, collections.abc.Mapping) or hint is dict:
        if not isinstance(value, dict):
            raise TypeError
        args = typing.get_args(hint)
        return {k: conform(v, args[1]) for k, v in value.items()} if args else value
    if isinstance(hint, type):
        raise TypeError  # an object: no config value is one
    return value  # an annotation this checker does not know: accept


def type_name(hint: Any) -> str:
    """A type hint as short text: ``int or None``, ``list[int]``, ``'sgd', 'adam'``."""
    if isinstance(hint, str):
        return hint
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if typing.get_origin(hint) is Literal:
        return " or ".join(map(repr, args))
    if isinstance(hint, type) and not args:
        return "None" if hint is type(None) else hint.__name__
    text = str(hint).replace("typing.", "").replace("collections.abc.", "")
    return text.replace("<class '", "").replace("'>", "").replace("NoneType", "None")
