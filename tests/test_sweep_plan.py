"""The sweep's arithmetic without training: grid order and caps, each distribution's range and
shape, the seed, and the summary's order (tests/test_sweep.py runs trials end to end)."""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from pathlib import Path

import pytest
import yaml

from d2l_lightning.training.errors import ConfigError
from d2l_lightning.training.sweep import load_sweep, trials, write_summary


def spec(tmp_path: Path, **body) -> dict:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return load_sweep(path)


def test_a_grid_is_the_product_in_file_order_and_run_cap_keeps_its_head(tmp_path) -> None:
    params = {"optim.lr": {"values": [0.1, 0.2]}, "model.num_hiddens": {"values": [8, 16, 32]},
              "data.batch_size": {"value": 4}}
    grid = trials(spec(tmp_path, method="grid", parameters=params), seed=0)
    assert [(t["optim.lr"], t["model.num_hiddens"]) for t in grid] == [
        (0.1, 8), (0.1, 16), (0.1, 32), (0.2, 8), (0.2, 16), (0.2, 32)]
    assert {t["data.batch_size"] for t in grid} == {4}
    capped = trials(spec(tmp_path, method="grid", parameters=params, run_cap=4), seed=0)
    assert capped == grid[:4]


def test_random_draws_follow_each_distribution(tmp_path) -> None:
    params = {"optim.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
              "optim.momentum": {"min": 0.5, "max": 0.9},
              "model.num_hiddens": {"min": 8, "max": 11},
              "data.batch_size": {"values": [16, 32], "probabilities": [0.9, 0.1]},
              "run.seed": {"value": 7}}
    draws = trials(spec(tmp_path, method="random", run_cap=2000, parameters=params), seed=3)
    assert len(draws) == 2000
    lrs = [t["optim.lr"] for t in draws]
    assert min(lrs) >= 1e-4 and max(lrs) <= 1e-1
    # log-uniform: each decade holds a third of the draws, so the median is 10**-2.5, not 0.05
    assert statistics.median(math.log10(v) for v in lrs) == pytest.approx(-2.5, abs=0.1)
    assert sum(v < 1e-3 for v in lrs) / 2000 == pytest.approx(1 / 3, abs=0.05)
    moms = [t["optim.momentum"] for t in draws]
    assert 0.5 <= min(moms) < 0.52 and 0.88 < max(moms) <= 0.9
    assert statistics.mean(moms) == pytest.approx(0.7, abs=0.02)  # uniform in [0.5, 0.9]
    ints = [t["model.num_hiddens"] for t in draws]
    assert all(isinstance(v, int) for v in ints) and set(ints) == {8, 9, 10, 11}  # both ends
    assert sum(t["data.batch_size"] == 16 for t in draws) / 2000 == pytest.approx(0.9, abs=0.03)
    assert {t["run.seed"] for t in draws} == {7}


def test_random_search_is_the_same_for_a_seed_and_differs_across_seeds(tmp_path) -> None:
    s = spec(tmp_path, method="random", run_cap=5,
             parameters={"optim.lr": {"min": 0.0, "max": 1.0}})
    assert trials(s, seed=1) == trials(s, seed=1) != trials(s, seed=2)


@pytest.mark.parametrize("param, needle", [
    ({"min": 0.1, "max": 0.1}, "needs min < max"),
    ({"distribution": "log_uniform_values", "min": 0.0, "max": 1.0}, "needs 0 < min < max"),
    ({"distribution": "normal", "min": 0.0, "max": 1.0}, "is not supported"),
    ({"min": 0.1}, "needs values, value, or min and max"),
])
def test_a_distribution_that_cannot_be_drawn_is_refused(param, needle, tmp_path) -> None:
    with pytest.raises(ConfigError, match=needle):
        spec(tmp_path, method="random", run_cap=1, parameters={"optim.lr": param})


@pytest.mark.parametrize("metric, goal", [(None, None), ("val/loss", "minimize")])
def test_a_metric_without_name_or_with_a_wrong_goal_is_refused(metric, goal, tmp_path) -> None:
    bad = {"goal": "up"} if metric is None else {"name": metric, "goal": "smallest"}
    with pytest.raises(ConfigError, match="metric must be a mapping"):
        spec(tmp_path, method="grid", metric=bad, parameters={"optim.lr": {"values": [1.0]}})


def _summary(tmp_path: Path, metric: str, goal: str, accs: list[float | None],
             statuses: list[str]) -> list[dict[str, str]]:
    values, configs = [], []
    for i, acc in enumerate(accs):
        run = tmp_path / f"trial-{i}"
        run.mkdir()
        if acc is not None:
            (run / "results.json").write_text(json.dumps(
                {"val/acc": acc, "test/acc": acc / 2, "epochs": 3, "train_time_sec": 1.5,
                 "train/loss": 9.0, "model": "mlp"}))
        values.append({"optim.lr": 0.1 * (i + 1)})
        configs.append({"run": {"run_dir": str(run)}})
    text = write_summary(tmp_path, values, configs, statuses, metric, goal)
    with open(tmp_path / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert text.splitlines()[0].split() == ["trial", "optim.lr", metric, "status",
                                            "train_time_sec"]
    assert [line.split()[0] for line in text.splitlines()[1:]] == [r["trial"] for r in rows]
    for line, row in zip(text.splitlines()[1:], rows):  # numbers to 4 digits, "-" for none
        cell = f"{float(row[metric]):.4g}" if row.get(metric) else "-"
        assert line.split()[2] == cell and line.split()[1] == f"{float(row['optim.lr']):.4g}"
    return rows


def test_the_summary_is_sorted_by_the_goal_and_trials_without_the_metric_come_last(
        tmp_path) -> None:
    rows = _summary(tmp_path, "val/acc", "maximize", [0.5, None, 0.9, 0.5, 0.7],
                    ["done", "failed (exit 1)", "done", "done"])
    assert [r["trial"] for r in rows] == ["2", "4", "0", "3", "1"]  # ties keep trial order
    assert [r["status"] for r in rows] == ["done", "not run", "done", "done", "failed (exit 1)"]
    assert rows[0]["val/acc"] == "0.9" and rows[0]["test/acc"] == "0.45"
    assert rows[0]["epochs"] == "3" and rows[0]["train_time_sec"] == "1.5"
    assert "train/loss" not in rows[0] and "model" not in rows[0]  # only val/ and test/ numbers
    assert rows[0]["run_dir"] == str(tmp_path / "trial-2")
    assert float(rows[0]["optim.lr"]) == pytest.approx(0.3)


def test_a_minimized_metric_puts_the_smallest_first_and_a_done_trial_without_results_says_so(
        tmp_path) -> None:
    rows = _summary(tmp_path, "val/acc", "minimize", [0.5, 0.2, None], ["done"] * 3)
    assert [r["trial"] for r in rows] == ["1", "0", "2"]
    assert rows[-1]["status"] == "no results"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["summary.csv"]


class Trials:
    """Stands in for the trial processes (``sweep._trial``): records each command and writes its
    results; returns ``(exit status, signal passed on)``."""

    def __init__(self, codes: dict[str, int]) -> None:
        self.codes, self.calls, self.seen, self.orders = codes, [], [], []

    def __call__(self, cmd: list[str], env: dict[str, str]) -> tuple[int, None]:
        run = Path(cmd[cmd.index("--run-dir") + 1])
        self.calls.append((run.name, cmd[1:], env))
        summary = run.parent / "summary.csv"  # rewritten after each trial: progress is kept
        self.seen.append(summary.read_text().count("\n") if summary.exists() else 0)
        self.orders.append([line.split(",")[0] for line in
                            summary.read_text().splitlines()[1:]] if summary.exists() else [])
        code = self.codes.get(run.name, 0)
        if code == 0:
            lr = yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"]
            (run / "results.json").write_text(json.dumps({"val/acc": 1 - lr}))
        return code, None


def test_a_relaunch_skips_finished_trials_resumes_a_killed_one_and_starts_the_rest(
        tmp_path, monkeypatch, capsys) -> None:
    from d2l_lightning.cli import train
    from d2l_lightning.training import sweep

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("_D2L_RUN_DIR", "elsewhere")  # a parent's run folder is not inherited
    (tmp_path / "grid.yaml").write_text("method: grid\nparameters:\n"
                                        "  optim.lr: {values: [0.1, 0.2, 0.3, 0.4]}\n")
    argv = ["--sweep", "grid.yaml", "--model", "mlp", "--run-dir", "sw"]
    assert train.main([*argv, "--print-config"]) == 0
    cfgs = capsys.readouterr().out.split("# trial ")[1:]
    done, killed = tmp_path / "sw/trial-000", tmp_path / "sw/trial-001"
    (done / "checkpoints").mkdir(parents=True)
    (done / "results.json").write_text(json.dumps({"val/acc": 0.5}))
    (done / "checkpoints/last.ckpt").write_bytes(b"")
    (killed / "checkpoints").mkdir(parents=True)
    (killed / "checkpoints/last.ckpt").write_bytes(b"")
    (killed / "config.yaml").write_text(cfgs[1].split("\n", 1)[1])
    fake = Trials({"trial-003": 3})
    monkeypatch.setattr(sweep, "_trial", fake)

    assert train.main(argv) == 1  # trial 3 failed
    out = capsys.readouterr().out
    assert [(name, args[2:]) for name, args, _ in fake.calls] == [
        ("trial-001", ["--resume", "last", "--run-dir", "sw/trial-001"]),
        ("trial-002", ["--config", "sw/trial-002/config.yaml", "--run-dir", "sw/trial-002"]),
        ("trial-003", ["--config", "sw/trial-003/config.yaml", "--run-dir", "sw/trial-003"])]
    assert fake.calls[0][1][:2] == ["-m", "d2l_lightning.cli.train"]
    assert fake.seen == [0, 5, 5]  # a header and 4 rows once the first trial ran
    assert fake.orders[2] == ["1", "2", "0", "3"]  # sorted by the goal while it runs, too
    assert "\ntrial 3/4 (sw/trial-002): optim.lr=0.3\n" in out
    assert out.endswith("sweep sw: 4 trials, sorted by val/acc (maximize)\n"
                        "trial  optim.lr  val/acc  status           train_time_sec\n"
                        "1      0.2       0.8      done             -\n"
                        "2      0.3       0.7      done             -\n"
                        "0      0.1       0.5      done             -\n"
                        "3      0.4       -        failed (exit 3)  -\n")
    env = fake.calls[0][2]
    assert "_D2L_RUN_DIR" not in env
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(sweep.PACKAGE_ROOT)
    written = yaml.safe_load((tmp_path / "sw/trial-002/config.yaml").read_text())
    assert written["optim"]["lr"] == 0.3 and written["run"]["run_dir"] == "sw/trial-002"
    assert "trial 1/4 (sw/trial-000): optim.lr=0.1: finished earlier" in out
    assert (tmp_path / "sw/sweep.yaml").read_text() == (tmp_path / "grid.yaml").read_text()
    with open(tmp_path / "sw/summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["trial"], r["status"]) for r in rows] == [
        ("1", "done"), ("2", "done"), ("0", "done"), ("3", "failed (exit 3)")]  # 0.8, 0.7, 0.5
    assert "4 trials, sorted by val/acc (maximize)" in out

    fake.calls.clear()
    fake.codes = {}
    assert train.main(argv) == 0  # once more: only the failed trial runs again
    assert [name for name, _, _ in fake.calls] == ["trial-003"]


def test_a_trial_folder_configured_differently_is_refused_before_anything_runs(
        tmp_path, monkeypatch, capsys) -> None:
    from d2l_lightning.cli import train
    from d2l_lightning.training import sweep

    monkeypatch.chdir(tmp_path)
    (tmp_path / "grid.yaml").write_text("method: grid\nparameters:\n"
                                        "  optim.lr: {values: [0.1, 0.2]}\n")
    (tmp_path / "sw/trial-001").mkdir(parents=True)
    (tmp_path / "sw/trial-001/config.yaml").write_text("model: {name: lenet}\n")
    fake = Trials({})
    monkeypatch.setattr(sweep, "_trial", fake)
    assert train.main(["--sweep", "grid.yaml", "--model", "mlp", "--run-dir", "sw"]) == 2
    assert capsys.readouterr().err == ("train.py: error: sw/trial-001 holds a trial configured "
                                       "differently; choose another --run-dir for this sweep\n")
    assert fake.calls == [] and sorted(p.name for p in (tmp_path / "sw").iterdir()) == [
        "trial-001"]
    assert train.main(["--sweep", "grid.yaml", "--model", "mlp", "--run-dir", "sw",
                       "--resume", "last"]) == 2
    assert capsys.readouterr().err == ("train.py: error: --resume cannot be given with --sweep: "
                                       "re-launch the same sweep command to continue it\n")


def test_keys_only_wandb_reads_are_accepted_and_a_metric_goal_defaults_to_minimize(
        tmp_path) -> None:
    s = spec(tmp_path, method="random", run_cap=1, metric={"name": "val/loss"},
             program="train.py", command=["python", "${program}", "${args}"], name="n",
             description="d", project="p", entity="e",
             parameters={"optim.lr": {"min": 0, "max": 1.0}})
    (trial,) = trials(s, seed=0)  # run_cap 1: one trial
    # min 0 (an int) with max 1.0 (a float) is a uniform float draw, not an integer one
    assert isinstance(trial["optim.lr"], float) and 0 < trial["optim.lr"] < 1


def test_print_config_names_each_trial_folder_and_says_a_recipe_note_once(
        tmp_path, monkeypatch, capsys) -> None:
    from d2l_lightning.cli import train

    monkeypatch.chdir(tmp_path)
    (tmp_path / "grid.yaml").write_text("method: grid\nparameters:\n"
                                        "  optim.lr: {values: [0.123456, 2]}\n")
    assert train.main(["--sweep", "grid.yaml", "--model", "lstm", "--recipe", "wikitext",
                       "--data", "time_machine", "--print-config"]) == 0
    out, err = capsys.readouterr()
    assert "# trial 0: optim.lr=0.1235\n" in out and "# trial 1: optim.lr=2\n" in out
    assert "run_dir: runs/sweep-grid/trial-000\n" in out  # the default sweep folder
    assert "run_dir: runs/sweep-grid/trial-001\n" in out
    assert err.count("warning: recipe 'wikitext' of lstm is made for data 'wikitext2'") == 1


SECTIONS_LIST = "model, data, task, optim, trainer, run"


@pytest.mark.parametrize("text, said", [
    (None, "sweep file s.yaml is neither a file nor a shipped config (the shipped ones: "
           "train.py --list-configs)"),
    ("method: grid\nparameters: {optim.lr: {values: [0.1]\n",
     "sweep file s.yaml does not parse as YAML (while parsing a flow mapping)"),
    ("method: grid\nearly_terminate: {type: hyperband}\nparameters: {optim.lr: {values: [1]}}\n",
     "sweep s.yaml: unknown key 'early_terminate' (keys: method, parameters, metric, run_cap, "
     "program, command, name, description, project, entity; early_terminate is not supported)"),
    ("- method\n- parameters\n",
     "sweep file s.yaml must hold a mapping (method, parameters, ...)"),
    ("method: bayes\nparameters: {optim.lr: {values: [0.1]}}\n",
     "sweep s.yaml: method must be one of grid, random, not 'bayes'"),
    ("method: grid\nparameters: {foo.lr: {values: [0.1]}}\n",
     f"sweep s.yaml: parameter 'foo.lr' must be written SECTION.KEY (sections: {SECTIONS_LIST})"),
    ("method: grid\nparameters: {optim.: {values: [0.1]}}\n",
     f"sweep s.yaml: parameter 'optim.' must be written SECTION.KEY (sections: {SECTIONS_LIST})"),
    ("method: grid\nparameters: {optim.lr: 0.1}\n",
     "sweep s.yaml: parameter 'optim.lr' needs values, value or a distribution"),
    ("method: grid\nparameters: {optim.lr: {values: 5}}\n",
     "sweep s.yaml has no trials: 'optim.lr' has no values"),
    ("method: random\nrun_cap: 1\nparameters: {optim.lr: {distribution: normal, min: 0.0, "
     "max: 1.0}}\n",
     "sweep s.yaml: distribution 'normal' of 'optim.lr' is not supported locally (supported: "
     "constant, categorical, uniform, int_uniform, log_uniform_values)"),
    ("method: grid\nmetric: {goal: up}\nparameters: {optim.lr: {values: [1.0]}}\n",
     "sweep s.yaml: metric must be a mapping with 'name' and a 'goal' of minimize or maximize"),
    ("method: random\nparameters: {optim.lr: {min: 0.1, max: 1.0}}\n",
     "sweep s.yaml has no trials: a random search needs run_cap (the number of trials)"),
    ("method: grid\nrun_cap: 2.5\nparameters: {optim.lr: {values: [0.1, 0.2, 0.3]}}\n",
     "sweep s.yaml has no trials: run_cap must be a whole number of at least 1, not 2.5"),
    ("method: random\nrun_cap: true\nparameters: {optim.lr: {values: [0.1]}}\n",
     "sweep s.yaml has no trials: run_cap must be a whole number of at least 1, not True"),
    ("method: grid\nparameters: {optim.lr: {values: [0.1], distribution: uniform}}\n",
     "sweep s.yaml: a grid needs values for 'optim.lr', not a distribution"),
    ("method: grid\nparameters: {run.run_dir: {values: [a, b]}}\n",
     "sweep s.yaml: run.run_dir cannot be swept: each trial runs in SWEEP_DIR/trial-N "
     "(--run-dir names SWEEP_DIR)"),
    ("method: grid\nparameters: {optim.lr: {values: [fast]}}\n",
     "sweep s.yaml (optim.lr): optim.lr: expected float, got 'fast'"),
    ("method: grid\nrun_cap: 0\nparameters: {optim.lr: {values: [0.1]}}\n",
     "sweep s.yaml has no trials: run_cap must be a whole number of at least 1, not 0"),
])
def test_each_refusal_is_its_whole_sentence(text, said, tmp_path, monkeypatch, capsys) -> None:
    from d2l_lightning.cli import train

    monkeypatch.chdir(tmp_path)
    if text is not None:
        (tmp_path / "s.yaml").write_text(text)
    assert train.main(["--sweep", "s.yaml", "--model", "mlp"]) == 2
    assert capsys.readouterr().err == f"train.py: error: {said}\n"


def test_a_nested_key_is_swept_and_the_summary_table_is_aligned(tmp_path, monkeypatch,
                                                                capsys) -> None:
    from d2l_lightning.cli import train
    from d2l_lightning.training import sweep

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", "/users/own")
    (tmp_path / "g.yaml").write_text(
        "method: grid\nmetric: {name: val/acc}\nparameters:\n"
        "  trainer.callbacks.EarlyStopping.patience: {values: [2]}\n"
        "  optim.lr: {values: [0.5]}\n")
    fake = Trials({})
    monkeypatch.setattr(sweep, "_trial", fake)
    assert train.main(["--sweep", "g.yaml", "--model", "mlp", "--run-dir", "a/b/sw"]) == 0
    cfg = yaml.safe_load((tmp_path / "a/b/sw/trial-000/config.yaml").read_text())
    assert cfg["trainer"]["callbacks"]["EarlyStopping"]["patience"] == 2
    first = (tmp_path / "a/b/sw/trial-000/config.yaml").read_text().splitlines()[0]
    assert first == ("# trial 0 of the sweep g.yaml: trainer.callbacks.EarlyStopping.patience=2 "
                     "optim.lr=0.5")
    assert fake.calls[0][2]["PYTHONPATH"] == os.pathsep.join([str(sweep.PACKAGE_ROOT),
                                                              "/users/own"])
    out = capsys.readouterr().out
    assert ("trial 1/1 (a/b/sw/trial-000): trainer.callbacks.EarlyStopping.patience=2 "
            "optim.lr=0.5\n") in out
    # one trial: the table's columns are as wide as their longest cell or header
    assert out.endswith(
        "sweep a/b/sw: 1 trials, sorted by val/acc (minimize)\n"
        "trial  trainer.callbacks.EarlyStopping.patience  optim.lr  val/acc  status  "
        "train_time_sec\n"
        "0      2                                         0.5       0.5      done    -\n")


@pytest.mark.parametrize("model, metric, expected", [
    ("linear_regression", None, "sorted by val/loss (minimize)"),
    ("mlp", "{name: val/loss, goal: maximize}", "sorted by val/loss (maximize)"),
])
def test_the_summary_follows_the_sweeps_metric_or_the_tasks(model, metric, expected, tmp_path,
                                                            monkeypatch, capsys) -> None:
    from d2l_lightning.cli import train
    from d2l_lightning.training import sweep

    monkeypatch.chdir(tmp_path)
    (tmp_path / "g.yaml").write_text(
        "method: grid\n" + (f"metric: {metric}\n" if metric else "")
        + "parameters:\n  optim.lr: {values: [0.1, 0.3, 0.2]}\n")
    monkeypatch.setattr(sweep, "_trial", LossTrials())
    assert train.main(["--sweep", "g.yaml", "--model", model, "--run-dir", "sw"]) == 0
    out = capsys.readouterr().out
    assert expected in out
    with open(tmp_path / "sw/summary.csv", newline="") as f:
        order = [r["trial"] for r in csv.DictReader(f)]
    assert order == (["1", "2", "0"] if "maximize" in expected else ["0", "2", "1"])


class LossTrials(Trials):
    """Trials whose val/loss is their learning rate."""

    def __init__(self) -> None:
        super().__init__({})

    def __call__(self, cmd: list[str], env: dict[str, str]) -> tuple[int, None]:
        run = Path(cmd[cmd.index("--run-dir") + 1])
        lr = yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"]
        (run / "results.json").write_text(json.dumps({"val/loss": lr}))
        return 0, None


def test_a_random_sweep_draws_from_the_runs_seed(tmp_path, monkeypatch, capsys) -> None:
    from d2l_lightning.cli import train

    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text("method: random\nrun_cap: 3\nparameters:\n"
                                     "  optim.lr: {min: 0.0, max: 1.0}\n")
    headers = {}
    for seed in ("0", "0", "7"):
        assert train.main(["--sweep", "r.yaml", "--model", "mlp", "--seed", seed,
                           "--print-config"]) == 0
        out = capsys.readouterr().out
        headers.setdefault(seed, []).append([line for line in out.splitlines()
                                             if line.startswith("# trial ")])
    assert headers["0"][0] == headers["0"][1] != headers["7"][0]
    assert len(headers["7"][0]) == 3
