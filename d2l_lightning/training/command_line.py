"""``train.py``'s command line as one layer of the config (see :mod:`.config`).

Flags set their ``section.key`` (:mod:`.flags`); ``--SECTION.KEY=VALUE`` sets any key, and
``--SECTION.KEY.SUB=VALUE`` an argument of a logger or callback. One setting given twice with
different values is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .config import SECTIONS, Config, Layer, load_config_file, resolve
from .flags import build_parser
from .types import YamlRefusedError, load_yaml


@dataclass
class Request:
    """What one ``train.py`` command line asks for."""

    cli: Layer
    configs: list[str]
    print_config: bool = False
    list_configs: bool = False
    list_models: str | None = None
    resume: str | None = None
    sweep: str | None = None


def parse_command_line(argv: Sequence[str] | None = None) -> Request:
    """Parse flags into a :class:`Request`; the command line's values form one layer.

    One setting given twice with different values (``--max-epochs 3
    --trainer.max_epochs=5``) is refused.
    """
    import yaml

    parser = build_parser()
    ns, rest = parser.parse_known_args(argv)
    cli = Layer("the command line")
    given: dict[tuple[str, str], Any] = {}

    def put(section: str, key: str | tuple[str, ...], value: Any, source: str) -> None:
        dotted = key if isinstance(key, str) else ".".join(key)
        earlier = cli.sources.get((section, dotted))
        if earlier and given[section, dotted] != value:
            parser.error(f"{earlier} and {source} both set {section}.{dotted}")
        given[section, dotted] = value
        cli.set(section, key, value, source)

    for dest, value in vars(ns).items():
        section, dot, key = dest.partition(".")
        if not dot:
            continue
        flag = next(a.option_strings[0] for a in parser._actions if a.dest == dest)
        if key == "*":  # --model-arg KEY=VALUE ...
            for k, v in value:
                put(section, k, v, f"{flag} {k}")
        elif key == "callbacks":  # --callback NAME KEY=VALUE ... (NAME may be a dotted path)
            for name, args in value:
                cli.set(section, ("callbacks", name), cli.values.get(section, {}).get(
                    "callbacks", {}).get(name, {}), f"--callback {name}")
                for k, v in args.items():
                    put(section, ("callbacks", name, k), v, f"--callback {name} {k}")
        elif key == "logger":  # --logger NAME ...: add each, keeping any arguments set
            for name in value:
                cli.set(section, ("logger", name), cli.values.get(section, {}).get(
                    "logger", {}).get(name, {}), flag)
        else:
            put(section, key, value, flag)
    i = 0
    while i < len(rest):  # --SECTION.KEY=VALUE or --SECTION.KEY VALUE
        token = rest[i]
        name, eq, text = token[2:].partition("=")
        section, dot, key = name.partition(".")
        if not token.startswith("--") or section not in SECTIONS or not all(
                part.isidentifier() for part in key.split(".")):
            parser.error(f"unrecognized arguments: {' '.join(rest[i:])}")
        if not eq:
            if i + 1 >= len(rest) or rest[i + 1].startswith("--"):
                parser.error(f"argument {token}: expected a value")
            text, i = rest[i + 1], i + 1
        try:
            value = load_yaml(text)  # a key twice or an alias bomb: refused (see .types)
        except YamlRefusedError as e:
            parser.error(f"argument --{name}: {e}")
        except yaml.YAMLError:
            parser.error(f"argument --{name}: cannot read the value {text!r}")
        put(section, key, value, f"--{name}")
        i += 1
    return Request(cli, ns.config, ns.print_config, ns.list_configs, ns.list, ns.resume,
                   ns.sweep)


def config_from_argv(argv: Sequence[str]) -> Config:
    """The resolved config of ``train.py`` arguments (flags and ``--config`` files)."""
    request = parse_command_line(argv)
    return resolve([*map(load_config_file, request.configs), request.cli])
