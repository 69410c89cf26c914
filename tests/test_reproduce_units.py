"""bench/reproduce.py piece by piece, in-process (1 of 2): predictions, row selection,
fingerprints, the child's environment and ``_train``'s deadline (test_reproduce_rows.py:
``run_row``'s skip rules and budgets). No process is started; the clock is fixed."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from reproduce_helpers import (  # noqa: F401 (row and clock are fixtures)
    CONFIG,
    NOW,
    WARMUP,
    FakeTrain,
    clock,
    row,
)

from bench import reproduce, rows
from bench.reproduce import Prediction


def test_the_module_constants():
    assert reproduce.EVAL_FRACTION == 0.35 and reproduce.GRACE_S == 30.0
    assert reproduce.TRAIN == ["train.py"]
    assert reproduce.SMOKE_FLAGS[reproduce.SMOKE_FLAGS.index("--limit-train-batches") + 1] == "2"


def test_a_prediction_defaults_to_one_batch_an_epoch_and_no_validation():
    assert Prediction(0.0, 2.0, 5.0, 10, 1.0).after(0).seconds == 25.0  # 5 + 2 * 10
    # one batch an epoch: 10 epochs, 11 validations of 1 batch at 0.35 of a step
    assert Prediction(0.0, 2.0, 5.0, 10, 1.0, val_batches=1).after(0).seconds == \
        pytest.approx(5 + 2 * (10 + 0.35 * 11))


@pytest.mark.parametrize("done, per_epoch, left, seconds", [
    (0, 4, 10, 5 + 2 * (10 + 0.35 * 2 * 4)),   # 3 epochs (ceil 10 / 4), 4 validations
    (3, 4, 7, 5 + 2 * (7 + 0.35 * 2 * 3)),     # 2 epochs left
    (2, 4, 8, 5 + 2 * (8 + 0.35 * 2 * 3)),     # exactly 2 epochs
    (10, 4, 0, 5 + 2 * (0.35 * 2 * 1)),        # nothing left: the test split only
    (12, 4, 0, 5 + 2 * (0.35 * 2 * 1)),        # past the end: never negative
    (0, 0, 10, 5 + 2 * (10 + 0.35 * 2 * 11)),  # no epoch length: one batch an epoch
])
def test_a_prediction_after_done_batches(done, per_epoch, left, seconds):
    pred = Prediction(99.0, 2.0, 5.0, 10, 7.0, per_epoch, 2).after(done)
    assert pred.train_batches == left and pred.seconds == pytest.approx(seconds, rel=1e-12)
    assert (pred.step_s, pred.startup_s, pred.warmup_wall_s, pred.per_epoch,
            pred.val_batches) == (2.0, 5.0, 7.0, per_epoch, 2)


def test_select_takes_the_profiles_rows_in_order_by_glob_or_substring(monkeypatch):
    names = ["a/lenet", "b/lenet_bn", "c/gpt", "d/[x]", "e/Xnet"]
    table = [rows.Row(f"{n}.yaml", "s", None, "cpu") for n in names]
    table.insert(1, rows.Row("a/lenet_gpu.yaml", "s", None, "gpu"))
    monkeypatch.setattr(reproduce, "ROWS", table)
    pick = lambda only, profile="cpu": [r.name for r in reproduce.select(profile, only)]  # noqa: E731
    assert pick(None) == pick("") == names
    assert pick(None, "gpu") == ["a/lenet_gpu"]
    assert pick("lenet") == ["a/lenet", "b/lenet_bn"]
    assert pick("*/lenet") == ["a/lenet"]
    assert pick("c/gp?,a/*") == ["a/lenet", "c/gpt"]
    assert pick("[abd]/lenet") == ["a/lenet"]
    assert pick("gpt,zzz") == ["c/gpt"] and pick("zzz") == []
    assert pick("Xnet") == ["e/Xnet"]  # no glob character: a substring


def test_data_dir_is_passed_to_a_row_that_reads_files(row):
    argv = ["--config", row.config, "--run-dir", "r"]
    assert reproduce.row_argv(row, Path("r"), "/data") == [*argv, "--data-dir", "/data"]
    assert reproduce.row_argv(row, Path("r"), None) == argv
    assert reproduce.row_argv(row, Path("r"), "") == argv
    synthetic = next(r for r in rows.ROWS if r.name == "synthetic_regression/linear_regression")
    assert reproduce.row_argv(synthetic, Path("r"), "/data") == [
        "--config", synthetic.config, "--run-dir", "r"]


def test_the_fingerprint_hashes_the_resolved_config_without_its_folders(row):
    cfg = reproduce.resolved(row)
    del cfg["data"]["data_dir"], cfg["run"]["run_dir"]
    fp = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]
    assert reproduce.fingerprint(row) == fp and len(fp) == 16
    reproduce.resolved(row)["data"]["batch_size"] = 1  # a fresh copy each call
    assert reproduce.fingerprint(row) == fp


def test_a_row_of_synthetic_data_has_a_fingerprint_too():
    synthetic = next(r for r in rows.ROWS if r.name == "synthetic_regression/linear_regression")
    assert "data_dir" not in reproduce.resolved(synthetic)["data"]
    assert len(reproduce.fingerprint(synthetic)) == 16


def test_the_fingerprint_ignores_the_data_and_run_folders_but_not_the_config(row):
    fp = reproduce.fingerprint(row)
    path = Path(row.config)
    path.write_text(path.read_text() + "  default_root_dir: elsewhere\n")
    assert reproduce.fingerprint(row) != fp  # an edited file is resolved anew
    path.write_text(CONFIG.format(batch_size=60, max_steps=5)
                    + "run:\n  run_dir: /x\n".replace("/x", str(path.parent / "run")))
    with_folders = reproduce.fingerprint(row)
    path.write_text(CONFIG.format(batch_size=60, max_steps=5))
    assert with_folders == fp
    path.write_text(CONFIG.format(batch_size=30, max_steps=5))
    assert reproduce.fingerprint(row) != fp


def test_a_child_run_gets_the_repository_on_its_path_and_picks_its_own_folder(monkeypatch):
    monkeypatch.setenv("_D2L_RUN_DIR", "/somewhere")
    monkeypatch.setenv("KEEP_ME", "1")
    env = reproduce._env()
    assert env["PYTHONPATH"] == str(reproduce.ROOT) and env["KEEP_ME"] == "1"
    assert "_D2L_RUN_DIR" not in env


class FakePopen:
    """``subprocess.Popen`` whose ``wait`` answers from a script (a code or ``TimeoutExpired``)."""

    script: list[Any] = []
    made: list[FakePopen] = []

    def __init__(self, cmd: list[str], **kw: Any) -> None:
        self.cmd, self.kw, self.waits, self.signals, self.killed = cmd, kw, [], [], False
        os.write(kw["stdout"].fileno(), b"child\n")  # the child's output follows the command
        FakePopen.made.append(self)

    def __enter__(self) -> FakePopen:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def wait(self, timeout: float | None = None) -> int:
        self.waits.append(timeout)
        answer = FakePopen.script.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)

    def kill(self) -> None:
        self.killed = True


@pytest.fixture
def popen(monkeypatch, clock) -> type[FakePopen]:
    FakePopen.script, FakePopen.made = [], []
    monkeypatch.setattr(reproduce, "subprocess", SimpleNamespace(
        Popen=FakePopen, TimeoutExpired=subprocess.TimeoutExpired, STDOUT=subprocess.STDOUT))
    return FakePopen


TIMEOUT = subprocess.TimeoutExpired("train.py", 1)


@pytest.mark.parametrize("deadline, script, result, waits, killed", [
    (None, [0], (0, False), [None], False),
    (NOW + 40, [1], (1, False), [40.0], False),
    (NOW - 5, [0], (0, False), [0.0], False),                  # already past: no wait
    (NOW + 40, [TIMEOUT, 143], (143, True), [40.0, 30.0], False),
    (NOW + 40, [TIMEOUT, TIMEOUT, -9], (-9, True), [40.0, 30.0, None], True),
])
def test_train_waits_until_the_deadline_then_terminates_then_kills(
        popen, tmp_path, deadline, script, result, waits, killed):
    popen.script = list(script)
    log = tmp_path / "row.log"
    log.write_text("earlier\n")
    code, wall, stopped = reproduce._train(["--config", "c"], log, deadline)
    assert (code, stopped) == result and wall == 0.0
    proc = popen.made[0]
    assert proc.cmd == [sys.executable, *reproduce.TRAIN, "--config", "c"]
    assert proc.kw["cwd"] == reproduce.ROOT and proc.kw["stderr"] == subprocess.STDOUT
    assert proc.kw["env"]["PYTHONPATH"] == str(reproduce.ROOT)
    assert proc.waits == waits and proc.killed is killed
    assert proc.signals == ([reproduce.signal.SIGTERM] if stopped else [])
    text = log.read_text()
    assert text.startswith("earlier\n\n$ python train.py --config c\nchild\n")
    assert text.endswith(f"--budget-s ran out: stopped with SIGTERM (exit {code})\n") is stopped


def test_train_interrupted_leaves_no_process_behind(popen, tmp_path):
    popen.script = [KeyboardInterrupt(), 0]
    with pytest.raises(KeyboardInterrupt):
        reproduce._train(["x"], tmp_path / "log", None)
    assert popen.made[0].killed and popen.made[0].waits == [None, None]


@pytest.mark.parametrize("max_steps, epochs, batches", [
    (5, 3, 10), (-1, 3, 18), (9, 3, 18), (1, 3, 2), (-1, 1, 6)])
def test_predict_extrapolates_the_warm_up(row, tmp_path, monkeypatch, max_steps, epochs,
                                          batches):
    """4 warm-up steps of 2 batches in 2 s of 3 s: 0.25 s a batch and 1 s to start; 6 training
    batches an epoch, 3 epochs, at most ``max_steps`` steps of 2 batches."""
    Path(row.config).write_text(CONFIG.format(batch_size=60, max_steps=max_steps).replace(
        "max_epochs: 3", f"max_epochs: {epochs}"))
    fake = FakeTrain(results=WARMUP)
    monkeypatch.setattr(reproduce, "_train", fake)
    pred = reproduce.predict(row, "/data", 7, tmp_path / "w.log", deadline=123.0)
    left_epochs = -(-batches // 6)
    assert pred == Prediction(1 + 0.25 * (batches + 0.35 * 2 * (left_epochs + 1)), 0.25, 1.0,
                              batches, 3.0, 6, 2)
    argv, log, deadline = fake.calls[0]
    run = Path(argv[argv.index("--run-dir") + 1])
    assert argv == [*reproduce.row_argv(row, run, "/data"), "--max-steps", "7", "--no-test",
                    "--max-epochs", "1"]
    assert run.name == "run" and (log, deadline) == (tmp_path / "w.log", 123.0)
    assert run.parent.name.startswith("reproduce-warmup-")
    assert not run.parent.exists()  # the scratch folder is removed


def test_predict_without_epoch_counts_takes_the_warm_up_steps(row, tmp_path, monkeypatch):
    fake = FakeTrain(wall=1.0, results={"train_time_sec": 2.0, "global_step": 0})
    monkeypatch.setattr(reproduce, "_train", fake)
    pred = reproduce.predict(row, None, 4, tmp_path / "w.log")
    # 0 steps: 2 s over one batch; 4 batches an epoch (the warm-up's steps), 10 batches
    assert (pred.step_s, pred.startup_s, pred.per_epoch, pred.val_batches) == (2.0, 0.0, 4, 0)
    assert pred.train_batches == 10 and pred.seconds == 20.0


@pytest.mark.parametrize("code, stopped, results, answer", [
    (143, True, None, reproduce.WARMUP_CUT),
    (0, True, None, reproduce.WARMUP_CUT),
    (143, True, WARMUP, reproduce.WARMUP_CUT),
    (1, False, WARMUP, "warm-up failed (exit 1; see {log})"),
    (0, False, None, "warm-up failed (exit 0; see {log})"),
])
def test_predict_says_why_a_warm_up_gave_no_prediction(row, tmp_path, monkeypatch, code,
                                                       stopped, results, answer):
    monkeypatch.setattr(reproduce, "_train", FakeTrain(code, 3.0, stopped, results))
    log = tmp_path / "w.log"
    assert reproduce.predict(row, None, 4, log) == answer.format(log=log)


def test_a_warm_up_that_ends_as_the_budget_runs_out_still_counts(row, tmp_path, monkeypatch):
    monkeypatch.setattr(reproduce, "_train", FakeTrain(0, 3.0, True, WARMUP))
    assert reproduce.predict(row, None, 4, tmp_path / "w.log").train_batches == 10


def test_done_batches_counts_the_checkpoints_steps_times_accumulation(row, tmp_path):
    import torch

    run = tmp_path / "run"
    assert reproduce.done_batches(row, run) == 0  # no checkpoint: the whole row
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"hyper_parameters": {"arch": "softmax_regression"}, "global_step": 3,
                "state_dict": {}}, run / "checkpoints" / "last.ckpt")
    assert reproduce.done_batches(row, run) == 6
