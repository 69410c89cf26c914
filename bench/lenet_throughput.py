"""LeNet training throughput: our Lightning path vs a plain loop vs a d2l-style DataLoader.

All three train the same model (default LeNet with d2l's recipe: SGD lr 0.1, batch 128) on
Fashion-MNIST for the same number of steps, in one process, over several rounds whose order
rotates. Each round gives a ratio of neighbours in time, so slow drifts of the machine cancel;
the median ratio (and quartiles) is reported against the foundation issue's targets (ours >=
0.95x plain, >= 2x d2l-style). A model with almost no compute (``--model softmax_regression
--batch-size 16``) measures the fixed per-step cost of the Lightning path instead.

    python bench/lenet_throughput.py --data-dir ../shared/data [--steps 300 --rounds 10]

(a) plain: a hand-written PyTorch loop over the same in-memory uint8 tensors, batches by tensor
    indexing, the same on-batch normalisation.
(b) d2l-style: torchvision ``FashionMNIST`` with per-sample ``Resize`` + ``ToTensor`` transforms
    and a ``DataLoader`` with 4 workers, as d2l's ``FashionMNIST.get_dataloader``.
(ours) ``train.py``'s own Trainer, DataModule, ImageClassificationTask, callbacks and CSV
    logger; the rate is the ``TrainingMonitor``'s (training steps only; validation disabled).
"""

from __future__ import annotations

import argparse
import gc
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


def plain_loop(images: torch.Tensor, labels: torch.Tensor, steps: int, model_name: str,
               batch: int, lr: float) -> float:
    """(a) images/s of a hand-written loop over in-memory tensors."""
    torch.manual_seed(0)
    model = build_model(model_name)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    perm = torch.randperm(len(images))
    mean, std = (FASHION_MNIST.mean,), (FASHION_MNIST.std,)
    start = time.perf_counter()
    for step in range(steps):
        idx = perm[(step * batch) % (len(perm) - batch):][:batch]
        x = preprocess_images(images.index_select(0, idx), mean, std)
        loss = F.cross_entropy(model(x), labels.index_select(0, idx))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - start)


def d2l_style(root: Path, steps: int, workers: int, model_name: str, batch: int,
              lr: float) -> float:
    """(b) images/s with torchvision's Dataset and per-sample PIL transforms."""
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
    rate = steps * batch / (time.perf_counter() - start)
    it._shutdown_workers()  # workers must be gone before the next measurement starts
    return rate


def ours(data_dir: str, steps: int, run_root: Path, rnd: int, model_name: str, batch: int,
         lr: float) -> float:
    """(ours) images/s of train.py's own Trainer over ``steps`` training steps."""
    import train

    cfg = train.config_from_argv([
        "--model", model_name, "--data", "fashion_mnist", "--data-dir", data_dir,
        "--batch-size", str(batch), "--lr", str(lr), "--optimizer", "sgd",
        "--max-epochs", "100", "--max-steps", str(steps), "--limit-val-batches", "0",
        "--no-test", "--no-progress-bar", "--run-dir", str(run_root / f"ours-{rnd}")])
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
    p.add_argument("--model", default="lenet")
    p.add_argument("--batch-size", type=int, default=128, help="d2l's LeNet batch size")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--workers", type=int, default=4, help="d2l-style DataLoader workers")
    a = p.parse_args()
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    images, labels = load_split(FASHION_MNIST, a.data_dir, "train")
    tv_root = torchvision_root(a.data_dir)
    run_root = Path(tempfile.mkdtemp(prefix="bench-runs-"))
    rates: dict[str, list[float]] = {"ours": [], "plain": [], "d2l-style": []}
    spec = (a.model, a.batch_size, a.lr)
    runners = {"ours": lambda rnd: ours(a.data_dir, a.steps, run_root, rnd, *spec),
               "plain": lambda rnd: plain_loop(images, labels, a.steps, *spec),
               "d2l-style": lambda rnd: d2l_style(tv_root, a.steps, a.workers, *spec)}
    order = list(runners)
    try:
        for rnd in range(a.rounds):
            for name in order[rnd % 3:] + order[: rnd % 3]:  # rotate who goes first
                gc.collect()
                time.sleep(0.5)
                rates[name].append(runners[name](rnd))
            print(f"round {rnd + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items())
                  + f"; ours/plain {rates['ours'][-1] / rates['plain'][-1]:.3f}", flush=True)
    finally:
        shutil.rmtree(tv_root, ignore_errors=True)
        shutil.rmtree(run_root, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\n{a.model}, batch {a.batch_size}, {a.steps} steps x {a.rounds} rounds, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print("| path | images/s (median) |\n|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:,.0f} |")
    for other, target in (("plain", 0.95), ("d2l-style", 2.0)):
        pairs = [o / x for o, x in zip(rates["ours"], rates[other])]
        q1, q2, q3 = statistics.quantiles(pairs, n=4) if len(pairs) > 1 else pairs * 3
        print(f"ours / {other}: median of per-round ratios {q2:.3f} (quartiles {q1:.3f}-"
              f"{q3:.3f}); ratio of medians {med['ours'] / med[other]:.3f}; target >= {target}")
    per_step = {k: a.batch_size / v * 1e6 for k, v in med.items()}
    print(f"per step (from medians): ours {per_step['ours']:.0f} us, plain "
          f"{per_step['plain']:.0f} us, difference {per_step['ours'] - per_step['plain']:.0f} us")


if __name__ == "__main__":
    main()
