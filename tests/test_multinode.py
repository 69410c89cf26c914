"""Several machines (issue 16, part 4): torchrun / SLURM ranks, one run folder, bounded failure.

The slow tests start two torchrun "nodes" of one process each on this machine (gloo, CPU), each
in its own working folder, as two machines with their own disks would be, and compare them with
one torchrun node of two processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from conftest import ROOT, make_idx_dataset
from d2l_lightning.cli import train
from d2l_lightning.training import cluster
from d2l_lightning.training import run as run_api
from d2l_lightning.training.command_line import config_from_argv
from d2l_lightning.training.config import ConfigError
from d2l_lightning.training.run import build_data, build_module, build_trainer
from d2l_lightning.training.runs import choose_run_dir, make_run_dir

TORCHRUN_ENV = {"TORCHELASTIC_RUN_ID": "none", "RANK": "1", "GROUP_RANK": "1",
                "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
SLURM_ENV = {"SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_NODEID": "1",
             "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "7",
             "SLURM_NODELIST": "node[1-2]"}
LAUNCH_VARS = {*TORCHRUN_ENV, *SLURM_ENV, "NODE_RANK", "_D2L_RUN_DIR"}


@pytest.fixture
def env(monkeypatch):
    """Set launcher variables for one test; Lightning's rank-zero flag is restored after it."""
    from lightning.pytorch.utilities import rank_zero_only

    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(rank_zero_only, "rank", rank_zero_only.rank)

    def set_env(values: dict[str, str]) -> None:
        for k, v in values.items():
            monkeypatch.setenv(k, v)
    return set_env


@pytest.mark.parametrize("values,num_nodes,expected", [
    (TORCHRUN_ENV, 2, ("torchrun", 1)),
    ({**TORCHRUN_ENV, "RANK": "0", "GROUP_RANK": "0"}, 2, ("torchrun", 0)),
    (SLURM_ENV, 2, ("srun", 1)),
    ({**SLURM_ENV, **TORCHRUN_ENV}, 2, ("torchrun", 1)),  # torchrun inside srun: torchrun's
    ({**SLURM_ENV, "SLURM_JOB_NAME": "interactive", "NODE_RANK": "1"}, 2, ("--num-nodes 2", 1)),
    ({"NODE_RANK": "1"}, 2, ("--num-nodes 2", 1)),
    ({}, 1, None),
])
def test_launcher_reads_the_ranks_lightning_reads(values, num_nodes, expected, env) -> None:
    """Our rank is the one Lightning's cluster environment gives the Trainer."""
    import lightning as L

    env(values)
    assert cluster.launcher(num_nodes) == expected
    trainer = L.Trainer(accelerator="cpu", devices=1, num_nodes=num_nodes, strategy="ddp",
                        logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert trainer.global_rank == (expected or ("", 0))[1]
    kind = type(trainer.strategy.cluster_environment).__name__
    assert kind == {"torchrun": "TorchElasticEnvironment", "srun": "SLURMEnvironment"}.get(
        (expected or ("",))[0], "LightningEnvironment")


def test_launcher_ignores_lightnings_own_children_and_single_processes(env) -> None:
    env({**TORCHRUN_ENV, "WORLD_SIZE": "1", "RANK": "0"})
    assert cluster.launcher() is None
    env({**TORCHRUN_ENV, "_D2L_RUN_DIR": "runs/x"})
    assert cluster.launcher(2) is None


@pytest.mark.parametrize("values,argv", [
    (TORCHRUN_ENV, []),
    ({**TORCHRUN_ENV, "RANK": "0", "GROUP_RANK": "0"}, []),
    (SLURM_ENV, []),
    ({}, ["--num-nodes", "2"]),
    (TORCHRUN_ENV, ["--resume", "last"]),
])
def test_a_launched_run_needs_run_dir(values, argv, env, data_root, tmp_path, monkeypatch,
                                      capsys) -> None:
    """Processes started on their own cannot agree on a time stamp: one sentence, exit 2."""
    env(values)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_api, "fit",
                        lambda *a, **k: pytest.fail("it ran (would wait for peers)"))
    base = ["--model", "softmax_regression", "--data", "mnist", "--data-dir", str(data_root),
            "--accelerator", "cpu"]
    assert train.main([*base, *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give them all the same --run-dir" in err, err
    assert list(tmp_path.iterdir()) == []
    if "--resume" not in argv:  # --print-config writes nothing, so it needs no folder
        assert train.main([*base, *argv, "--print-config"]) == 0


def test_only_global_rank_zero_checks_and_creates_the_run_folder(env, tmp_path) -> None:
    cfg = config_from_argv(["--model", "softmax_regression", "--num-nodes", "2",
                                  "--run-dir", str(tmp_path / "run")])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.yaml").write_text("a run of someone else\n")
    for rank in ("1", "0"):
        env({**TORCHRUN_ENV, "RANK": rank, "GROUP_RANK": rank})
        folder = choose_run_dir(cfg, resuming=False)
        assert (folder.path, folder.config_written) == (tmp_path / "run", rank == "1")
        make_run_dir(folder)
        assert (tmp_path / "run").is_dir() == (rank == "0")
        os.environ.pop("_D2L_RUN_DIR", None)
    other = config_from_argv(["--model", "softmax_regression",
                                    "--run-dir", str(tmp_path / "other")])
    env({**TORCHRUN_ENV, "RANK": "1"})  # rank 1 leaves the check to rank 0
    folder = choose_run_dir(other, resuming=False)
    assert (folder.path, folder.config_written) == (tmp_path / "other", True)
    env({**TORCHRUN_ENV, "RANK": "0"})
    with pytest.raises(ConfigError, match="already holds a run"):
        choose_run_dir(other, resuming=False)


def test_one_process_per_node_prepares_the_data(env, tmp_path) -> None:
    """Launched processes of one node take turns in prepare_data: the first downloads."""
    from filelock import Timeout

    cfg = config_from_argv(["--model", "softmax_regression", "--data-dir",
                                  str(tmp_path)])
    with cluster.data_lock(cfg), cluster.data_lock(cfg):  # one process: no lock
        pass
    env(TORCHRUN_ENV)
    with cluster.data_lock(cfg), pytest.raises(Timeout):
        cluster.data_lock(cfg).acquire(timeout=0.1)
    with cluster.data_lock(cfg):
        pass


def test_dist_timeout_reaches_init_process_group(env, tmp_path, monkeypatch, data_root,
                                                 capsys) -> None:
    """--dist-timeout is the process group's timeout (600 s unless given)."""
    import torch.distributed as dist

    seen = {}
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **kw: seen.update(kw))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # Lightning sets them; restored after
    monkeypatch.setenv("MASTER_PORT", "29555")
    base = ["--model", "softmax_regression", "--data-dir", str(data_root), "--accelerator",
            "cpu", "--devices", "2", "--strategy", "ddp", "--run-dir", str(tmp_path / "r")]
    for extra, seconds in (([], 600), (["--dist-timeout", "42"], 42)):
        cfg = config_from_argv([*base, *extra])
        dm = build_data(cfg)
        dm.prepare_data()
        module = build_module(cfg, dm.data_info())
        trainer = build_trainer(cfg, tmp_path / "r", module)
        trainer.strategy.setup_environment()
        assert seen["timeout"] == timedelta(seconds=seconds)
    cfg = config_from_argv([*base[:-6], "--dist-timeout", "42", "--run-dir",
                                  str(tmp_path / "r")])
    build_trainer(cfg, tmp_path / "r", module)
    assert "--dist-timeout 42 has no effect" in capsys.readouterr().err


@pytest.mark.parametrize("values,argv", [
    ({**TORCHRUN_ENV, "RANK": "0", "GROUP_RANK": "0"}, ["--devices", "1"]),  # world size 2
    ({**SLURM_ENV, "SLURM_PROCID": "0", "SLURM_NNODES": "2"}, ["--devices", "2"]),
])
def test_devices_times_nodes_must_be_the_launched_processes(values, argv, env, data_root,
                                                            tmp_path, monkeypatch,
                                                            capsys) -> None:
    """Lightning's own check, made before the run folder exists (one sentence, exit 2)."""
    import lightning as L

    env(values)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(L.Trainer, "fit", lambda *a, **k: pytest.fail("it would wait for peers"))
    assert train.main(["--model", "softmax_regression", "--data", "mnist", "--data-dir",
                       str(data_root), "--accelerator", "cpu", "--strategy", "ddp",
                       "--num-nodes", "2" if "SLURM_NTASKS" in values else "1", *argv,
                       "--run-dir", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not match" in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("message,said", [  # as gloo raised them in the slow tests below
    ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error "
     "[127.0.0.1]:14026: Connection reset by peer. This is typically caused by a remote worker "
     "hanging or bugs in the application.", "gloo: Connection reset by peer"),
    ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:129] Timed "
     "out waiting 15000ms for send operation to complete",
     "gloo: Timed out waiting 15000ms for send operation to complete"),
    ("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x6)", None),
    ("gloo does not support this dtype", None),
])
def test_peer_failures_are_told_apart(message, said) -> None:
    import torch.distributed as dist

    assert cluster.peer_failure(RuntimeError(message)) == said
    assert cluster.peer_failure(dist.DistBackendError("NCCL watchdog timeout\nmore")) == (
        "NCCL watchdog timeout")
    assert cluster.peer_failure(ValueError(message)) is None


def test_a_peer_failure_is_one_sentence(env, tmp_path, monkeypatch, data_root, capsys) -> None:
    import lightning as L

    def fit(*a, **k):
        raise RuntimeError("[gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:1: "
                           "Connection reset by peer. More.")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(L.Trainer, "fit", fit)
    assert train.main(["--model", "softmax_regression", "--data", "mnist", "--data-dir",
                       str(data_root), "--accelerator", "cpu", "--run-dir", "r"]) == 1
    err = capsys.readouterr().err
    assert err == ("error: another process of this distributed run died or stopped answering "
                   "(gloo: Connection reset by peer); continue from the last checkpoint with "
                   "--resume last --run-dir r\n")


@pytest.mark.parametrize("value", ["0", "-5"])
def test_a_dist_timeout_below_one_second_is_refused(value, tmp_path, monkeypatch,
                                                    capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert train.main(["--model", "softmax_regression", "--dist-timeout", value]) == 2
    err = capsys.readouterr().err
    assert "run.dist_timeout must be a number of seconds, at least 1" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


# --- two torchrun "nodes" on this machine (slow) ---------------------------------------------

TRAIN = ["--model", "softmax_regression", "--data", "mnist", "--accelerator", "cpu",
         "--strategy", "ddp", "--batch-size", "16", "--run-dir", "runs/mn",
         "--no-progress-bar", "--seed", "3"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], train_args: list[str], cwd: Path, log: Path,
              data: Path) -> subprocess.Popen:
    """``torchrun ARGS train.py TRAIN_ARGS`` in ``cwd`` (its own "disk"), output in ``log``."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "WANDB_MODE": "offline", "D2L_DATA_DIR": str(data)}
    for var in LAUNCH_VARS:
        env.pop(var, None)
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *args,
                                 str(ROOT / "train.py"), *train_args],
                                cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)


def _two_nodes(tmp_path: Path, data: Path, train_args: list[str]) -> list[subprocess.Popen]:
    port = str(_free_port())
    return [_torchrun(["--nnodes", "2", "--node-rank", str(n), "--nproc-per-node", "1",
                       "--master-addr", "127.0.0.1", "--master-port", port],
                      [*train_args, "--num-nodes", "2", "--devices", "1"], tmp_path / f"node{n}",
                      tmp_path / f"node{n}.log", data) for n in (0, 1)]


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (torchrun starts its workers in their own sessions)."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        kids = []
    return [pid, *(p for k in kids for p in _tree(int(k)))]


def _kill(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        for pid in _tree(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return make_idx_dataset(tmp_path / "data" / "mnist", n_train=120, n_test=40, seed=5).parent


@pytest.mark.slow
def test_two_nodes_train_as_one_node_of_two_processes_and_only_rank_0_writes(
        tmp_path, tiny_data) -> None:
    data_before = _files(tiny_data)
    procs = _two_nodes(tmp_path, tiny_data, [*TRAIN, "--max-epochs", "2"])
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        _kill(procs)
    logs = [(tmp_path / f"node{n}.log").read_text() for n in (0, 1)]
    assert codes == [0, 0], logs
    one = _torchrun(["--standalone", "--nproc-per-node", "2"],
                    [*TRAIN, "--max-epochs", "2", "--devices", "2"], tmp_path / "one",
                    tmp_path / "one.log", tiny_data)
    try:
        assert one.wait(timeout=300) == 0, (tmp_path / "one.log").read_text()
    finally:
        _kill([one])
    # node 1 (global rank 1) wrote nothing: not in its working folder, not in the data
    assert list((tmp_path / "node1").iterdir()) == []
    assert _files(tiny_data) == data_before
    for folder in (tmp_path / "node0", tmp_path / "one"):  # exactly one run folder each
        assert [p.name for p in (folder / "runs").iterdir()] == ["mn"]
    two = json.loads((tmp_path / "node0" / "runs/mn/results.json").read_text())
    ref = json.loads((tmp_path / "one" / "runs/mn/results.json").read_text())
    metrics = sorted(k for k in ref if k.startswith(("val/", "test/")))
    assert {"val/loss", "val/acc", "test/loss", "test/acc"} <= set(metrics)
    # Same world size, seed and global ranks: the same shards, and gloo sums the same two
    # gradients in the same order, so only the float noise of the reductions may differ.
    for key in metrics:
        assert two[key] == (pytest.approx(ref[key], rel=1e-6, abs=1e-7)
                            if isinstance(ref[key], float) else ref[key]), key
    assert (two["epochs"], two["global_step"], two["dataset_sizes"]) == (
        ref["epochs"], ref["global_step"], ref["dataset_sizes"])
    assert "run folder: runs/mn" in logs[0] and "run folder" not in logs[1]


def _start_and_stop_node_1(tmp_path: Path, data: Path, sig: int, extra: list[str],
                           bound: float) -> tuple[int | None, float, str]:
    """Train on two nodes, send ``sig`` to every process of node 1 once node 0 has finished
    two epochs, and wait at most ``bound`` s for node 0: (its exit code, the wait, its log)."""
    procs = _two_nodes(tmp_path, data, [*TRAIN, "--max-epochs", "5000", *extra])
    log = tmp_path / "node0.log"
    try:
        start = time.monotonic()
        while "epoch 2/" not in log.read_text():
            assert procs[0].poll() is None and procs[1].poll() is None, log.read_text()
            assert time.monotonic() - start < 300, "training did not start"
            time.sleep(0.2)
        for pid in _tree(procs[1].pid):
            os.kill(pid, sig)
        t0 = time.monotonic()
        try:
            code = procs[0].wait(timeout=bound)
        except subprocess.TimeoutExpired:
            code = None
        print(f"node 0: exit {code} {time.monotonic() - t0:.1f} s after node 1 got signal {sig}")
        return code, time.monotonic() - t0, log.read_text()
    finally:
        _kill(procs)


@pytest.mark.slow
def test_a_killed_node_makes_the_other_exit_non_zero(tmp_path, tiny_data) -> None:
    """The peer's sockets close: the next collective fails at once (measured: seconds)."""
    code, waited, log = _start_and_stop_node_1(tmp_path, tiny_data, signal.SIGKILL, [], 60)
    assert code not in (None, 0), f"node 0: exit {code} after {waited:.0f} s\n{log[-3000:]}"
    assert "died or stopped answering (gloo: Connection" in log, log[-3000:]


@pytest.mark.slow
def test_a_frozen_node_makes_the_other_exit_non_zero_after_dist_timeout(
        tmp_path, tiny_data) -> None:
    """A node that stops answering but keeps its sockets open (SIGSTOP, as a machine that
    loses its network) is only noticed by the collectives' timeout: --dist-timeout."""
    code, waited, log = _start_and_stop_node_1(tmp_path, tiny_data, signal.SIGSTOP,
                                               ["--dist-timeout", "15"], 75)
    assert code not in (None, 0), f"node 0: exit {code} after {waited:.0f} s\n{log[-3000:]}"
    assert waited >= 14, waited  # it was the timeout, not something else, that ended it
    assert "died or stopped answering (gloo: Timed out" in log, log[-3000:]
