"""bench/reproduce.py: rows run once, records kept, tables generated, budgets and smoke."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import reproduce, rows, tables
from conftest import REAL_DATA, ROOT, run_cli

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


def test_a_row_that_does_not_fit_the_budget_is_skipped_and_listed(one_row, tmp_path, data_root,
                                                                  capsys):
    assert _main(tmp_path, data_root, "--budget-s", "1") == 0
    out = capsys.readouterr().out
    assert "predicted" in out and "skipped" in out
    rec = json.loads((tmp_path / "records" / "cpu" / "tiny__softmax.json").read_text())
    assert rec["status"] == "skipped" and rec["predicted_s"] > 0
    assert not (tmp_path / "runs" / "cpu" / "tiny" / "softmax").exists()
    assert "skipped: predicted" in (tmp_path / "docs" / "reproduce-test.md").read_text()


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
