"""Resume from the run folder alone: exact for every schedule and task family, lossless
metrics.csv, and one-sentence refusals that write nothing."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest
import torch
from test_language_modeling import BOOK, write_wikitext
from test_seq2seq import write_fra_txt

from conftest import make_idx_dataset, read_results
from d2l_lightning.callbacks.monitoring import TrainingMonitor
from d2l_lightning.cli import train
from d2l_lightning.models import load_exported


class CrashError(Exception):
    """Stands in for a kill: raised after a given training step."""


def crash_after(monkeypatch, step: int) -> None:
    """Make the run stop with :class:`CrashError` once ``step`` optimizer steps are done."""
    original = TrainingMonitor.on_train_batch_end

    def stop(self, trainer, pl_module, outputs, batch, batch_idx):
        original(self, trainer, pl_module, outputs, batch, batch_idx)
        if trainer.global_step == step:
            raise CrashError

    monkeypatch.setattr(TrainingMonitor, "on_train_batch_end", stop)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_exported(run / "export")[0].state_dict()


def metric_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_resume_is_exact(monkeypatch, tmp_path: Path, args: list[str], crash_at: int,
                           every: int) -> Path:
    """Uninterrupted run vs. the same run crashed at ``crash_at`` and resumed with no flags."""
    common = [*args, "--no-progress-bar", "--ckpt-every-n-steps", str(every)]
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert train.main([*common, "--run-dir", str(ref)]) == 0
    with monkeypatch.context() as m:
        crash_after(m, crash_at)
        with pytest.raises(CrashError):
            train.main([*common, "--run-dir", str(run)])
    step = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 0 < step < crash_at  # resumed from a mid-run checkpoint, then replays to the crash
    assert train.main(["--resume", "last", "--run-dir", str(run)]) == 0
    a, b = read_results(ref), read_results(run)
    assert b["global_step"] == a["global_step"] and b["resumed_from"].endswith("last.ckpt")
    for key, value in a.items():
        if key.startswith(("val/", "test/")) and isinstance(value, float):
            assert b[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    wa, wb = weights(ref), weights(run)
    for key in wa:
        assert torch.allclose(wa[key], wb[key], atol=1e-6), key
    return run


IMAGE = ["--model", "mlp", "--data", "mnist", "--batch-size", "16", "--max-epochs", "3",
         "--num-hiddens", "32", "--dropout", "0.3", "--optimizer", "sgd", "--momentum", "0.9",
         "--lr", "0.05"]


@pytest.mark.parametrize("scheduler", ["none", "step", "cosine", "onecycle", "plateau"])
def test_mid_epoch_resume_is_exact_for_every_schedule(monkeypatch, data_root, tmp_path,
                                                       scheduler) -> None:
    """14 steps an epoch: crash at step 20, resume from the checkpoint of step 16 (epoch 2)."""
    run = assert_resume_is_exact(
        monkeypatch, tmp_path, [*IMAGE, "--scheduler", scheduler, "--data-dir", str(data_root)],
        crash_at=20, every=4)
    rows = metric_rows(run)
    epochs = [int(r["epoch"]) for r in rows if r["val/acc"]]
    assert epochs == [0, 1, 2]  # every epoch exactly once, before and after the resume
    steps = [int(r["step"]) for r in rows if r["train/loss"]]
    assert steps == sorted(set(steps))  # no step logged twice by the replay


def test_language_model_resume_carries_the_hidden_state(monkeypatch, tmp_path) -> None:
    """Sequential partitioning carries the state across batches: it must survive the resume."""
    root = tmp_path / "data"
    (root / "timemachine").mkdir(parents=True)
    (root / "timemachine" / "timemachine.txt").write_text(BOOK * 6, encoding="utf-8")
    assert_resume_is_exact(monkeypatch, tmp_path, [
        "--model", "lstm", "--recipe", "d2l-0.17", "--data", "time_machine", "--data-dir",
        str(root), "--num-hiddens", "16", "--batch-size", "4", "--num-steps", "8",
        "--dropout", "0.2", "--num-layers", "2", "--max-epochs", "2", "--task-arg",
        "sample_tokens=0", "--data-arg", "max_tokens=400"], crash_at=17, every=5)


def test_language_model_cosine_resume_is_exact(monkeypatch, tmp_path) -> None:
    root = write_wikitext(tmp_path / "data" / "wikitext-2").parent
    assert_resume_is_exact(monkeypatch, tmp_path, [
        "--model", "gpt", "--data", "wikitext2", "--data-dir", str(root), "--num-hiddens", "16",
        "--model-arg", "num_heads=2", "--num-layers", "1", "--batch-size", "4", "--num-steps",
        "8", "--max-epochs", "2", "--limit-train-batches", "12", "--limit-val-batches", "3",
        "--limit-test-batches", "3", "--task-arg", "sample_tokens=0"], crash_at=17, every=4)


def test_seq2seq_resume_is_exact(monkeypatch, tmp_path) -> None:
    root = write_fra_txt(tmp_path / "data")
    assert_resume_is_exact(monkeypatch, tmp_path, [
        "--model", "seq2seq_bahdanau", "--data", "fra_eng", "--data-dir", str(root),
        "--max-examples", "120", "--batch-size", "16", "--max-epochs", "2", "--num-hiddens",
        "16", "--model-arg", "embed_size=8", "--task-arg", "bleu_max_sentences=8"],
        crash_at=9, every=3)


def test_masked_lm_onecycle_resume_is_exact(monkeypatch, tmp_path) -> None:
    root = write_wikitext(tmp_path / "data" / "wikitext-2").parent
    assert_resume_is_exact(monkeypatch, tmp_path, [
        "--model", "bert_tiny", "--recipe", "modern", "--data", "wikitext2", "--data-dir",
        str(root), "--max-len", "32", "--batch-size", "2", "--max-epochs", "2",
        "--num-hiddens", "16", "--model-arg", "ffn_num_hiddens=16", "--model-arg",
        "num_heads=2", "--limit-train-batches", "8", "--limit-val-batches", "2",
        "--limit-test-batches", "2"], crash_at=11, every=3)


def test_regression_resume_is_exact(monkeypatch, tmp_path) -> None:
    assert_resume_is_exact(monkeypatch, tmp_path, [
        "--model", "linear_regression", "--max-epochs", "2", "--scheduler", "cosine"],
        crash_at=40, every=16)


# ------------------------------------------------------------------------ refusals, records


def tree_hash(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    make_idx_dataset(root / "data" / "mnist", n_train=120, n_test=20)
    run = root / "run"
    assert train.main(["--model", "mlp", "--data", "mnist", "--data-dir", str(root / "data"),
                       "--max-epochs", "1", "--batch-size", "32", "--scheduler", "cosine",
                       "--run-dir", str(run), "--no-progress-bar"]) == 0
    return run


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    """A copy of the finished run, to resume or alter."""
    import shutil

    shutil.copytree(finished_run, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize("args, needle", [
    (["--lr", "0.5"], "--lr cannot be given with --resume"),
    (["--model", "lenet"], "--model cannot be given with --resume"),
    (["--model-arg", "dropout=0.5"], "--model-arg dropout cannot be given with --resume"),
    (["--optim.momentum=0.9"], "--optim.momentum cannot be given with --resume"),
    (["--max-epochs", "3"], "cannot change when resuming a run with the cosine schedule"),
    (["--config", "x.yaml"], "--config cannot be given with --resume"),
])
def test_resume_refuses_changes_and_writes_nothing(finished_run, capsys, args, needle) -> None:
    before = tree_hash(finished_run)
    assert train.main(["--resume", "last", "--run-dir", str(finished_run), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert tree_hash(finished_run) == before


def test_resume_refuses_folders_that_are_not_this_run(finished_run, tmp_path, capsys) -> None:
    other = tmp_path / "other"
    other.mkdir()

    def refused(argv: list[str], needle: str) -> None:
        before = tree_hash(tmp_path)
        assert train.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, (argv, err)
        assert tree_hash(tmp_path) == before

    refused(["--resume", "last", "--run-dir", str(other)], "is not a run folder")
    refused(["--resume", str(finished_run / "checkpoints" / "last.ckpt"), "--run-dir",
             str(other)], "belongs to the run")
    refused(["--resume", str(tmp_path / "none.ckpt")], "does not exist")
    (other / "config.yaml").write_text((finished_run / "config.yaml").read_text())
    refused(["--resume", "last", "--run-dir", str(other)], "has no checkpoint")
    (other / "checkpoints").mkdir()
    (other / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    refused(["--resume", "last", "--run-dir", str(other)], "not a readable checkpoint")


def test_resume_of_another_models_checkpoint_or_unregistered_model(run_copy, capsys) -> None:
    run = run_copy
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("name: mlp", "name: softmax_regression"))
    before = tree_hash(run)
    assert train.main(["--resume", "last", "--run-dir", str(run)]) == 2
    assert "was written by a 'mlp' run" in capsys.readouterr().err
    assert tree_hash(run) == before
    ckpt = run / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    saved["hyper_parameters"]["arch"] = "mlp9"
    torch.save(saved, ckpt)
    config.write_text(config.read_text().replace("name: softmax_regression", "name: mlp9"))
    before = tree_hash(run)
    assert train.main(["--resume", "last", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'mlp9'" in err and str(config) in err
    assert tree_hash(run) == before


def test_resume_of_a_checkpoint_with_the_old_attention_blocks_is_refused(run_copy,
                                                                        capsys) -> None:
    ckpt = run_copy / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    saved["state_dict"]["model.blks.0.attention.in_proj_weight"] = torch.zeros(3, 1)
    torch.save(saved, ckpt)
    before = tree_hash(run_copy)
    assert train.main(["--resume", "last", "--run-dir", str(run_copy)]) == 2
    assert "attention blocks of an earlier version" in capsys.readouterr().err
    assert tree_hash(run_copy) == before


def test_resume_records_only_what_changed_and_keeps_every_row(run_copy, capsys) -> None:
    run = run_copy
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("scheduler: cosine", "scheduler: none"))
    rows = metric_rows(run)
    original = config.read_text()
    assert train.main(["--resume", "last", "--run-dir", str(run), "--max-epochs", "2",
                       "--limit-val-batches", "1"]) == 0
    assert capsys.readouterr().out.startswith(f"resuming {run} (mlp on mnist)")
    assert config.read_text() == original
    record = (run / "config.resume.yaml").read_text()
    assert "max_epochs: 2" in record and "limit_val_batches: 1" in record
    assert "model:" not in record and "optim:" not in record and "run_dir" not in record
    after = metric_rows(run)
    assert [r for r in after[:len(rows)]] == [{**r, **{k: "" for k in after[0].keys() - r.keys()}}
                                              for r in rows]
    assert [int(r["epoch"]) for r in after if r["val/acc"]] == [0, 1]
    # a second resume keeps the first one's changes and records its own
    assert train.main(["--resume", "last", "--run-dir", str(run), "--max-epochs", "3"]) == 0
    assert "max_epochs: 3" in (run / "config.resume2.yaml").read_text()
    res = read_results(run)  # where each earlier leg ended is kept
    assert res["epochs"] == 3 and [r["epochs"] for r in res["earlier"]] == [1, 2]


def test_resume_last_without_run_dir_names_the_run_first(run_copy, tmp_path, monkeypatch,
                                                         capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    run_copy.rename(tmp_path / "runs" / "a")
    assert train.main(["--resume", "last", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "name: mlp" in out and f"run_dir: {Path('runs') / 'a'}" in out
    assert train.main(["--resume", "last"]) == 0
    assert capsys.readouterr().out.startswith(f"resuming {Path('runs') / 'a'} (mlp on mnist)")


@pytest.mark.parametrize("logger", ["wandb", "tensorboard"])
def test_a_resumed_run_continues_its_logger_run(logger, tmp_path, monkeypatch) -> None:
    """W&B keeps the run id (offline: two folders of one run, for `wandb sync`); TensorBoard
    keeps writing to the run's own folder, which TensorBoard shows as one run."""
    if logger == "wandb":
        pytest.importorskip("wandb")
        monkeypatch.setenv("WANDB_MODE", "offline")
    else:
        pytest.importorskip("tensorboard")
    root = tmp_path / "data"
    make_idx_dataset(root / "mnist", n_train=60, n_test=10)
    run = tmp_path / "run"
    assert train.main(["--model", "mlp", "--data", "mnist", "--data-dir", str(root),
                       "--max-epochs", "1", "--logger", logger, "--run-dir", str(run),
                       "--no-progress-bar"]) == 0
    events = set(run.glob("tensorboard/events.out.tfevents.*"))
    assert train.main(["--resume", "last", "--run-dir", str(run), "--max-epochs", "2"]) == 0
    if logger == "wandb":
        run_id = (run / "wandb" / "run_id").read_text().strip()
        # Two offline folders holding the one run id; W&B names the second `...-ID-1` when both
        # runs start within the same second.
        folders = sorted((run / "wandb").glob("offline-run-*"))
        assert len(folders) == 2
        assert all((f / f"run-{run_id}.wandb").is_file() for f in folders), [
            sorted(p.name for p in f.iterdir()) for f in folders]
    else:
        assert [p.name for p in run.iterdir() if p.name.startswith("tensorboard")] == [
            "tensorboard"]
        assert events < set(run.glob("tensorboard/events.out.tfevents.*"))
