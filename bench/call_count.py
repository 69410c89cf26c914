"""Python calls and tensor ops per training step of each path: overhead that load cannot move.

Timings on a shared machine spread by hundreds of µs per step; the number of Python function
calls a step makes (counted by ``cProfile``) and of ATen ops it dispatches (counted by a
``TorchDispatchMode``, backward included) do not. Each is counted after a warm-up run, set-up
excluded by differencing two run lengths. The paths are those of ``bench/step_paths.py``:

    python -m bench.call_count --data-dir ../shared/data [--model lenet --batch-size 128]
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import pstats
import tempfile
import warnings
from pathlib import Path

from torch.utils._python_dispatch import TorchDispatchMode

from bench import step_paths
from d2l_lightning.datamodules.idx import FASHION_MNIST, load_split


def calls(fn) -> int:
    """All function calls (primitive or not) made while ``fn`` runs."""
    prof = cProfile.Profile()
    prof.runcall(fn)
    return pstats.Stats(prof).total_calls


class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def ops(fn) -> int:
    """ATen ops dispatched while ``fn`` runs."""
    with _OpCounter() as counter:
        fn()
    return counter.n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("D2L_DATA_DIR", "data"))
    p.add_argument("--model", default="softmax_regression")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, nargs=2, default=(100, 300),
                   help="two run lengths; calls per step = difference / difference of steps")
    a = p.parse_args()
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    images, labels = load_split(FASHION_MNIST, a.data_dir, "train")
    norm = ((FASHION_MNIST.mean,), (FASHION_MNIST.std,))
    root = Path(tempfile.mkdtemp(prefix="bench-calls-"))

    def run(name: str, steps: int, tag: str) -> None:
        data = step_paths.Batches(images, labels, a.batch_size, steps)
        if name == "plain":
            step_paths.plain(data, a.model, 0.1, *norm)
        elif name == "bare":
            step_paths.bare(data, a.model, 0.1, *norm)
        else:
            step_paths.ours(a.data_dir, steps, root / f"ours-{steps}-{tag}", a.model,
                            a.batch_size, 0.1)

    per_step: dict[str, list[float]] = {}
    for name in ("plain", "bare", "ours"):
        run(name, a.steps[0], "warm-up")  # first-call imports and caches are not per step
        per_step[name] = []
        for count in (calls, ops):
            n = [count(lambda n=n, name=name, c=count: run(name, n, f"{c.__name__}"))
                 for n in a.steps]
            per_step[name].append((n[1] - n[0]) / (a.steps[1] - a.steps[0]))
    print(f"\n{a.model}, batch {a.batch_size}: per training step")
    print("| path | Python function calls | ATen ops |\n|---|---|---|")
    for name, (c, o) in per_step.items():
        print(f"| {name} | {c:,.0f} | {o:,.0f} |")
    (cb, ob), (co, oo) = per_step["bare"], per_step["ours"]
    print(f"ours - bare: {co - cb:+,.0f} calls, {oo - ob:+,.0f} ops per step")


if __name__ == "__main__":
    main()
