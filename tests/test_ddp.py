"""Two processes on the CPU (gloo): what only shows with several ranks, in the default suite.

One ``train.py --devices 2 --strategy ddp`` run (Lightning starts rank 1 as a second
``train.py``) is shared by the tests below: :class:`RankProbe`, given with ``--callback``,
records in each process what its rank trained on and every file it wrote. The per-node data
lock is checked with two forked processes that carry torchrun's variables.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import multiprocessing
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from conftest import ROOT, make_idx_dataset, read_results, run_cli
from d2l_lightning.cli import predict
from d2l_lightning.training import run as run_api
from d2l_lightning.training.command_line import config_from_argv

#: the audit events that write a path (``open`` is checked for a writing mode)
WRITE_EVENTS = {"os.rename", "os.mkdir", "os.remove", "os.rmdir", "os.truncate",
                "shutil.rmtree", "shutil.copyfile", "tempfile.mkstemp", "os.symlink",
                "os.link"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _record_writes(log: Path) -> None:
    """Append ``pid, LOCAL_RANK, event, path`` to ``log`` for each path this process writes."""
    out = open(log, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (the process's life)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            if not (isinstance(mode, str) and set(mode) & set("wax+")
                    or isinstance(flags, int) and flags & WRITE_FLAGS):
                return
        elif event not in WRITE_EVENTS:
            return
        for path in args[:2] if event == "os.rename" else args[:1]:
            if isinstance(path, (str, os.PathLike)):
                rank = os.environ.get("LOCAL_RANK", "0")
                out.write(f"{os.getpid()}\t{rank}\t{event}\t{os.path.abspath(path)}\n")
    sys.addaudithook(hook)


class RankProbe(L.Callback):
    """In each process: this rank's own recount of the training epochs, and its writes.

    ``OUT/rankR.jsonl`` gets one line an epoch (before the module reduces the sums): the
    module's ``_train_sums``, the recount ``[loss * n, n, correct]`` from the step outputs and
    the model's logits, and a hash of every image the rank trained on.
    ``OUT/writes.PID`` lists every path the process wrote (an audit hook).
    """

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        _record_writes(self.out / f"writes.{os.getpid()}")
        self.recount = [0.0, 0, 0]
        self.images: list[str] = []
        self.logits: torch.Tensor | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        def keep(module: Any, inputs: Any, output: torch.Tensor) -> None:
            if module.training:
                self.logits = output.detach()
        pl_module.model.register_forward_hook(keep)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.recount, self.images = [0.0, 0, 0], []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.recount[0] += float(outputs["loss"]) * len(y)
        self.recount[1] += len(y)
        self.recount[2] += int((self.logits.argmax(-1) == y).sum())
        self.images += [hashlib.sha1(row.numpy().tobytes()).hexdigest() for row in x.cpu()]

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        line = {"epoch": trainer.current_epoch, "pid": os.getpid(),
                "sums": pl_module._train_sums.tolist(), "recount": self.recount,
                "images": self.images}
        with open(self.out / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")


#: 241 training images: 21 for validation (11 + 10 a rank, no padding) and 220 to train on (110
#: a rank); 61 test images (31 + 30)
N_TRAIN, N_VAL, N_TEST, BATCH = 220, 21, 61, 32
EPOCHS = 2


@pytest.fixture(scope="session")
def ddp(tmp_path_factory) -> dict[str, Any]:
    """The two-rank run, made once per session (pytest-xdist workers share the first one's)."""
    from filelock import FileLock

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return _launch(tmp_path_factory.mktemp("ddp"))
    shared = tmp_path_factory.getbasetemp().parent / "ddp-run"
    with FileLock(f"{shared}.lock"):
        done = shared / "launch.json"
        if not done.is_file():
            shared.mkdir()
            done.write_text(json.dumps({k: str(v) for k, v in _launch(shared).items()}))
    return {k: Path(v) if k.endswith("dir") else v
            for k, v in json.loads(done.read_text()).items()}


def _launch(root: Path) -> dict[str, Any]:
    data, probe, run = root / "data", root / "probe", root / "run"
    make_idx_dataset(data / "mnist", n_train=N_TRAIN + N_VAL, n_test=N_TEST, seed=1)
    probe.mkdir()
    proc = run_cli("train.py", "--model", "mlp", "--data", "mnist", "--data-dir", str(data),
                   "--val-size", str(N_VAL), "--max-epochs", str(EPOCHS), "--batch-size",
                   str(BATCH), "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp",
                   "--run-dir", str(run), "--callback", "test_ddp.RankProbe", f"out={probe}",
                   env={"PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"data_dir": data, "probe_dir": probe, "run_dir": run, "stdout": proc.stdout}


def epochs_of(probe: Path, rank: int) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (probe / f"rank{rank}.jsonl").read_text().splitlines()]


def written(log: Path, folder: Path) -> set[str]:
    """The paths in ``folder`` that a process's ``writes.PID`` log names."""
    paths = (Path(line.split("\t")[3]) for line in log.read_text().splitlines())
    return {str(p.relative_to(folder)) for p in paths if p.is_relative_to(folder) and p != folder}


def metrics_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_each_rank_sums_its_own_shard_of_the_training_set(ddp) -> None:
    """Before the reduction, each rank's sums are those of the images it trained on: 110 a
    rank, the two shards disjoint and together the 220 training images, in every epoch."""
    ranks = [epochs_of(ddp["probe_dir"], r) for r in (0, 1)]
    assert [len(r) for r in ranks] == [EPOCHS, EPOCHS]
    for zero, one in zip(*ranks):
        for own in (zero, one):
            (loss, n, correct), (re_loss, re_n, re_correct) = own["sums"], own["recount"]
            assert n == re_n == N_TRAIN // 2 and correct == re_correct
            assert loss == pytest.approx(re_loss, rel=1e-9)
        assert zero["sums"][0] != pytest.approx(one["sums"][0], rel=1e-3)  # not rank 0's copy
        assert len(set(zero["images"]) | set(one["images"])) == N_TRAIN  # disjoint, all seen


def test_logged_training_means_reduce_both_ranks_sums(ddp) -> None:
    """``train/loss_epoch`` and ``train/acc`` of each epoch are the means over both shards
    (recounted by each rank), not rank 0's own."""
    ranks = [epochs_of(ddp["probe_dir"], r) for r in (0, 1)]
    logged = [r for r in metrics_rows(ddp["run_dir"]) if r["train/loss_epoch"]]
    assert [int(r["epoch"]) for r in logged] == list(range(EPOCHS))
    for row, zero, one in zip(logged, *ranks):
        loss, n, correct = (a + b for a, b in zip(zero["recount"], one["recount"]))
        assert n == N_TRAIN
        assert float(row["train/loss_epoch"]) == pytest.approx(loss / n, rel=1e-6)
        assert float(row["train/acc"]) == pytest.approx(correct / n, abs=1e-7)
        own = zero["recount"][0] / zero["recount"][1]
        assert float(row["train/loss_epoch"]) != pytest.approx(own, rel=1e-4)
    res = read_results(ddp["run_dir"])
    assert res["train/loss_epoch"] == float(logged[-1]["train/loss_epoch"])


@pytest.mark.parametrize("split, size", [("val", N_VAL), ("test", N_TEST)])
def test_evaluation_is_synced_and_counts_every_image_once(ddp, split, size, tmp_path,
                                                          capsys) -> None:
    """The ranks evaluate their shares (31 + 30 test images, no padding) and sync them: the
    run's metrics are a one-process evaluation of its export on the whole split."""
    out = tmp_path / "eval.json"
    assert predict.main(["eval", "--export", str(ddp["run_dir"] / "export"), "--split", split,
                         "--data-dir", str(ddp["data_dir"]), "--json", str(out)]) == 0
    capsys.readouterr()
    one, res = json.loads(out.read_text()), read_results(ddp["run_dir"])
    assert set(one) == {f"{split}/loss", f"{split}/acc", f"{split}/f1"}
    for key, value in one.items():
        assert res[key] == pytest.approx(value, abs=1e-5), key
    assert res["dataset_sizes"] == {"train": N_TRAIN, "val": N_VAL, "test": N_TEST}
    if split == "test":
        assert sum(map(sum, res["test/confusion_matrix"])) == size


def test_only_rank_zero_writes_the_run_folder(ddp) -> None:
    """Rank 1 writes nothing in the run folder; rank 0 writes one of each file, and
    ``metrics.csv`` has each epoch's and step's row once."""
    run, probe = ddp["run_dir"], ddp["probe_dir"]
    listing = sorted(re.sub(r"best-\d+-\d+", "best-E-S", str(p.relative_to(run)))
                     for p in run.rglob("*"))
    assert listing == [
        ".lock", "checkpoints", "checkpoints/best-E-S.ckpt", "checkpoints/last.ckpt",
        "config.yaml", "confusion_matrix.png", "curves.png", "export", "export/config.json",
        "export/model.safetensors", "metrics.csv", "predictions.png", "results.json"]
    pid = {r: epochs_of(probe, r)[0]["pid"] for r in (0, 1)}
    writes = {r: written(probe / f"writes.{pid[r]}", run) for r in (0, 1)}
    assert pid[0] != pid[1] and writes[1] == set()
    assert {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()} <= writes[0]
    rows = metrics_rows(run)
    steps_per_epoch = math.ceil(N_TRAIN // 2 / BATCH)
    assert [int(r["step"]) for r in rows if r["train/loss"]] == [0]
    for key in ("val/loss", "train/loss_epoch"):
        assert [(int(r["epoch"]), int(r["step"])) for r in rows if r[key]] == [
            (e, (e + 1) * steps_per_epoch - 1) for e in range(EPOCHS)]
    assert [int(r["epoch"]) for r in rows if r["test/acc"]] == [EPOCHS]
    assert read_results(run)["global_step"] == EPOCHS * steps_per_epoch == 8
    assert ddp["stdout"].count("run folder: ") == 2  # rank 0: at the start and the end


def test_one_process_of_a_node_downloads_the_data(tmp_path, monkeypatch) -> None:
    """Two processes of one node (torchrun's variables) prepare the data at once: under the
    node's lock the first downloads each file once, and the other finds them."""
    from d2l_lightning.datamodules import download

    mirror = make_idx_dataset(tmp_path / "mirror", n_train=24, n_test=12)
    log = tmp_path / "downloads.log"

    def fake_download(remote: Any, folder: Path, timeout: float | None = None,
                      budget: Any = None) -> Path:
        time.sleep(0.2)  # the other process looks meanwhile
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mirror / remote.name, folder / remote.name)
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {remote.name}\n")
        return folder / remote.name

    monkeypatch.setattr(download, "download", fake_download)
    for var in ("_D2L_RUN_DIR", "SLURM_NTASKS", "NODE_RANK"):
        monkeypatch.delenv(var, raising=False)
    for var, value in {"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
                       "GROUP_RANK": "0", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(var, value)
    cfg = config_from_argv(["--model", "softmax_regression", "--data", "mnist", "--data-dir",
                            str(tmp_path / "data")])
    fork = multiprocessing.get_context("fork")
    barrier = fork.Barrier(2)

    def node_process(rank: int) -> None:
        os.environ["RANK"] = os.environ["LOCAL_RANK"] = str(rank)
        barrier.wait(timeout=60)
        run_api.prepare(cfg, fresh=True)

    procs = [fork.Process(target=node_process, args=(r,)) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    done = [line.split() for line in log.read_text().splitlines()]
    assert len({pid for pid, _ in done}) == 1
    assert sorted(name for _, name in done) == sorted(p.name for p in mirror.iterdir())
    for p in mirror.iterdir():
        assert (tmp_path / "data" / "mnist" / p.name).read_bytes() == p.read_bytes()
