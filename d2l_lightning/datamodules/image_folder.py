"""Folder-per-class image DataModule (d2l §14.2), served from a memory-mapped tensor cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .base import TensorDataModule, check_val_size
from .download import DataError
from .folder import FolderCache, folder_splits, load_folder
from .idx import subsample


class ImageFolderDataModule(TensorDataModule):
    """``root/{train,val[,test]}/<class>/*.{png,jpg,jpeg}`` as uint8 tensors (d2l §14.2).

    Images are decoded once into ``root/.d2l-cache/`` (a read-only folder's into the user's
    cache folder; see :mod:`datamodules.folder`) and batches come from tensor indexing, as for
    MNIST. Without ``val/``, a seeded ``val_size`` share of ``train/`` validates; without
    ``test/``, the test metrics are the validation split's (said once). Augmentation runs on
    the device in the task module: a random resized crop and flip for training, a centre crop
    for evaluation, at the same size.

    Args:
        root: the dataset folder (``data.root``); ``--data-dir`` may give it instead.
        data_dir: the dataset folder, as ``--data-dir PATH``.
        batch_size: batch size.
        seed: seed of the split, the label subset and the shuffling.
        val_size: validation images taken from ``train/`` when there is no ``val/`` (default:
            1/12; at least 1 and fewer than ``train/``'s images; refused with ``val/``).
        image_size: cached side length (default: the first training image's shorter side).
        channels: 1 or 3 (default: 3 if any image has colour, else 1).
        augment: random resized crop + flip for training (centre crop for evaluation).
        min_crop: smallest crop area of the training augmentation (fraction of the image).
        flip: the training augmentation also flips horizontally (not for digits or text).
        train_fraction: keep this seeded fraction of the training images (label budget).
        on_device: see :class:`datamodules.base.TensorDataModule`.
    """

    def __init__(self, root: str | None = None, data_dir: str | Path | None = None,
                 batch_size: int = 64, seed: int = 0, val_size: int | None = None,
                 image_size: int | None = None, channels: int | None = None,
                 augment: bool = True, min_crop: float = 0.25, flip: bool = True,
                 train_fraction: float = 1.0, on_device: bool | str = "auto") -> None:
        super().__init__(batch_size, seed, on_device)
        if root and data_dir and Path(root) != Path(data_dir):
            raise DataError(f"image_folder: data.root {root} and --data-dir {data_dir} differ; "
                            "give one")
        if not (root or data_dir):
            raise DataError("image_folder needs its folder: --data-dir PATH or data.root")
        if not 0 < min_crop <= 1:
            raise DataError(f"min_crop must be in (0, 1], got {min_crop}")
        check_val_size(val_size)
        subsample(2, train_fraction, seed)  # refuse a bad fraction before anything is written
        self.root = Path(root or data_dir).expanduser()
        self.val_size, self.image_size_arg, self.channels = val_size, image_size, channels
        self.augment, self.min_crop, self.train_fraction = augment, min_crop, train_fraction
        self.flip = flip
        self.cache: FolderCache | None = None
        self.test_is_val = False

    def prepare_data(self) -> None:
        """Scan and decode the folder (or reuse its cache); a new cache is written in setup.

        Raises:
            DataError: a bad folder (see :func:`datamodules.folder.load_folder`), or a
                ``val_size`` that does not fit it (before anything is written).
        """
        cache = self._load()
        if self.val_size is None:
            return
        if "val" in cache.splits:
            raise DataError(f"data.val_size {self.val_size} does not apply: {self.root} has a "
                            "val/ folder, which is the validation split; drop --val-size")
        n = cache.splits["train"][1] - cache.splits["train"][0]
        check_val_size(self.val_size, n, f"the {n} training images of {self.root / 'train'}")

    def _load(self) -> FolderCache:
        if self.cache is None:
            self.cache = load_folder(self.root, self.image_size_arg, self.channels, write=False)
        return self.cache

    def setup(self, stage: str | None = None) -> None:
        """Memory-map the cache and split it."""
        if self.train_set is not None:
            return
        cache = self.cache = self._load().persist()  # after train.py's checks: now it is kept
        splits, self.test_is_val = folder_splits(cache, self.seed, self.val_size,
                                                 self.train_fraction)
        self.train_set, self.val_set, self.test_set = (splits[s] for s in ("train", "val", "test"))
        if self.test_is_val:
            print(f"note: {self.root} has no test/ folder: test metrics are on the validation "
                  "split", flush=True)

    def data_info(self) -> dict[str, Any]:
        """Classes, channels, cached side, per-channel statistics, augmentation.

        The statistics are the training split's: not those of validation images held out of
        ``train/`` (nor of images a ``train_fraction`` leaves out).
        """
        cache = self._load()
        images = folder_splits(cache, self.seed, self.val_size, self.train_fraction)[0]["train"][0]
        sums = torch.zeros(2, images.shape[1], dtype=torch.float64)
        for i in range(0, len(images), 1024):  # chunked: the cache may exceed memory as floats
            x = images[i:i + 1024].double().div_(255)  # (n, C, S, S)
            sums += torch.stack([x.sum(dim=(0, 2, 3)), x.square().sum(dim=(0, 2, 3))])
        count = images.shape[0] * images.shape[2] * images.shape[3]
        mean = sums[0] / count
        std = (sums[1] / count - mean.square()).clamp_min(1e-6).sqrt()
        mean, std = mean.tolist(), std.tolist()
        return {"num_classes": len(cache.classes), "in_channels": int(images.shape[1]),
                "image_size": int(images.shape[-1]), "mean": mean, "std": std,
                "class_names": list(cache.classes),
                "augment": self.min_crop if self.augment else None, "flip": self.flip}
