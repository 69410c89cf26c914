"""The sweep's plan, trial loop and summary in-process: the trial processes (``sweep._trial``)
are recorded, and ``_trial`` itself runs against a recorded ``Popen`` (no process starts)."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from d2l_lightning.training import sweep
from d2l_lightning.training.command_line import parse_command_line
from d2l_lightning.training.errors import ConfigError
from d2l_lightning.training.lock import LOCK_NAME, FolderLock
from d2l_lightning.training.runs import PARTIAL, RUN_DIR_ENV

GRID = "method: grid\nmetric: {name: val/acc, goal: maximize}\nparameters:\n" \
       "  optim.lr: {values: [0.1, 0.2, 0.3]}\n"


def request(*flags: str, text: str = GRID) -> Any:
    Path("s.yaml").write_text(text)
    return parse_command_line(["--sweep", "s.yaml", "--model", "mlp", *flags])


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.setenv(RUN_DIR_ENV, "a-parents-run")
    monkeypatch.setenv("D2L_KEPT", "yes")
    return tmp_path


class Trials:
    """Stands in for the trial processes: records each command and environment, checks the
    sweep folder's lock is held, writes results (``val/acc`` = 1 - lr) unless told an exit
    status or a signal."""

    def __init__(self, codes: dict[str, tuple[int, int | None]] | None = None) -> None:
        self.codes, self.argv, self.envs, self.locked = codes or {}, [], [], []

    def __call__(self, argv: list[str], env: dict[str, str]) -> tuple[int, int | None]:
        run = Path(argv[argv.index("--run-dir") + 1])
        self.argv.append(argv)
        self.envs.append(env)
        fd = os.open(run.parent / LOCK_NAME, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.locked.append(False)
        except BlockingIOError:
            self.locked.append(True)
        finally:
            os.close(fd)
        code = self.codes.get(run.name, (0, None))
        if code == (0, None):
            lr = yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"]
            (run / "results.json").write_text(json.dumps({"val/acc": 1 - lr}))
        return code


def run(monkeypatch, fake: Trials, *flags: str, text: str = GRID) -> int:
    monkeypatch.setattr(sweep, "_trial", fake)
    return sweep.run_sweep(request("--run-dir", "sw", *flags, text=text))


def rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


# --- plan -------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, folder", [([], "runs/sweep-s"), (["--run-dir", "a/sw"], "a/sw")])
def test_each_trial_runs_in_its_numbered_folder_of_the_sweep_folder(flags, folder, here) -> None:
    lrs = ", ".join(str(i / 100) for i in range(1, 12))
    text = f"method: grid\nparameters:\n  optim.lr: {{values: [{lrs}]}}\n"
    spec, sweep_dir, values, configs = sweep.plan(request(*flags, text=text))
    assert sweep_dir == Path(folder) and spec["path"].name == "s.yaml"
    assert [c["run"]["run_dir"] for c in configs] == [f"{folder}/trial-{i:03d}" for i in range(11)]
    assert configs[10]["run"]["run_dir"].endswith("/trial-010")
    assert [c["optim"]["lr"] for c in configs] == [v["optim.lr"] for v in values] == [
        i / 100 for i in range(1, 12)]
    assert not (here / "runs").exists()


def test_a_nested_key_reaches_its_config(here) -> None:
    text = "method: grid\nparameters:\n  trainer.callbacks.EarlyStopping.patience: {value: 4}\n"
    _, _, _, (cfg,) = sweep.plan(request(text=text))
    assert cfg["trainer"]["callbacks"]["EarlyStopping"]["patience"] == 4
    assert cfg["model"]["name"] == "mlp"


@pytest.mark.parametrize("flags, seed", [(["--seed", "7"], 7), (["--seed", "11"], 11), ([], None)])
def test_the_draws_come_from_the_configs_seed(flags, seed, here) -> None:
    text = "method: random\nrun_cap: 4\nparameters:\n  optim.lr: {min: 0.0, max: 1.0}\n"
    spec, _, values, configs = sweep.plan(request(*flags, text=text))
    seed = configs[0]["run"]["seed"] if seed is None else seed
    assert values == sweep.trials(spec, seed) != sweep.trials(spec, seed + 1)


def test_a_swept_key_set_by_a_flag_is_refused_and_one_in_a_config_file_is_swept(here) -> None:
    with pytest.raises(ConfigError) as e:
        sweep.plan(request("--lr", "0.5"))
    assert str(e.value) == "--lr sets 'optim.lr', which the sweep s.yaml varies"
    Path("c.yaml").write_text("optim: {lr: 0.5, weight_decay: 0.25}\n")
    _, _, _, configs = sweep.plan(request("--config", "c.yaml"))
    assert [(c["optim"]["lr"], c["optim"]["weight_decay"]) for c in configs] == [
        (0.1, 0.25), (0.2, 0.25), (0.3, 0.25)]


# --- run_sweep and the trial loop -------------------------------------------------------------

def test_each_trial_runs_train_py_with_its_config_and_the_parents_environment(
        here, monkeypatch, capsys) -> None:
    fake = Trials()
    assert run(monkeypatch, fake) == 0
    assert fake.argv == [[sys.executable, "-m", "d2l_lightning.cli.train", "--config",
                          f"sw/trial-{i:03d}/config.yaml", "--run-dir", f"sw/trial-{i:03d}"]
                         for i in range(3)]
    env = fake.envs[0]
    assert env["PYTHONPATH"] == str(sweep.PACKAGE_ROOT) and env["D2L_KEPT"] == "yes"
    assert RUN_DIR_ENV not in env and (sweep.PACKAGE_ROOT / "d2l_lightning/cli/train.py").is_file()
    assert fake.locked == [True] * 3  # the sweep folder's lock is held while trials run
    again = FolderLock(here / "sw", "sweep")
    again.acquire()  # and released after (else this is refused)
    again.release()
    assert (here / "sw/trial-001/config.yaml").read_text().splitlines()[0] == (
        "# trial 1 of the sweep s.yaml: optim.lr=0.2")
    assert (here / "sw/sweep.yaml").read_text() == GRID
    out = capsys.readouterr().out
    assert out.startswith("trial 1/3 (sw/trial-000): optim.lr=0.1\n"
                          "trial 2/3 (sw/trial-001): optim.lr=0.2\n"
                          "trial 3/3 (sw/trial-002): optim.lr=0.3\n\n"
                          "sweep sw: 3 trials, sorted by val/acc (maximize)\n")
    assert [r["trial"] for r in rows(here / "sw")] == ["0", "1", "2"]  # 0.9, 0.8, 0.7


def test_the_lock_is_released_when_a_trial_raises(here, monkeypatch) -> None:
    def broken(argv: list[str], env: dict[str, str]) -> tuple[int, None]:
        raise OSError("no such interpreter")

    monkeypatch.setattr(sweep, "_trial", broken)
    with pytest.raises(OSError):
        sweep.run_sweep(request("--run-dir", "sw"))
    again = FolderLock(here / "sw", "sweep")
    again.acquire()
    again.release()


def test_a_sweep_folder_another_process_writes_is_refused_before_any_trial(
        here, monkeypatch) -> None:
    (here / "sw").mkdir()
    held = FolderLock(here / "sw", "sweep")
    held.acquire()
    (here / "sw" / LOCK_NAME).write_text("999999\n")  # as if another process held it
    fake = Trials()
    with pytest.raises(ConfigError) as e:
        run(monkeypatch, fake)
    assert str(e.value) == ("sw is in use by process 999999, which is writing this sweep; wait "
                            "for it to end (or stop it) before starting another, or choose "
                            "another --run-dir")
    assert fake.argv == [] and sorted(p.name for p in (here / "sw").iterdir()) == [LOCK_NAME]
    held.release()


def test_a_relaunch_keeps_the_first_record_and_a_config_written_before_a_kill(
        here, monkeypatch) -> None:
    """Killed before its first checkpoint, a trial keeps its config.yaml and starts again
    from it; partial files of an interrupted write are removed, a user's file is kept."""
    (here / "sw/trial-000").mkdir(parents=True)
    (here / "sw/sweep.yaml").write_text("# the sweep as first launched\n")
    (here / "sw/.summary.csv.4242.tmp").write_text("half a table")
    (here / "sw/notes.txt").write_text("mine")
    spec, _, _, configs = sweep.plan(request("--run-dir", "sw"))
    written = sweep.dump_config(configs[0], "written before the kill")
    (here / "sw/trial-000/config.yaml").write_text(written)
    fake = Trials()
    assert run(monkeypatch, fake) == 0
    assert (here / "sw/trial-000/config.yaml").read_text() == written
    assert fake.argv[0][3:] == ["--config", "sw/trial-000/config.yaml", "--run-dir",
                                "sw/trial-000"]
    assert (here / "sw/sweep.yaml").read_text() == "# the sweep as first launched\n"
    assert sorted(p.name for p in (here / "sw").iterdir() if p.is_file()) == [
        LOCK_NAME, "notes.txt", "summary.csv", "sweep.yaml"]


@pytest.mark.parametrize("signum, said", [(signal.SIGINT, "SIGINT (Ctrl-C)"),
                                          (signal.SIGTERM, "SIGTERM")])
def test_a_signal_during_a_trial_stops_the_sweep_after_its_summary(signum, said, here,
                                                                   monkeypatch, capsys) -> None:
    fake = Trials({"trial-001": (128 + signum, signum)})
    assert run(monkeypatch, fake) == 128 + signum
    assert [a[-1] for a in fake.argv] == ["sw/trial-000", "sw/trial-001"]  # trial 2 not started
    assert capsys.readouterr().err == (
        f"error: sweep stopped by {said} during trial 2, which kept its checkpoint; run the same "
        "sweep command again to continue it\n")
    assert [(r["trial"], r["status"]) for r in rows(here / "sw")] == [
        ("0", "done"), ("1", f"failed (exit {128 + signum})"), ("2", "not run")]


@pytest.mark.parametrize("codes, status", [({}, 0), ({"trial-002": (1, None)}, 1),
                                           ({"trial-000": (2, None)}, 1)])
def test_the_sweep_exits_0_only_when_every_trial_is_done(codes, status, here,
                                                         monkeypatch) -> None:
    fake = Trials(codes)
    assert run(monkeypatch, fake) == status
    assert len(fake.argv) == 3  # a failed trial does not stop the others


def test_a_trial_with_a_checkpoint_resumes_and_a_finished_one_is_not_run(here, monkeypatch,
                                                                         capsys) -> None:
    _, _, _, configs = sweep.plan(request("--run-dir", "sw"))
    for i in (0, 1):
        (here / f"sw/trial-00{i}/checkpoints").mkdir(parents=True)
        (here / f"sw/trial-00{i}/checkpoints/last.ckpt").write_bytes(b"")
        (here / f"sw/trial-00{i}/config.yaml").write_text(sweep.dump_config(configs[i]))
    (here / "sw/trial-000/results.json").write_text(json.dumps({"val/acc": 0.25}))
    fake = Trials()
    assert run(monkeypatch, fake) == 0
    assert [a[3:] for a in fake.argv] == [
        ["--resume", "last", "--run-dir", "sw/trial-001"],
        ["--config", "sw/trial-002/config.yaml", "--run-dir", "sw/trial-002"]]
    assert "trial 1/3 (sw/trial-000): optim.lr=0.1: finished earlier\n" in capsys.readouterr().out
    assert [(r["trial"], r["status"], r["val/acc"]) for r in rows(here / "sw")] == [
        ("1", "done", "0.8"), ("2", "done", "0.7"), ("0", "done", "0.25")]


# --- _trial: one trial process and the signals passed on ------------------------------------

class Popen:
    """A recorded process: ``wait`` delivers ``signals`` to this process first."""

    def __init__(self, argv: list[str], env: dict[str, str], start_new_session: bool) -> None:
        self.args, self.env, self.new_session, self.sent = argv, env, start_new_session, []

    def send_signal(self, signum: int) -> None:
        self.sent.append(signum)

    def wait(self) -> int:
        for s in SIGNALS:
            os.kill(os.getpid(), s)
        return 7


SIGNALS: list[int] = []


@pytest.mark.parametrize("signals", [[], [signal.SIGTERM], [signal.SIGINT],
                                     [signal.SIGINT, signal.SIGTERM]])
def test_a_trial_runs_in_its_own_session_and_gets_the_sweeps_signals(signals,
                                                                     monkeypatch) -> None:
    procs: list[Popen] = []
    monkeypatch.setattr(sweep.subprocess, "Popen", lambda *a, **k: procs.append(Popen(*a, **k))
                        or procs[-1])
    monkeypatch.setattr(sys.modules[__name__], "SIGNALS", signals)
    seen: list[int] = []

    def mine(signum: int, frame: Any) -> None:
        seen.append(signum)

    before = {s: signal.signal(s, mine) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        got = sweep._trial(["python", "-m", "x"], {"A": "1"})
        after = {s: signal.getsignal(s) for s in before}
    finally:
        for s, h in before.items():
            signal.signal(s, h)
    assert got == (7, signals[0] if signals else None)
    (proc,) = procs
    assert (proc.args, proc.env, proc.new_session) == (["python", "-m", "x"], {"A": "1"}, True)
    assert proc.sent == signals and seen == []  # passed on, not handled by the sweep's own
    assert after == {signal.SIGTERM: mine, signal.SIGINT: mine}  # the handlers as before


# --- the summary --------------------------------------------------------------------------------

def test_the_summary_keeps_float_val_and_test_numbers_of_every_trial(tmp_path,
                                                                     monkeypatch) -> None:
    results = [{"val/acc": 0.5, "val/n": 3, "val/ok": True, "epochs": 2},
               {"val/acc": 0.75, "test/acc": 0.625, "train_time_sec": 12.5, "lr": 0.3}]
    values, configs = [], []
    for i, res in enumerate(results):
        (tmp_path / f"t{i}").mkdir()
        (tmp_path / f"t{i}/results.json").write_text(json.dumps(res))
        values.append({"optim.lr": 0.1 * (i + 1)})
        configs.append({"run": {"run_dir": str(tmp_path / f"t{i}")}})
    replaced = []
    real = os.replace
    monkeypatch.setattr(sweep.os, "replace", lambda a, b: (replaced.append((a, b)), real(a, b)))
    table = sweep.write_summary(tmp_path, values, configs, ["done", "done"], "val/acc",
                                "maximize")
    (tmp, dest), = replaced
    assert PARTIAL.fullmatch(Path(tmp).name) and Path(tmp).parent == tmp_path  # removable
    assert dest == tmp_path / "summary.csv"
    with open(dest, newline="") as f:
        got = list(csv.reader(f))
    assert got == [
        ["trial", "status", "optim.lr", "val/acc", "test/acc", "epochs", "train_time_sec",
         "run_dir"],  # the columns of the first row, then those only later rows have
        ["1", "done", "0.2", "0.75", "0.625", "", "12.5", str(tmp_path / "t1")],
        ["0", "done", "0.1", "0.5", "", "2", "", str(tmp_path / "t0")]]
    assert table == ("trial  optim.lr  val/acc  status  train_time_sec\n"
                     "1      0.2       0.75     done    12.5\n"
                     "0      0.1       0.5      done    -")


# --- the checks around the loop ---------------------------------------------------------------

def test_a_swept_key_is_named_by_the_sweep_in_a_refusal(here) -> None:
    with pytest.raises(ConfigError) as e:
        sweep.plan(request(text="method: grid\nparameters:\n"
                                "  trainer.callbacks.NoSuch.patience: {value: 1}\n"))
    assert str(e.value).startswith("sweep s.yaml: trainer.callbacks.NoSuch: 'NoSuch' is not a "
                                   "callback class")


def test_another_busy_folder_does_not_stop_a_sweep(here, monkeypatch) -> None:
    locks = []
    for name in ("sweep", "runs"):  # the lock of another sweep, beside this one's folder
        (here / name).mkdir()
        locks.append(FolderLock(here / name, "sweep"))
        locks[-1].acquire()
        (here / name / LOCK_NAME).write_text("999999\n")
    assert run(monkeypatch, Trials()) == 0
    for lock in locks:
        lock.release()


def test_a_sweep_that_takes_the_folder_after_the_check_is_refused_naming_a_sweep(
        here, monkeypatch) -> None:
    (here / "sw").mkdir()
    other = FolderLock(here / "sw", "run")
    other.acquire()  # between check_free and the sweep's own lock
    monkeypatch.setattr(sweep, "check_free", lambda folder, what: None)
    fake = Trials()
    with pytest.raises(ConfigError) as e:
        run(monkeypatch, fake)
    other.release()
    assert "which is writing this sweep;" in str(e.value) and fake.argv == []


class Stdout:
    """Records what was written and what was flushed."""

    def __init__(self) -> None:
        self.pending, self.flushed = "", ""

    def write(self, text: str) -> int:
        self.pending += text
        return len(text)

    def flush(self) -> None:
        self.flushed, self.pending = self.flushed + self.pending, ""


def test_a_trials_line_is_out_before_its_process_starts(here, monkeypatch) -> None:
    """With stdout a pipe, the trial's own output must not come before its line."""
    out, seen = Stdout(), []
    monkeypatch.setattr(sys, "stdout", out)
    fake = Trials()
    monkeypatch.setattr(sweep, "_trial", lambda argv, env: (seen.append(out.flushed),
                                                           fake(argv, env))[1])
    assert sweep.run_sweep(request("--run-dir", "sw")) == 0
    assert [s.split("\n")[-2:] for s in seen] == [  # its line, flushed, is the last out
        [f"trial {i + 1}/3 (sw/trial-00{i}): optim.lr=0.{i + 1}", ""] for i in range(3)]
