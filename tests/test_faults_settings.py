"""The fault table (docs/reliability.md), settings: values, config files and sweep files.

Each refusal is one sentence naming the flag, key or file and what is valid, exit 2, and
nothing written: no run folder, no sweep folder, every file that existed byte-identical.
Everything runs in-process and is refused before any training starts.
"""

from __future__ import annotations

import time

import pytest
import torch

from conftest import call
from d2l_lightning.cli import train
from faults_helpers import TINY, assert_unchanged, one_error_line, snapshot

#: (id, flags, a config file's text with the same mistake, what the sentence must say)
VALUES = [
    ("momentum-5", ["--momentum", "5"], "optim: {momentum: 5}",
     "optim.momentum must be in [0, 1), got 5.0"),
    ("momentum-1", ["--momentum", "1"], "optim: {momentum: 1.0}",
     "optim.momentum must be in [0, 1), got 1.0"),
    ("weight-decay-negative", ["--weight-decay", "-0.1"], "optim: {weight_decay: -0.1}",
     "optim.weight_decay must be a finite number, 0 or more, got -0.1"),
    ("lr-mult-nan", ["--lr-mult", "backbone=nan"], "optim: {lr_mult: {backbone: .nan}}",
     "optim.lr_mult must be PREFIX=FACTOR pairs whose factors are finite numbers, 0 or more, "
     "got {'backbone': nan}"),
    ("lr-mult-inf", ["--lr-mult", "head=1", "backbone=inf"],
     "optim: {lr_mult: {head: 1, backbone: .inf}}", "whose factors are finite numbers"),
    ("lr-mult-negative", ["--lr-mult", "backbone=-0.5"], "optim: {lr_mult: {backbone: -0.5}}",
     "got {'backbone': -0.5}"),
    ("progress-every-negative", ["--progress-every", "-1"], "run: {progress_every: -1}",
     "run.progress_every must be 0 or more, got -1"),
    ("seed-negative", ["--seed", "-1"], "run: {seed: -1}",
     "run.seed must be in [0, 4294967295] (2**32 - 1), got -1"),
    ("seed-too-large", ["--seed", str(2**32)], f"run: {{seed: {2**32}}}",
     "run.seed must be in [0, 4294967295]"),
    ("dist-timeout-huge", ["--dist-timeout", str(10**11)], f"run: {{dist_timeout: {10**11}}}",
     "run.dist_timeout must be a number of seconds, at least 1 and at most 1000000000"),
]


@pytest.mark.parametrize("source", ["flag", "config"])
@pytest.mark.parametrize("flags, text, needle", [v[1:] for v in VALUES],
                         ids=[v[0] for v in VALUES])
def test_setting_out_of_range_is_refused(source, flags, text, needle, data_root, tmp_path,
                                         capsys) -> None:
    """``--momentum 5``, ``--lr-mult backbone=nan``, ``--seed -1``...: as flags or in a file."""
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text + "\n")
    given = flags if source == "flag" else ["--config", str(cfg)]
    named = flags[0] if source == "flag" else f"config {cfg}"
    before = snapshot(data_root, tmp_path)
    run = tmp_path / "run"
    code, _, err = call(train.main, *TINY, "--data-dir", data_root, "--run-dir", run, *given,
                        capsys=capsys)
    line = one_error_line(err)
    assert code == 2 and line.startswith(f"train.py: error: {named}: ") and needle in line, line
    assert not run.exists()  # no run folder, no orphan config.yaml
    assert_unchanged(before, data_root, tmp_path)


def test_values_at_the_edge_of_each_range_are_accepted(capsys) -> None:
    """The ranges are not narrower than what runs: seed 2**32 - 1, momentum 0.99, factor 0."""
    code, out, err = call(train.main, *TINY, "--seed", str(2**32 - 1), "--momentum", "0.99",
                          "--lr-mult", "backbone=0", "--progress-every", "0",
                          "--dist-timeout", str(10**9), "--print-config", capsys=capsys)
    assert code == 0 and not err, err
    assert "seed: 4294967295" in out and "momentum: 0.99" in out and "backbone: 0.0" in out


@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(),
                    reason="this machine has a GPU")
@pytest.mark.parametrize("devices", ["-1", "0,1"])
def test_devices_that_select_gpus_are_refused_on_the_cpu(devices, data_root, tmp_path,
                                                          capsys) -> None:
    """``--devices -1`` is every GPU: Lightning's CPU accelerator takes only a count."""
    run = tmp_path / "run"
    before = snapshot(data_root)
    code, _, err = call(train.main, *TINY, "--data-dir", data_root, "--run-dir", run,
                        "--devices", devices, capsys=capsys)
    line = one_error_line(err)
    assert code == 2 and line.startswith(f"train.py: error: --devices {devices}: "), line
    assert "give a number of CPU processes of at least 1, or auto" in line, line
    assert not run.exists()
    assert_unchanged(before, data_root)


# ---------------------------------------------------------------------------------------------
# The YAML of --config and --sweep files

SWEEP_HEAD = "method: grid\nparameters:\n  optim.lr: {values: [0.1, 0.2]}\n"


def bomb(levels: int = 8) -> str:
    """"Billion laughs": 10 values, each level 10 aliases of the one before: 10**levels."""
    lines = ["    - &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"    - &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


YAML_FAULTS = [  # (id, config text, sweep text, what the sentence must say)
    ("key-twice", "optim:\n  lr: 0.1\n  momentum: 0.9\n  lr: 0.5\n",
     SWEEP_HEAD + "method: random\n",
     "key {key} is given twice (lines {lines}); keep one of them"),
    ("section-twice", "optim: {lr: 0.1}\nrun: {seed: 1}\noptim: {lr: 0.2}\n",
     SWEEP_HEAD + "parameters: {optim.lr: {values: [1]}}\n",
     "key {key} is given twice (lines {lines}); keep one of them"),
    ("alias-bomb", "optim:\n  lr_mult:\n" + bomb(),
     SWEEP_HEAD + "  optim.weight_decay:\n    values:\n" + bomb().replace("    -", "      -"),
     "its aliases (*name) expand the value at line"),
    ("alias-to-itself", "optim:\n  lr_mult: &a [1, *a]\n",
     SWEEP_HEAD + "  optim.momentum: &a {values: [*a]}\n",
     "contains itself through an alias"),
    ("nested-too-deep", "optim:\n  lr_mult: " + "{a: " * 1000 + "}" * 1000 + "\n",
     SWEEP_HEAD + "  optim.momentum: {values: " + "[" * 1000 + "]" * 1000 + "}\n",
     "it nests deeper than 100 levels"),
]
DUPLICATES = {("key-twice", "config"): ("'lr'", "2 and 4"),
              ("key-twice", "sweep"): ("'method'", "1 and 4"),
              ("section-twice", "config"): ("'optim'", "1 and 3"),
              ("section-twice", "sweep"): ("'parameters'", "2 and 4")}


@pytest.mark.parametrize("kind", ["config", "sweep"])
@pytest.mark.parametrize("fault, config_text, sweep_text, needle", YAML_FAULTS,
                         ids=[f[0] for f in YAML_FAULTS])
def test_yaml_file_fault_is_refused_quickly(kind, fault, config_text, sweep_text, needle,
                                            data_root, tmp_path, capsys) -> None:
    """A key given twice (PyYAML keeps the last), an alias bomb (10**8 values), a cycle."""
    key, lines = DUPLICATES.get((fault, kind), ("", ""))
    path = tmp_path / "file.yaml"
    path.write_text(config_text if kind == "config" else sweep_text)
    before = snapshot(data_root, tmp_path)
    run = tmp_path / "run"
    start = time.monotonic()
    code, _, err = call(train.main, *TINY, "--data-dir", data_root, "--run-dir", run,
                        f"--{kind}", path, capsys=capsys)
    seconds = time.monotonic() - start
    line = one_error_line(err)
    what = "config file" if kind == "config" else "sweep file"
    assert code == 2 and line.startswith(f"train.py: error: {what} {path}: "), line
    assert needle.format(key=key, lines=lines) in line, line
    assert seconds < 2, f"{seconds:.1f} s"
    assert not run.exists()
    assert_unchanged(before, data_root, tmp_path)


@pytest.mark.parametrize("flag", ["--optim.lr_mult", "--model-arg"])
def test_flag_value_alias_bomb_is_refused(flag, tmp_path, capsys) -> None:
    """``--SECTION.KEY=VALUE`` and ``--model-arg KEY=VALUE`` read their values as YAML too."""
    flow = "[" + ", ".join(line.split("- ", 1)[1] for line in bomb().splitlines()) + "]"
    given = [f"{flag}={flow}"] if flag.startswith("--optim") else [flag, f"blocks={flow}"]
    run = tmp_path / "run"
    start = time.monotonic()
    code, _, err = call(train.main, *TINY, "--run-dir", run, *given, capsys=capsys)
    line = one_error_line(err)
    assert code == 2 and "its aliases (*name) expand the value at line 1" in line, line
    assert time.monotonic() - start < 2 and not run.exists()


@pytest.mark.parametrize("kind", ["config", "sweep"])
def test_a_folder_given_as_a_file_says_it_is_a_folder(kind, tmp_path, capsys) -> None:
    folder = tmp_path / "configs"
    folder.mkdir()
    run = tmp_path / "run"
    code, _, err = call(train.main, *TINY, "--run-dir", run, f"--{kind}", folder, capsys=capsys)
    what = "config" if kind == "config" else "sweep file"
    assert code == 2 and one_error_line(err) == \
        f"train.py: error: {what} {folder} is a folder, not a file", err
    assert sorted(tmp_path.iterdir()) == [folder]


# ---------------------------------------------------------------------------------------------
# Sweep files: refused before the first trial

GRID_7X10 = "method: grid\nparameters:\n" + "".join(
    f"  {key}: {{values: [{', '.join(str(v) for v in range(1, 11))}]}}\n"
    for key in ("optim.lr", "optim.weight_decay", "optim.plateau_patience", "run.seed",
                "run.diverged_after", "run.progress_every", "trainer.max_steps"))
SWEEPS = [  # (id, sweep text, the sentence after "sweep FILE")
    ("run-cap-negative", "method: grid\nrun_cap: -1\nparameters: {optim.lr: {values: [1, 2]}}",
     " has no trials: run_cap must be a whole number of at least 1, not -1"),
    ("run-cap-huge", "method: random\nrun_cap: 1000000000000\n"
     "parameters: {optim.lr: {values: [0.1, 0.2]}}",
     ": run_cap must be at most 10000 (a local sweep runs its trials one after another), not "
     "1000000000000"),
    ("grid-of-ten-million", GRID_7X10,
     ": the grid has 10000000 trials, more than the 10000 a local sweep runs; give fewer values "
     "or a run_cap of at most 10000"),
    ("probabilities-too-few", "method: random\nrun_cap: 2\n"
     "parameters: {optim.lr: {values: [0.1, 0.2], probabilities: [1.0]}}",
     ": the probabilities of 'optim.lr' must be 2 numbers (one per value) of at least 0 that "
     "sum to 1, not [1.0]"),
    ("probabilities-sum", "method: random\nrun_cap: 2\n"
     "parameters: {optim.lr: {values: [0.1, 0.2], probabilities: [0.5, 0.2]}}",
     ": the probabilities of 'optim.lr' must be 2 numbers"),
    ("probabilities-negative", "method: random\nrun_cap: 2\n"
     "parameters: {optim.lr: {values: [0.1, 0.2], probabilities: [1.5, -0.5]}}",
     ": the probabilities of 'optim.lr' must be 2 numbers"),
    ("probabilities-nan", "method: grid\n"
     "parameters: {optim.lr: {values: [0.1, 0.2], probabilities: [.nan, 1.0]}}",
     ": the probabilities of 'optim.lr' must be 2 numbers"),
    ("values-drawn-uniform", "method: random\nrun_cap: 2\n"
     "parameters: {optim.lr: {values: [0.1, 0.2], distribution: uniform}}",
     ": 'optim.lr' has values, which are drawn as categorical, not uniform (that needs min and "
     "max instead)"),
    ("min-max-not-numbers", "method: random\nrun_cap: 2\n"
     "parameters: {optim.lr: {min: a, max: b}}",
     ": 'optim.lr' needs a min and a max that are finite numbers for uniform, not 'a' and 'b'"),
    ("int-uniform-of-floats", "method: random\nrun_cap: 2\n"
     "parameters: {data.batch_size: {min: 1.5, max: 8, distribution: int_uniform}}",
     ": 'data.batch_size' needs a min and a max that are whole numbers for int_uniform"),
    ("a-trial-out-of-range", "method: grid\nparameters: {run.seed: {values: [1, -1]}}",
     " (run.seed): run.seed must be in [0, 4294967295] (2**32 - 1), got -1"),
]


@pytest.mark.parametrize("text, said", [s[1:] for s in SWEEPS], ids=[s[0] for s in SWEEPS])
def test_sweep_file_fault_is_refused_before_any_trial(text, said, data_root, tmp_path,
                                                      capsys) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text + "\n")
    sweep_dir = tmp_path / "sweep"
    before = snapshot(data_root, tmp_path)
    start = time.monotonic()
    code, out, err = call(train.main, *TINY, "--data-dir", data_root, "--run-dir", sweep_dir,
                          "--sweep", path, capsys=capsys)
    line = one_error_line(err)
    assert code == 2 and line.startswith(f"train.py: error: sweep {path}{said}"), line
    assert time.monotonic() - start < 5 and "trial" not in out
    assert not sweep_dir.exists()
    assert_unchanged(before, data_root, tmp_path)


def test_a_large_grid_with_a_run_cap_plans_only_its_head(tmp_path) -> None:
    """10**7 combinations and run_cap 3: three trials, without building the other ones."""
    from d2l_lightning.training.sweep import load_sweep, trials

    path = tmp_path / "s.yaml"
    path.write_text(GRID_7X10 + "run_cap: 3\n")
    start = time.monotonic()
    got = trials(load_sweep(path), seed=0)
    assert [t["trainer.max_steps"] for t in got] == [1, 2, 3]
    assert time.monotonic() - start < 1
