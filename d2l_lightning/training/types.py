"""Config values against type hints: the one checker behind every config section.

Also :func:`load_yaml`, the reader of config files, sweep files and ``KEY=VALUE`` values.
Lightning-free and torch-free; :mod:`.schema`, :mod:`.checks` and :mod:`.objects` use it.
"""

from __future__ import annotations

import collections.abc
import functools
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


#: most values a config or sweep file may expand to through YAML aliases (``*name``)
MAX_YAML_VALUES = 100_000
#: deepest nesting of lists and mappings in a config or sweep file
MAX_YAML_DEPTH = 100


class YamlRefusedError(ValueError):
    """YAML that parses but is refused: a key given twice, an alias bomb, runaway nesting."""


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses what a config can only hold by mistake or malice.

    Refused: a mapping that gives a key twice (PyYAML keeps the last silently), aliases that
    expand to more than :data:`MAX_YAML_VALUES` values ("billion laughs": a few lines that
    become 10**9 values for whatever walks them), nesting deeper than :data:`MAX_YAML_DEPTH`
    and a value that contains itself. All are found on the parsed nodes before any Python
    object is built, so a bomb costs time and memory in proportion to the text.

    Raises:
        yaml.YAMLError: the text does not parse.
        YamlRefusedError: one sentence with the line numbers.
    """
    loader = _loader_class()(text)
    try:
        return loader.get_single_data()
    except RecursionError:
        raise YamlRefusedError(f"it nests deeper than {MAX_YAML_DEPTH} levels") from None
    finally:
        loader.dispose()


@functools.cache
def _loader_class() -> type:
    import yaml

    class Loader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            self.depth += 1
            try:
                if self.depth > MAX_YAML_DEPTH:
                    line = self.peek_event().start_mark.line + 1
                    raise YamlRefusedError(f"it nests deeper than {MAX_YAML_DEPTH} levels (line "
                                      f"{line})")
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

        def construct_document(self, node: Any) -> Any:
            _measure(self, node)
            return super().construct_document(node)

    return Loader


def _measure(loader: Any, root: Any) -> None:
    """Check the node graph: keys, expanded size, depth, cycles (iteratively: no recursion)."""
    from yaml.nodes import MappingNode, SequenceNode

    def children(node: Any) -> list[Any]:
        if isinstance(node, SequenceNode):
            return node.value
        if isinstance(node, MappingNode):
            return [n for pair in node.value for n in pair]
        return []

    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    path: set[int] = set()  # the nodes being walked: an alias to one of them is a cycle
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        kids = children(node)
        line = node.start_mark.line + 1
        if done:
            path.discard(id(node))
            size[id(node)] = 1 + sum(size[id(k)] for k in kids)
            depth[id(node)] = 1 + max((depth[id(k)] for k in kids), default=0)
            if size[id(node)] > MAX_YAML_VALUES:
                raise YamlRefusedError(f"its aliases (*name) expand the value at line {line} to "
                                  f"more than {MAX_YAML_VALUES:,} values; a config needs far "
                                  "fewer")
            if depth[id(node)] > MAX_YAML_DEPTH:
                raise YamlRefusedError(f"its aliases (*name) nest the value at line {line} deeper "
                                  f"than {MAX_YAML_DEPTH} levels")
        elif id(node) in path:
            raise YamlRefusedError(f"the value at line {line} contains itself through an alias")
        elif id(node) not in size:
            if isinstance(node, MappingNode):
                _check_keys(loader, node)
            path.add(id(node))
            stack.append((node, True))
            stack.extend((k, False) for k in kids)


def _check_keys(loader: Any, node: Any) -> None:
    """Refuse a key given twice in one mapping (merged keys, ``<<: *base``, may be overridden)."""
    from yaml.nodes import ScalarNode

    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, ScalarNode):
            continue
        merge = key_node.tag == "tag:yaml.org,2002:merge"
        key = ("<<",) if merge else loader.construct_object(key_node)
        try:
            hash(key)
        except TypeError:
            continue
        line = key_node.start_mark.line + 1
        if key in seen:
            shown = "<<" if merge else repr(key)
            raise YamlRefusedError(f"key {shown} is given twice (lines {seen[key]} and {line}); "
                              "keep one of them")
        seen[key] = line
