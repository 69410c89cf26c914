"""Per-step cost of one more callback such as the progress lines, amplified to rise above noise.

The plain progress lines (``callbacks/progress.py``, ``LineProgress``) do one integer compare and
one clock read per step between lines; what they cost is mostly Lightning dispatching every
step hook to one more callback. Measured here with ``N`` callbacks doing what ``LineProgress``
does per step, against none, in the same round (µs per step, softmax regression at batch 16),
with every per-batch hook dispatched (Lightning's default) and, as ``train.py`` does, only the
one each callback overrides (``callbacks/dispatch.py``):

    python -m bench.callback_cost --data-dir ../shared/data [--rounds 8 --steps 1000 --n 20]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time

import torch
from lightning.pytorch.callbacks import Callback

from bench.lightning_overhead import bare
from d2l_lightning.datamodules.registry import build_datamodule


class Probe(Callback):
    """``LineProgress.on_train_batch_end`` between two lines: a compare and a clock read."""

    every_n_steps = 0
    next_time = float("inf")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: D102
        if self.every_n_steps:
            return
        if time.monotonic() < self.next_time:
            return


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("D2L_DATA_DIR", "data"))
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--n", type=int, default=20, help="callbacks added")
    a = p.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no "GPU available" lines
    dm = build_datamodule("fashion_mnist", data_dir=a.data_dir, batch_size=16)
    dm.setup()
    per: dict[str, list[float]] = {"all hooks": [], "overridden hooks": []}
    print(f"softmax_regression, batch 16, {a.steps} steps, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"| round | no callback (us/step) | {a.n} callbacks, all hooks | per callback | "
          f"{a.n} callbacks, overridden hooks only | per callback |\n|---|---|---|---|---|---|")
    for r in range(a.rounds):
        base = bare(dm, a.steps)
        more = bare(dm, a.steps, extra=tuple(Probe() for _ in range(a.n)))
        fewer = bare(dm, a.steps, extra=tuple(Probe() for _ in range(a.n)), skip_idle=True)
        per["all hooks"].append((more - base) / a.n)
        per["overridden hooks"].append((fewer - base) / a.n)
        print(f"| {r} | {base:.0f} | {more:.0f} | {per['all hooks'][-1]:+.1f} | {fewer:.0f} | "
              f"{per['overridden hooks'][-1]:+.1f} |", flush=True)
    for k, v in per.items():
        print(f"median per callback, {k} dispatched: {statistics.median(v):+.1f} us/step")


if __name__ == "__main__":
    main()
