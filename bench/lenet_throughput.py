"""LeNet training throughput: plain loop, bare Lightning loop and ours, side by side.

The same model (default LeNet with d2l's recipe: SGD lr 0.1, batch 128) trains on
Fashion-MNIST for the same number of steps on each path, in one process, over rounds whose
order rotates; each round compares neighbours in time, so slow drifts of the machine cancel.
Reported: µs/step per path (median), the median of the per-round differences ours - bare
(what our hooks, callbacks and logging add; issue 16 holds it to <= +50 µs) and bare - plain
(Lightning's own loop), and the ratios against the foundation targets (ours >= 0.95x plain,
>= 2x d2l-style). A model with almost no compute (``--model softmax_regression --batch-size
16``) isolates the fixed per-step costs.

    python -m bench.lenet_throughput --data-dir ../shared/data --steps 300 --rounds 6
        [--d2l-style] [--json OUT]

(a) plain, (b) bare, (c) ours: see ``bench/step_paths.py``.
(d) d2l-style (``--d2l-style``): torchvision ``FashionMNIST`` with per-sample ``Resize`` +
    ``ToTensor`` transforms and a ``DataLoader`` with 4 workers, as d2l's
    ``FashionMNIST.get_dataloader``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from bench import step_paths
from d2l_lightning.datamodules.idx import FASHION_MNIST, load_split
from d2l_lightning.models import build_model


def d2l_style(root: Path, steps: int, workers: int, model_name: str, batch: int,
              lr: float) -> float:
    """(d) µs per step with torchvision's Dataset and per-sample PIL transforms."""
    from torchvision import datasets, transforms

    torch.manual_seed(0)
    tf = transforms.Compose([transforms.Resize((28, 28)), transforms.ToTensor()])
    ds = datasets.FashionMNIST(str(root), train=True, transform=tf, download=False)
    loader = torch.utils.data.DataLoader(ds, batch, shuffle=True, num_workers=workers)
    model = build_model(model_name)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    it = iter(loader)
    next(it)  # the first worker start-up is not counted; later epochs' start-ups are
    start = time.perf_counter()
    for _ in range(steps):
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    us = (time.perf_counter() - start) / steps * 1e6
    it._shutdown_workers()  # workers must be gone before the next measurement starts
    return us


def torchvision_root(data_dir: str) -> Path:
    """Decompress Fashion-MNIST into torchvision's expected ``FashionMNIST/raw`` layout."""
    src = Path(data_dir) / "fashion-mnist"
    root = Path(tempfile.mkdtemp(prefix="tv-fmnist-"))
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in src.glob("*-ubyte*"):
        dst = raw / f.name.removesuffix(".gz")
        if f.suffix == ".gz":
            with gzip.open(f) as fin, open(dst, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        else:
            shutil.copy(f, dst)
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("D2L_DATA_DIR", "data"))
    p.add_argument("--model", default="lenet")
    p.add_argument("--batch-size", type=int, default=128, help="d2l's LeNet batch size")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--d2l-style", action="store_true", help="also time the d2l-style loader")
    p.add_argument("--workers", type=int, default=4, help="d2l-style DataLoader workers")
    p.add_argument("--clock", choices=step_paths.CLOCKS, default="wall",
                   help="cpu: the main thread's CPU time, steadier on a shared machine")
    p.add_argument("--json", type=Path, help="write the per-round numbers and summary here")
    a = p.parse_args()
    if a.clock == "cpu" and a.d2l_style:
        p.error("--clock cpu cannot time the d2l-style loader's worker processes")
    step_paths.use_clock(a.clock)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    images, labels = load_split(FASHION_MNIST, a.data_dir, "train")
    data = step_paths.Batches(images, labels, a.batch_size, a.steps)
    norm = ((FASHION_MNIST.mean,), (FASHION_MNIST.std,))
    run_root = Path(tempfile.mkdtemp(prefix="bench-runs-"))
    spec = (a.model, a.batch_size, a.lr)
    runners = {"plain": lambda rnd: step_paths.plain(data, a.model, a.lr, *norm),
               "bare": lambda rnd: step_paths.bare(data, a.model, a.lr, *norm),
               "ours": lambda rnd: step_paths.ours(a.data_dir, a.steps, run_root / f"ours-{rnd}",
                                                   *spec)}
    tv_root = None
    if a.d2l_style:
        tv_root = torchvision_root(a.data_dir)
        runners["d2l-style"] = lambda rnd: d2l_style(tv_root, a.steps, a.workers, *spec)
    loads = [step_paths.load_average()]

    def show(rnd: int, us: dict[str, list[float]]) -> None:
        loads.append(step_paths.load_average())
        print(f"round {rnd + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in us.items())
              + f" us/step; ours - bare {us['ours'][-1] - us['bare'][-1]:+,.0f}; "
              f"load {loads[-1]}", flush=True)

    try:
        us = step_paths.interleaved(runners, a.rounds, show)
    finally:
        if tv_root:
            shutil.rmtree(tv_root, ignore_errors=True)
        shutil.rmtree(run_root, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in us.items()}
    print(f"\n{a.model}, batch {a.batch_size}, {a.steps} steps x {a.rounds} rounds, "
          f"{a.clock} clock, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"load average {loads[0]} at the start, {loads[-1]} at the end")
    print("| path | us/step (median) | images/s |\n|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:,.0f} | {a.batch_size / v * 1e6:,.0f} |")
    pairs = {"ours - bare": ("bare", "ours"), "bare - plain": ("plain", "bare")}
    summary = {k: step_paths.paired(us, *ab) for k, ab in pairs.items()}
    for k, s in summary.items():
        print(f"{k}: median of per-round differences {s['diff_median_us']:+,.0f} us/step "
              f"(quartiles {s['diff_q1_us']:+,.0f} to {s['diff_q3_us']:+,.0f})"
              + ("; target <= +50" if k == "ours - bare" else ""))
    targets = {"plain": 0.95, "bare": None, "d2l-style": 2.0}
    for other in [k for k in targets if k in us]:
        s = summary[f"ours / {other}"] = step_paths.paired(us, other, "ours")
        print(f"ours / {other} (throughput): median of per-round ratios {s['ratio_median']:.3f} "
              f"(quartiles {s['ratio_q1']:.3f}-{s['ratio_q3']:.3f})"
              + (f"; target >= {targets[other]}" if targets[other] else ""))
    if a.json:
        a.json.write_text(json.dumps({
            "command": " ".join(sys.argv), "model": a.model, "batch_size": a.batch_size,
            "steps": a.steps, "rounds": a.rounds, "clock": a.clock, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "load_average": loads, "us_per_step": us,
            "median_us_per_step": med, "paired": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
