"""bench/reproduce.py: rows run once, records kept, tables generated, budgets and smoke."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bench import reproduce, rows, tables
from conftest import REAL_DATA, ROOT, call, run_cli
from faults_helpers import assert_unchanged, one_error_line, snapshot

CONFIG = """# docs/reproduce-test.md: tiny softmax regression
model:
  name: softmax_regression
data:
  name: fashion_mnist
  batch_size: {batch_size}
trainer:
  max_epochs: 1
"""


@pytest.fixture
def one_row(tmp_path, monkeypatch) -> tuple[rows.Row, Path]:
    """A one-row table (softmax regression on the tiny IDX fixture), in place of bench/rows.py."""
    cfg = tmp_path / "configs" / "tiny" / "softmax.yaml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(CONFIG.format(batch_size=60))
    row = rows.Row(str(cfg), "a test", rows.Target("test/acc", ">=", 0.0, "any"), "cpu",
                   ("val/acc", "test/acc"))
    for module in (reproduce, tables):
        monkeypatch.setattr(module, "ROWS", [row])
    return row, cfg


#: a stand-in for train.py that starts in milliseconds: a warm-up (``--no-test``) reports
#: FAKE_STEP_S seconds a step (4 training and 1 validation batch an epoch) after sleeping
#: FAKE_WARMUP_S; a row trains FAKE_RUN_S seconds. SIGTERM writes last.ckpt and exits 143, as
#: train.py does (unless FAKE_IGNORE_TERM is set).
FAKE_TRAIN = """
import json, os, signal, sys, time
from pathlib import Path

argv = sys.argv[1:]
run = Path(argv[argv.index("--run-dir") + 1])
(run / "checkpoints").mkdir(parents=True, exist_ok=True)


def stop(*_):
    (run / "checkpoints" / "last.ckpt").write_bytes(b"at step 1")
    print("error: stopped by SIGTERM at step 1", file=sys.stderr)
    sys.exit(143)


signal.signal(signal.SIGTERM, signal.SIG_IGN if os.environ.get("FAKE_IGNORE_TERM") else stop)
if "--no-test" in argv:
    time.sleep(float(os.environ.get("FAKE_WARMUP_S", "0")))
    steps = int(argv[argv.index("--max-steps") + 1])
    res = {"train_time_sec": float(os.environ["FAKE_STEP_S"]) * steps, "global_step": steps,
           "train_batches_per_epoch": 4, "val_batches_per_epoch": 1}
else:
    time.sleep(float(os.environ["FAKE_RUN_S"]))
    res = {"test/acc": 0.5, "epochs": 1, "global_step": 4}
(run / "results.json").write_text(json.dumps(res))
"""


@pytest.fixture
def fake_train(one_row, tmp_path, monkeypatch) -> rows.Row:
    """``one_row`` trained by ``FAKE_TRAIN`` (quick steps, a 0.1 s row) instead of train.py."""
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    monkeypatch.setattr(reproduce, "TRAIN", [str(script)])
    for name, value in (("FAKE_STEP_S", "0.001"), ("FAKE_RUN_S", "0.1")):
        monkeypatch.setenv(name, value)
    reproduce.hardware(), reproduce.fingerprint(one_row[0])  # imports, outside timed calls
    return one_row[0]


def _killed_row(tmp: Path, row: rows.Row, step: int) -> Path:
    """The run folder of ``row`` as a killed run leaves it: a stamp and ``last.ckpt``."""
    import torch

    run = tmp / "runs" / "cpu" / "tiny" / "softmax"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model:\n  name: softmax_regression\n")
    torch.save({"hyper_parameters": {"arch": "softmax_regression"}, "global_step": step,
                "state_dict": {}}, run / "checkpoints" / "last.ckpt")
    (run.parent / "softmax.reproduce.json").write_text(
        json.dumps({"fingerprint": reproduce.fingerprint(row), "spent_s": 100.0}))
    return run


def _record(tmp: Path) -> dict:
    return json.loads((tmp / "records" / "cpu" / "tiny__softmax.json").read_text())


def _main(tmp: Path, data_root: Path, *extra: str) -> int:
    return reproduce.main(["--device-profile", "cpu", "--runs-dir", str(tmp / "runs"),
                           "--records-dir", str(tmp / "records"), "--docs-root", str(tmp),
                           "--data-dir", str(data_root), *extra])


def test_a_row_runs_once_and_its_table_is_generated(one_row, tmp_path, data_root, capsys):
    row, cfg = one_row
    assert _main(tmp_path, data_root) == 0
    rec = json.loads((tmp_path / "records" / "cpu" / "tiny__softmax.json").read_text())
    assert rec["status"] == "done" and rec["met"] is True
    assert rec["results"]["epochs"] == 1 and 0 <= rec["results"]["test/acc"] <= 1
    assert rec["hardware"]["cpus"] and rec["versions"]["torch"] and rec["wall_s"] > 0
    doc = (tmp_path / "docs" / "reproduce-test.md").read_text()
    begin, end = doc.index("<!-- reproduce:cpu begin"), doc.index("<!-- reproduce:cpu end")
    table = doc[begin:end]
    assert "tiny softmax regression" in table and f"test/acc {rec['results']['test/acc']:.4f}" \
        in table and "| yes |" in table and rec["versions"]["torch"] in table
    log = tmp_path / "runs" / "cpu" / "tiny" / "softmax.log"
    assert log.read_text().count("$ python train.py") == 1
    # again: the complete run is not repeated, the table is the same
    assert _main(tmp_path, data_root) == 0
    assert "complete in" in capsys.readouterr().out
    assert log.read_text().count("$ python train.py") == 1
    assert (tmp_path / "docs" / "reproduce-test.md").read_text() == doc
    # another version of the config: not run over the old folder, nothing deleted
    cfg.write_text(CONFIG.format(batch_size=30))
    assert _main(tmp_path, data_root) == 0
    assert "another version" in capsys.readouterr().out
    assert (tmp_path / "runs" / "cpu" / "tiny" / "softmax" / "results.json").is_file()


def test_a_row_that_does_not_fit_the_budget_is_skipped_and_listed(fake_train, tmp_path,
                                                                  data_root, capsys,
                                                                  monkeypatch):
    monkeypatch.setenv("FAKE_STEP_S", "10")  # 4 steps and 2 validations: 47 s
    assert _main(tmp_path, data_root, "--budget-s", "40") == 0
    out = capsys.readouterr().out
    assert "predicted 47 s (4 steps" in out and "skipped" in out
    rec = _record(tmp_path)
    assert rec["status"] == "skipped" and rec["predicted_s"] == 47.0
    assert not (tmp_path / "runs" / "cpu" / "tiny" / "softmax").exists()
    assert "skipped: predicted" in (tmp_path / "docs" / "reproduce-test.md").read_text()


def test_a_resumed_row_is_predicted_against_the_budget(fake_train, tmp_path, data_root, capsys,
                                                       monkeypatch):
    """A killed row is not resumed past --budget-s: the steps its last.ckpt has still to go
    are predicted as a fresh row's, and it is skipped, its folder untouched, when they do not
    fit; when they fit, it is resumed and its wall time adds the earlier parts."""
    run = _killed_row(tmp_path, fake_train, step=2)
    before = snapshot(run.parent)
    monkeypatch.setenv("FAKE_STEP_S", "10")  # the 2 steps left and 2 validations: 27 s
    assert _main(tmp_path, data_root, "--budget-s", "5", "--no-docs") == 0
    out = capsys.readouterr().out
    assert "predicted 27 s (the 2 steps left after step 2" in out and "resuming" not in out
    rec = _record(tmp_path)
    assert rec["status"] == "skipped" and rec["predicted_rest_s"] == 27.0
    assert "27 s for the resumed run > " in rec["reason"]
    assert "--resume" not in (run.parent / "softmax.log").read_text()
    assert_unchanged(before, run.parent)
    assert sorted(p.name for p in run.parent.iterdir()) == ["softmax", "softmax.log",
                                                            "softmax.reproduce.json"]
    monkeypatch.setenv("FAKE_STEP_S", "0.001")
    assert _main(tmp_path, data_root, "--budget-s", "60", "--no-docs") == 0
    assert "resuming python train.py --resume last" in capsys.readouterr().out
    rec = _record(tmp_path)
    assert rec["status"] == "done" and 100.1 <= rec["wall_s"] < 110


def test_the_budget_stops_a_row_that_runs_past_it_and_the_next_run_resumes_it(
        fake_train, tmp_path, data_root, capsys, monkeypatch):
    """A row whose prediction fits but whose training takes longer gets SIGTERM when the
    budget runs out (train.py keeps last.ckpt), is listed as stopped, and is resumed later."""
    monkeypatch.setenv("FAKE_RUN_S", "40")
    real = reproduce.fingerprint  # what the command does besides training counts as well
    monkeypatch.setattr(reproduce, "fingerprint", lambda row: time.sleep(1.5) or real(row))
    t0 = time.perf_counter()
    assert _main(tmp_path, data_root, "--budget-s", "2", "--no-docs") == 0
    assert time.perf_counter() - t0 < 15  # not the 40 s row (a margin for a loaded CI)
    run = tmp_path / "runs" / "cpu" / "tiny" / "softmax"
    rec = _record(tmp_path)
    assert rec["status"] == "skipped" and "stopped with SIGTERM (exit 143)" in rec["reason"]
    assert "last.ckpt is kept" in rec["reason"] and (run / "checkpoints" / "last.ckpt").is_file()
    assert "skipped: --budget-s ran out after" in capsys.readouterr().out
    spent = json.loads((run.parent / "softmax.reproduce.json").read_text())["spent_s"]
    monkeypatch.setenv("FAKE_RUN_S", "0.5")
    assert _main(tmp_path, data_root, "--no-docs") == 0
    assert "resuming python train.py --resume last" in capsys.readouterr().out
    rec = _record(tmp_path)
    assert rec["status"] == "done" and spent > 0 and rec["wall_s"] >= spent + 0.5  # both parts


@pytest.mark.parametrize("case", ["warm-up", "ignores SIGTERM"])
def test_the_budget_bounds_a_slow_warm_up_and_a_process_that_ignores_sigterm(
        case, fake_train, tmp_path, data_root, monkeypatch):
    monkeypatch.setattr(reproduce, "GRACE_S", 0.5)
    monkeypatch.setenv("FAKE_WARMUP_S" if case == "warm-up" else "FAKE_RUN_S", "40")
    if case != "warm-up":
        monkeypatch.setenv("FAKE_IGNORE_TERM", "1")
    t0 = time.perf_counter()
    assert _main(tmp_path, data_root, "--budget-s", "1", "--no-docs") == 0
    assert time.perf_counter() - t0 < 15  # budget + grace, not the 40 s (margin for CI load)
    rec = _record(tmp_path)
    assert rec["status"] == "skipped", rec
    assert rec["reason"] == reproduce.WARMUP_CUT if case == "warm-up" else "(exit -9)" in \
        rec["reason"]


def test_the_plan_keeps_to_the_budget(fake_train, tmp_path, data_root, capsys, monkeypatch):
    second = rows.Row(fake_train.config.replace("softmax", "softmax2"), "b", None, "cpu")
    Path(second.config).write_text(CONFIG.format(batch_size=60))
    monkeypatch.setattr(reproduce, "ROWS", [fake_train, second])
    monkeypatch.setenv("FAKE_WARMUP_S", "60")
    t0 = time.perf_counter()
    assert _main(tmp_path, data_root, "--plan", "--budget-s", "1") == 0
    assert time.perf_counter() - t0 < 20  # not the 60 s warm-up (a margin for a loaded CI)
    out = capsys.readouterr().out
    assert f"tiny/softmax {' ' * 36}{reproduce.WARMUP_CUT}" in out
    assert f"tiny/softmax2{' ' * 36}skipped: --budget-s spent" in out


@pytest.mark.parametrize("flag", ["--smoke", "--tables"])
def test_a_budget_with_smoke_or_tables_is_refused(flag, fake_train, tmp_path, data_root, capsys):
    code, out, err = call(lambda argv: _main(tmp_path / "out", data_root, *argv),
                          "--budget-s", "5", flag, capsys=capsys)
    assert code == 2 and not out
    assert f"--budget-s cannot be given with {flag}" in one_error_line(err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag, value", [("--budget-s", v) for v in
                                         ("nan", "inf", "-inf", "-1", "0", "abc", "1e999")]
                         + [("--warmup-steps", "0"), ("--warmup-steps", "2.5")])
def test_bad_budgets_are_refused_at_parse_time(flag, value, fake_train, tmp_path, data_root,
                                               capsys):
    code, out, err = call(lambda argv: _main(tmp_path / "out", data_root, *argv),
                          f"{flag}={value}", capsys=capsys)
    assert code == 2 and not out
    assert f"argument {flag}: expected " in one_error_line(err) and f"'{value}'" in err
    assert not (tmp_path / "out").exists()


def test_the_prediction_extrapolates_the_warm_up(one_row, tmp_path, data_root):
    row, _ = one_row
    pred = reproduce.predict(row, str(data_root), 2, tmp_path / "warm.log")
    assert not isinstance(pred, str), pred
    # 240 fixture images - 20 validation = 220 training images in batches of 60: 4 per epoch
    assert pred.train_batches == 4
    assert pred.seconds == pytest.approx(
        pred.startup_s + pred.step_s * (4 + reproduce.EVAL_FRACTION * 2 * 1), rel=1e-6)


def test_data_dir_is_passed_only_to_rows_that_read_files():
    rows_by_name = {r.name: r for r in rows.ROWS}
    synthetic = reproduce.row_argv(rows_by_name["synthetic_regression/linear_regression"],
                                   Path("run"), "/data")
    files = reproduce.row_argv(rows_by_name["fashion_mnist/lenet"], Path("run"), "/data")
    assert "--data-dir" not in synthetic and files[-2:] == ["--data-dir", "/data"]


def test_every_row_has_a_config_a_document_and_a_unique_name():
    names = [r.name for r in rows.ROWS]
    assert len(names) == len(set(names))
    for row in rows.ROWS:
        assert row.path.is_file(), row.config
        doc, title = row.header()
        assert doc.startswith("docs/") and (ROOT / doc).is_file() and title, row.config
        assert row.profile in ("cpu", "gpu") and row.metrics
    for profile in ("cpu", "gpu"):
        assert reproduce.select(profile, None)


def test_the_committed_tables_are_generated_from_the_committed_records(tmp_path):
    """Nothing between the markers is typed by hand: regenerating changes no document."""
    for doc in {r.header()[0] for r in rows.ROWS}:
        (tmp_path / doc).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / doc).write_text((ROOT / doc).read_text())
    for profile in ("cpu", "gpu"):
        assert tables.update_docs(profile, root=tmp_path) == [], profile


@pytest.mark.skipif(not REAL_DATA, reason="set D2L_DATA_DIR to a folder with the real datasets")
@pytest.mark.parametrize("profile", ["cpu", pytest.param("gpu", marks=pytest.mark.slow)])
def test_smoke_every_row(profile):
    """Every row trains two steps, evaluates and exports (no row can rot): the cpu profile by
    default (80 s on the 2-core CI machine), the gpu profile's larger models with the slow
    tests (every gpu config is still resolved by tests/test_config.py)."""
    proc = run_cli("-m", "bench.reproduce", "--smoke", "--device-profile", profile,
                   timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{len(reproduce.select(profile, None))} rows ok" in proc.stdout
