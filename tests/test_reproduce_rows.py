"""bench/reproduce.py piece by piece, in-process (2 of 2): ``run_row``'s skip rules, budgets
and records. ``_train`` is replaced by a fake that writes the run's files, and the clock by a
fixed one, so every number in a record or a reason is exact."""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace
from typing import Any

import pytest
from reproduce_helpers import (  # noqa: F401 (row and clock are fixtures)
    NOW,
    FakeTrain,
    clock,
    row,
    write_json,
)

from bench import reproduce, rows
from bench.reproduce import Prediction


@pytest.fixture
def run(row, tmp_path, monkeypatch, clock) -> SimpleNamespace:
    """``run_row`` of ``row`` under ``tmp_path/runs`` with a fake ``_train`` and fixed clock."""
    monkeypatch.setattr(reproduce, "hardware", lambda: {"cpus": 2})
    monkeypatch.setattr(reproduce, "versions", lambda: {"torch": "t"})
    ns = argparse.Namespace(runs_dir=str(tmp_path / "runs"), data_dir="/data", warmup_steps=7)
    folder = tmp_path / "runs" / "cpu" / "tiny" / "softmax"
    out = SimpleNamespace(row=row, a=ns, dir=folder, stamp=folder.parent / "softmax.reproduce.json",
                          log=folder.parent / "softmax.log", fp=reproduce.fingerprint(row))

    def go(fake: FakeTrain, deadline: float | None = None, pred: Any = None) -> dict[str, Any]:
        monkeypatch.setattr(reproduce, "_train", fake)
        if pred is not None:
            out.predicted = []
            monkeypatch.setattr(reproduce, "predict", lambda *a: out.predicted.append(a) or pred)
        return reproduce.run_row(row, ns, deadline)
    out.go = go
    return out


DONE = {"test/acc": 0.75, "epochs": 3, "run_dir": "r", "export_dir": "e", "resumed_from": "x",
        "dataset_sizes": {"train": 5}, "curve": [1, 2], "name": "n", "ok": True}


def test_a_fresh_row_runs_and_its_record_keeps_the_numbers(run, capsys):
    fake = FakeTrain(wall=12.34, results=DONE)
    rec = run.go(fake)
    argv = reproduce.row_argv(run.row, run.dir, "/data")
    assert fake.calls == [(argv, run.log, None)] and fake.stamps == [{"fingerprint": run.fp}]
    assert capsys.readouterr().out == (f"tiny/softmax: running python train.py {' '.join(argv)} "
                                       f"(log: {run.log})\n")
    assert json.loads(run.stamp.read_text()) == {"fingerprint": run.fp, "wall_s": 12.3}
    assert rec == {"row": "tiny/softmax", "config": run.row.config, "profile": "cpu",
                   "command": f"python train.py --config {run.row.config}",
                   "date": time.strftime("%Y-%m-%d"), "fingerprint": run.fp, "status": "done",
                   "results": {"test/acc": 0.75, "epochs": 3, "dataset_sizes": {"train": 5},
                               "name": "n", "ok": True},
                   "met": True, "wall_s": 12.3, "predicted_s": None,
                   "hardware": {"cpus": 2}, "versions": {"torch": "t"}}


def test_a_complete_row_is_not_run_again(run, capsys):
    run.go(FakeTrain(wall=5.0, results={"test/acc": 0.25}))
    fake = FakeTrain()
    rec = run.go(fake)
    assert fake.calls == [] and rec["status"] == "done" and rec["met"] is False
    assert rec["wall_s"] == 5.0
    assert f"tiny/softmax: complete in {run.dir}" in capsys.readouterr().out


@pytest.mark.parametrize("stamp, reason", [
    (None, "exists but was not made by bench/reproduce.py"),
    ({"fingerprint": "other"}, "holds a run of another version of this config"),
    ({}, "holds a run of another version of this config"),
])
def test_a_folder_the_command_did_not_make_for_this_config_is_left_alone(run, stamp, reason):
    (run.dir / "checkpoints").mkdir(parents=True)
    (run.dir / "results.json").write_text(json.dumps(DONE))
    if stamp is not None:
        run.stamp.write_text(json.dumps(stamp))
    fake = FakeTrain(results=DONE)
    rec = run.go(fake)
    assert fake.calls == [] and rec["status"] == "skipped"
    assert rec["reason"].startswith(f"{run.dir} {reason}") and "move it away" in rec["reason"]


@pytest.mark.parametrize("deadline", [NOW, NOW - 1])
def test_a_row_after_the_budget_is_spent_is_skipped_untouched(run, deadline):
    fake = FakeTrain(results=DONE)
    rec = run.go(fake, deadline)
    assert rec["status"] == "skipped" and rec["reason"] == "skipped: --budget-s spent"
    assert fake.calls == [] and not run.dir.parent.exists()


PRED = Prediction(40.0, 0.5, 2.0, 76, 9.25, 4, 0)  # 2 + 0.5 * 76 = 40 s


@pytest.mark.parametrize("left, runs", [(40.0, True), (39.5, False)])
def test_a_row_runs_when_its_prediction_fits_what_is_left(run, capsys, left, runs):
    fake = FakeTrain(wall=3.0, results=DONE)
    rec = run.go(fake, NOW + left, PRED)
    assert run.predicted == [(run.row, "/data", 7, run.log, NOW + left)]
    plan = {"predicted_s": 40.0, "warmup_s": 9.2, "step_s": 0.5}
    assert capsys.readouterr().out.startswith(
        f"tiny/softmax: predicted 40 s (76 steps of 500.0 ms + 2 s); {left:.0f} s left\n")
    if runs:
        assert fake.calls[0][2] == NOW + left and rec["status"] == "done"
        assert json.loads(run.stamp.read_text()) == {"fingerprint": run.fp, **plan, "wall_s": 3.0}
        assert rec["predicted_s"] == 40.0
    else:
        assert fake.calls == [] and not run.stamp.exists()
        assert rec == {**rec, **plan, "status": "skipped", "reason":
                       "skipped: predicted 40 s for the row > 40 s left of --budget-s"}


def test_a_resumed_row_is_predicted_for_the_steps_left(run, monkeypatch, capsys):
    (run.dir / "checkpoints").mkdir(parents=True)
    (run.dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    run.stamp.write_text(json.dumps({"fingerprint": run.fp, "spent_s": 100.0, "note": 1}))
    monkeypatch.setattr(reproduce, "done_batches",
                        lambda r, d: 60 if (r, d) == (run.row, run.dir) else 0)
    fake = FakeTrain(wall=4.0, results=DONE)
    pred = Prediction(0.0, 0.5, 2.14, 76, 9.25, 4, 0)
    rec = run.go(fake, NOW + 50, pred)  # 16 batches left: 2.14 + 0.5 * 16 = 10.14 s
    assert "predicted 10 s (the 16 steps left after step 60 of 500.0 ms" in \
        capsys.readouterr().out
    assert fake.calls[0][0] == ["--resume", "last", "--run-dir", str(run.dir)]
    assert json.loads(run.stamp.read_text()) == {
        "fingerprint": run.fp, "spent_s": 100.0, "note": 1, "predicted_rest_s": 10.1,
        "warmup_s": 9.2, "step_s": 0.5, "wall_s": 104.0}
    assert fake.stamps == [{"fingerprint": run.fp, "spent_s": 100.0, "note": 1,
                            "predicted_rest_s": 10.1, "warmup_s": 9.2, "step_s": 0.5}]
    assert rec["wall_s"] == 104.0 and rec["status"] == "done"
    monkeypatch.setattr(reproduce, "done_batches", lambda row, d: 0)
    run.stamp.write_text(json.dumps({"fingerprint": run.fp}))
    (run.dir / "results.json").unlink()
    rec = run.go(FakeTrain(), NOW + 39, pred)
    assert rec["reason"] == "skipped: predicted 40 s for the resumed run > 39 s left of --budget-s"
    assert rec["predicted_rest_s"] == 40.1 and "predicted_s" not in rec


def test_a_warm_up_that_outlasts_the_budget_leaves_nothing(run, monkeypatch, clock):
    def predict(*a: Any) -> Prediction:
        clock.now += 60
        return PRED
    monkeypatch.setattr(reproduce, "predict", predict)
    rec = reproduce.run_row(run.row, run.a, NOW + 50)
    assert rec["reason"] == "skipped: predicted 40 s for the row > 0 s left of --budget-s"


@pytest.mark.parametrize("pred, status", [(reproduce.WARMUP_CUT, "skipped"),
                                          ("warm-up failed (exit 1; see x)", "failed")])
def test_a_row_whose_warm_up_gave_no_prediction_is_not_run(run, pred, status):
    fake = FakeTrain(results=DONE)
    rec = run.go(fake, NOW + 50, pred)
    assert (rec["status"], rec["reason"]) == (status, pred) and fake.calls == []


@pytest.mark.parametrize("ckpt, kept", [
    (True, "its last.ckpt is kept and the next run resumes it"),
    (False, "it had no checkpoint yet and the next run starts it again")])
def test_a_row_stopped_by_the_budget_keeps_its_time_for_the_resume(run, ckpt, kept):
    run.dir.parent.mkdir(parents=True)
    run.stamp.write_text(json.dumps({"fingerprint": run.fp, "spent_s": 10.0}))
    rec = run.go(FakeTrain(143, 25.55, True, None, ckpt), NOW + 50,
                 Prediction(0.0, 0.5, 2.14, 76, 9.25, 4, 0))  # 40.14 s
    assert rec["status"] == "skipped" and rec["reason"] == (
        f"skipped: --budget-s ran out after 26 s of this row, stopped with SIGTERM "
        f"(exit 143); {kept}")
    assert json.loads(run.stamp.read_text())["spent_s"] == 35.5
    assert rec["predicted_s"] == 40.1


@pytest.mark.parametrize("code, stopped, results, status", [
    (1, False, DONE, "failed"), (0, False, None, "failed"), (0, True, DONE, "done")])
def test_a_row_fails_on_an_exit_code_or_missing_results(run, code, stopped, results, status):
    rec = run.go(FakeTrain(code, 1.0, stopped, results))
    assert rec["status"] == status
    if status == "failed":
        assert rec["reason"] == f"exit {code}; see {run.log}"


def test_a_record_without_a_target_has_no_met(run, monkeypatch):
    monkeypatch.setattr(run, "row", rows.Row(run.row.config, "s", None, "cpu"))
    stamp = {"wall_s": 1.5, "predicted_s": 2.5}
    rec = reproduce._done({}, run.row, write_json(run.dir / "r.json", DONE), stamp)
    assert (rec["met"], rec["wall_s"], rec["predicted_s"]) == (None, 1.5, 2.5)
