"""MNIST-style IDX datasets: canonical files, decoding, checks and the seeded split.

Lightning-free, so ``predict.py`` can evaluate an export on the same split as training.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .download import DataError, RemoteFile, ensure_files, resolve_data_dir

_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
_FASHION_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
          "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class IDXDataset:
    """What we know of one IDX dataset (files, checksums, classes, statistics)."""

    name: str
    folder: str
    title: str
    gz_md5: tuple[str, str, str, str]  # of the canonical .gz downloads, in _FILES order
    raw_md5: tuple[str, str, str, str]  # of the decompressed files (any gzip of them is fine)
    mirrors: tuple[str, ...]
    classes: tuple[str, ...]
    mean: float
    std: float

    def remote_files(self) -> list[RemoteFile]:
        """The four canonical ``.gz`` downloads."""
        return [RemoteFile(f"{f}.gz", f"md5:{m}", self.mirrors)
                for f, m in zip(_FILES, self.gz_md5)]


MNIST = IDXDataset(
    "mnist", "mnist", "MNIST",
    ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
     "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"),
    ("6bbc9ace898e44ae57da46a324031adb", "a25bea736e30d166cdddb491f175f624",
     "2646ac647ad5339dbf082846283269ea", "27ae3e4e09519cfbb04c329615203637"),
    _MNIST_MIRRORS, tuple(str(i) for i in range(10)), 0.1307, 0.3081,
)
FASHION_MNIST = IDXDataset(
    "fashion_mnist", "fashion-mnist", "Fashion-MNIST",
    ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
     "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"),
    ("f4a8712d7a061bf5bd6d2ca38dc4d50a", "9018921c3c673c538a1fc5bad174d6f9",
     "8181f5470baa50b63fa0f6fddb340f0a", "15d484375f8d13e6eb1aabb0c3f46965"),
    _FASHION_MIRRORS,
    ("t-shirt", "trouser", "pullover", "dress", "coat",
     "sandal", "shirt", "sneaker", "bag", "ankle boot"),
    0.2860, 0.3530,
)
IDX_DATASETS = {d.name: d for d in (MNIST, FASHION_MNIST)}
_CANONICAL_COUNT = {"train": 60000, "t10k": 10000}


def find_file(folder: Path, stem: str) -> Path | None:
    """``stem.gz`` if present, else the raw ``stem``, else ``None``."""
    for cand in (folder / f"{stem}.gz", folder / stem):
        if cand.is_file():
            return cand
    return None


def read_idx(path: str | Path, expected_md5: str | None = None) -> torch.Tensor:
    """Decode an IDX file (``.gz`` or raw) into a uint8 tensor, checking it is whole.

    Args:
        path: the file.
        expected_md5: MD5 of the decompressed bytes; checked when given.

    Raises:
        DataError: bad magic number, truncated data, or checksum mismatch.
    """
    p = Path(path)
    st = p.stat()
    return _read_idx_cached(str(p), st.st_mtime_ns, st.st_size, expected_md5).clone()


@functools.lru_cache(maxsize=16)
def _read_idx_cached(path: str, _mtime: int, _size: int, expected_md5: str | None) -> torch.Tensor:
    # Decoded once per process; the key includes mtime and size so a replaced file is re-read.
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = Path(path).read_bytes()
    except (EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path} is truncated or not a valid gzip file ({e}); delete it so it "
                        "can be downloaded again") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or data[3] not in (1, 3):
        raise DataError(f"{path} is not a uint8 IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated (incomplete header)")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims))
    if len(data) - header != expected:
        raise DataError(f"{path} is truncated or corrupt: header promises {expected} bytes of "
                        f"data for shape {tuple(dims)}, found {len(data) - header}")
    if expected_md5 is not None:
        got = hashlib.md5(data).hexdigest()
        if got != expected_md5:
            raise DataError(f"{path} fails its checksum (md5 {got} of the decompressed data, "
                            f"expected {expected_md5}); delete it so it can be downloaded again")
    arr = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)
    return torch.from_numpy(arr.copy())


def prepare_idx(ds: IDXDataset, data_dir: str | Path | None = None) -> Path:
    """Make sure the four files of ``ds`` exist (downloading if needed); return the folder."""
    folder = resolve_data_dir(data_dir) / ds.folder
    present = [find_file(folder, stem) for stem in _FILES]
    ensure_files(ds.title, folder, ds.remote_files(), present)
    return folder


def load_idx_split(
    ds: IDXDataset, data_dir: str | Path | None, train: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Official train or test images ``(N, 28, 28)`` uint8 and labels ``(N,)`` int64.

    Full-size files (60000 / 10000 items) are also checked against the canonical MD5s.
    """
    folder = prepare_idx(ds, data_dir)
    prefix = "train" if train else "t10k"
    i = 0 if train else 2
    out = []
    for j, stem in enumerate((f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")):
        path = find_file(folder, stem)
        assert path is not None  # prepare_idx guarantees it
        md5 = ds.raw_md5[i + j] if _count(path) == _CANONICAL_COUNT[prefix] else None
        out.append(read_idx(path, md5))
    images, labels = out
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise DataError(f"{folder}: {prefix} images {tuple(images.shape)} and labels "
                        f"{tuple(labels.shape)} do not match")
    if int(labels.max()) >= len(ds.classes):
        raise DataError(f"{folder}: label {int(labels.max())} out of range for {ds.title}")
    return images, labels.long()


def _count(path: Path) -> int:
    """Item count from an IDX header, without decoding the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(8)
    except (EOFError, OSError, zlib.error):
        return -1
    return int.from_bytes(head[4:8], "big") if len(head) == 8 else -1


def split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of ``range(n)`` into ``(train_idx, val_idx)``."""
    if not 0 < val_size < n:
        raise DataError(f"validation size {val_size} must be between 1 and {n - 1}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def default_val_size(n: int) -> int:
    """One twelfth of the training set: 5,000 of MNIST's 60,000 (the d2l-style 55k/5k split)."""
    return max(1, round(n / 12))


#: ``setting`` of the IDX data: ``split`` (ours: a seeded validation split of the training
#: set, pixels normalised by the data's mean/std) or ``book`` (d2l §4.2 / §7.6's
#: ``load_data_fashion_mnist``: all 60,000 training images, the test set as validation set,
#: pixels in [0, 1] without normalisation).
DATA_SETTINGS = ("split", "book")


def check_setting(setting: str, val_size: int | None) -> None:
    """Refuse an unknown ``setting``, or a ``val_size`` with the book's (it has no split)."""
    if setting not in DATA_SETTINGS:
        raise DataError(f"unknown data setting '{setting}'; choose from: "
                        + ", ".join(DATA_SETTINGS))
    if setting == "book" and val_size:
        raise DataError("the book data setting validates on the test set; val_size "
                        f"{val_size} does not apply to it")


#: the splits of a dataset, in the order the DataModules hold them
SPLITS = ("train", "val", "test")


def idx_splits(
    ds: IDXDataset, data_dir: str | Path | None, seed: int = 0, val_size: int | None = None,
    setting: str = "split", train_fraction: float = 1.0, splits: tuple[str, ...] = SPLITS,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Images and labels of the requested ``splits`` (``train``, ``val``, ``test``), seeded.

    The one definition of the splits: the DataModules (:mod:`datamodules.vision`),
    ``predict.py classify --eval`` and ``predict.py eval`` read them here. ``val`` is a seeded
    ``val_size`` share of the official training set (default 1/12) and ``train`` the rest, of
    which a seeded ``train_fraction`` is kept; ``test`` is the official test set. With
    ``setting="book"``, ``train`` is the whole official training set (its ``train_fraction``)
    and ``val`` the official test set (see :data:`DATA_SETTINGS`).

    Raises:
        DataError: an unknown split or setting, a bad ``val_size`` or ``train_fraction``, or
            missing / corrupt files.
    """
    check_setting(setting, val_size)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise DataError(f"unknown split '{unknown[0]}'; choose from: {', '.join(SPLITS)}")
    book = setting == "book"
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if "test" in splits or (book and "val" in splits):
        out["test"] = out["val"] = load_idx_split(ds, data_dir, train=False)  # book: val
    if "train" in splits or (not book and "val" in splits):
        images, labels = load_idx_split(ds, data_dir, train=True)
        if book:
            tr = subsample(len(images), train_fraction, seed)
        else:
            tr, va = split_indices(len(images), val_size or default_val_size(len(images)), seed)
            tr = tr[subsample(len(tr), train_fraction, seed)]
            out["val"] = (images[va], labels[va])
        out["train"] = (images[tr], labels[tr])
    return {s: out[s] for s in splits}


def load_split(
    ds: IDXDataset, data_dir: str | Path | None, split: str, seed: int = 0,
    val_size: int | None = None, setting: str = "split",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of ``split`` in ``{"train", "val", "test"}`` (see :func:`idx_splits`).

    With ``setting="book"``, ``train`` is the whole official training set and ``val`` the
    official test set (see :data:`DATA_SETTINGS`).
    """
    return idx_splits(ds, data_dir, seed, val_size, setting, splits=(split,))[split]


def subsample(n: int, fraction: float, seed: int) -> torch.Tensor:
    """Seeded ``round(fraction * n)`` of ``range(n)`` (at least 1), sorted: a label budget."""
    if not 0 < fraction <= 1:
        raise DataError(f"train_fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed + 7919)  # independent of the train/val split
    keep = max(1, round(fraction * n))
    return torch.randperm(n, generator=g)[:keep].sort().values
