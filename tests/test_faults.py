"""The fault table (docs/reliability.md): bad input and faults, each as a test.

Every row asserts the exit status, that the error is one line on stderr without a traceback,
and that every file that existed before (run folder, data folder) is byte-identical after.
Rows are grouped: refusals at parse time (in-process, fast), faults during a run
(subprocesses), downloads, W&B, and exports. The slow rows are marked ``slow``.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from conftest import ROOT, make_idx_dataset, read_results, run_cli

TINY = ["--model", "mlp", "--data", "mnist", "--num-hiddens", "16", "--batch-size", "16",
        "--max-epochs", "1", "--limit-val-batches", "1", "--limit-test-batches", "1",
        "--no-progress-bar"]


def snapshot(*folders: Path) -> dict[str, str]:
    """``path -> sha256`` of every file under ``folders``."""
    out = {}
    for folder in folders:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_unchanged(before: dict[str, str], *folders: Path) -> None:
    """Every file of ``before`` is still there, byte-identical."""
    after = snapshot(*folders)
    changed = [p for p, h in before.items() if after.get(p) != h]
    assert not changed, changed


def one_error_line(stderr: str) -> str:
    """The single stderr line (no traceback), returned for further checks."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def weights_finite(ckpt: Path) -> bool:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


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
    ("limit-train-0", ["--limit-train-batches", "0"], "training needs a batch"),
    ("accelerator-unknown", ["--accelerator", "tpu9"], "trainer.accelerator must be one of"),
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
        data_root, tmp_path) -> None:
    """A huge lr: the loss becomes NaN; the stop names the step and the last good checkpoint."""
    run = tmp_path / "run"
    before = snapshot(data_root)
    proc = run_cli("train.py", *TINY, "--data-dir", str(data_root), "--run-dir", str(run),
                   "--lr", "1e10", "--ckpt-every-n-steps", "1")
    line = one_error_line(proc.stderr)
    assert proc.returncode == 1, line
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

    from callbacks.monitoring import NonFiniteLossError, TrainingMonitor

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

    from callbacks.monitoring import NonFiniteLossError, TrainingMonitor

    trainer = SimpleNamespace(global_step=7, current_epoch=0, checkpoint_callbacks=[])
    ok = {"state_dict": {"w": torch.ones(3), "steps": torch.tensor(3)}}
    TrainingMonitor().on_save_checkpoint(trainer, None, ok)
    bad = {"state_dict": {"w": torch.tensor([1.0, math.inf])}}
    with pytest.raises(NonFiniteLossError, match="step 7.*no checkpoint was written"):
        TrainingMonitor().on_save_checkpoint(trainer, None, bad)


def test_export_of_non_finite_weights_is_refused(tmp_path) -> None:
    from models import ExportError, build_model, save_export

    model = build_model("mlp", num_classes=2, num_hiddens=3)
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    with pytest.raises(ExportError, match="NaN or inf"):
        save_export(model, {"arch": "mlp", "model_kwargs": {}}, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_diverged_run_warns(data_root, tmp_path) -> None:
    run = tmp_path / "run"
    proc = run_cli("train.py", *TINY, "--data-dir", str(data_root), "--run-dir", str(run),
                   "--lr", "30", "--diverged-after", "3", "--limit-train-batches", "8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = one_error_line(proc.stderr)
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


def test_failed_run_folder_is_reused(data_root, tmp_path) -> None:
    """A data error after the folder was made: --resume says to start again; a rerun works."""
    run = tmp_path / "run"
    bad = run_cli("train.py", *TINY, "--data-dir", str(data_root), "--run-dir", str(run),
                  "--val-size", "100000")
    assert bad.returncode == 1 and "validation size" in one_error_line(bad.stderr)
    before = snapshot(run)
    resume = run_cli("train.py", "--resume", "last", "--run-dir", str(run))
    assert resume.returncode == 2
    assert "start it again with the same command" in one_error_line(resume.stderr)
    assert_unchanged(before, run)
    ok = run_cli("train.py", *TINY, "--data-dir", str(data_root), "--run-dir", str(run),
                 "--limit-train-batches", "2")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (run / "results.json").is_file()
    kept = {str(p).replace(str(run), str(run / "attempt-1")): h for p, h in before.items()}
    assert_unchanged(kept, run)  # the failed attempt's files, moved aside, byte-identical


def test_existing_run_is_still_refused(data_root, tmp_path) -> None:
    """Row already handled: a folder with a checkpoint is never reused by a new run."""
    run = tmp_path / "run"
    args = [*TINY, "--data-dir", str(data_root), "--run-dir", str(run),
            "--limit-train-batches", "2"]
    assert train.main(args) == 0
    before = snapshot(run)
    proc = run_cli("train.py", *args, "--lr", "0.3")
    assert proc.returncode == 2 and "already holds a run" in one_error_line(proc.stderr)
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
    from callbacks.faults import AtomicCheckpointIO

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


def test_read_only_run_folder_is_one_sentence(data_root, tmp_path) -> None:
    """A folder that cannot be written; root writes anywhere, so as root: under /sys (EPERM)."""
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    run = Path("/sys/d2l-faults-test/run") if os.geteuid() == 0 else parent / "run"
    try:
        proc = run_cli("train.py", *TINY, "--data-dir", str(data_root), "--run-dir", str(run))
    finally:
        parent.chmod(0o755)
    line = one_error_line(proc.stderr)
    assert proc.returncode == 1 and line.startswith("error: cannot write"), line
    assert not run.exists()


# ---------------------------------------------------------------------------------------------
# Data: rows already handled well, kept that way


def test_missing_dataset_offline_creates_nothing(tmp_path) -> None:
    """A typo in --data-dir: one sentence, and no empty folders at that path."""
    typo = tmp_path / "dta"
    proc = run_cli("train.py", "--model", "mlp", "--data", "mnist", "--data-dir", str(typo),
                   "--run-dir", str(tmp_path / "run"))
    line = one_error_line(proc.stderr)
    assert proc.returncode == 1 and line.startswith("error: MNIST is missing"), line
    assert not typo.exists() and not (tmp_path / "run").exists()


def test_truncated_dataset_is_one_sentence(tmp_path) -> None:
    root = tmp_path / "data"
    make_idx_dataset(root / "mnist", n_train=48, n_test=12)
    f = root / "mnist" / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-30])
    before = snapshot(root)
    proc = run_cli("train.py", *TINY, "--data-dir", str(root), "--run-dir",
                   str(tmp_path / "run"))
    assert proc.returncode == 1 and "truncated" in one_error_line(proc.stderr)
    assert_unchanged(before, root)


# ---------------------------------------------------------------------------------------------
# Downloads on a network that accepts connections and never answers


@pytest.fixture
def silent_mirrors():
    """Two local mirrors that accept connections (the kernel's backlog) and never answer."""
    servers = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        servers.append(s)
    yield [f"http://127.0.0.1:{s.getsockname()[1]}/" for s in servers]
    for s in servers:
        s.close()


def _four_files(mirrors: list[str]):
    from datamodules.download import RemoteFile

    return [RemoteFile(f"f{i}.gz", "md5:" + "0" * 32, mirrors) for i in range(4)]


def test_hanging_download_waits_one_budget_for_the_whole_dataset(silent_mirrors, tmp_path,
                                                                  monkeypatch, capsys) -> None:
    """4 files x 2 silent mirrors wait 2 s in all (the budget), not 8 x the timeout."""
    from datamodules.download import DataError, ensure_files

    monkeypatch.setenv("D2L_DOWNLOAD_TIMEOUT", "2")
    folder = tmp_path / "typo" / "mnist"
    t0 = time.monotonic()
    with pytest.raises(DataError) as info:
        ensure_files("MNIST", folder, _four_files(silent_mirrors), [None] * 4)
    elapsed = time.monotonic() - t0
    assert 1.5 < elapsed < 4, elapsed
    tried = capsys.readouterr().out.splitlines()
    assert tried == [f"downloading f0.gz from {m}f0.gz (waiting at most 1 s for an answer)"
                     for m in silent_mirrors]
    msg = str(info.value)
    assert "\n" not in msg and "MNIST is missing" in msg and "timed out" in msg
    assert not (tmp_path / "typo").exists()  # nothing created: nothing was downloaded


def test_a_mirror_that_does_not_answer_is_skipped_for_the_other_files(silent_mirrors, tmp_path,
                                                                      monkeypatch) -> None:
    """The first mirror is silent, the second (a local folder) serves every file."""
    from datamodules.download import RemoteFile, ensure_files

    monkeypatch.setenv("D2L_DOWNLOAD_TIMEOUT", "2")
    good = tmp_path / "mirror"
    good.mkdir()
    files = []
    for i in range(3):
        payload = f"file {i}".encode()
        (good / f"f{i}.gz").write_bytes(payload)
        files.append(RemoteFile(f"f{i}.gz", "md5:" + hashlib.md5(payload).hexdigest(),
                                [silent_mirrors[0], good.as_uri()]))
    t0 = time.monotonic()
    ensure_files("X", tmp_path / "x", files, [None] * 3)
    assert time.monotonic() - t0 < 3  # one wait for the silent mirror, not one per file
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["f0.gz", "f1.gz", "f2.gz"]


@pytest.mark.slow
def test_hanging_download_with_the_default_budget(silent_mirrors, tmp_path) -> None:
    """The default budget (20 s) through the real MNIST file list: 240 s before issue 12."""
    import dataclasses

    from datamodules.download import DEFAULT_TIMEOUT, DataError, ensure_files
    from datamodules.idx import MNIST

    ds = dataclasses.replace(MNIST, mirrors=tuple(silent_mirrors))
    t0 = time.monotonic()
    with pytest.raises(DataError):
        ensure_files(ds.title, tmp_path / "mnist", ds.remote_files(), [None] * 4)
    assert time.monotonic() - t0 < DEFAULT_TIMEOUT + 5


# ---------------------------------------------------------------------------------------------
# W&B with an API key but no network


def test_wandb_with_a_key_and_no_network_goes_offline_at_once(data_root, tmp_path) -> None:
    """Before issue 12: a 66 s stall, then a traceback."""
    run = tmp_path / "run"
    env = {"WANDB_API_KEY": "0123456789abcdef" * 2 + "01234567", "WANDB_MODE": "",
           "HOME": str(tmp_path), "WANDB_BASE_URL": f"http://127.0.0.1:{_free_port()}"}
    t0 = time.monotonic()
    proc = run_cli("train.py", *TINY, "--data-dir", str(data_root), "--run-dir", str(run),
                   "--limit-train-batches", "2", "--logger", "wandb", env=env, timeout=120)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stdout.count("W&B: cannot reach") == 1, proc.stdout[-2000:]
    assert list((run / "wandb").glob("offline-run-*")) and (run / "results.json").is_file()
    assert elapsed < 40, elapsed  # a whole run; the W&B part is a refused connection


def _free_port() -> int:
    with socket.socket() as s:  # bound, then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Data that is there but unusable: the sentence gives the next step


def _bad_corpus(root: Path, kind: str) -> list[str]:
    """Write one broken corpus under ``root``; return the train.py flags that read it."""
    if kind == "empty-timemachine":
        (root / "timemachine").mkdir(parents=True)
        (root / "timemachine" / "timemachine.txt").write_text("")
        return ["--model", "gru", "--data", "time_machine"]
    if kind == "empty-wikitext-train":
        (root / "wikitext-2").mkdir(parents=True)
        for split in ("train", "valid", "test"):
            text = "" if split == "train" else " = A = \n the time machine is here . \n"
            (root / "wikitext-2" / f"wiki.{split}.tokens").write_text(text)
        return ["--model", "lstm", "--data", "wikitext2"]
    (root / "fra-eng").mkdir(parents=True)  # fra-eng without a tab
    (root / "fra-eng" / "fra.txt").write_text("Go. Va !\nRun! Cours !\n" * 20)
    return ["--model", "seq2seq_gru", "--data", "fra_eng", "--max-examples", "40"]


@pytest.mark.parametrize("kind", ["empty-timemachine", "empty-wikitext-train",
                                  "fra-eng-without-tabs"])
def test_unusable_corpus_says_what_to_do(kind, tmp_path, capsys) -> None:
    root = tmp_path / "data"
    flags = _bad_corpus(root, kind)
    before = snapshot(root)
    code = train.main([*flags, "--data-dir", str(root), "--run-dir", str(tmp_path / "run"),
                       "--max-epochs", "1", "--no-progress-bar"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 1 and "delete it so it is downloaded again" in line, line
    assert_unchanged(before, root)


# ---------------------------------------------------------------------------------------------
# predict.py: bad values and untrusted exports


@pytest.fixture(scope="module")
def image_export(tmp_path_factory) -> Path:
    """A small classifier export (mlp on a tiny MNIST)."""
    root = tmp_path_factory.mktemp("pexport")
    make_idx_dataset(root / "data" / "mnist", n_train=48, n_test=12)
    assert train.main([*TINY, "--data-dir", str(root / "data"), "--run-dir",
                       str(root / "run"), "--limit-train-batches", "2"]) == 0
    return root / "run" / "export"


@pytest.mark.parametrize("args, needle", [
    (["generate", "--export", "E", "--temperature", "nan"], "--temperature: expected a finite"),
    (["generate", "--export", "E", "--num-tokens", "-3"], "--num-tokens: expected a whole"),
    (["classify", "--export", "E", "--top-k", "-1", "x.png"], "--top-k: expected a whole"),
    (["fill-mask", "--export", "E", "--top-k", "-1", "a <mask> ."], "--top-k: expected a whole"),
    (["translate", "--export", "E", "--beam-size", "0", "hi ."], "--beam-size: expected a whole"),
], ids=["generate-temperature-nan", "generate-num-tokens-negative", "classify-top-k-negative",
        "fill-mask-top-k-negative", "translate-beam-0"])
def test_predict_values_are_refused_at_parse_time(args, needle) -> None:
    proc = run_cli("predict.py", *args)
    line = one_error_line(proc.stderr)
    assert proc.returncode == 2 and needle in line, line


def _edited_export(export: Path, tmp_path: Path, edit) -> Path:
    import json
    import shutil

    out = tmp_path / "export"
    shutil.copytree(export, out)
    cfg = json.loads((out / "config.json").read_text())
    edit(cfg)
    (out / "config.json").write_text(json.dumps(cfg))
    return out


@pytest.mark.parametrize("edit, needle", [
    (lambda c: c["model_kwargs"].update(num_hiddens=10**9), "do not match"),
    (lambda c: c["model_kwargs"].update(depth=3), "do not build"),
    (lambda c: c["model_kwargs"].update(num_hiddens=-5), "do not build"),
    (lambda c: c.pop("preprocess"), "lacks preprocess"),
], ids=["huge-size", "unknown-argument", "negative-argument", "no-preprocess"])
def test_untrusted_export_config_is_refused_before_building(edit, needle, image_export,
                                                            tmp_path) -> None:
    export = _edited_export(image_export, tmp_path, edit)
    before = snapshot(export)
    t0 = time.monotonic()
    proc = run_cli("predict.py", "classify", "--export", str(export),
                   str(image_export.parent.parent / "data" / "mnist"
                       / "t10k-images-idx3-ubyte.gz"), timeout=120)
    line = one_error_line(proc.stderr)
    assert proc.returncode == 1 and needle in line, line
    assert time.monotonic() - t0 < 60  # a 10**9-wide layer would allocate ~3 GB first
    assert_unchanged(before, export)


@pytest.fixture(scope="module")
def text_exports(tmp_path_factory) -> dict[str, Path]:
    """A character-level GRU on a tiny Time Machine, a GRU translator on a tiny fra-eng."""
    from test_language_modeling import BOOK
    from test_seq2seq import write_fra_txt

    root = tmp_path_factory.mktemp("texports")
    (root / "data" / "timemachine").mkdir(parents=True)
    (root / "data" / "timemachine" / "timemachine.txt").write_text(BOOK * 6)
    write_fra_txt(root / "data")
    short = ["--max-epochs", "1", "--limit-train-batches", "2", "--limit-val-batches", "1",
             "--limit-test-batches", "1", "--no-progress-bar", "--data-dir", str(root / "data")]
    assert train.main(["--model", "gru", "--data", "time_machine", "--num-hiddens", "16",
                       "--run-dir", str(root / "lm"), *short]) == 0
    assert train.main(["--model", "seq2seq_gru", "--data", "fra_eng", "--max-examples", "200",
                       "--num-hiddens", "16", "--run-dir", str(root / "mt"), *short]) == 0
    return {"lm": root / "lm" / "export", "mt": root / "mt" / "export"}


def test_translate_refuses_empty_input_and_warns_about_long_input(text_exports) -> None:
    proc = run_cli("predict.py", "translate", "--export", str(text_exports["mt"]), "")
    line = one_error_line(proc.stderr)
    assert proc.returncode == 1 and "holds no word to translate" in line, line
    long = " ".join(["go"] * 500) + " ."
    proc = run_cli("predict.py", "translate", "--export", str(text_exports["mt"]), long)
    line = one_error_line(proc.stderr)
    assert proc.returncode == 0 and line.startswith("warning: sentence 1 has 501 tokens"), line


def test_generate_names_the_characters_it_drops(text_exports) -> None:
    proc = run_cli("predict.py", "generate", "--export", str(text_exports["lm"]), "--prefix",
                   "time 1 traveller!", "--num-tokens", "5")
    line = one_error_line(proc.stderr)
    assert proc.returncode == 0 and "does not keep these characters" in line, line
    assert line.endswith("prefix: '!' '1'"), line


# ---------------------------------------------------------------------------------------------
# Silent surprises made visible


def test_more_cpu_processes_than_cores_warns(monkeypatch, capsys) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.delenv("_D2L_RUN_DIR", raising=False)
    cfg = train.config_from_argv(["--accelerator", "cpu", "--devices", "3"])
    train.check_hardware(cfg)
    line = one_error_line(capsys.readouterr().err)
    assert line == ("warning: --devices 3 starts 3 training processes on 2 CPU cores; they "
                    "will compete for the cores")
    train.check_hardware(train.config_from_argv(["--accelerator", "cpu", "--devices", "2"]))
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


def test_wandb_online_without_a_key_says_it_goes_offline(tmp_path, monkeypatch, caplog) -> None:
    import logging

    from callbacks.wandb_logging import make_wandb_logger

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    with caplog.at_level(logging.INFO):
        logger = make_wandb_logger(tmp_path, "p", None, None, {})
    try:
        said = [r.getMessage() for r in caplog.records if "W&B" in r.getMessage()]
        assert len(said) == 1 and "no API key found, logging offline" in said[0], said
        assert logger.experiment.settings.mode in ("offline", "dryrun")
    finally:
        logger.experiment.finish()


# ---------------------------------------------------------------------------------------------
# Untrusted files already handled well, kept that way


def test_code_running_pickle_is_never_executed(tmp_path, capsys) -> None:
    """A 'checkpoint' whose unpickling would run code: refused, and the code never runs."""
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model:\n  name: mlp\ndata:\n  name: mnist\n")
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(pickle.dumps(Evil()))
    before = snapshot(run)
    code = train.main(["--resume", "last", "--run-dir", str(run)])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and "not a readable checkpoint" in line, line
    assert not marker.exists()
    assert_unchanged(before, run)


def test_export_config_that_is_not_json_is_one_sentence(image_export, tmp_path) -> None:
    export = _edited_export(image_export, tmp_path, lambda c: None)
    (export / "config.json").write_text("{not json")
    proc = run_cli("predict.py", "classify", "--export", str(export), "x.png")
    line = one_error_line(proc.stderr)
    assert proc.returncode == 1 and "is not valid JSON" in line, line


def test_reliability_doc_matches_the_fault_table() -> None:
    """docs/reliability.md names every test of this file, and only tests that exist."""
    doc = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`(test_\w+)`", doc)) - {"test_reliability_doc_matches_the_fault_table"}
    here = {name for name in globals() if name.startswith("test_")}
    here.discard("test_reliability_doc_matches_the_fault_table")
    assert named - here == set(), "named in the doc but not a test"
    assert here - named == set(), "a test of the fault table missing from the doc"
