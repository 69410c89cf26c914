"""Write MNIST digits as PNG files in the image-folder layout (d2l §14.2's folder-per-class data).

    python -m bench.digit_folder OUT --data-dir ../shared/data [--train 300 --val 100 --test 500]

``OUT/{train,val,test}/<digit>/NNNNN.png``: seeded draws from the official MNIST training set
(train, val; disjoint) and test set (test). Refuses to write into a folder that exists.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from d2l_lightning.datamodules.idx import MNIST, load_idx_split


def write_digit_folder(out: str | Path, data_dir: str | None, n_train: int = 300,
                       n_val: int = 100, n_test: int = 500, seed: int = 0) -> Path:
    """Write the folder; return it. Names are the index in the official file."""
    from PIL import Image

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new folder")
    g = torch.Generator().manual_seed(seed)
    images, labels = load_idx_split(MNIST, data_dir, train=True)
    perm = torch.randperm(len(images), generator=g)
    test_images, test_labels = load_idx_split(MNIST, data_dir, train=False)
    test_perm = torch.randperm(len(test_images), generator=g)
    parts = {"train": (images, labels, perm[:n_train]),
             "val": (images, labels, perm[n_train:n_train + n_val]),
             "test": (test_images, test_labels, test_perm[:n_test])}
    for split, (x, y, idx) in parts.items():
        for i in idx.tolist():
            path = out / split / str(int(y[i])) / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i].numpy()).save(path)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--data-dir")
    p.add_argument("--train", type=int, default=300)
    p.add_argument("--val", type=int, default=100)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(write_digit_folder(a.out, a.data_dir, a.train, a.val, a.test, a.seed))


if __name__ == "__main__":
    main()
