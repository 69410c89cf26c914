"""LeNet training throughput: our Lightning path vs a plain loop vs a d2l-style DataLoader.

All three train the same LeNet (d2l recipe: SGD lr 0.1, batch 128) on Fashion-MNIST for the same
number of steps, in one process, interleaved over several rounds; the median images/s of each is
reported with the ratios the foundation issue targets (ours >= 0.95x plain, >= 2x d2l-style).

    python bench/lenet_throughput.py --data-dir ../shared/data [--steps 300 --rounds 3]

(a) plain: a hand-written PyTorch loop over the same in-memory uint8 tensors, batches by tensor
    indexing, the same on-batch normalisation.
(b) d2l-style: torchvision ``FashionMNIST`` with per-sample ``Resize`` + ``ToTensor`` transforms
    and a ``DataLoader`` with 4 workers, as d2l's ``FashionMNIST.get_dataloader``.
(ours) ``train.py``'s own Trainer, DataModule, ImageClassifier, callbacks and CSV logger; the
    rate is the ``ThroughputTimer``'s (training steps only; validation disabled).
"""

from __future__ import annotations

import argparse
import gzip
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.idx import FASHION_MNIST, load_split  # noqa: E402
from models import build_model, preprocess_images  # noqa: E402

BATCH, LR = 128, 0.1


def plain_loop(images: torch.Tensor, labels: torch.Tensor, steps: int) -> float:
    """(a) images/s of a hand-written loop over in-memory tensors."""
    torch.manual_seed(0)
    model = build_model("lenet")
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    perm = torch.randperm(len(images))
    mean, std = (FASHION_MNIST.mean,), (FASHION_MNIST.std,)
    start = time.perf_counter()
    for step in range(steps):
        idx = perm[(step * BATCH) % (len(perm) - BATCH):][:BATCH]
        x = preprocess_images(images.index_select(0, idx), mean, std)
        loss = F.cross_entropy(model(x), labels.index_select(0, idx))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * BATCH / (time.perf_counter() - start)


def d2l_style(root: Path, steps: int, workers: int) -> float:
    """(b) images/s with torchvision's Dataset and per-sample PIL transforms."""
    from torchvision import datasets, transforms

    torch.manual_seed(0)
    tf = transforms.Compose([transforms.Resize((28, 28)), transforms.ToTensor()])
    ds = datasets.FashionMNIST(str(root), train=True, transform=tf, download=False)
    loader = torch.utils.data.DataLoader(ds, BATCH, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0)
    model = build_model("lenet")
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    it = iter(loader)
    next(it)  # worker start-up is not counted
    start = time.perf_counter()
    for _ in range(steps):
        x, y = next(it)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    rate = steps * BATCH / (time.perf_counter() - start)
    del it, loader
    return rate


def ours(data_dir: str, steps: int, run_root: Path, rnd: int) -> float:
    """(ours) images/s of train.py's own Trainer over ``steps`` training steps."""
    import train

    parser = train.build_parser()
    args = parser.parse_args([
        "--model", "lenet", "--data", "fashion_mnist", "--data-dir", data_dir,
        "--max-epochs", "1", "--limit-train-batches", str(steps), "--limit-val-batches", "0",
        "--no-test", "--no-progress-bar", "--run-dir", str(run_root / f"ours-{rnd}")])
    cfg = train.resolve_config(args, parser)
    os.environ.pop(train.RUN_DIR_ENV, None)
    return train.run(cfg)["train_samples_per_sec"]


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
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=4, help="d2l-style DataLoader workers")
    a = p.parse_args()
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    images, labels = load_split(FASHION_MNIST, a.data_dir, "train")
    tv_root = torchvision_root(a.data_dir)
    run_root = Path(tempfile.mkdtemp(prefix="bench-runs-"))
    rates: dict[str, list[float]] = {"ours": [], "plain": [], "d2l-style": []}
    try:
        for rnd in range(a.rounds):
            rates["plain"].append(plain_loop(images, labels, a.steps))
            rates["ours"].append(ours(a.data_dir, a.steps, run_root, rnd))
            rates["d2l-style"].append(d2l_style(tv_root, a.steps, a.workers))
            print(f"round {rnd + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items()),
                  flush=True)
    finally:
        shutil.rmtree(tv_root, ignore_errors=True)
        shutil.rmtree(run_root, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\nLeNet, batch {BATCH}, {a.steps} steps x {a.rounds} rounds, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print("| path | images/s (median) |\n|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:,.0f} |")
    print(f"\nours / plain     = {med['ours'] / med['plain']:.3f}  (target >= 0.95)")
    print(f"ours / d2l-style = {med['ours'] / med['d2l-style']:.2f}  (target >= 2)")


if __name__ == "__main__":
    main()
