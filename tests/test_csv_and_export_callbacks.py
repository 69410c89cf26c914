"""The append-only ``metrics.csv`` across resumes and the export at the end of a fit, hook by
hook (the signal and checkpoint callbacks are in ``test_fault_callbacks.py``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from callback_helpers import Exportable, FakeTrainer
from safetensors.torch import load_file

from d2l_lightning.callbacks import csv_logger
from d2l_lightning.callbacks.csv_logger import MetricsCSVLogger, _row_key
from d2l_lightning.callbacks.export import ExportCallback, save_module_exports

# --- MetricsCSVLogger -------------------------------------------------------------------------


def test_row_key_is_step_whole_epoch_and_the_set_of_logged_metrics() -> None:
    assert _row_key({"step": "3", "epoch": "1.0", "a": "0.5", "b": "", "c": None}) == (
        "3", "1", frozenset({"a", "epoch"}))
    assert _row_key({"step": 3, "epoch": 1, "a": 0.25, "b": ""}) == _row_key(
        {"step": "3", "epoch": "1.0", "a": "0.5", "b": ""})
    assert _row_key({"step": 2, "a": 1.0}) == ("2", "", frozenset({"a"}))
    assert _row_key({"step": 2, "a": 1.0, "epoch": ""}) == ("2", "", frozenset({"a"}))


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_metrics_csv_rows_are_appended_and_a_new_column_widens_the_header(tmp_path,
                                                                         monkeypatch) -> None:
    log = MetricsCSVLogger(tmp_path / "runs" / "run")  # its folders are made
    log.log_metrics({"train/loss": torch.tensor(0.5), "epoch": 0}, step=0)
    log.log_metrics({"train/loss": 0.25, "epoch": 0}, step=1)
    assert _lines(log.path) == ["epoch,step,train/loss", "0,0,0.5", "0,1,0.25"]
    renamed = []
    real_replace = os.replace
    monkeypatch.setattr(csv_logger.os, "replace",
                        lambda src, dst: (renamed.append(Path(src)), real_replace(src, dst)))
    log.log_metrics({"val/acc": 0.75, "epoch": 0, "lr": 0.1}, step=1)
    assert _lines(log.path) == ["epoch,step,train/loss,lr,val/acc", "0,0,0.5,,", "0,1,0.25,,",
                                "0,1,,0.1,0.75"]
    assert renamed == [log.path.with_name(f".metrics.csv.{os.getpid()}.tmp")]
    assert sorted(p.name for p in log.path.parent.iterdir()) == ["metrics.csv"]


def test_resumed_metrics_csv_keeps_every_row_and_skips_the_replayed_ones(tmp_path) -> None:
    first = MetricsCSVLogger(tmp_path)
    first.log_metrics({"train/loss": 0.5, "epoch": 0}, step=0)
    first.log_metrics({"train/loss": 0.4, "epoch": 0}, step=1)
    first.log_metrics({"val/loss": 0.3, "epoch": 0}, step=1)
    again = MetricsCSVLogger(tmp_path)  # the resumed process, from step 1
    again.log_metrics({"train/loss": 0.41, "epoch": 0.0}, step=1)  # replayed: kept once
    again.log_metrics({"val/loss": 0.31, "epoch": 0}, step=1)
    again.log_metrics({"train/loss": 0.2, "epoch": 1, "lr": 0.01}, step=2)
    assert _lines(tmp_path / "metrics.csv") == [
        "epoch,step,train/loss,val/loss,lr", "0,0,0.5,,", "0,1,0.4,,", "0,1,,0.3,",
        "1,2,0.2,,0.01"]
    assert again.columns == ["epoch", "step", "train/loss", "val/loss", "lr"]


def test_metrics_csv_numbers_rows_without_a_step_and_reads_an_empty_file(tmp_path) -> None:
    (tmp_path / "metrics.csv").write_text("")
    log = MetricsCSVLogger(tmp_path)
    log.log_metrics({"a": 1.0})
    log.log_metrics({"a": 2.0})
    log.log_metrics({"a": 2.0})  # the same metrics at another (counted) step: a new row
    assert _lines(log.path) == ["a,step", "1.0,0", "2.0,1", "2.0,2"]


def test_metrics_csv_is_read_once_per_process(tmp_path, monkeypatch) -> None:
    """Not once a row: a long run logs thousands of rows."""
    MetricsCSVLogger(tmp_path).log_metrics({"a": 1.0}, step=0)
    reads, real = [], csv_logger.csv.DictReader
    monkeypatch.setattr(csv_logger.csv, "DictReader", lambda f: (reads.append(1), real(f))[1])
    log = MetricsCSVLogger(tmp_path)
    for step in range(1, 4):
        log.log_metrics({"a": 1.0}, step=step)
    assert len(reads) == 1 and len(_lines(log.path)) == 5


def test_metrics_csv_logger_is_the_run_folder(tmp_path) -> None:
    log = MetricsCSVLogger(tmp_path)
    assert (log.name, log.version, log.save_dir, log.log_dir) == ("", "", str(tmp_path),
                                                                  str(tmp_path))
    assert log.path == tmp_path / "metrics.csv" and log.columns == [] and not log._loaded


# --- export ----------------------------------------------------------------------------------

def _config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text())


def test_export_writes_the_model_its_parts_and_the_run_config(tmp_path) -> None:
    module = Exportable()
    out = save_module_exports(module, tmp_path / "export", {"data_dir": Path("/d"), "lr": 0.5})
    assert out == tmp_path / "export"
    cfg = _config(out)
    assert (cfg["arch"], cfg["model_kwargs"], cfg["run_config"]) == (
        "linear", {"n": 2}, {"data_dir": "/d", "lr": 0.5})
    head = _config(out / "head")
    assert (head["arch"], head["model_kwargs"], "run_config" in head) == ("head", {}, False)
    assert torch.equal(load_file(out / "model.safetensors")["weight"], module.model.weight)
    assert torch.equal(load_file(out / "head" / "model.safetensors")["bias"], module.head.bias)
    assert "run_config" not in _config(save_module_exports(module, tmp_path / "plain"))


@pytest.mark.parametrize("zero", [True, False])
def test_export_callback_writes_on_global_rank_zero_only(zero, tmp_path) -> None:
    trainer = FakeTrainer()
    trainer.is_global_zero = zero
    ExportCallback(tmp_path / "export", {"seed": 3}).on_fit_end(trainer, Exportable())
    assert (tmp_path / "export" / "config.json").is_file() is zero
    if zero:
        assert _config(tmp_path / "export")["run_config"] == {"seed": 3}
