"""The flags of ``train.py``: each one sets one key (or one argument of a logger or callback).

A flag's ``dest`` is ``"section.key"`` (``"trainer.logger.wandb.project"`` for an argument of
a logger) and its default stays unset on the command line, so a flag given wins over the recipe
and config files, and a flag not given changes nothing. The flags of the fixed sections
(``optim``, ``trainer``, ``run``) are generated from :mod:`.schema`; those of ``model``,
``data`` and ``task`` are shorthands for constructor arguments that many models share.
"""

from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING
from typing import Any

from .schema import FIXED, Key

#: sections whose unset values come from the model's recipe, else its constructors' defaults
FROM_RECIPE = ("model", "data", "task", "optim")
#: the shorthands of logger arguments: flag -> (argument path under trainer.logger, help)
LOGGER_FLAGS = {
    "--wandb-project": ("wandb.project", {"help": "W&B project (implies the wandb logger; "
                                          "default: d2l-lightning)"}),
    "--wandb-name": ("wandb.name", {"help": "W&B run name (implies the wandb logger; default: "
                                    "W&B's random name)"}),
    "--wandb-tags": ("wandb.tags", {"nargs": "*", "help": "W&B tags (implies the wandb logger; "
                                    "default: none)"}),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not the whole usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with a YAML-typed value (``3``, ``0.5``, ``true``, ``word``, ``[1, 2]``)."""
    import yaml

    from .types import YamlRefusedError, load_yaml

    key, sep, value = text.partition("=")
    if not sep or not all(part.isidentifier() for part in key.split(".")):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    try:
        return key, load_yaml(value)
    except YamlRefusedError as e:
        raise argparse.ArgumentTypeError(f"{key}: {e}") from None
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"{key}: cannot read the value {value!r}") from None


def _on_device(value: str) -> bool | str:
    """``--on-device``: ``auto``, ``true`` or ``false``."""
    choice = {"auto": "auto", "true": True, "false": False}.get(value.lower())
    if choice is None:
        raise argparse.ArgumentTypeError(f"expected auto, true or false, got '{value}'")
    return choice


def _prefix_factor(text: str) -> tuple[str, float]:
    """``PREFIX=FACTOR`` of ``--lr-mult`` (``backbone=0.1``)."""
    prefix, sep, value = text.partition("=")
    try:
        if sep and prefix:
            return prefix, float(value)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected PREFIX=FACTOR, got '{text}'")


class _ToDict(argparse.Action):
    """Collect ``(key, value)`` pairs into a dict (``--lr-mult``)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, dict(values))


class _Names(argparse.Action):
    """``--logger csv wandb``: a mapping of each name to no arguments (yet)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, {name: {} for name in values})


class _Callback(argparse.Action):
    """``--callback NAME [KEY=VALUE ...]``, repeatable: ``[(NAME, {KEY: VALUE})]``."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        name, *pairs = values
        if not all(part.isidentifier() for part in name.split(".")) or "=" in name:
            parser.error(f"argument --callback: expected a class name first, got '{name}'")
        args = {}
        for pair in pairs:
            try:
                key, value = key_value(pair)
            except argparse.ArgumentTypeError as e:
                parser.error(f"argument --callback {name}: {e}")
            args[key] = value
        given = getattr(namespace, self.dest, None) or []
        setattr(namespace, self.dest, [*given, (name, args)])


def _fixed_flag_options(key: Key) -> dict[str, Any]:
    """The argparse options of a fixed section's flag, from its type and default."""
    kw = dict(key.flag_options)
    hint = key.hint
    if kw.get("action") == "names":
        kw["action"] = _Names
    if isinstance(hint, str):  # a Trainer argument: options as declared in schema.TRAINER
        return kw
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if bool in args or hint is bool:
        return {"action": argparse.BooleanOptionalAction if key.default is not False
                else "store_true"}
    if dict in (typing.get_origin(a) for a in args):
        return {"nargs": "+", "type": _prefix_factor, "action": _ToDict,
                "metavar": "PREFIX=FACTOR"}
    if key.choices is not None:
        return {**kw, "choices": key.choices}
    if args[0] in (int, float):
        kw.setdefault("type", args[0])
    return kw


def build_parser() -> argparse.ArgumentParser:
    """The CLI. Each flag's ``dest`` is ``section.key``; flags that are not set stay absent.

    Each help line ends with the effective default once: the flag's own, or "(from the
    recipe)" for the keys a recipe fills (resolved per model by ``--list MODEL``).
    """
    p = _Parser(prog="train.py", description="Train any registered model with one Lightning "
                "Trainer; `train.py validate|test --run-dir RUN` evaluates a run again. Unset "
                "values come from the model's recipe, else from the constructor that takes them "
                "(see --list MODEL).",
                epilog="Any config key can also be set as --SECTION.KEY=VALUE (e.g. "
                "--optim.lr=0.05, --model.activation=relu, --trainer.val_check_interval=0.5, "
                "--trainer.callbacks.EarlyStopping.patience=2). The trainer section takes every "
                "lightning.Trainer argument: " + ", ".join(
                    k for k, key in FIXED["trainer"].items()
                    if not key.flag and k != "callbacks") + ".")

    def section(name: str, title: str):
        group = p.add_argument_group(f"{name}: {title}")

        def add(flag: str, key: str | None = None, default: Any = MISSING,
                from_recipe: bool = False, **kw: Any):
            key = key or flag[2:].replace("-", "_")
            said = None  # the default this help line states
            shown = not (default is MISSING or default is None or default is False
                         or default == [] or default == {})
            if "default:" in kw["help"] or "(from the recipe" in kw["help"]:
                pass  # the help text says it
            elif from_recipe or not shown and name in ("model", "data", "task") and key != "*":
                kw["help"] += " (from the recipe)"
            elif shown and kw.get("action") != "store_true":
                kw["help"] += f" (default: {default})"
                said = default
            if not {"action", "metavar", "choices"} & kw.keys() and key != "*":
                kw["metavar"] = key.split(".")[-1].upper()
            action = group.add_argument(flag, dest=f"{name}.{key}", default=argparse.SUPPRESS,
                                        **kw)
            action.config_default = said
            return action

        return add

    g = p.add_argument_group("commands")
    g.add_argument("--config", action="append", default=[], metavar="FILE|NAME",
                   help="config file, or the name of a shipped one (fashion_mnist/lenet_bn-modern; "
                   "see --list-configs), holding any subset of the six sections; several are "
                   "applied in order, and flags override them")
    g.add_argument("--print-config", action="store_true",
                   help="print the resolved config as YAML and exit (writes nothing)")
    g.add_argument("--list", nargs="?", const="", default=None, metavar="MODEL",
                   help="list models and every recipe's values; with MODEL, its options and "
                   "each recipe resolved")
    g.add_argument("--list-configs", action="store_true",
                   help="list the shipped configs and sweeps (names for --config and --sweep)")
    g.add_argument("--resume", metavar="PATH|last",
                   help="continue a run from its folder alone: 'last' (of --run-dir, else the "
                   "newest run) or a checkpoint path; only how long it runs, what it shows and "
                   "logs, and --data-dir may be given with it")
    g.add_argument("--sweep", metavar="FILE|NAME",
                   help="run a grid or random search, one run folder per trial (see README)")

    m = section("model", "the architecture")
    m("--model", key="name", metavar="NAME", help="registered model (see --list)",
      default="lenet")
    m("--recipe", metavar="NAME", help="named recipe of the model (d2l, modern...); a recipe "
      "made for one dataset also picks it (default: d2l)")
    m("--num-hiddens", type=int, help="model width (hidden units, channels or d_model)")
    m("--num-layers", type=int, help="stacked layers (deep RNN, Transformer)")
    m("--dropout", type=float, help="dropout probability")
    m("--model-arg", key="*", type=key_value, action="append", metavar="KEY=VALUE",
      help="any other constructor argument of the model")

    d = section("data", "the DataModule")
    d("--data", key="name", metavar="NAME", help="dataset (default: the recipe's, else the "
      "model's own)")
    d("--data-dir", help="data root (default: $D2L_DATA_DIR, else ./data)")
    d("--batch-size", type=int, help="examples per batch")
    d("--val-size", type=int, help="validation examples (default: the DataModule's, e.g. 1/12 "
      "of train for images)")
    d("--num-steps", type=int, help="tokens per sequence (d2l num_steps)")
    d("--level", choices=("char", "word"), help="token level of The Time Machine")
    d("--sampler", choices=("random", "sequential"),
      help="language-model batches: random windows or sequential partitioning")
    d("--data-setting", key="setting", choices=("split", "book"),
      help="MNIST / Fashion-MNIST: split (default: a seeded validation split of the training "
      "set, normalised pixels) or book (d2l: train on all 60,000 images, validate on the test "
      "set, pixels in [0, 1] unnormalised)")
    d("--max-examples", type=int, help="use only the first N examples (fra-eng, BERT)")
    d("--max-len", type=int, help="longest input sequence (BERT)")
    d("--on-device", type=_on_device, metavar="auto|true|false",
      help="hold the splits (uint8 images, int64 tokens) on the training device and build "
      "batches there; auto: on for a CUDA device when they take at most a quarter of its free "
      "memory, off on the CPU (default: auto)")
    d("--data-arg", key="*", type=key_value, action="append", metavar="KEY=VALUE",
      help="any other DataModule argument")

    t = section("task", "loss, metrics, decoding and preprocessing of the task family")
    t("--resize", type=int, help="side length the image model sees")
    t("--channels-last", action="store_true",
      help="channels-last convolutions (images; default: off, or the recipe's)")
    t("--label-smoothing", type=float, help="cross-entropy label smoothing (classifiers, "
      "translation)")
    t("--beam-size", type=int, help="beam search width for evaluation (1: greedy)")
    t("--length-penalty", type=float, help="beam search length penalty alpha")
    t("--init-from", metavar="SOURCE",
      help="initial weights (d2l §14.2): an export folder, a train.py checkpoint, or "
      "torchvision:NAME (resnet18, resnet34) from the torch hub cache")
    t("--freeze", nargs="+", metavar="PREFIX",
      help="freeze parameters under these module-name prefixes ('backbone': all but the head)")
    t("--task-arg", key="*", type=key_value, action="append", metavar="KEY=VALUE",
      help="any other argument of the task module")

    titles = {"optim": "optimisation (every value from the recipe unless set)",
              "trainer": "lightning.Trainer (every argument; shorthands below)",
              "run": "run folder, seed, checkpoints, console, compilation"}
    for name, keys in FIXED.items():
        add = section(name, titles[name])
        for key in keys.values():
            if key.flag:
                add(key.flag, key=key.name, default=key.default, from_recipe=key.from_recipe,
                    help=key.help, **_fixed_flag_options(key))
        if name == "trainer":
            add("--callback", key="callbacks", nargs="+", action=_Callback,
                metavar="NAME [KEY=VALUE", help="add a callback with its arguments, e.g. "
                "--callback EarlyStopping patience=2 (monitor: the task's metric); repeatable "
                "(default: none)")
            for flag, (path, kw) in LOGGER_FLAGS.items():
                add(flag, key=f"logger.{path}", **kw)
    return p


def flag_actions(parser: argparse.ArgumentParser) -> dict[tuple[str, str], argparse.Action]:
    """``(section, key) -> action`` for every flag that sets one config key."""
    out = {}
    for action in parser._actions:
        section, dot, key = action.dest.partition(".")
        if dot and key != "*":
            out[section, key] = action
    return out
