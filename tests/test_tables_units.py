"""bench/tables.py and the command line of bench/reproduce.py, in-process: records, the generated
tables, the summary, the exit code, ``--plan`` and ``--smoke`` (no process is started)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import test_reproduce_units as units

from bench import reproduce, rows, tables
from bench.reproduce import Prediction

NOW = units.NOW
row, clock = units.row, units.clock  # the fixtures: a one-row table, a fixed clock

REC = {"status": "done", "results": {"test/acc": 0.8125, "val/acc": 0.5, "epochs": 3,
                                     "global_step": 1234, "train_samples_per_sec": 1234.5},
       "wall_s": 1234.4, "predicted_s": 1500.2, "date": "2026-01-02",
       "hardware": {"cpu": "Xeon", "cpus": 2, "gpu": None},
       "versions": {"torch": "2.5", "cuda": "12.1", "lightning": "2.4", "python": "3.11"}}


def test_a_record_lives_under_its_profile_with_the_name_flattened(row, tmp_path):
    assert tables.record_path(row, tmp_path) == tmp_path / "cpu" / "tiny__softmax.json"
    assert tables.record_path(row) == tables.RECORDS / "cpu" / "tiny__softmax.json"
    assert tables.RECORDS == rows.ROOT / "docs" / "records"
    assert tables.read_record(row, tmp_path) is None


@pytest.mark.parametrize("old, new, kept", [
    ("done", "skipped", "done"), ("skipped", "skipped", "skipped2"), ("done", "done", "done2"),
    ("failed", "skipped", "skipped2"), (None, "skipped", "skipped2"), ("done", "failed",
                                                                         "failed2")])
def test_a_measured_record_is_never_replaced_by_a_skip(row, tmp_path, old, new, kept):
    tmp_path = tmp_path / "records"
    if old:
        tables.write_record(row, {"status": old, "n": 1}, tmp_path)
    path = tables.write_record(row, {"status": new, "n": 2}, tmp_path)
    assert path == tmp_path / "cpu" / "tiny__softmax.json"
    assert path.read_text() == json.dumps(
        {"n": 1 if kept == old else 2, "status": kept.rstrip("2")}, indent=1) + "\n"
    assert tables.read_record(row, tmp_path)["status"] == kept.rstrip("2")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no .tmp left


@pytest.mark.parametrize("meminfo, gib", [("MemTotal: 16252928 kB\n", 16),
                                          ("MemTotal:  15990000 kB\n", 15), ("", 0), ("x y", 0)])
def test_the_hardware_of_a_record(monkeypatch, tmp_path, meminfo, gib):
    cpuinfo = "processor\t: 0\nmodel name\t: Xeon: Gold  \nmodel name\t: other\n"
    files = {"/proc/cpuinfo": cpuinfo, "/proc/meminfo": meminfo}
    for name, text in files.items():
        (tmp_path / Path(name).name).write_text(text)
    monkeypatch.setattr(tables, "Path", lambda p: tmp_path / Path(p).name)
    hw = tables.hardware()
    assert hw["cpu"] == "Xeon: Gold" and hw["memory_gib"] == gib
    assert hw["cpus"] == tables.os.cpu_count() and hw["gpus"] == 0 and hw["gpu"] is None


def test_the_hardware_names_the_first_gpu_and_counts_them(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"GPU{i}")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert (tables.hardware()["gpu"], tables.hardware()["gpus"]) == ("GPU0", 3)


def test_the_hardware_without_proc_files(monkeypatch, tmp_path):
    monkeypatch.setattr(tables, "Path", lambda p: tmp_path / "absent")
    monkeypatch.setattr(tables.platform, "processor", lambda: "")
    hw = tables.hardware()
    assert hw["cpu"] == tables.platform.machine() and hw["memory_gib"] == 0


@pytest.mark.parametrize("value, text", [
    (0.81254, "0.8125"), (9.99994, "9.9999"), (-9.5, "-9.5000"), (10.0, "10.0"),
    (-10.0, "-10.0"), (12345.67, "12,345.7"), (3, "3"), ("x", "x"), (None, "None")])
def test_numbers_in_a_table(value, text):
    assert tables._fmt(value) == text


@pytest.mark.parametrize("hw, cuda, where", [
    ({"gpu": "H100", "cpu": "Xeon", "cpus": 2}, "12.1", "H100; torch 2.5, CUDA 12.1"),
    ({"gpu": "H100"}, None, "H100; torch 2.5"),
    ({"gpu": None, "cpu": "Xeon", "cpus": 2}, "12.1", "Xeon, 2 CPUs; torch 2.5"),
    ({}, None, "?, ? CPUs; torch 2.5")])
def test_the_machine_of_a_record(hw, cuda, where):
    v = {"torch": "2.5", "cuda": cuda, "lightning": "2.4", "python": "3.11"}
    assert tables._machine({"hardware": hw, "versions": v}) == \
        f"{where}, lightning 2.4, python 3.11"
    assert tables._machine({}) == "?, ? CPUs; torch None, lightning None, python None"


def test_a_done_rows_table_line(row):
    config = f"[`{row.config}`](../d2l_lightning/configs/{row.config}.yaml)"
    line = tables.table_row(row, "Title", REC)
    assert line == (f"| Title | {config} | a test | 0.5 | test/acc 0.8125 | yes | 3 (1,234) | "
                    "1,234 (1,500) | 1,234 | Xeon, 2 CPUs; torch 2.5, lightning 2.4, "
                    "python 3.11, 2026-01-02 |")
    low = {**REC, "results": {"test/acc": 0.25}, "predicted_s": None}
    del low["date"]
    line = tables.table_row(row, "T", low)
    assert "| test/acc 0.2500 | **no** | ? (?) | 1,234 | 0 |" in line
    assert line.endswith("python 3.11,  |")
    none = {**REC, "results": {"val/acc": 0.5}, "predicted_s": 0}
    assert "| 0.5 |  | ? | ? (?) | 1,234 | 0 |" in tables.table_row(row, "T", none)
    plain = rows.Row(row.config, "s", None, "cpu", ("val/acc", "test/acc"))
    assert "| s | - | val/acc 0.5000; test/acc 0.8125 | - |" in tables.table_row(plain, "T", REC)


@pytest.mark.parametrize("rec, why", [(None, "not run yet"), ({"status": "failed"}, "not run"),
                                      ({"status": "skipped", "reason": "over"}, "over")])
def test_a_row_without_a_measurement_says_why(row, rec, why):
    assert tables.table_row(row, "T", rec).endswith(f"| 0.5 | {why} | | | | | |")


def test_the_table_and_its_markers(row, tmp_path):
    tables.write_record(row, REC, tmp_path)
    table = tables.render([(row, "T"), (row, "U")], tmp_path)
    assert table.splitlines() == [*tables.HEAD.splitlines(), tables.table_row(row, "T", REC),
                                  tables.table_row(row, "U", REC)]
    assert tables.HEAD.count("|---") == 10 and tables.HEAD.startswith("| row | config")
    assert tables.marker("gpu", end=True) == "<!-- reproduce:gpu end -->"
    assert tables.marker("gpu") == ("<!-- reproduce:gpu begin: generated by bench/reproduce.py "
                                    "from docs/records/gpu/; edits here are overwritten -->")


def test_replace_between_takes_every_marked_block_and_nothing_else():
    text = "a\n<!-- t begin x -->\nold\n<!-- t end -->\nb\n<!-- t begin -->o<!-- t end -->\n"
    assert tables.replace_between(text, "t", "NEW\\1") == "a\nNEW\\1\nb\nNEW\\1\n"
    assert tables.replace_between("<!-- t begin -->", "t", "N") is None
    assert tables.replace_between("<!-- t. begin --><!-- t. end -->", "t.", "N") == "N"
    assert tables.replace_between("<!-- tx begin --><!-- tx end -->", "t.", "N") is None


def test_update_docs_writes_a_section_then_replaces_only_its_table(row, tmp_path, monkeypatch):
    other = tmp_path / "configs" / "tiny" / "other.yaml"
    other.write_text("# docs/a/b.md: other\nmodel:\n  name: softmax_regression\n")
    monkeypatch.setattr(tables, "ROWS", [row, rows.Row(str(other), "s")])
    doc = tmp_path / "docs" / "reproduce-test.md"
    assert tables.update_docs("cpu", tmp_path, tmp_path) == [tmp_path / "docs" / "a" / "b.md", doc]
    table = tables.render([(row, "tiny softmax regression")], tmp_path)
    block = f"{tables.marker('cpu')}\n{table}\n{tables.marker('cpu', end=True)}"
    assert doc.read_text() == (
        "# docs/reproduce-test.md\n\n## Reproduced rows (cpu profile)\n\nGenerated by `python -m "
        "bench.reproduce --device-profile cpu` (`make reproduce`); each row's command is "
        f"`python train.py --config CONFIG`.\n\n{block}\n")
    assert tables.update_docs("cpu", tmp_path, tmp_path) == []
    assert tables.update_docs("gpu", tmp_path, tmp_path) == []  # no gpu row: untouched
    doc.write_text("# Doc\n\nkept\n" + block.replace("not run yet", "typed") + "\ntail\n")
    assert tables.update_docs("cpu", tmp_path, tmp_path) == [doc]
    assert doc.read_text() == f"# Doc\n\nkept\n{block}\ntail\n"


@pytest.fixture
def cli(row, tmp_path, monkeypatch, clock) -> SimpleNamespace:
    """``reproduce.main`` with ``run_row``, records, docs and the hardware faked."""
    calls: dict[str, list[Any]] = {"run": [], "record": [], "docs": []}
    outcome = {"status": "done"}

    def run_row(r: rows.Row, a: argparse.Namespace, deadline: float | None) -> dict[str, Any]:
        calls["run"].append((r, a, deadline))
        return dict(outcome)
    monkeypatch.setattr(reproduce, "run_row", run_row)
    monkeypatch.setattr(reproduce, "write_record", lambda *a: calls["record"].append(a))
    changed = [Path("d.md")]
    monkeypatch.setattr(reproduce, "update_docs", lambda *a: calls["docs"].append(a) or changed)
    monkeypatch.setattr(reproduce, "hardware", lambda: {"cpus": 2})
    return SimpleNamespace(calls=calls, outcome=outcome, row=row, changed=changed,
                           main=lambda *a: reproduce.main(["--device-profile", "cpu", *a]))


@pytest.mark.parametrize("outcome, code, line", [
    ({"status": "done"}, 0, "done"),
    ({"status": "failed", "reason": "exit 1; see l"}, 1, "failed: exit 1; see l"),
    ({"status": "skipped", "reason": "skipped: --budget-s spent"}, 0,
     "skipped: --budget-s spent")])
def test_the_summary_lists_each_row_and_a_failure_sets_the_exit_code(cli, capsys, outcome,
                                                                      code, line):
    cli.outcome.clear()
    cli.outcome.update(outcome)
    assert cli.main("--budget-s", "40") == code
    out = capsys.readouterr().out
    assert out.startswith("cpu profile: 1 rows; runs in runs/reproduce; {'cpus': 2}\n")
    assert out.endswith(f"\n{'row':48} status\n{'tiny/softmax':48} {line}\n")
    (r, a, deadline), = cli.calls["run"]
    assert r == cli.row and deadline == NOW + 40.0
    assert (a.warmup_steps, a.data_dir, a.runs_dir) == (20, None, "runs/reproduce")
    assert cli.calls["record"] == [(cli.row, outcome, tables.RECORDS)]
    assert cli.calls["docs"] == [("cpu", tables.RECORDS, reproduce.ROOT)]


def test_no_docs_keeps_the_records_only_and_no_budget_has_no_deadline(cli, tmp_path):
    assert cli.main("--no-docs", "--records-dir", str(tmp_path), "--only", "soft") == 0
    assert cli.calls["docs"] == [] and cli.calls["run"][0][2] is None
    assert cli.calls["record"][0][2] == tmp_path


def test_tables_only_regenerates_the_docs(cli, tmp_path, capsys):
    assert cli.main("--tables", "--records-dir", str(tmp_path / "r"), "--docs-root",
                    str(tmp_path)) == 0
    assert cli.calls["docs"] == [("cpu", tmp_path / "r", tmp_path)] and cli.calls["run"] == []
    assert capsys.readouterr().out == "updated: d.md\n"
    cli.changed.clear()
    assert cli.main("--tables") == 0 and capsys.readouterr().out == "updated: nothing\n"
    assert cli.calls["docs"][1] == ("cpu", tables.RECORDS, reproduce.ROOT)


@pytest.mark.parametrize("cuda, profile", [(False, "cpu"), (True, "gpu")])
def test_the_profile_defaults_to_the_hardware(cli, monkeypatch, capsys, cuda, profile):
    monkeypatch.setattr("torch.cuda.is_available", lambda: cuda)
    code = 0
    try:
        reproduce.main(["--no-docs"])
    except SystemExit as e:
        code = e.code
    assert code == (0 if profile == "cpu" else 2)
    assert f"{profile} profile: 1 rows" in capsys.readouterr().out if profile == "cpu" else \
        len(cli.calls["run"]) == 0


@pytest.mark.parametrize("flag, why", [("--smoke", "runs its rows in this process"),
                                       ("--tables", "runs nothing")])
def test_a_budget_with_a_flag_that_runs_no_timed_row_is_refused(cli, capsys, flag, why):
    with pytest.raises(SystemExit):
        cli.main("--budget-s", "5", flag)
    assert capsys.readouterr().err == ("python -m bench.reproduce: error: --budget-s cannot be "
                                       f"given with {flag}, which {why} (see --help)\n")


def test_the_help_names_every_option(cli, capsys):
    with pytest.raises(SystemExit):
        cli.main("--help")
    out = " ".join(capsys.readouterr().out.split())
    assert "One command reproduces the results tables of ``docs/``" in out
    assert "Each row is" not in out and "--docs-root" not in out
    for text in ("the row set sized for this hardware (default: gpu if CUDA is there)",
                 "comma-separated row names or globs, e.g. 'lenet*,*/gpt'",
                 "seconds for everything this command runs: rows whose predicted time does not "
                 "fit what is left are skipped (and listed), a row still training when it runs "
                 "out is stopped resumable (SIGTERM)", "every row for 2 steps, in-process",
                 "print predicted times only", "data root (default: $D2L_DATA_DIR, ./data)",
                 "keep records; leave docs/ as is",
                 "only regenerate the profile's tables of docs/ from the records",
                 "--warmup-steps WARMUP_STEPS", "--runs-dir RUNS_DIR", "--records-dir RECORDS_DIR",
                 "{cpu,gpu}"):
        assert text in out, text


def test_no_matching_row_is_an_error(cli, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main("--only", "nothing")
    assert e.value.code == 2 and capsys.readouterr().err == (
        "python -m bench.reproduce: error: no cpu row matches --only nothing (see --help)\n")


@pytest.mark.parametrize("text, value", [("2.5", 2.5), ("1e3", 1000.0), (" 7 ", 7.0)])
def test_a_budget_is_a_positive_finite_number(text, value):
    assert reproduce._seconds(text) == value


@pytest.mark.parametrize("text, value", [("1", 1), ("20", 20), (" 3", 3)])
def test_warm_up_steps_are_a_whole_number(text, value):
    assert reproduce._steps(text) == value


@pytest.mark.parametrize("failed, code", [([], 0), (["tiny/softmax"], 1)])
def test_smoke_reports_and_sets_the_exit_code(cli, monkeypatch, capsys, failed, code):
    monkeypatch.setattr(reproduce, "smoke", lambda rs, d, p: failed if (rs, d, p) == (
        [cli.row], "/d", "cpu") else ["wrong call"])
    assert cli.main("--smoke", "--data-dir", "/d") == code
    assert capsys.readouterr().out == f"smoke: {1 - len(failed)}/1 rows ok" + (
        "; failed: tiny/softmax\n" if failed else "\n")


def test_smoke_runs_every_row_briefly_and_lists_the_failures(row, monkeypatch, capsys):
    from d2l_lightning.cli import train
    other = rows.Row(row.config.replace("softmax", "other"), "s", None, "gpu")
    broken = rows.Row(row.config.replace("softmax", "broken"), "s", None, "gpu")
    seen = []

    def main(argv: list[str]) -> int:
        seen.append(argv)
        if "broken" in argv[1]:
            raise ValueError("rot")
        run = Path(argv[argv.index("--run-dir") + 1])
        run.mkdir(parents=True)
        if "softmax" in argv[1]:
            (run / "results.json").write_text("{}")
        return 0
    monkeypatch.setattr(train, "main", main)
    monkeypatch.setattr(reproduce, "_reads_files", lambda config: False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert reproduce.smoke([row, other, broken], None, "gpu") == ["tiny/other", "tiny/broken"]
    cpu = ["--accelerator", "cpu", "--precision", "32-true", "--run.compile", "false"]
    assert seen[0][4:] == [*reproduce.SMOKE_FLAGS, *cpu, "--seed", "0"]
    assert Path(seen[0][3]).name == "softmax" and Path(seen[0][3]).parent.name == "tiny"
    assert Path(seen[0][3]).parents[1].name.startswith("reproduce-smoke-")
    out = capsys.readouterr().out
    assert re.search(r"^smoke tiny/softmax: ok \d+\.\d s$", out, re.M)
    assert "smoke tiny/other: FAILED (0) " in out
    assert "smoke tiny/broken: FAILED (ValueError: rot) " in out
    seen.clear()
    assert reproduce.smoke([row], None, "cpu") == [] and seen[0][4:] == [
        *reproduce.SMOKE_FLAGS, "--seed", "0"]


@pytest.mark.parametrize("exists", [False, True])
def test_the_plan_adds_up_the_predictions_within_the_budget(row, monkeypatch, tmp_path,
                                                            capsys, clock, exists):
    names = ["tiny/two", "x/three", "x/four"]
    monkeypatch.setattr(reproduce, "ROWS", [row, *(rows.Row(n, "s") for n in names)])
    preds = iter([Prediction(1234.4, 1, 0, 1, 1), Prediction(100.0, 1, 0, 1, 1),
                  "warm-up failed (x)"])
    steps = iter([30, 30, 40])  # the budget is spent exactly as the fourth row comes
    calls = []

    def predict(*a: Any) -> Any:
        calls.append(a)
        clock.now += next(steps)
        return next(preds)
    monkeypatch.setattr(reproduce, "predict", predict)
    runs = tmp_path / "runs"
    if exists:
        (runs / "cpu").mkdir(parents=True)
    assert reproduce.main(["--device-profile", "cpu", "--plan", "--budget-s", "100",
                           "--runs-dir", str(runs), "--warmup-steps", "3"]) == 0
    log = runs / "cpu" / "plan.log"
    assert log.parent.is_dir() and calls[0] == (row, None, 3, log, NOW + 100)
    assert len(calls) == 3
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{'row':48} {'predicted s':>12} {'cumulative':>11}  (timed warm-up of 3 "
                   "steps on this machine)",
                   f"{'tiny/softmax':48} {'1,234':>12} {'1,234':>11}",
                   f"{'tiny/two':48} {'100':>12} {'1,334':>11}",
                   f"{'x/three':48} warm-up failed (x)",
                   f"{'x/four':48} skipped: --budget-s spent"]


@pytest.mark.parametrize("text", ["# Doc\n\nends with X\n\n", "# Doc\n\nends with a tab\t\n"])
def test_a_document_without_markers_keeps_its_text_and_gets_the_section(row, tmp_path, text):
    doc = tmp_path / "docs" / "reproduce-test.md"
    doc.parent.mkdir()
    doc.write_text(text)
    tables.update_docs("cpu", tmp_path, tmp_path)
    assert doc.read_text().startswith(text.rstrip("\n") + "\n\n## Reproduced rows (cpu profile)\n")
