"""The fault table (docs/reliability.md), part 1: the command line and faults during a run.

Every row asserts the exit status, that the error is one line on stderr without a traceback,
and that every file that existed before (run folder, data folder) is byte-identical after.
Part 2 (data, downloads, W&B, exports) is tests/test_faults_io.py. Slow rows are marked ``slow``.
"""

from __future__ import annotations

import errno
import math
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, call, read_results, run_cli
from d2l_lightning.cli import train
from d2l_lightning.training.command_line import config_from_argv
from d2l_lightning.training.faults import check_hardware
from faults_helpers import TINY, assert_unchanged, one_error_line, snapshot, weights_finite

# ---------------------------------------------------------------------------------------------
# Refusals at parse time: exit 2, one sentence, nothing written (no orphan config.yaml)

PARSE_REFUSALS = [  # (id, flags, what the sentence must say)
    ("batch-size-0", ["--batch-size", "0"], "data.batch_size must be at least 1"),
    ("batch-size-negative", ["--batch-size", "-4"], "data.batch_size must be at least 1"),
    ("lr-negative", ["--lr", "-1"], "optim.lr must be a finite number"),
    ("lr-nan", ["--lr", "nan"], "optim.lr must be a finite number"),
    ("accumulate-0", ["--accumulate-grad-batches", "0"], "accumulate_grad_batches must be"),
    ("devices-0", ["--devices", "0"], "trainer.devices must be"),
    ("devices-abc", ["--devices", "abc"], "trainer.devices must be"),
    ("max-epochs-0", ["--max-epochs", "0"], "trainer.max_epochs must be at least 1"),
    ("max-epochs-unbounded", ["--max-epochs", "-1"], "-1 (no limit) needs --max-steps N"),
    ("limit-train-0", ["--limit-train-batches", "0"], "training needs a batch"),
    ("accelerator-unknown", ["--accelerator", "tpu9"], "invalid accelerator name"),
    ("config-file-value", ["--config", "{cfg}"], "accumulate_grad_batches must be at least 1"),
]


@pytest.mark.parametrize("flags, needle", [r[1:] for r in PARSE_REFUSALS],
                         ids=[r[0] for r in PARSE_REFUSALS])
def test_parse_time_refusal(flags, needle, data_root, tmp_path, capsys) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("trainer:\n  accumulate_grad_batches: 0\n")
    flags = [f.replace("{cfg}", str(cfg)) for f in flags]
    before = snapshot(data_root, tmp_path)
    run = tmp_path / "run"
    code = train.main([*TINY, "--data-dir", str(data_root), "--run-dir", str(run), *flags])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and line.startswith("train.py: error:") and needle in line, line
    assert not run.exists()  # no run folder, no orphan config.yaml
    assert_unchanged(before, data_root, tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("flags, needle", [
    (["--accelerator", "gpu"], "no CUDA GPU"),
    (["--strategy", "fsdp"], "fsdp"),  # Lightning's refusal, before anything is left behind
], ids=["accelerator-gpu-without-one", "fsdp-on-cpu"])
def test_hardware_refusal_leaves_no_folder(flags, needle, data_root, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    before = snapshot(data_root)
    code = train.main([*TINY, "--data-dir", str(data_root), "--run-dir", str(run), *flags])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and needle in line, line
    assert not run.exists()
    assert_unchanged(before, data_root)


def test_parse_refusal_as_a_user_runs_it(data_root, tmp_path) -> None:
    """The same refusal through the real command line (a fresh interpreter)."""
    run = tmp_path / "run"
    proc = run_cli("train.py", *TINY, "--data-dir", str(data_root), "--run-dir", str(run),
                   "--batch-size", "0")
    assert proc.returncode == 2
    assert "data.batch_size must be at least 1" in one_error_line(proc.stderr)
    assert not run.exists()


# ---------------------------------------------------------------------------------------------
# Faults during a run


def test_non_finite_loss_stops_before_its_step_and_keeps_no_poisoned_checkpoint(
        data_root, tmp_path, capsys) -> None:
    """A huge lr: the loss becomes NaN; the stop names the step and the last good checkpoint."""
    run = tmp_path / "run"
    before = snapshot(data_root)
    code, _, err = call(train.main, *TINY, "--data-dir", data_root, "--run-dir", run,
                        "--lr", "1e10", "--ckpt-every-n-steps", "1", capsys=capsys)
    line = one_error_line(err)
    assert code == 1, line
    m = re.search(r"became (nan|inf|-inf) in step (\d+) .*which was not applied; the last good "
                  r"checkpoint is (\S+) \(step (\d+)\)", line)
    assert m, line
    assert int(m[4]) == int(m[2]) - 1 and Path(m[3]).is_file()
    ckpts = list((run / "checkpoints").glob("*.ckpt"))
    assert ckpts and all(weights_finite(c) for c in ckpts)
    assert not (run / "export").exists() and not (run / "results.json").exists()
    assert_unchanged(before, data_root)


def test_nan_loss_is_never_applied_to_the_weights() -> None:
    """In-process: a NaN loss in step 3 stops the run with the weights of step 2 intact."""
    import lightning as L

    from d2l_lightning.callbacks.monitoring import NonFiniteLossError, TrainingMonitor

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            loss = self.layer(batch[0]).pow(2).mean()
            return loss * float("nan") if batch_idx == 2 else loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    module = Module()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(8, 2)),
                                       batch_size=2)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[TrainingMonitor()])
    with pytest.raises(NonFiniteLossError, match="in step 3 .*not applied"):
        trainer.fit(module, data)
    assert trainer.global_step == 2
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_checkpoint_with_non_finite_weights_is_refused(tmp_path) -> None:
    """A step can turn the weights to inf with a finite loss: such a checkpoint is not saved."""
    from types import SimpleNamespace

    from d2l_lightning.callbacks.monitoring import NonFiniteLossError, TrainingMonitor

    trainer = SimpleNamespace(global_step=7, current_epoch=0, checkpoint_callbacks=[])
    ok = {"state_dict": {"w": torch.ones(3), "steps": torch.tensor(3)}}
    TrainingMonitor().on_save_checkpoint(trainer, None, ok)
    bad = {"state_dict": {"w": torch.tensor([1.0, math.inf])}}
    with pytest.raises(NonFiniteLossError, match="step 7.*no checkpoint was written"):
        TrainingMonitor().on_save_checkpoint(trainer, None, bad)


def test_export_of_non_finite_weights_is_refused(tmp_path) -> None:
    from d2l_lightning.models import ExportError, build_model, save_export

    model = build_model("mlp", num_classes=2, num_hiddens=3)
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    with pytest.raises(ExportError, match="NaN or inf"):
        save_export(model, {"arch": "mlp", "model_kwargs": {}}, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_diverged_run_warns(data_root, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    code, _, err = call(train.main, *TINY, "--data-dir", data_root, "--run-dir", run,
                        "--lr", "30", "--diverged-after", "3", "--limit-train-batches", "8",
                        capsys=capsys)
    assert code == 0, err[-2000:]
    line = one_error_line(err)
    assert line.startswith("warning: the training loss") and "diverged" in line, line


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    end = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, "the run ended before it wrote a checkpoint"
        assert time.monotonic() < end, f"no {path} after {seconds} s"
        time.sleep(0.1)


def test_sigterm_writes_last_checkpoint_and_exits_non_zero(data_root, tmp_path) -> None:
    """A scheduler's SIGTERM: last.ckpt at the current step, exit 143, then resume works."""
    run = tmp_path / "run"
    args = [*TINY, "--max-epochs", "100", "--data-dir", str(data_root), "--run-dir", str(run)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline",
           "OMP_NUM_THREADS": "1"}
    env.pop("_D2L_RUN_DIR", None)
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(run / "checkpoints" / "last.ckpt", proc)  # epoch 0 done: mid-run now
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    line = one_error_line(stderr)
    assert proc.returncode == 128 + signal.SIGTERM, line
    m = re.search(r"stopped by SIGTERM at step (\d+), saved to (\S+); continue with: "
                  r"python train\.py --resume last --run-dir (\S+)$", line)
    assert m and Path(m[3]) == run, line
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    step = int(m[1])
    assert ckpt["global_step"] == step > 0
    resumed = run_cli("train.py", "--resume", "last", "--run-dir", str(run), "--max-steps",
                      str(step + 3))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert read_results(run)["global_step"] == step + 3


def test_failed_run_folder_is_reused(data_root, tmp_path, capsys, monkeypatch) -> None:
    """A data error after the folder was made: --resume says to start again; a rerun works."""
    from d2l_lightning.datamodules.download import DataError
    from d2l_lightning.datamodules.vision import MNISTDataModule

    def fails(self, stage=None) -> None:
        raise DataError("the MNIST files changed under the run")

    run = tmp_path / "run"
    with monkeypatch.context() as m:  # setup runs inside trainer.fit, after the folder exists
        m.setattr(MNISTDataModule, "setup", fails)
        code, _, err = call(train.main, *TINY, "--data-dir", data_root, "--run-dir", run,
                            capsys=capsys)
    assert code == 1 and "changed under the run" in one_error_line(err)
    assert (run / "config.yaml").is_file()
    before = snapshot(run)
    code, _, err = call(train.main, "--resume", "last", "--run-dir", run, capsys=capsys)
    assert code == 2
    assert "start it again with the same command" in one_error_line(err)
    assert_unchanged(before, run)
    code, _, err = call(train.main, *TINY, "--data-dir", data_root, "--run-dir", run,
                        "--limit-train-batches", "2", capsys=capsys)
    assert code == 0, err[-2000:]
    assert (run / "results.json").is_file()
    kept = {str(p).replace(str(run), str(run / "attempt-1")): h for p, h in before.items()
            if Path(p).name != ".lock"}  # the folder's lock stays with the folder
    assert_unchanged(kept, run)  # the failed attempt's files, moved aside, byte-identical


def test_existing_run_is_still_refused(data_root, tmp_path, capsys) -> None:
    """Row already handled: a folder with a checkpoint is never reused by a new run."""
    run = tmp_path / "run"
    args = [*TINY, "--data-dir", str(data_root), "--run-dir", str(run),
            "--limit-train-batches", "2"]
    assert train.main(args) == 0
    before = snapshot(run)
    code, _, err = call(train.main, *args, "--lr", "0.3", capsys=capsys)
    assert code == 2 and "already holds a run" in one_error_line(err)
    assert_unchanged(before, run)


def _limit_file_size(limit: int):
    def apply() -> None:  # in the child: a write past `limit` bytes fails with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_full_disk_is_one_sentence_and_leaves_no_truncated_checkpoint(data_root,
                                                                       tmp_path) -> None:
    """Stand-in for a full disk: a file-size limit (RLIMIT_FSIZE) below the checkpoint's size."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline",
           "OMP_NUM_THREADS": "1"}
    env.pop("_D2L_RUN_DIR", None)
    before = snapshot(data_root)
    proc = subprocess.run(
        [sys.executable, "train.py", *TINY, "--num-hiddens", "256", "--data-dir",
         str(data_root), "--run-dir", str(run), "--limit-train-batches", "2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        preexec_fn=_limit_file_size(400_000))
    line = one_error_line(proc.stderr)
    assert proc.returncode == 1 and "cannot write" in line and ".ckpt" in line, line
    assert list((run / "checkpoints").iterdir()) == []  # no truncated or temporary file
    assert_unchanged(before, data_root)


def test_checkpoint_write_failure_keeps_the_earlier_file(tmp_path, monkeypatch) -> None:
    from d2l_lightning.callbacks.faults import AtomicCheckpointIO

    path = tmp_path / "best.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"w": torch.ones(4)}, path)
    before = snapshot(tmp_path)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=str(path)):
        io.save_checkpoint({"w": torch.zeros(4)}, path)
    assert_unchanged(before, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt"]


def test_read_only_run_folder_is_one_sentence(data_root, tmp_path, capsys) -> None:
    """A folder that cannot be written; root writes anywhere, so as root: under /sys (EPERM)."""
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    run = Path("/sys/d2l-faults-test/run") if os.geteuid() == 0 else parent / "run"
    try:
        code, _, err = call(train.main, *TINY, "--data-dir", data_root, "--run-dir", run,
                            capsys=capsys)
    finally:
        parent.chmod(0o755)
    line = one_error_line(err)
    assert code == 1 and line.startswith("error: cannot write"), line
    assert not run.exists()


# ---------------------------------------------------------------------------------------------
# Silent surprises made visible


def test_more_cpu_processes_than_cores_warns(monkeypatch, capsys) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.delenv("_D2L_RUN_DIR", raising=False)
    cfg = config_from_argv(["--accelerator", "cpu", "--devices", "3"])
    check_hardware(cfg)
    line = one_error_line(capsys.readouterr().err)
    assert line == ("warning: --devices 3 starts 3 training processes on 2 CPU cores; they "
                    "will compete for the cores")
    check_hardware(config_from_argv(["--accelerator", "cpu", "--devices", "2"]))
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="16-mixed runs as such on a GPU")
def test_config_records_the_precision_that_ran(data_root, tmp_path) -> None:
    """16-mixed on the CPU runs bf16-mixed (Lightning's choice): config.yaml says so."""
    import yaml

    run = tmp_path / "run"
    assert train.main([*TINY, "--data-dir", str(data_root), "--run-dir", str(run),
                       "--limit-train-batches", "1", "--precision", "16-mixed"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["trainer"]["precision"] == "bf16-mixed"


@pytest.mark.slow
def test_ddp_spawn_results_hold_sizes_and_confusion_matrix(data_root, tmp_path) -> None:
    run = tmp_path / "run"
    proc = run_cli("train.py", *TINY, "--data-dir", str(data_root), "--run-dir", str(run),
                   "--limit-train-batches", "2", "--accelerator", "cpu", "--devices", "2",
                   "--strategy", "ddp_spawn", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = read_results(run)
    assert res["dataset_sizes"] == {"train": 220, "val": 20, "test": 60}
    assert len(res["test/confusion_matrix"]) == 10


def test_reliability_doc_matches_the_fault_table() -> None:
    """docs/reliability.md names every test of the fault table, and only tests that exist."""
    doc = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    this = "test_reliability_doc_matches_the_fault_table"
    named = set(re.findall(r"`(test_\w+)`", doc)) - {this}
    tests = set()
    for path in sorted((ROOT / "tests").glob("test_faults*.py")):
        text = path.read_text(encoding="utf-8")
        tests |= set(re.findall(r"^def (test_\w+)", text, flags=re.M)) - {this}
    assert named - tests == set(), "named in the doc but not a test"
    assert tests - named == set(), "a test of the fault table missing from the doc"
