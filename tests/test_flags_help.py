"""What ``train.py --help`` says of each flag: its help line, the default it states (the key's
real default, once), the recipe's part, and the text around the flags."""

from __future__ import annotations

import argparse
from dataclasses import MISSING

import pytest
from test_flags_units import FLAGS, UNSET

from d2l_lightning.training import flags
from d2l_lightning.training.flags import build_parser
from d2l_lightning.training.objects import WANDB_DEFAULTS
from d2l_lightning.training.schema import FIXED, Key


@pytest.fixture
def parser() -> argparse.ArgumentParser:
    """A new parser for each test (6 ms): a module-wide one is built in the first test only, so
    mutation testing would credit that test alone with reaching ``build_parser``."""
    return build_parser()


#: the help line of each flag declared in flags.py (the fixed sections' come from schema.py)
HELP = {
    "--config": "config file, or the name of a shipped one (fashion_mnist/lenet_bn-modern; see "
    "--list-configs), holding any subset of the six sections; several are applied in order, "
    "and flags override them",
    "--print-config": "print the resolved config as YAML and exit (writes nothing)",
    "--list": "list models and every recipe's values; with MODEL, its options and each recipe "
    "resolved",
    "--list-configs": "list the shipped configs and sweeps (names for --config and --sweep)",
    "--resume": "continue a run from its folder alone: 'last' (of --run-dir, else the newest "
    "run) or a checkpoint path; only how long it runs, what it shows and logs, and --data-dir "
    "may be given with it",
    "--sweep": "run a grid or random search, one run folder per trial (see README)",
    "--model": "registered model (see --list) (default: lenet)",
    "--recipe": "named recipe of the model (d2l, modern...); a recipe made for one dataset also "
    "picks it (default: d2l)",
    "--num-hiddens": "model width (hidden units, channels or d_model) (from the recipe)",
    "--num-layers": "stacked layers (deep RNN, Transformer) (from the recipe)",
    "--dropout": "dropout probability (from the recipe)",
    "--model-arg": "any other constructor argument of the model",
    "--data": "dataset (default: the recipe's, else the model's own)",
    "--data-dir": "data root (default: $D2L_DATA_DIR, else ./data)",
    "--batch-size": "examples per batch (from the recipe)",
    "--val-size": "validation examples (default: the DataModule's, e.g. 1/12 of train for "
    "images)",
    "--num-steps": "tokens per sequence (d2l num_steps) (from the recipe)",
    "--level": "token level of The Time Machine (from the recipe)",
    "--sampler": "language-model batches: random windows or sequential partitioning (from the "
    "recipe)",
    "--data-setting": "MNIST / Fashion-MNIST: split (default: a seeded validation split of the "
    "training set, normalised pixels) or book (d2l: train on all 60,000 images, validate on "
    "the test set, pixels in [0, 1] unnormalised)",
    "--max-examples": "use only the first N examples (fra-eng, BERT) (from the recipe)",
    "--max-len": "longest input sequence (BERT) (from the recipe)",
    "--on-device": "hold the splits (uint8 images, int64 tokens) on the training device and "
    "build batches there; auto: on for a CUDA device when they take at most a quarter of its "
    "free memory, off on the CPU (default: auto)",
    "--data-arg": "any other DataModule argument",
    "--resize": "side length the image model sees (from the recipe)",
    "--channels-last": "channels-last convolutions (images; default: off, or the recipe's)",
    "--label-smoothing": "cross-entropy label smoothing (classifiers, translation) (from the "
    "recipe)",
    "--beam-size": "beam search width for evaluation (1: greedy) (from the recipe)",
    "--length-penalty": "beam search length penalty alpha (from the recipe)",
    "--init-from": "initial weights (d2l §14.2): an export folder, a train.py checkpoint, or "
    "torchvision:NAME (resnet18, resnet34) from the torch hub cache (from the recipe)",
    "--freeze": "freeze parameters under these module-name prefixes ('backbone': all but the "
    "head) (from the recipe)",
    "--task-arg": "any other argument of the task module",
    "--callback": "add a callback with its arguments, e.g. --callback EarlyStopping patience=2 "
    "(monitor: the task's metric); repeatable (default: none)",
    "--wandb-project": f"W&B project (implies the wandb logger; default: "
    f"{WANDB_DEFAULTS['project']})",
    "--wandb-name": "W&B run name (implies the wandb logger; default: W&B's random name)",
    "--wandb-tags": "W&B tags (implies the wandb logger; default: none)",
}
#: the default a flag's help line states (``config_default``); every other flag's is None
STATED = {"--model": "lenet", "--accelerator": "auto", "--strategy": "auto", "--devices": "auto",
          "--num-nodes": 1, "--max-steps": -1, "--accumulate-grad-batches": 1, "--seed": 0,
          "--test": True, "--ckpt-every-n-steps": 0, "--diverged-after": 50,
          "--matmul-precision": "highest", "--dist-timeout": 600, "--progress-every": 0}
#: the fixed sections' flags whose help says "(from the recipe)"
RECIPE_FLAGS = {"--optimizer", "--lr", "--weight-decay", "--momentum", "--scheduler", "--lr-mult",
                "--max-epochs", "--gradient-clip-val"}


def actions_by_flag(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.option_strings[0]: a for a in parser._actions if a.dest != "help"}


def test_each_flag_declared_here_has_its_help_line(parser) -> None:
    helps = {f: a.help for f, a in actions_by_flag(parser).items() if f in HELP}
    assert helps == HELP


def test_a_fixed_flag_adds_the_recipe_or_its_default_to_the_schemas_help(parser) -> None:
    keys = {k.flag: k for section in FIXED.values() for k in section.values() if k.flag}
    for flag, action in actions_by_flag(parser).items():
        if flag not in keys:
            continue
        suffix = (" (from the recipe)" if flag in RECIPE_FLAGS else
                  f" (default: {STATED[flag]})" if flag in STATED else "")
        assert action.help == keys[flag].help + suffix, flag


def test_the_stated_default_is_the_keys_real_default(parser) -> None:
    said = {f: a.config_default for f, a in actions_by_flag(parser).items()
            if hasattr(a, "config_default")}
    assert set(said) == set(FLAGS) - {f"--{c.replace('_', '-')}" for c in UNSET}
    assert {f: v for f, v in said.items() if v is not None} == STATED
    assert all(type(said[f]) is type(v) for f, v in STATED.items())
    for keys in FIXED.values():
        for key in keys.values():
            if key.flag in STATED:
                assert STATED[key.flag] == key.default, key.flag


def test_the_description_epilog_and_sections_of_the_help(parser) -> None:
    assert parser.prog == "train.py"
    assert parser.description == (
        "Train any registered model with one Lightning Trainer; `train.py validate|test "
        "--run-dir RUN` evaluates a run again. Unset values come from the model's recipe, else "
        "from the constructor that takes them (see --list MODEL).")
    head, _, names = parser.epilog.partition(" argument: ")
    assert head == (
        "Any config key can also be set as --SECTION.KEY=VALUE (e.g. --optim.lr=0.05, "
        "--model.activation=relu, --trainer.val_check_interval=0.5, "
        "--trainer.callbacks.EarlyStopping.patience=2). The trainer section takes every "
        "lightning.Trainer")
    listed = names.removesuffix(".").split(", ")
    assert names == ", ".join(listed) + "."
    assert listed[:3] == ["min_epochs", "min_steps", "max_time"]
    assert listed == [k for k, key in FIXED["trainer"].items() if not key.flag and k != "callbacks"]
    assert "val_check_interval" in listed and "max_epochs" not in listed
    assert "callbacks" not in listed and len(listed) == len(FIXED["trainer"]) - 16
    assert [g.title for g in parser._action_groups][2:] == [
        "commands", "model: the architecture", "data: the DataModule",
        "task: loss, metrics, decoding and preprocessing of the task family",
        "optim: optimisation (every value from the recipe unless set)",
        "trainer: lightning.Trainer (every argument; shorthands below)",
        "run: run folder, seed, checkpoints, console, compilation"]


@pytest.mark.parametrize("key, text, said", [
    (Key("quiet", "str", None, "say less", "--quiet"), "say less", None),
    (Key("off", "str", False, "off", "--off"), "off", None),
    (Key("tags", "str", [], "tags", "--tags"), "tags", None),
    (Key("table", "str", {}, "table", "--table"), "table", None),
    (Key("unset", "str", MISSING, "unset", "--unset"), "unset", None),
    (Key("zero", "str", 0, "zero", "--zero"), "zero (default: 0)", 0),
    (Key("word", "str", "w", "word", "--word"), "word (default: w)", "w"),
    (Key("on", "str", True, "on", "--on", flag_options={"action": "store_true"}), "on", None),
    (Key("r", "str", 3, "r (from the recipe, else 3)", "--r", from_recipe=True),
     "r (from the recipe, else 3)", None),
    (Key("r", "str", 3, "r", "--r", from_recipe=True), "r (from the recipe)", None),
    (Key("budget_s", "str", 5, "seconds", "--budget"), "seconds (default: 5)", 5),
])
def test_a_fixed_key_states_a_default_that_says_something(monkeypatch, key, text, said) -> None:
    """None, False, [], {} and no default are not stated; a flag sets its key's name."""
    monkeypatch.setattr(flags, "FIXED", {"optim": {}, "trainer": {}, "run": {key.name: key}})
    action = next(a for a in build_parser()._actions if a.option_strings == [key.flag])
    assert (action.dest, action.help, action.config_default) == (f"run.{key.name}", text, said)
