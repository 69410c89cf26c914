"""``train.py``'s flags as units: the key each flag sets, the value it parses to, what ``--help``
says about it, and the one-line refusals of a malformed value (no torch, no Lightning)."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from d2l_lightning.training.flags import (
    _on_device,
    _prefix_factor,
    build_parser,
    flag_actions,
    key_value,
)

#: what a command line without flags parses to: the commands' own defaults, no config key
UNSET = {"config": [], "print_config": False, "list": None, "list_configs": False,
         "resume": None, "sweep": None}

#: flag -> (dest, metavar) of every flag
FLAGS: dict[str, tuple[str, str | None]] = {
    "--config": ("config", "FILE|NAME"), "--print-config": ("print_config", None),
    "--list": ("list", "MODEL"), "--list-configs": ("list_configs", None),
    "--resume": ("resume", "PATH|last"), "--sweep": ("sweep", "FILE|NAME"),
    "--model": ("model.name", "NAME"), "--recipe": ("model.recipe", "NAME"),
    "--num-hiddens": ("model.num_hiddens", "NUM_HIDDENS"),
    "--num-layers": ("model.num_layers", "NUM_LAYERS"), "--dropout": ("model.dropout", "DROPOUT"),
    "--model-arg": ("model.*", "KEY=VALUE"), "--data": ("data.name", "NAME"),
    "--data-dir": ("data.data_dir", "DATA_DIR"), "--batch-size": ("data.batch_size", "BATCH_SIZE"),
    "--val-size": ("data.val_size", "VAL_SIZE"), "--num-steps": ("data.num_steps", "NUM_STEPS"),
    "--level": ("data.level", None), "--sampler": ("data.sampler", None),
    "--data-setting": ("data.setting", None),
    "--max-examples": ("data.max_examples", "MAX_EXAMPLES"),
    "--max-len": ("data.max_len", "MAX_LEN"),
    "--on-device": ("data.on_device", "auto|true|false"), "--data-arg": ("data.*", "KEY=VALUE"),
    "--resize": ("task.resize", "RESIZE"), "--channels-last": ("task.channels_last", None),
    "--label-smoothing": ("task.label_smoothing", "LABEL_SMOOTHING"),
    "--beam-size": ("task.beam_size", "BEAM_SIZE"),
    "--length-penalty": ("task.length_penalty", "LENGTH_PENALTY"),
    "--init-from": ("task.init_from", "SOURCE"), "--freeze": ("task.freeze", "PREFIX"),
    "--task-arg": ("task.*", "KEY=VALUE"), "--optimizer": ("optim.optimizer", None),
    "--lr": ("optim.lr", "LR"), "--weight-decay": ("optim.weight_decay", "WEIGHT_DECAY"),
    "--momentum": ("optim.momentum", "MOMENTUM"), "--scheduler": ("optim.scheduler", None),
    "--lr-mult": ("optim.lr_mult", "PREFIX=FACTOR"),
    "--accelerator": ("trainer.accelerator", "ACCELERATOR"),
    "--strategy": ("trainer.strategy", "STRATEGY"), "--devices": ("trainer.devices", "DEVICES"),
    "--num-nodes": ("trainer.num_nodes", "NUM_NODES"),
    "--precision": ("trainer.precision", "PRECISION"), "--logger": ("trainer.logger", "NAME"),
    "--fast-dev-run": ("trainer.fast_dev_run", "N"),
    "--max-epochs": ("trainer.max_epochs", "MAX_EPOCHS"),
    "--max-steps": ("trainer.max_steps", "MAX_STEPS"),
    "--limit-train-batches": ("trainer.limit_train_batches", "LIMIT_TRAIN_BATCHES"),
    "--limit-val-batches": ("trainer.limit_val_batches", "LIMIT_VAL_BATCHES"),
    "--limit-test-batches": ("trainer.limit_test_batches", "LIMIT_TEST_BATCHES"),
    "--accumulate-grad-batches": ("trainer.accumulate_grad_batches", "ACCUMULATE_GRAD_BATCHES"),
    "--gradient-clip-val": ("trainer.gradient_clip_val", "GRADIENT_CLIP_VAL"),
    "--deterministic": ("trainer.deterministic", None),
    "--callback": ("trainer.callbacks", "NAME [KEY=VALUE"),
    "--wandb-project": ("trainer.logger.wandb.project", "PROJECT"),
    "--wandb-name": ("trainer.logger.wandb.name", "NAME"),
    "--wandb-tags": ("trainer.logger.wandb.tags", "TAGS"), "--run-dir": ("run.run_dir", "RUN_DIR"),
    "--seed": ("run.seed", "SEED"), "--test": ("run.test", None),
    "--ckpt-every-n-steps": ("run.ckpt_every_n_steps", "CKPT_EVERY_N_STEPS"),
    "--diverged-after": ("run.diverged_after", "N"), "--compile": ("run.compile", None),
    "--matmul-precision": ("run.matmul_precision", None),
    "--dist-timeout": ("run.dist_timeout", "SECONDS"), "--progress-bar": ("run.progress_bar", None),
    "--progress-every": ("run.progress_every", "N"),
}

#: command line -> the keys it sets (every flag at least once; types matter: 2 is not 2.0)
PARSED: list[tuple[str, dict[str, Any]]] = [
    ("--model mlp", {"model.name": "mlp"}), ("--recipe modern", {"model.recipe": "modern"}),
    ("--num-hiddens 17", {"model.num_hiddens": 17}), ("--num-layers 3", {"model.num_layers": 3}),
    ("--dropout 1", {"model.dropout": 1.0}),
    ("--model-arg pool=max --model-arg depth=2", {"model.*": [("pool", "max"), ("depth", 2)]}),
    ("--data mnist", {"data.name": "mnist"}), ("--data-dir /d", {"data.data_dir": "/d"}),
    ("--batch-size 7", {"data.batch_size": 7}), ("--val-size 9", {"data.val_size": 9}),
    ("--num-steps 11", {"data.num_steps": 11}), ("--level word", {"data.level": "word"}),
    ("--level char", {"data.level": "char"}), ("--sampler random", {"data.sampler": "random"}),
    ("--data-setting split", {"data.setting": "split"}),
    ("--sampler sequential", {"data.sampler": "sequential"}),
    ("--data-setting book", {"data.setting": "book"}),
    ("--max-examples 50", {"data.max_examples": 50}), ("--max-len 24", {"data.max_len": 24}),
    ("--on-device true", {"data.on_device": True}),
    ("--data-arg max_tokens=300", {"data.*": [("max_tokens", 300)]}),
    ("--resize 20", {"task.resize": 20}), ("--channels-last", {"task.channels_last": True}),
    ("--label-smoothing 0", {"task.label_smoothing": 0.0}),
    ("--beam-size 3", {"task.beam_size": 3}),
    ("--length-penalty 1", {"task.length_penalty": 1.0}),
    ("--init-from torchvision:resnet18", {"task.init_from": "torchvision:resnet18"}),
    ("--freeze net.0 net.1", {"task.freeze": ["net.0", "net.1"]}),
    ("--task-arg sample_tokens=3", {"task.*": [("sample_tokens", 3)]}),
    ("--optimizer adamw", {"optim.optimizer": "adamw"}), ("--lr 1", {"optim.lr": 1.0}),
    ("--weight-decay 0", {"optim.weight_decay": 0.0}), ("--momentum 0.9", {"optim.momentum": 0.9}),
    ("--scheduler cosine", {"optim.scheduler": "cosine"}),
    ("--lr-mult backbone=0.1 head=2", {"optim.lr_mult": {"backbone": 0.1, "head": 2.0}}),
    ("--accelerator cpu", {"trainer.accelerator": "cpu"}),
    ("--strategy ddp", {"trainer.strategy": "ddp"}), ("--devices 2", {"trainer.devices": 2}),
    ("--devices 0,1", {"trainer.devices": "0,1"}), ("--num-nodes 2", {"trainer.num_nodes": 2}),
    ("--precision bf16-mixed", {"trainer.precision": "bf16-mixed"}),
    ("--logger csv wandb", {"trainer.logger": {"csv": {}, "wandb": {}}}),
    ("--fast-dev-run", {"trainer.fast_dev_run": 1}),
    ("--fast-dev-run 3", {"trainer.fast_dev_run": 3}),
    ("--max-epochs 4", {"trainer.max_epochs": 4}), ("--max-steps -1", {"trainer.max_steps": -1}),
    ("--limit-train-batches 0.5", {"trainer.limit_train_batches": 0.5}),
    ("--limit-val-batches 2", {"trainer.limit_val_batches": 2}),
    ("--limit-test-batches 1.0", {"trainer.limit_test_batches": 1.0}),
    ("--accumulate-grad-batches 3", {"trainer.accumulate_grad_batches": 3}),
    ("--gradient-clip-val 1", {"trainer.gradient_clip_val": 1.0}),
    ("--deterministic", {"trainer.deterministic": True}),
    ("--callback EarlyStopping patience=2 mode=min --callback my.pkg.Cb",
     {"trainer.callbacks": [("EarlyStopping", {"patience": 2, "mode": "min"}), ("my.pkg.Cb", {})]}),
    ("--wandb-project p --wandb-name n", {"trainer.logger.wandb.project": "p",
                                          "trainer.logger.wandb.name": "n"}),
    ("--wandb-tags a b", {"trainer.logger.wandb.tags": ["a", "b"]}),
    ("--wandb-tags", {"trainer.logger.wandb.tags": []}), ("--run-dir r", {"run.run_dir": "r"}),
    ("--seed 7", {"run.seed": 7}), ("--test", {"run.test": True}),
    ("--no-test", {"run.test": False}),
    ("--ckpt-every-n-steps 3", {"run.ckpt_every_n_steps": 3}),
    ("--diverged-after 7", {"run.diverged_after": 7}), ("--compile", {"run.compile": True}),
    ("--matmul-precision high", {"run.matmul_precision": "high"}),
    ("--dist-timeout 42", {"run.dist_timeout": 42}),
    ("--progress-bar", {"run.progress_bar": True}),
    ("--no-progress-bar", {"run.progress_bar": False}),
    ("--progress-every 7", {"run.progress_every": 7}),
]


@pytest.fixture
def parser() -> argparse.ArgumentParser:
    """A new parser for each test (6 ms): a module-wide one is built in the first test only, so
    mutation testing would credit that test alone with reaching ``build_parser``."""
    return build_parser()


def typed(values: dict[str, Any]) -> dict[str, Any]:
    """Each value with its type (and its items' types): ``1 == 1.0`` must not pass."""
    def shape(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: shape(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v).__name__, [shape(x) for x in v]
        return type(v).__name__, v
    return {k: shape(v) for k, v in values.items()}


def refusal(parser: argparse.ArgumentParser, argv: list[str], capsys) -> str:
    """The one line a refused command line prints (exit status 2)."""
    with pytest.raises(SystemExit) as e:
        parser.parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("train.py: error: "), err
    assert err.endswith(" (see --help)\n"), err
    return err


def test_no_flag_sets_a_config_key(parser) -> None:
    assert vars(parser.parse_args([])) == UNSET


@pytest.mark.parametrize("argv, keys", PARSED, ids=[a for a, _ in PARSED])
def test_each_flag_sets_its_key_to_the_typed_value(parser, argv, keys) -> None:
    parsed = vars(parser.parse_args(argv.split()))
    assert typed(parsed) == typed({**UNSET, **keys})


def test_the_tables_name_every_flag_once(parser) -> None:
    flags = [a.option_strings[0] for a in parser._actions if a.option_strings[0] != "-h"]
    assert flags == list(FLAGS)  # the order of --help, too
    commands = {f"--{c.replace('_', '-')}" for c in UNSET}
    given = {t.replace("--no-", "--") for argv, _ in PARSED for t in argv.split() if t[:2] == "--"}
    assert given == set(FLAGS) - commands


@pytest.mark.parametrize("flag", list(FLAGS))
def test_each_flag_has_its_dest_and_metavar(parser, flag) -> None:
    action = next(a for a in parser._actions if a.option_strings[0] == flag)
    assert (action.dest, action.metavar) == FLAGS[flag]


@pytest.mark.parametrize("argv, value", [
    ("--config a.yaml --config b", {"config": ["a.yaml", "b"]}),
    ("--print-config", {"print_config": True}), ("--list", {"list": ""}),
    ("--list lenet", {"list": "lenet"}), ("--list-configs", {"list_configs": True}),
    ("--resume last", {"resume": "last"}), ("--sweep s.yaml", {"sweep": "s.yaml"}),
])
def test_each_command_parses_to_its_own_name(parser, argv, value) -> None:
    assert vars(parser.parse_args(argv.split())) == {**UNSET, **value}


@pytest.mark.parametrize("argv", [
    "--no-compile", "--no-deterministic", "--no-channels-last", "--no-print-config",
    "--compile yes", "--level sentence", "--sampler shuffled", "--data-setting all",
    "--optimizer rmsprop", "--scheduler linear", "--matmul-precision low", "--lr fast",
    "--seed 1.5", "--num-hiddens 1e3", "--on-device maybe", "--lr-mult backbone",
    "--model-arg depth", "--freeze", "--logger", "--callback",
])
def test_a_malformed_flag_is_one_line_and_exit_2(parser, argv, capsys) -> None:
    refusal(parser, argv.split(), capsys)


@pytest.mark.parametrize("argv, message", [
    ("--callback patience=2", "argument --callback: expected a class name first, got "
     "'patience=2'"),
    ("--callback 1Stop", "argument --callback: expected a class name first, got '1Stop'"),
    ("--callback a..B", "argument --callback: expected a class name first, got 'a..B'"),
    ("--callback EarlyStopping patience", "argument --callback EarlyStopping: expected "
     "KEY=VALUE, got 'patience'"),
    ("--callback EarlyStopping patience=[2", "argument --callback EarlyStopping: patience: "
     "cannot read the value '[2'"),
    ("--lr-mult backbone=x", "argument --lr-mult: expected PREFIX=FACTOR, got 'backbone=x'"),
    ("--on-device yes", "argument --on-device: expected auto, true or false, got 'yes'"),
    ("--model-arg 2x=1", "argument --model-arg: expected KEY=VALUE, got '2x=1'"),
])
def test_a_malformed_value_names_its_flag_and_the_value(parser, argv, message, capsys) -> None:
    assert refusal(parser, argv.split(), capsys) == f"train.py: error: {message} (see --help)\n"


@pytest.mark.parametrize("text, pair", [
    ("lr=0.5", ("lr", 0.5)), ("depth=3", ("depth", 3)), ("flag=true", ("flag", True)),
    ("act=relu", ("act", "relu")), ("sizes=[1, 2]", ("sizes", [1, 2])), ("k=", ("k", None)),
    ("a.b_c=1", ("a.b_c", 1)), ("pat=a=b", ("pat", "a=b")), ("_x=no", ("_x", False)),
])
def test_key_value_splits_at_the_first_equals_and_reads_yaml(text, pair) -> None:
    assert typed({"v": key_value(text)}) == typed({"v": pair})


@pytest.mark.parametrize("text, message", [
    ("depth", "expected KEY=VALUE, got 'depth'"), ("=3", "expected KEY=VALUE, got '=3'"),
    ("2x=1", "expected KEY=VALUE, got '2x=1'"), ("a..b=1", "expected KEY=VALUE, got 'a..b=1'"),
    ("a-b=1", "expected KEY=VALUE, got 'a-b=1'"), ("k=[1", "k: cannot read the value '[1'"),
    ("k={a: 1, a: 2}", "k: key 'a' is given twice (lines 1 and 1); keep one of them"),
])
def test_key_value_refuses_in_one_sentence(text, message) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as e:
        key_value(text)
    assert str(e.value) == message


@pytest.mark.parametrize("text, value", [
    ("auto", "auto"), ("AUTO", "auto"), ("true", True), ("True", True), ("false", False),
    ("FALSE", False),
])
def test_on_device_takes_auto_true_or_false_in_any_case(text, value) -> None:
    assert typed({"v": _on_device(text)}) == typed({"v": value})


@pytest.mark.parametrize("text", ["yes", "", "1", "on"])
def test_on_device_refuses_anything_else(text) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=f"^expected auto, true or false, got "
                       f"'{text}'$"):
        _on_device(text)


@pytest.mark.parametrize("text, pair", [
    ("backbone=0.1", ("backbone", 0.1)), ("head=2", ("head", 2.0)), ("net.0=0", ("net.0", 0.0)),
    ("a=1e-3", ("a", 0.001)),
])
def test_prefix_factor_is_a_prefix_and_a_float(text, pair) -> None:
    assert typed({"v": _prefix_factor(text)}) == typed({"v": pair})


@pytest.mark.parametrize("text", ["backbone", "=0.1", "backbone=", "backbone=x", "a=b=1"])
def test_prefix_factor_refuses_a_missing_part(text) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as e:
        _prefix_factor(text)
    assert str(e.value) == f"expected PREFIX=FACTOR, got '{text}'"


def test_flag_actions_are_the_flags_that_set_one_key(parser) -> None:
    actions = flag_actions(parser)
    expected = {tuple(dest.split(".", 1)) for dest, _ in FLAGS.values()
                if "." in dest and not dest.endswith(".*")}
    assert set(actions) == expected and len(actions) == 58
    assert actions["trainer", "logger.wandb.project"].option_strings == ["--wandb-project"]
    assert actions["data", "setting"].option_strings == ["--data-setting"]
    assert all(actions[s, k].dest == f"{s}.{k}" for s, k in actions)
