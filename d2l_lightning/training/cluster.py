"""Runs whose processes a cluster launcher starts: torchrun, SLURM's srun, ``--num-nodes N``.

Lightning reads the ranks from the launcher's environment (``TorchElasticEnvironment``,
``SLURMEnvironment``, or ``LightningEnvironment``'s ``NODE_RANK`` when ``train.py`` is started
on each node by hand); there is no launcher of ours. What this module adds:

- every process gets its run folder from the command line (``--run-dir``), since processes
  started on their own would each stamp their own ``runs/MODEL-DATA-TIMESTAMP``;
- only global rank 0 checks and creates the folder;
- ``prepare_data`` (downloads) runs under a node-local file lock, so a node downloads once;
- ``--dist-timeout`` bounds how long a process waits for a dead or frozen peer.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
import tempfile
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

#: set by ``training.runs.prepare_run_dir`` for the processes Lightning itself starts
RUN_DIR_ENV = "_D2L_RUN_DIR"


def launcher(num_nodes: int = 1) -> tuple[str, int] | None:
    """Who started this process as one of several, and its global rank (node rank by hand).

    The order and variables are Lightning's (``TorchElasticEnvironment`` before
    ``SLURMEnvironment``; ``tests/test_multinode.py`` checks they agree). ``None`` for a single
    process and for the processes Lightning starts itself (their parent chose the folder).
    """
    env = os.environ
    if env.get(RUN_DIR_ENV):
        return None
    if "TORCHELASTIC_RUN_ID" in env:
        who, rank, size = "torchrun", env.get("RANK", "0"), env.get("WORLD_SIZE", "1")
    elif "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        who, rank, size = "srun", env.get("SLURM_PROCID", "0"), env["SLURM_NTASKS"]
    else:  # train.py started on each node by hand, Lightning's NODE_RANK (else GROUP_RANK)
        who, size = f"--num-nodes {num_nodes}", str(num_nodes)
        rank = env.get("NODE_RANK", env.get("GROUP_RANK", "0"))
    return (who, int(rank)) if int(size) > 1 else None


def check_run_dir_given(given: bool, num_nodes: int = 1) -> None:
    """Refuse a run whose independently started processes would each name their own folder.

    Raises:
        training.config.ConfigError: launched as one of several without ``--run-dir``.
    """
    from .errors import ConfigError

    who = launcher(num_nodes)
    if who is not None and not given:
        raise ConfigError(f"{who[0]} starts every process on its own, and each would name its "
                          "own time-stamped run folder: give them all the same --run-dir "
                          "(e.g. --run-dir runs/$SLURM_JOB_ID)")


def is_follower(num_nodes: int = 1) -> bool:
    """Whether another process (global rank 0) checks, creates and writes the run folder."""
    who = launcher(num_nodes)
    return who is not None and who[1] != 0


def data_lock(cfg: dict[str, Any]) -> AbstractContextManager[Any]:
    """A lock held around ``prepare_data``: one process of a node downloads, the others wait.

    Node-local (in the temporary folder, keyed by the data root, which may be read-only);
    a no-op unless a launcher started this process as one of several.
    """
    if launcher(cfg["trainer"]["num_nodes"]) is None:
        return contextlib.nullcontext()
    from filelock import FileLock  # a dependency of torch

    from d2l_lightning.datamodules.download import resolve_data_dir

    root = resolve_data_dir(cfg["data"].get("data_dir")).resolve()
    key = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    return FileLock(Path(tempfile.gettempdir()) / f"d2l-prepare-data-{key}.lock")


def set_dist_timeout(strategy: Any, seconds: float) -> bool:
    """Give a process-group strategy (DDP, FSDP) the timeout of ``init_process_group``.

    Lightning passes ``strategy._timeout`` to ``torch.distributed.init_process_group`` in
    ``setup_environment`` (Lightning 2.6; ``tests/test_multinode.py`` checks that it still
    does); gloo and NCCL collectives fail after it. Returns whether the strategy has one.
    """
    from datetime import timedelta

    if not hasattr(strategy, "_timeout"):
        return False
    strategy._timeout = timedelta(seconds=seconds)
    return True


def setup_strategy(trainer: Any, dist_timeout: int) -> None:
    """Give the Trainer's strategy ``--dist-timeout``, and check the launcher's process count.

    A timeout other than the default on a one-process run warns that it has no effect.

    Raises:
        ValueError: ``--devices`` x ``--num-nodes`` is not the number of launched processes.
    """
    from .schema import DIST_TIMEOUT

    if not set_dist_timeout(trainer.strategy, dist_timeout) and dist_timeout != DIST_TIMEOUT \
            and trainer.is_global_zero:
        print(f"warning: --dist-timeout {dist_timeout} has no effect: this run has one "
              "process, with no process group to wait for", file=sys.stderr)
    check_world_size(trainer)


def check_world_size(trainer: Any) -> None:
    """Check that ``--devices`` x ``--num-nodes`` is the launcher's process count.

    Lightning's own check, made when the Trainer is built rather than in ``fit``, after the run
    folder is made.

    Raises:
        ValueError: Lightning's sentence (``train.py`` refuses with it, exit 2).
    """
    env = getattr(trainer.strategy, "cluster_environment", None)
    if env is not None:
        env.validate_settings(num_devices=trainer.num_devices, num_nodes=trainer.num_nodes)


#: what gloo says when a peer's sockets close or it stops answering
_GLOO_PEER = re.compile(r"gloo.*?(Connection (?:reset|closed|refused)[^.]*|Timed out[^.]*"
                        r"|Broken pipe[^.]*)", re.S)


def peer_failure(error: BaseException) -> str | None:
    """What a collective said when another process died or froze (``None``: something else).

    torch raises ``DistError`` subclasses (NCCL, the store) and plain ``RuntimeError``s that
    name gloo (``Connection reset by peer``, ``Timed out waiting 15000ms ...``).
    """
    import torch.distributed as dist

    if isinstance(error, dist.DistError):
        return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    found = _GLOO_PEER.search(str(error)) if type(error) is RuntimeError else None
    return f"gloo: {found.group(1).strip()}" if found else None
