"""Three ways to run the same image-classification training steps, timed in µs per step.

Shared by ``bench/lenet_throughput.py``, ``bench/lightning_overhead.py`` and
``bench/callback_cost.py``, so the split "plain loop / bare Lightning loop / ours" is measured
the same way everywhere (issue 16):

(a) ``plain``: a hand-written PyTorch loop over in-memory uint8 tensors (batches by
    ``index_select``, normalised per batch).
(b) ``bare``: the same batches, model, loss and SGD through a minimal LightningModule and a
    Trainer with no callbacks, no logger, no progress bar and no checkpoints: what Lightning's
    own loop costs.
(c) ``ours``: what ``train.py`` builds (DataModule, task module, callbacks, CSV logger,
    checkpoints); the time is ``TrainingMonitor``'s (training steps only).

Each path's clock runs over the training steps only (no set-up, no validation). The clock is
wall time, or with :func:`use_clock` ``("cpu")`` the CPU time of the main thread, which other
jobs on a shared machine disturb far less (with one intra-op thread every step runs on it).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from d2l_lightning.models import build_model, preprocess_images
from d2l_lightning.training.command_line import config_from_argv

CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
clock = time.perf_counter


def use_clock(name: str) -> None:
    """Time every path with ``wall`` (``perf_counter``) or ``cpu`` (``thread_time``)."""
    global clock
    import types

    from d2l_lightning.callbacks import monitoring

    clock = CLOCKS[name]  # TrainingMonitor's clock too (it reads ``time.perf_counter``)
    monitoring.time = types.SimpleNamespace(perf_counter=clock) if name == "cpu" else time


class Batches:
    """``steps`` uint8 batches of ``(images, labels)`` taken from a fixed random permutation."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch: int,
                 steps: int) -> None:
        self.images, self.labels, self.batch, self.steps = images, labels, batch, steps
        self.perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, b = len(self.perm), self.batch
        for step in range(self.steps):
            idx = self.perm[(step * b) % (n - b):][:b]
            yield self.images.index_select(0, idx), self.labels.index_select(0, idx)


def plain(data: Batches, model_name: str, lr: float, mean: tuple, std: tuple) -> float:
    """(a) µs per step of a hand-written loop."""
    torch.manual_seed(0)
    model = build_model(model_name)
    opt = torch.optim.SGD(model.parameters(), lr=lr, fused=True)  # as ours (lit_models/base.py)
    start = clock()
    for x, y in data:
        loss = F.cross_entropy(model(preprocess_images(x, mean, std)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (clock() - start) / len(data) * 1e6


def bare(data: Batches, model_name: str, lr: float, mean: tuple, std: tuple) -> float:
    """(b) µs per step of the same loop as a minimal LightningModule in a bare Trainer."""
    import lightning as L

    class Bare(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = build_model(model_name)
            self.elapsed, self._t0 = 0.0, 0.0

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.model(preprocess_images(x, mean, std)), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=lr, fused=True)

        def on_train_epoch_start(self) -> None:
            self._t0 = clock()

        def on_train_epoch_end(self) -> None:
            self.elapsed += clock() - self._t0

    torch.manual_seed(0)
    module = Bare()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=len(data), max_epochs=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[])
    trainer.fit(module, train_dataloaders=data)
    return module.elapsed / len(data) * 1e6


def ours(data_dir: str, steps: int, run_dir: Path, model_name: str, batch: int, lr: float,
         extra: tuple[str, ...] = ()) -> float:
    """(c) µs per step of ``train.py``'s own run (``extra``: more ``train.py`` flags)."""
    import warnings

    from d2l_lightning.training import fit

    # Validation is off in these timings, so the best checkpoint has no val/acc to follow.
    warnings.filterwarnings("ignore", message=r".*could not find the monitored key.*")
    cfg = config_from_argv([
        "--model", model_name, "--data", "fashion_mnist", "--data-dir", data_dir,
        "--batch-size", str(batch), "--lr", str(lr), "--optimizer", "sgd",
        "--max-epochs", "100", "--max-steps", str(steps), "--limit-val-batches", "0",
        "--no-test", "--no-progress-bar", "--run-dir", str(run_dir), *extra])
    return fit(cfg)["train_time_sec"] / steps * 1e6


def interleaved(runners: dict[str, Callable[[int], float]], rounds: int,
                show: Callable[[int, dict[str, list[float]]], None] | None = None,
                ) -> dict[str, list[float]]:
    """Run every path once per round, rotating who goes first; µs/step per path per round."""
    us: dict[str, list[float]] = {k: [] for k in runners}
    order = list(runners)
    for rnd in range(rounds):
        k = rnd % len(order)
        for name in order[k:] + order[:k]:
            gc.collect()
            time.sleep(0.2)
            us[name].append(runners[name](rnd))
        if show:
            show(rnd, us)
    return us


def paired(us: dict[str, list[float]], a: str, b: str) -> dict[str, float]:
    """Median and quartiles of the per-round differences ``b - a`` (µs) and ratios ``a / b``.

    ``a / b`` of µs per step is ``b``'s throughput over ``a``'s.
    """
    diffs = [y - x for x, y in zip(us[a], us[b])]
    ratios = [x / y for x, y in zip(us[a], us[b])]

    def quartiles(v: list[float]) -> list[float]:
        return statistics.quantiles(v, n=4) if len(v) > 1 else v * 3

    (d1, _, d3), (r1, _, r3) = quartiles(diffs), quartiles(ratios)
    return {"diff_median_us": statistics.median(diffs), "diff_q1_us": d1, "diff_q3_us": d3,
            "ratio_median": statistics.median(ratios), "ratio_q1": r1, "ratio_q3": r3,
            "diffs_us": diffs}


def load_average() -> str:
    """The 1/5/15-minute load averages, as ``uptime`` prints them."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"
