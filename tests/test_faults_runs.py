"""The fault table (docs/reliability.md), part 3: the life of a run folder.

One writer per run and per sweep folder, resumes checked before anything is written, signals
(SIGTERM, Ctrl-C) at every phase keeping a checkpoint from which the run continues with every
epoch trained and validated, and partial files of a killed writer cleaned at the next start.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, read_results
from d2l_lightning.callbacks.faults import SigtermCheckpoint
from d2l_lightning.cli import train
from faults_helpers import TINY, assert_unchanged, one_error_line, snapshot

TWO_EPOCHS = [*TINY[:TINY.index("--max-epochs")], "--max-epochs", "2",
              *TINY[TINY.index("--max-epochs") + 2:]]
TWO_EPOCHS[TWO_EPOCHS.index("--limit-val-batches") + 1] = "3"  # a validation of 3 batches


def _holder(folder: Path) -> subprocess.Popen:
    """Another process that holds ``folder``'s lock, as a live train.py would."""
    code = ("import sys, time; from d2l_lightning.training.lock import FolderLock; "
            "FolderLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)")
    env = {k: v for k, v in os.environ.items() if k != "MUTANT_UNDER_TEST"}  # the other
    # process runs the unmutated lock under `make mutation` (mutmut's trampolines need a parent)
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE,
                            text=True, env={**env, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _val_epochs(run: Path) -> list[str]:
    return [r["epoch"] for r in _rows(run) if r.get("val/loss")]


@pytest.fixture(scope="module")
def finished(data_root, tmp_path_factory) -> Path:
    """A finished 2-epoch run (28 steps) to resume."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert train.main([*TWO_EPOCHS, "--data-dir", str(data_root), "--run-dir", str(run)]) == 0
    return run


def test_second_writer_of_a_run_folder_is_refused_naming_the_first(data_root, finished,
                                                                   capsys) -> None:
    proc = _holder(finished)
    before = snapshot(finished)  # with the holder's pid in .lock
    names = sorted(p.name for p in finished.iterdir())
    try:
        for argv in ([*TINY, "--data-dir", str(data_root), "--run-dir", str(finished)],
                     ["--resume", "last", "--run-dir", str(finished)]):
            code = train.main(argv)
            line = one_error_line(capsys.readouterr().err)
            assert code == 2 and f"in use by process {proc.pid}" in line, line
            assert_unchanged(before, finished)
            assert sorted(p.name for p in finished.iterdir()) == names  # no config.resume.yaml
    finally:
        proc.kill()
        proc.wait()
    # the killed holder's lock does not block the next start
    assert train.main(["--resume", "last", "--run-dir", str(finished)]) == 0


def test_two_train_processes_on_one_folder(data_root, tmp_path, capsys) -> None:
    """A real train.py writes the folder; a second one started meanwhile is refused at once."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "train.py", *TWO_EPOCHS, "--limit-train-batches",
                              "60", "--data-dir", str(data_root), "--run-dir", str(run)],
                             cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "config.yaml").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    code = train.main([*TINY, "--data-dir", str(data_root), "--run-dir", str(run)])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and f"in use by process {first.pid}" in line, line
    assert first.wait(timeout=300) == 0, first.stderr.read()[-3000:]
    steps = [r["step"] for r in _rows(run) if r.get("train/loss")]
    assert steps and len(steps) == len(set(steps))  # every row written once


def test_second_sweep_in_one_folder_is_refused(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "grid.yaml").write_text("method: grid\nparameters:\n"
                                        "  optim.lr: {values: [0.1, 0.2]}\n")
    (tmp_path / "sw").mkdir()
    proc = _holder(tmp_path / "sw")
    try:
        code = train.main(["--sweep", "grid.yaml", "--model", "mlp", "--run-dir", "sw"])
    finally:
        proc.kill()
        proc.wait()
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and f"in use by process {proc.pid}" in line and "sweep" in line, line
    assert sorted(p.name for p in (tmp_path / "sw").iterdir()) == [".lock"]


def test_resume_shorter_than_what_was_trained_changes_nothing(finished, capsys) -> None:
    """Was: a traceback after writing config.resume*.yaml, and every later resume failed."""
    before = snapshot(finished)
    records = sorted(finished.glob("config.resume*.yaml"))  # earlier tests may have resumed it
    for _ in range(2):
        code = train.main(["--resume", "last", "--run-dir", str(finished), "--max-epochs", "1"])
        line = one_error_line(capsys.readouterr().err)
        assert code == 2 and "--max-epochs 1 is shorter than" in line, line
        assert "at epoch 2, step 28" in line and "at least 2" in line, line
        assert_unchanged(before, finished)
        assert sorted(finished.glob("config.resume*.yaml")) == records  # no new record
    code = train.main(["--resume", "last", "--run-dir", str(finished), "--max-steps", "27"])
    assert code == 2 and "--max-steps 27 is shorter" in one_error_line(capsys.readouterr().err)
    # a resume of the finished run trains nothing; its results keep the run's totals
    assert train.main(["--resume", "last", "--run-dir", str(finished)]) == 0
    res = read_results(finished)
    assert (res["global_step"], res["epochs"]) == (28, 2) and res["train_time_sec"] > 0, res


def _signal_at(monkeypatch, signum: int, phase: str) -> None:
    """Send ``signum`` to this process in the first epoch: at its last training step, during
    its validation, or during the test."""
    def last_step(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == 0 and batch_idx + 1 == trainer.num_training_batches:
            os.kill(os.getpid(), signum)

    def in_validation(self, trainer, module, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking and trainer.current_epoch == 0 and batch_idx == 0:
            os.kill(os.getpid(), signum)

    def in_test(self, trainer, module, batch, batch_idx, dataloader_idx=0) -> None:
        os.kill(os.getpid(), signum)

    hook, fn = {"last training step": ("on_train_batch_end", last_step),
                "validation": ("on_validation_batch_start", in_validation),
                "test": ("on_test_batch_start", in_test)}[phase]
    monkeypatch.setattr(SigtermCheckpoint, hook, fn, raising=False)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
@pytest.mark.parametrize("phase", ["last training step", "validation"])
def test_signal_keeps_a_checkpoint_and_the_resumed_run_misses_no_epoch(
        signum, phase, data_root, tmp_path, monkeypatch, capsys) -> None:
    """Was: Ctrl-C kept nothing and said nothing; SIGTERM at an epoch's end resumed into the
    test with epoch 2 never trained and epoch 1 never validated."""
    run = tmp_path / "run"
    name = "SIGINT (Ctrl-C)" if signum == signal.SIGINT else "SIGTERM"
    with monkeypatch.context() as m:
        _signal_at(m, signum, phase)
        code = train.main([*TWO_EPOCHS, "--data-dir", str(data_root), "--run-dir", str(run)])
    line = one_error_line(capsys.readouterr().err)
    assert code == 128 + signum and f"stopped by {name} at step 14" in line, line
    assert f"--resume last --run-dir {run}" in line
    assert _val_epochs(run) == ["0"]  # the signal waited for the validation to end
    assert train.main(["--resume", "last", "--run-dir", str(run)]) == 0
    res = read_results(run)
    assert (res["global_step"], res["epochs"]) == (28, 2)
    assert _val_epochs(run) == ["0", "1"]
    assert list(run.glob("checkpoints/best-*.ckpt"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_signal_during_the_test_says_how_to_test_again(signum, data_root, tmp_path,
                                                       monkeypatch, capsys) -> None:
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        _signal_at(m, signum, "test")
        code = train.main([*TINY, "--limit-test-batches", "3", "--data-dir", str(data_root),
                           "--run-dir", str(run)])
    line = one_error_line(capsys.readouterr().err)
    assert code == 128 + signum and "after training, before results.json" in line, line
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "results.json").exists()


def test_step_checkpoints_skip_an_epochs_last_step(data_root, tmp_path) -> None:
    """A checkpoint between an epoch's last step and its validation would resume into the
    next epoch with both skipped; the epoch-end last.ckpt (after validation) stands for it."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    saved = []
    real = ModelCheckpoint._save_checkpoint

    def record(self, trainer, filepath) -> None:
        saved.append((type(self).__name__, trainer.global_step))
        real(self, trainer, filepath)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(ModelCheckpoint, "_save_checkpoint", record)
        assert train.main([*TINY, "--ckpt-every-n-steps", "7", "--data-dir", str(data_root),
                           "--run-dir", str(tmp_path / "run")]) == 0
    assert [s for name, s in saved if name == "StepCheckpoint"] == [7]  # not 14, the last


def test_partial_files_of_a_killed_writer_are_removed_at_the_next_start(finished,
                                                                        capsys) -> None:
    partial = [finished / "checkpoints" / ".last.ckpt.k3x9_q2a", finished / ".metrics.csv.4242.tmp",
               finished / "export" / ".model.safetensors.abcd1234"]
    kept = [finished / "checkpoints" / ".notes", finished / "my.ckpt.backup"]
    for p in [*partial, *kept]:
        p.write_bytes(b"partial")
    assert train.main(["--resume", "last", "--run-dir", str(finished)]) == 0
    out = capsys.readouterr().out
    assert "removed 3 partial file(s)" in out, out
    assert not any(p.exists() for p in partial) and all(p.exists() for p in kept)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_sweep_passes_a_signal_to_its_trial(signum, tmp_path, monkeypatch, capsys) -> None:
    """Was: the sweep exited and its trial went on training alone."""
    import threading

    from d2l_lightning.training import sweep

    child = ("import signal, sys, time\n"
             "signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))\n"
             "signal.signal(signal.SIGINT, lambda *a: sys.exit(130))\n"
             "open(sys.argv[1], 'w').close()\n"
             "time.sleep(60)\n")
    ready = tmp_path / "ready"
    threading.Thread(target=lambda: (_wait_for(ready), os.kill(os.getpid(), signum)),
                     daemon=True).start()
    started, found = time.monotonic(), signal.getsignal(signal.SIGINT)
    rc, got = sweep._trial([sys.executable, "-c", child, str(ready)], dict(os.environ))
    assert (rc, got) == (128 + signum, signum) and time.monotonic() - started < 30
    # given back (the default handler, or SIG_IGN when started in the background by a shell)
    assert signal.getsignal(signal.SIGINT) is found

    monkeypatch.chdir(tmp_path)
    (tmp_path / "grid.yaml").write_text("method: grid\nparameters:\n"
                                        "  optim.lr: {values: [0.1, 0.2]}\n")
    calls = []
    monkeypatch.setattr(sweep, "_trial", lambda argv, env: calls.append(argv) or (rc, got))
    code = train.main(["--sweep", "grid.yaml", "--model", "mlp", "--run-dir", "sw"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 128 + signum and len(calls) == 1, (code, calls)  # the second trial waits
    assert "during trial 1" in line and "run the same sweep command again" in line, line
    assert (tmp_path / "sw" / "summary.csv").is_file()


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + 30
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def test_resumed_run_reports_the_whole_runs_time_and_epoch_means(data_root, tmp_path,
                                                                   monkeypatch) -> None:
    """Was: train_time_sec 0.0 and a train/acc of the batches after the resume only."""
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert train.main([*TINY, "--data-dir", str(data_root), "--run-dir", str(whole)]) == 0

    def stop_at_7(self, trainer, module, outputs, batch, batch_idx) -> None:
        if batch_idx == 6:
            os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as m:
        m.setattr(SigtermCheckpoint, "on_train_batch_end", stop_at_7, raising=False)
        assert train.main([*TINY, "--data-dir", str(data_root), "--run-dir", str(stopped)]) == 143
    assert train.main(["--resume", "last", "--run-dir", str(stopped)]) == 0
    a, b = read_results(whole), read_results(stopped)
    for key in ("train/acc", "train/loss_epoch"):
        assert b[key] == pytest.approx(a[key], rel=1e-6), key
    assert b["train_time_sec"] > 0 and b["train_samples_per_sec"] > 0


@pytest.mark.parametrize("model, data, extra, split", [
    ("mlp", "mnist", {}, "test"),
    ("mlp", "mnist", {"setting": "book"}, "validation"),  # the test set is the validation set
    ("gru", "time_machine", {}, "validation"),  # a held-out tail serves both
    ("gru", "wikitext2", {}, "test"),
])
def test_test_numbers_say_which_split_they_are_on(model, data, extra, split, tmp_path) -> None:
    """Was: results.json and the console reported test/* for data without a test split."""
    from test_language_modeling import BOOK, write_wikitext

    from conftest import make_idx_dataset
    from d2l_lightning.training.run import build_data, load_config, test_split

    make_idx_dataset(tmp_path / "mnist", n_train=60, n_test=20)
    (tmp_path / "timemachine").mkdir()
    (tmp_path / "timemachine" / "timemachine.txt").write_text(BOOK * 6, encoding="utf-8")
    write_wikitext(tmp_path / "wikitext-2")
    cfg = load_config({"model": {"name": model},
                       "data": {"name": data, "data_dir": str(tmp_path), **extra}})
    dm = build_data(cfg)
    dm.prepare_data()
    dm.setup("fit")
    assert test_split(dm) == split


def test_results_and_console_label_validation_numbers_reported_as_test(tmp_path, capsys) -> None:
    from test_language_modeling import BOOK

    (tmp_path / "timemachine").mkdir()
    (tmp_path / "timemachine" / "timemachine.txt").write_text(BOOK * 6, encoding="utf-8")
    run = tmp_path / "run"
    assert train.main(["--model", "gru", "--data", "time_machine", "--num-hiddens", "8",
                       "--max-steps", "2", "--limit-val-batches", "1", "--limit-test-batches",
                       "1", "--no-progress-bar", "--data-dir", str(tmp_path),
                       "--run-dir", str(run)]) == 0
    res = read_results(run)
    assert res["test_split"] == res["meta"]["test_split"] == "validation"
    assert "test/* is on the validation split" in capsys.readouterr().out


@pytest.mark.parametrize("phase", ["data preparation", "after the test"])
def test_sigterm_outside_the_trainer_is_one_sentence(phase, data_root, tmp_path, monkeypatch,
                                                     capsys) -> None:
    """Was: the default action, a silent death with exit -15 and no word of what was kept."""
    from d2l_lightning.callbacks import media
    from d2l_lightning.datamodules.vision import MNISTDataModule

    def term(*args, **kwargs) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    if phase == "data preparation":
        monkeypatch.setattr(MNISTDataModule, "prepare_data", term)
    else:
        monkeypatch.setattr(media, "publish_run", term)
    run = tmp_path / "run"
    before = snapshot(data_root)
    safety = signal.signal(signal.SIGTERM, lambda *a: None)  # were train.py's handler missing
    try:
        code = train.main([*TINY, "--data-dir", str(data_root), "--run-dir", str(run)])
        given_back = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, safety)
    line = one_error_line(capsys.readouterr().err)
    assert code == 143 and "stopped by SIGTERM outside training" in line, line
    assert_unchanged(before, data_root)
    assert not (run / "results.json").exists()
    assert run.exists() == (phase == "after the test")  # nothing written before training
    assert given_back.__name__ == "<lambda>"  # the handler before train.py's, given back


@pytest.mark.parametrize("argv, needle", [
    (["--resume", "{bad}"], "--resume: {bad} is not a readable checkpoint of train.py"),
    (["test", "--ckpt", "{bad}"], "train.py test: {bad} is not a readable checkpoint"),
    ([*TINY, "--run-dir", "{bad}"], "--run-dir {bad} is a file, not a folder"),
], ids=["resume", "test", "run-dir"])
def test_a_file_that_is_not_what_the_flag_takes_is_named(argv, needle, data_root, tmp_path,
                                                         capsys) -> None:
    """Was: "/tmp is not a run folder" (the folder above the file) and, for --run-dir, a
    FileExistsError traceback."""
    bad = tmp_path / "notes.ckpt"
    bad.write_text("not a checkpoint")
    before = snapshot(tmp_path, data_root)
    argv = [a.replace("{bad}", str(bad)) for a in argv]
    code = train.main([*argv, "--data-dir", str(data_root)] if "--model" in argv else argv)
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and needle.replace("{bad}", str(bad)) in line, line
    assert_unchanged(before, tmp_path, data_root)


@pytest.mark.slow
def test_sigterm_to_a_ddp_run_stops_every_rank_at_one_step(data_root, tmp_path) -> None:
    """Was: in about half the tries both ranks hung (Lightning's handler broadcasts from inside
    the signal handler, during a metric's all-gather); the other half printed the line twice."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("_D2L_RUN_DIR", None)
    argv = [*TWO_EPOCHS, "--max-epochs", "100", "--accelerator", "cpu", "--devices", "2",
            "--strategy", "ddp", "--data-dir", str(data_root), "--run-dir", str(run)]
    for stop_after in (0.1, 0.3, 0.5, 0.7, 0.9):  # anywhere in an epoch; each stop hung
        # half the time before (five: all five would pass by chance once in ~30 runs)
        if run.exists():
            argv = ["--resume", "last", "--run-dir", str(run), "--max-epochs", "100"]
        last = run / "checkpoints" / "last.ckpt"
        before = last.stat().st_mtime_ns if last.exists() else None
        proc = subprocess.Popen([sys.executable, "train.py", *argv], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)  # its group: rank 1 as well
        try:
            deadline = time.monotonic() + 120  # an epoch of this process has ended
            while (not last.exists() or last.stat().st_mtime_ns == before) \
                    and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(stop_after)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=90)
        finally:
            if proc.poll() is None:  # a hang: no process of the run is left behind
                os.killpg(proc.pid, signal.SIGKILL)
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert proc.returncode == 143 and len(lines) == 1, err[-3000:]
        assert "stopped by SIGTERM at step" in lines[0]
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run([sys.executable, "train.py", "--resume", "last", "--run-dir",
                           str(run), "--max-epochs", str(int(_rows(run)[-1]["epoch"] or 0) + 2)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    epochs = read_results(run)["epochs"]
    assert _val_epochs(run) == [str(e) for e in range(epochs)]  # every epoch validated once
