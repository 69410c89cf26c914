"""MNIST and Fashion-MNIST DataModules (d2l §4.2) on the fast in-memory path.

Images stay uint8 ``(N, 28, 28)`` tensors in memory; batches are built by tensor indexing, and
normalisation / resizing happen per batch on the model's device (see
:func:`models.preprocess_images`, called by the ``ImageClassificationTask``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from .base import TensorDataModule, check_val_size
from .download import resolve_data_dir
from .idx import (
    FASHION_MNIST,
    MNIST,
    IDXDataset,
    _count,
    check_setting,
    find_file,
    idx_splits,
    prepare_idx,
    subsample,
)


class IDXDataModule(TensorDataModule):
    """Shared base of the IDX vision datasets: seeded train/val split, official test set.

    Args:
        data_dir: data root (``--data-dir``, else ``$D2L_DATA_DIR``, else ``./data``).
        batch_size: batch size.
        seed: seed of the train/val split and the shuffling.
        val_size: validation examples taken from the official training set (default: 1/12,
            i.e. the 55k/5k split of the full data; at least 1 and fewer than the training
            set).
        train_fraction: keep this seeded fraction of the training split (a label budget for
            transfer learning, d2l §14.2); validation and test stay whole.
        setting: ``"split"`` (default: the seeded split above, pixels normalised by the
            dataset's mean and std) or ``"book"``, d2l's ``load_data_fashion_mnist``: train on
            all 60,000 training images, validate on the official test set (val == test) and
            feed pixels in [0, 1] without normalisation (``mean`` 0, ``std`` 1, which the
            export's preprocessing carries).
        on_device: see :class:`datamodules.base.TensorDataModule`.
    """

    dataset: IDXDataset

    def __init__(self, data_dir: str | Path | None = None, batch_size: int = 256, seed: int = 0,
                 val_size: int | None = None, train_fraction: float = 1.0,
                 setting: Literal["split", "book"] = "split",
                 on_device: bool | str = "auto") -> None:
        super().__init__(batch_size, seed, on_device)
        check_setting(setting, val_size)  # refused before anything is written
        check_val_size(val_size)
        self.data_dir = resolve_data_dir(data_dir)
        self.val_size, self.setting = val_size, setting
        self.train_fraction = train_fraction
        subsample(2, train_fraction, seed)  # refuse a bad fraction before anything is written

    def prepare_data(self) -> None:
        """Download missing files (rank 0 only, as Lightning calls it); check ``val_size``.

        Raises:
            DataError: missing files that cannot be downloaded, or a ``val_size`` that leaves
                no training image (before the run folder is made).
        """
        folder = prepare_idx(self.dataset, self.data_dir)
        labels = find_file(folder, "train-labels-idx1-ubyte")
        n = _count(labels) if labels is not None else -1  # from the header; -1: read later
        if n > 0:
            check_val_size(self.val_size, n, f"the {n} training images of "
                           f"{self.dataset.title} in {folder}")

    def setup(self, stage: str | None = None) -> None:
        """Decode the IDX files (once per process) and split train/val (book: val is test)."""
        if self.train_set is not None:
            return
        self.train_set, self.val_set, self.test_set = idx_splits(
            self.dataset, self.data_dir, self.seed, self.val_size, self.setting,
            self.train_fraction).values()

    @property
    def num_classes(self) -> int:
        """Number of classes (10)."""
        return len(self.dataset.classes)

    @property
    def class_names(self) -> list[str]:
        """Human-readable class names, indexed by label."""
        return list(self.dataset.classes)

    @property
    def in_channels(self) -> int:
        """Image channels (1: grey scale)."""
        return 1

    @property
    def image_size(self) -> int:
        """Native side length in pixels (28)."""
        return 28

    @property
    def mean(self) -> tuple[float]:
        """Per-channel pixel mean of the [0, 1]-scaled official training set (book: 0)."""
        return (0.0,) if self.setting == "book" else (self.dataset.mean,)

    @property
    def std(self) -> tuple[float]:
        """Per-channel pixel standard deviation of the same (book: 1, no normalisation)."""
        return (1.0,) if self.setting == "book" else (self.dataset.std,)

    def data_info(self) -> dict[str, Any]:
        """What a model needs to know about the data (sizes, statistics, classes)."""
        return {"num_classes": self.num_classes, "in_channels": self.in_channels,
                "image_size": self.image_size, "mean": list(self.mean), "std": list(self.std),
                "class_names": self.class_names}


class MNISTDataModule(IDXDataModule):
    """Handwritten digits, ``DATA_DIR/mnist/`` (LeCun & Cortes, CC BY-SA 3.0)."""

    dataset = MNIST


class FashionMNISTDataModule(IDXDataModule):
    """Zalando's clothing images, ``DATA_DIR/fashion-mnist/`` (MIT), d2l §4.2."""

    dataset = FASHION_MNIST
