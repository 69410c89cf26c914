"""``--help`` of train.py and predict.py: no torch or Lightning, one default per flag."""

from __future__ import annotations

import argparse
import re

import pytest

from conftest import ROOT, run_cli
from d2l_lightning.cli import predict
from d2l_lightning.training.flags import FROM_RECIPE, build_parser, flag_actions
from d2l_lightning.training.schema import FIXED

CHECK = ("import runpy, sys\n"
         "sys.argv = [sys.argv[1], '--help']\n"
         "try:\n"
         "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
         "except SystemExit as e:\n"
         "    assert e.code in (0, None), e.code\n"
         "print('HEAVY', sorted(m for m in ('torch', 'lightning') if m in sys.modules))\n")


@pytest.mark.parametrize("script", ["train.py", "predict.py", "export.py"])
def test_help_imports_neither_torch_nor_lightning(script, tmp_path) -> None:
    check = tmp_path / "check.py"
    check.write_text(CHECK)
    proc = run_cli(str(check), script, cwd=ROOT, check=True)
    assert "usage:" in proc.stdout and proc.stdout.rstrip().endswith("HEAVY []"), proc.stdout


def test_tables_kept_for_a_fast_help_match_their_source() -> None:
    """The Trainer table is regenerated from the installed Lightning (``python -m
    d2l_lightning.training.trainer_args --write`` after an upgrade)."""
    import inspect

    import lightning as L

    from d2l_lightning.datamodules.idx import IDX_DATASETS
    from d2l_lightning.training.trainer_args import LIGHTNING_VERSION, TRAINER_ARGS, generate

    assert generate() == TRAINER_ARGS, "regenerate d2l_lightning/training/trainer_args.py"
    assert L.__version__ == LIGHTNING_VERSION
    assert list(FIXED["trainer"]) == [p for p in inspect.signature(L.Trainer).parameters]
    assert tuple(sorted(IDX_DATASETS)) == predict.IDX_DATA


def test_every_train_flag_has_help_and_its_default_once() -> None:
    parser = build_parser()
    for (section, key), action in flag_actions(parser).items():
        text = action.help or ""
        assert len(text) > 8, action.option_strings
        said = text.count("default:") + text.count("(from the recipe)")
        assert said == 1, (action.option_strings, text)
        default = action.config_default
        if default not in (None, []) and not isinstance(default, bool):
            assert f"(default: {default})" in text, (action.option_strings, text)
        if section not in FROM_RECIPE:  # only the recipe sections say "from the recipe"
            recipe_keys = ("max_epochs", "gradient_clip_val")
            assert "(from the recipe)" not in text or key in recipe_keys, text
    shown = parser.format_help()
    assert "(default: None)" not in shown and "(default: False)" not in shown
    assert re.search(r"--progress-bar, --no-progress-bar\s+show the progress bar \(default: "
                     r"when stderr is a\s+terminal; else plain lines\)", shown)


def test_predict_subcommands_show_their_defaults_once() -> None:
    parser = predict.build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subs.choices.items():
        text = sub.format_help()
        assert "(default: None)" not in text and "(default: False)" not in text, name
        for action in sub._actions:
            unset = action.default is None or action.default is False  # 0 is a default
            if action.option_strings and not unset and action.default != argparse.SUPPRESS:
                if action.help and "default" in action.help:
                    continue
                flat = " ".join(text.split())
                assert flat.count(f"(default: {action.default})") >= 1, (name, action.dest)
            if action.option_strings and action.dest != "help":
                assert action.help, (name, action.dest)
