"""train.py --sweep: grid and random searches, one run folder per trial, resumable, with a
sorted summary; the W&B form of the same file; one-sentence refusals that write nothing."""

from __future__ import annotations

import csv
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, make_idx_dataset, read_results
from d2l_lightning.cli import train
from d2l_lightning.training.command_line import parse_command_line
from d2l_lightning.training.config import CONFIGS, load_config_file, resolve

#: two trials end to end (the grid's product, distributions and the summary's order are
#: tested without training in tests/test_sweep_plan.py)
GRID = """method: grid
parameters:
  optim.lr: {values: [0.02, 0.3]}
  model.num_hiddens: {values: [8]}
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweepdata")
    make_idx_dataset(root / "mnist", n_train=120, n_test=20)
    return root


def base(data: Path) -> list[str]:
    return ["--model", "mlp", "--data", "mnist", "--data-dir", str(data), "--max-epochs", "1",
            "--batch-size", "32", "--no-progress-bar"]


def summary(sweep: Path) -> list[dict[str, str]]:
    with open(sweep / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_grid_sweep_runs_every_trial_and_sorts_the_summary(data, tmp_path, capsys) -> None:
    spec = tmp_path / "grid.yaml"
    spec.write_text(GRID)
    sweep = tmp_path / "sweep"
    assert train.main(["--sweep", str(spec), *base(data), "--run-dir", str(sweep)]) == 0
    trials = sorted(p.name for p in sweep.glob("trial-*"))
    assert trials == ["trial-000", "trial-001"]
    combos = []
    for t in trials:
        cfg = yaml.safe_load((sweep / t / "config.yaml").read_text())
        combos.append((cfg["optim"]["lr"], cfg["model"]["num_hiddens"]))
        assert cfg["trainer"]["max_epochs"] == 1 and "test/acc" in read_results(sweep / t)
    assert combos == [(0.02, 8), (0.3, 8)]
    rows = summary(sweep)
    assert len(rows) == 2 and {r["status"] for r in rows} == {"done"}
    accs = [float(r["val/acc"]) for r in rows]
    assert accs == sorted(accs, reverse=True)  # val/acc is the MLP's monitor: max first
    for r in rows:
        assert float(r["val/acc"]) == read_results(Path(r["run_dir"]))["val/acc"]
        assert r["optim.lr"] and r["model.num_hiddens"] and r["train_time_sec"]
    out = capsys.readouterr().out
    assert "2 trials, sorted by val/acc (maximize)" in out


@pytest.mark.slow  # ~36 s; tests/test_sweep_loop.py tests the relaunch in-process by default
def test_a_killed_sweep_relaunched_runs_only_the_missing_trials(data, tmp_path, monkeypatch,
                                                               capsys) -> None:
    """The sweep and its first trial are killed (SIGKILL) once that trial has finished; the
    same command again (in-process here) keeps the finished trial and runs the other one."""
    spec = tmp_path / "grid.yaml"
    spec.write_text(GRID)
    sweep = tmp_path / "sweep"
    args = ["--sweep", str(spec), *base(data), "--run-dir", str(sweep)]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the trials' too
    monkeypatch.delenv("_D2L_RUN_DIR", raising=False)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and not (sweep / "trial-000" / "results.json").exists():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and the trial it is running
    proc.wait()
    done = {t.parent.name: hashlib.sha256(t.read_bytes()).hexdigest()
            for t in sweep.glob("trial-*/results.json")}
    assert list(done) == ["trial-000"]
    assert train.main(args) == 0
    out = capsys.readouterr().out
    for name, digest in done.items():  # finished trials were not run again
        assert hashlib.sha256((sweep / name / "results.json").read_bytes()).hexdigest() == digest
        assert f"({sweep / name}): optim.lr" in out
    assert out.count("finished earlier") == len(done) == 1
    assert len(summary(sweep)) == 2 and {r["status"] for r in summary(sweep)} == {"done"}


def test_random_search_is_seeded_and_print_config_writes_nothing(tmp_path, monkeypatch,
                                                                 capsys) -> None:
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "random.yaml"
    spec.write_text("method: random\nrun_cap: 5\nparameters:\n"
                    "  optim.lr: {distribution: log_uniform_values, min: 0.001, max: 0.1}\n"
                    "  data.batch_size: {values: [16, 32]}\n"
                    "  model.num_hiddens: {min: 8, max: 64}\n")
    outs = []
    for _ in range(2):
        assert train.main(["--sweep", str(spec), "--model", "mlp", "--print-config"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0].count("# trial ") == 5
    trials = list(yaml.safe_load_all(outs[0].replace("\nmodel:", "\n---\nmodel:")))
    for cfg in trials[1:]:
        assert 0.001 <= cfg["optim"]["lr"] <= 0.1 and cfg["data"]["batch_size"] in (16, 32)
        assert 8 <= cfg["model"]["num_hiddens"] <= 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["random.yaml"]


@pytest.mark.parametrize("text, args, needle", [
    (None, [], "is neither a file nor a shipped config"),
    ("method: grid\nparameters: {optim.lr: {values: [0.1]\n", [], "does not parse as YAML"),
    ("method: bayes\nparameters: {optim.lr: {values: [0.1]}}\n", [], "method must be one of"),
    ("method: grid\nearly_terminate: {type: hyperband}\nparameters: {optim.lr: {values: [1]}}\n",
     [], "unknown key 'early_terminate'"),
    ("method: grid\nparameters: {lr: {values: [0.1]}}\n", [], "must be written SECTION.KEY"),
    ("method: grid\nparameters: {model.depth: {values: [2, 3]}}\n", [],
     "model 'lenet' takes no 'depth'"),
    ("method: grid\nparameters: {optim.lr: {values: [fast]}}\n", [], "optim.lr: expected float"),
    ("method: grid\nparameters: {}\n", [], "has no trials"),
    ("method: grid\nparameters: {optim.lr: {values: []}}\n", [], "has no trials"),
    ("method: grid\nrun_cap: 0\nparameters: {optim.lr: {values: [0.1]}}\n", [], "has no trials"),
    ("method: random\nrun_cap: 0\nparameters: {optim.lr: {min: 0.1, max: 1.0}}\n", [],
     "has no trials"),
    ("method: grid\nparameters: {optim.lr: {min: 0.1, max: 1.0}}\n", [], "a grid needs values"),
    ("method: grid\nparameters: {optim.lr: {values: [0.1, 0.2]}}\n", ["--lr", "0.5"],
     "which the sweep"),
])
def test_bad_sweeps_are_one_sentence(text, args, needle, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "s.yaml"
    if text is not None:
        spec.write_text(text)
    before = sorted(tmp_path.iterdir())
    assert train.main(["--sweep", str(spec), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert sorted(tmp_path.iterdir()) == before


def test_shipped_sweep_files_resolve_locally_and_under_wandb(monkeypatch, capsys,
                                                            tmp_path) -> None:
    monkeypatch.chdir(tmp_path)  # shipped names work from any folder
    for name in ("lenet-lr-grid", "wandb-lenet_bn-random"):
        assert train.main(["--sweep", f"sweeps/{name}", "--config",
                           "fashion_mnist/lenet_bn-modern", "--print-config"]) == 0
    assert capsys.readouterr().out.count("# trial ") == 6 + 8
    spec = yaml.safe_load((CONFIGS / "sweeps/wandb-lenet_bn-random.yaml").read_text())
    assert spec["program"] == "train.py" and spec["command"][-1] == "${args}"
    # what a W&B agent runs: the command's own flags, then ${args} as --SECTION.KEY=VALUE
    fixed = [a for a in spec["command"] if not a.startswith("${") and a != "python"]
    args = [f"--{key}={_example(p)}" for key, p in spec["parameters"].items()]
    request = parse_command_line([*fixed, *args])
    cfg = resolve([*map(load_config_file, request.configs), request.cli])
    assert "wandb" in cfg["trainer"]["logger"] and cfg["optim"]["lr"] == 0.001
    assert cfg["optim"]["weight_decay"] == 0.05 and cfg["data"]["batch_size"] == 256
    assert cfg["model"] == {**cfg["model"], "name": "lenet_bn", "recipe": "modern"}


def _example(param: dict) -> object:
    return param["values"][-1] if "values" in param else 0.001
