"""A DataLoader replacement for in-memory tensors: batches are built by tensor indexing.

No per-sample Python and no worker processes: one ``index_select`` per tensor per batch. The
sampler is seeded per epoch and sharded across ranks like ``DistributedSampler``; the loader
records how many batches of the epoch it has served, so a mid-epoch checkpoint resumes on the
exact next batch (Lightning saves ``state_dict()`` of stateful loaders in its checkpoints).

Device-resident data (``data.on_device``): with a ``device``, a loader holds its tensors on
that device and builds every batch there (the epoch's indices cross once, in one non-blocking
copy), so Lightning's batch transfer finds the batch already in place. The indices are drawn
on the host exactly as without a device, so the batches are the same.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

#: values of ``data.on_device``: ``auto`` is on for a CUDA device when the splits fit
ON_DEVICE = ("auto", True, False)
#: ``on_device="auto"``: the splits may take at most this share of the free device memory
AUTO_MEMORY_SHARE = 0.25


def check_on_device(value: bool | str) -> None:
    """Refuse an ``on_device`` value other than ``auto``, ``true`` or ``false``."""
    if value not in ON_DEVICE or isinstance(value, int) and not isinstance(value, bool):
        from .download import DataError

        raise DataError(f"on_device must be auto, true or false, got {value!r}")


def resident_device(on_device: bool | str, device: torch.device | None,
                    nbytes: int) -> torch.device | None:
    """The device the splits should live on (``None``: stay on the host).

    Args:
        on_device: ``True``, ``False`` or ``"auto"`` (on for CUDA when ``nbytes`` is at most
            :data:`AUTO_MEMORY_SHARE` of the free device memory; off on the CPU).
        device: the training device (``None``: no trainer, e.g. a DataModule used alone).
        nbytes: bytes of all the splits that would move.
    """
    if device is None or on_device is False:
        return None
    if on_device == "auto":
        if device.type != "cuda":
            return None
        free, _ = torch.cuda.mem_get_info(device)
        return device if nbytes <= AUTO_MEMORY_SHARE * free else None
    return device


def to_device(tensor: torch.Tensor, device: torch.device | None) -> torch.Tensor:
    """``tensor`` on ``device`` (``None``: unchanged); host indices cross without blocking."""
    if device is None or tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


class IndexSampler:
    """Per-epoch index order for one rank.

    Args:
        n: dataset size.
        shuffle: draw a fresh permutation each epoch from ``(seed, epoch)``.
        seed: base seed, shared by all ranks.
        rank: this process's rank.
        world_size: number of ranks.
        even: pad by wrap-around so every rank gets the same count (needed for training under
            DDP); ``False`` gives each rank a disjoint, unpadded share (exact evaluation).
    """

    def __init__(self, n: int, shuffle: bool, seed: int = 0, rank: int = 0,
                 world_size: int = 1, even: bool = True) -> None:
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size, self.even = rank, world_size, even
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of each epoch."""
        self.epoch = epoch

    def indices(self) -> torch.Tensor:
        """This rank's indices for the current epoch."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            idx = torch.randperm(self.n, generator=g)
        else:
            idx = torch.arange(self.n)
        if self.world_size > 1:
            if self.even:
                total = math.ceil(self.n / self.world_size) * self.world_size
                idx = torch.cat([idx, idx[: total - self.n]]) if total > self.n else idx
            idx = idx[self.rank :: self.world_size]
        return idx

    def __len__(self) -> int:
        if self.world_size == 1:
            return self.n
        if self.even:
            return math.ceil(self.n / self.world_size)
        return len(range(self.rank, self.n, self.world_size))


class ResumableLoader:
    """Base of our loaders: counts the batches served so a checkpoint resumes exactly.

    Subclasses set ``self.sampler`` (anything with ``epoch`` and ``set_epoch``, which Lightning
    calls each epoch) and implement ``_batches(start)``, the epoch's batches from index
    ``start`` on. Lightning saves :meth:`state_dict` in mid-epoch checkpoints.
    """

    sampler: Any
    batch_sampler = None  # as torch's DataLoader; Lightning inspects both attributes

    def __init__(self) -> None:
        self._served = 0  # batches of the current epoch already handed out
        self._resume_at = 0

    def _batches(self, start: int) -> Iterator[tuple[torch.Tensor, ...]]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        start, self._resume_at = self._resume_at, 0
        for b, batch in enumerate(self._batches(start), start):
            self._served = b + 1
            yield batch
        self._served = 0

    def state_dict(self) -> dict[str, Any]:
        """Position in the epoch, saved by Lightning in mid-epoch checkpoints."""
        return {"epoch": self.sampler.epoch, "trained": self._served}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume on the batch after the last one trained before the checkpoint."""
        self.sampler.set_epoch(int(state["epoch"]))
        self._resume_at = int(state["trained"])


class TensorBatchLoader(ResumableLoader):
    """Iterate over ``tensors`` in batches of rows selected by :class:`IndexSampler`.

    Args:
        tensors: equally long tensors (e.g. images and labels); each batch is a tuple of slices.
        batch_size: rows per batch.
        shuffle, seed, rank, world_size, even: see :class:`IndexSampler`.
        drop_last: drop a final partial batch.
        device: hold the tensors on this device and index there (``None``: where they are).

    Lightning does not prefetch from iterables that have a length, so at a mid-epoch checkpoint
    every batch served has been trained on (``tests/test_cli.py`` checks the resumed run ends
    with the uninterrupted run's weights).
    """

    def __init__(self, tensors: tuple[torch.Tensor, ...], batch_size: int, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1,
                 even: bool = True, device: torch.device | None = None) -> None:
        n = len(tensors[0])
        if any(len(t) != n for t in tensors):
            raise ValueError("all tensors need the same length")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        super().__init__()
        self.device = device
        self.tensors = tuple(to_device(t, device) for t in tensors)
        self.batch_size, self.drop_last = batch_size, drop_last
        self.sampler = IndexSampler(n, shuffle, seed, rank, world_size, even)

    def __len__(self) -> int:
        m = len(self.sampler)
        return m // self.batch_size if self.drop_last else math.ceil(m / self.batch_size)

    def _batches(self, start: int) -> Iterator[tuple[torch.Tensor, ...]]:
        self.tensors = tuple(to_device(t, self.device) for t in self.tensors)  # a new draw
        idx = to_device(self.sampler.indices(), self.device)  # one copy per epoch
        for b in range(start, len(self)):
            rows = idx[b * self.batch_size : (b + 1) * self.batch_size]
            yield tuple(t.index_select(0, rows) for t in self.tensors)


def eval_loader(tensors: tuple[torch.Tensor, ...], batch_size: int, rank: int = 0,
                world_size: int = 1, device: torch.device | None = None) -> TensorBatchLoader:
    """Evaluation batches of in-memory tensors: in order, unpadded (each rank a disjoint share).

    The validation and test loaders of :class:`datamodules.base.TensorDataModule`, and what
    ``predict.py eval`` iterates, so metrics cover every example exactly once, in one order.
    """
    return TensorBatchLoader(tensors, batch_size, shuffle=False, rank=rank,
                             world_size=world_size, even=False, device=device)
