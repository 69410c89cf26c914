"""train.py / predict.py as a user runs them: errors, resume after a kill, W&B offline.

Two-process (DDP) runs are in tests/test_ddp.py.
"""

from __future__ import annotations

import csv
import glob
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, call, make_idx_dataset, read_results, run_cli
from d2l_lightning.cli import export, predict, train
from d2l_lightning.models import ExportError, load_exported
from d2l_lightning.training.command_line import config_from_argv


def test_help_and_list(capsys) -> None:
    code, out, _ = call(train.main, "--help", capsys=capsys)
    assert code == 0
    for flag in ("--model", "--data", "--resume", "--precision", "--strategy", "--logger",
                 "--callback"):
        assert flag in out
    code, out, _ = call(train.main, "--list", capsys=capsys)
    assert code == 0 and "lenet_bn" in out and "section" in out


def refused(capsys, *args) -> tuple[int, str]:
    """``train.py ARGS`` in-process: its exit code and its one stderr line (else fails)."""
    code, _, err = call(train.main, *args, capsys=capsys)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return code, err


@pytest.mark.parametrize("args, needle", [
    (["--model", "lenet7"], "lenet_bn"),                      # unknown model lists the choices
    (["--data", "cifar"], "fashion_mnist"),                   # unknown data lists the choices
    (["--model", "linear_regression", "--data", "mnist"], "synthetic_regression"),  # mismatch
    (["--model", "lenet", "--recipe", "fancy"], "modern"),    # unknown recipe
])
def test_bad_names_exit_2_with_the_valid_choices(args, needle, capsys) -> None:
    code, err = refused(capsys, *args)
    assert code == 2 and needle in err


@pytest.mark.parametrize("args, needle", [
    (["--num-steps", "5"], "data 'fashion_mnist' takes no 'num_steps'"),
    (["--model-arg", "depth=3"], "model 'lenet' takes no 'depth'"),
    (["--model-arg", "oops"], "expected KEY=VALUE"),
    (["--beam-size", "4"], "--beam-size: the image_classification task takes no 'beam_size'"),
])
def test_flags_a_model_or_dataset_cannot_take_exit_2(args, needle, capsys) -> None:
    code, err = refused(capsys, "--model", "lenet", *args)
    assert code == 2 and needle in err


def test_model_and_data_args_reach_their_sections(capsys) -> None:
    cfg = config_from_argv(["--model", "lenet", "--model-arg", "activation=relu",
                            "--data-arg", "val_size=100"])
    assert cfg["model"] == {"name": "lenet", "recipe": "d2l", "activation": "relu",
                            "pool": "avg"}
    assert cfg["data"]["val_size"] == 100
    code, err = refused(capsys, "--data-arg", "val_size=100", "--val-size", "50")
    assert code == 2 and "both set data.val_size" in err


def test_missing_data_offline_is_one_clear_error(tmp_path, capsys) -> None:
    code, err = refused(capsys, "--data-dir", tmp_path / "empty", "--run-dir", tmp_path / "run")
    assert code == 1
    msg = err.strip()
    assert msg.startswith("error: Fashion-MNIST is missing from")
    assert "train-images-idx3-ubyte.gz" in msg and "D2L_DATA_DIR" in msg
    assert not (tmp_path / "run").exists()  # nothing created for a run that never started


def test_truncated_data_is_one_clear_error(tmp_path, capsys) -> None:
    root = tmp_path / "data"
    make_idx_dataset(root / "mnist", n_train=48, n_test=12)
    f = root / "mnist" / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-30])
    code, err = refused(capsys, "--model", "mlp", "--data", "mnist", "--data-dir", root,
                        "--run-dir", tmp_path / "run")
    assert code == 1 and "truncated" in err


def test_existing_run_folder_is_never_overwritten(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("precious: true\n")
    code, err = refused(capsys, "--model", "linear_regression", "--run-dir", run)
    assert code == 2 and "already holds a run" in err
    assert (run / "config.yaml").read_text() == "precious: true\n"


def test_resume_of_a_folder_that_is_not_a_run(tmp_path, capsys) -> None:
    code, err = refused(capsys, "--resume", "last", "--run-dir", tmp_path / "nothing")
    assert code == 2 and "is not a run folder" in err
    assert not (tmp_path / "nothing").exists()


def test_predict_rejects_bad_exports(tmp_path, capsys) -> None:
    code, _, err = call(predict.main, "classify", "--export", tmp_path, "x.png", capsys=capsys)
    assert code == 1 and "not an export folder" in err
    # weights that do not match the config
    run = tmp_path / "run"
    assert train.main(["--model", "linear_regression", "--run-dir", str(run),
                       "--fast-dev-run"]) == 0
    cfg = (run / "export" / "config.json")
    cfg.write_text(cfg.read_text().replace('"num_inputs": 2', '"num_inputs": 3'))
    with pytest.raises(ExportError, match="do not match"):
        load_exported(run / "export")


def test_export_command_matches_the_fit_export(data_root, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert train.main(["--model", "lenet_bn", "--data", "mnist", "--data-dir", str(data_root),
                       "--max-epochs", "1", "--no-test", "--run-dir", str(run),
                       "--no-progress-bar"]) == 0
    out = tmp_path / "exp"
    assert export.main([str(run / "checkpoints" / "last.ckpt"), "--out", str(out)]) == 0
    a, cfg_a = load_exported(run / "export")
    b, cfg_b = load_exported(out)
    assert cfg_a == cfg_b and cfg_a["run_config"]["model"]["name"] == "lenet_bn"
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    capsys.readouterr()
    code, _, err = call(export.main, run / "checkpoints" / "last.ckpt", "--out", out,
                        capsys=capsys)
    assert code == 1 and "--force" in err  # no silent overwrite


def _weights(run: Path) -> dict:
    return load_exported(run / "export")[0].state_dict()


def test_resume_after_kill_continues_exactly(tmp_path) -> None:
    """kill -9 mid-epoch, then --resume last with no flags repeated: the uninterrupted run's
    global step, weights and metrics, and a metrics.csv with every row of before the kill and
    every epoch exactly once."""
    root = tmp_path / "data"
    make_idx_dataset(root / "mnist", n_train=600, n_test=20)
    common = ["--model", "lenet", "--data", "mnist", "--data-dir", str(root), "--batch-size",
              "16", "--optimizer", "sgd", "--momentum", "0.9", "--lr", "0.05", "--max-epochs",
              "3", "--no-progress-bar", "--ckpt-every-n-steps", "7"]
    ref = tmp_path / "ref"
    run_cli("train.py", *common, "--run-dir", str(ref), check=True)
    total = read_results(ref)["global_step"]

    run = tmp_path / "run"
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    proc = subprocess.Popen([sys.executable, "train.py", *common, "--run-dir", str(run)],
                            cwd=ROOT, env={**__import__("os").environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if last.exists():
            try:
                step = torch.load(last, weights_only=True)["global_step"]
            except Exception:  # being written
                step = 0
            if step >= 42:  # mid-epoch 2 (37 steps an epoch)
                proc.send_signal(signal.SIGKILL)
                killed_at = step
                break
        time.sleep(0.02)
    proc.wait()
    assert killed_at is not None, "the run finished before it could be killed"
    assert killed_at < total and not (run / "results.json").exists()
    before = (run / "metrics.csv").read_text().splitlines()

    original = (run / "config.yaml").read_text()
    resumed = run_cli("train.py", "--resume", "last", "--run-dir", str(run), check=True)
    assert resumed.stdout.startswith(f"resuming {run} (lenet on mnist) from last.ckpt")
    assert (run / "config.yaml").read_text() == original  # not overwritten
    assert "resumed from" in (run / "config.resume.yaml").read_text()
    res, ref_res = read_results(run), read_results(ref)
    assert res["global_step"] == total and res["resumed_from"].endswith("last.ckpt")
    for key in ("val/acc", "val/loss", "test/acc", "test/loss"):
        assert res[key] == pytest.approx(ref_res[key], abs=1e-6), key
    ref_w, run_w = _weights(ref), _weights(run)
    for k in ref_w:
        assert torch.allclose(ref_w[k], run_w[k], atol=1e-5), k
    lines = (run / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    old_header = before[0].split(",")
    for line, row in zip(before[1:], rows):  # every row from before the kill, unchanged
        assert dict(zip(old_header, line.split(","))) == {k: row[k] for k in old_header}
    assert [int(r["epoch"]) for r in rows if r["val/acc"]] == [0, 1, 2]
    assert [int(r["epoch"]) for r in rows if r["train/loss_epoch"]] == [0, 1, 2]
    steps = [int(r["step"]) for r in rows if r["train/loss"]]
    assert steps == sorted(set(steps)) and "test/acc" in header


def test_wandb_offline_without_key_logs_metrics_and_table(data_root, tmp_path) -> None:
    pytest.importorskip("wandb")
    from wandb_reader import read_run

    run = tmp_path / "run"
    proc = run_cli("train.py", "--model", "mlp", "--data", "mnist", "--data-dir", str(data_root),
                   "--max-epochs", "2", "--logger", "wandb", "--wandb-tags", "test",
                   "--run-dir", str(run),
                   env={"WANDB_MODE": "", "WANDB_API_KEY": "", "HOME": str(tmp_path),
                        "NETRC": str(tmp_path / "none")}, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (proc.stdout + proc.stderr).count("logging offline") == 1
    files = glob.glob(str(run / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1
    logged = read_run(Path(files[0]))
    assert logged["config"]["model"]["name"] == "mlp"
    keys = set().union(*logged["history"])
    assert {"train/loss", "val/acc", "test/acc"} <= keys
    assert abs(logged["summary"]["test/acc"] - read_results(run)["test/acc"]) < 1e-6
    assert any(k.startswith("test/predictions") for k in keys)
