"""The DataModule interface of ``train.py``, and the base for datasets held in memory."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from .download import DataError
from .loader import TensorBatchLoader, check_on_device, eval_loader, resident_device


def check_val_size(val_size: int | None, n: int | None = None, of: str = "") -> None:
    """Refuse a validation size below 1, or one that leaves nothing of ``n`` to train on.

    ``None`` is the DataModule's default; ``n`` (the training set's size) may be unknown.

    Raises:
        DataError: one sentence naming ``data.val_size`` and ``of`` (the training set).
    """
    if val_size is None:
        return
    if val_size < 1:
        raise DataError(f"data.val_size must be at least 1 (validation examples), got "
                        f"{val_size}; leave it unset for the default, 1/12 of the training set")
    if n is not None and val_size >= n:
        raise DataError(f"data.val_size {val_size} must be less than {of} (at most {n - 1}), "
                        "so that some are left to train on")


class DataModule(L.LightningDataModule):
    """What ``train.py`` needs from a DataModule besides Lightning's hooks (d2l's ``DataModule``).

    Its constructor arguments are the ``data`` section of the run config (checked against their
    type hints; ``seed`` comes from ``run.seed``).
    """

    def data_info(self) -> dict[str, Any]:
        """What the task module must know about the data, e.g. classes or the vocabulary.

        The keys are the task module's ``data_args``: ``ImageClassificationTask``:
        ``num_classes``, ``in_channels``, ``image_size``, ``mean``, ``std``, ``class_names``;
        ``LanguageModelingTask``: ``vocab``, ``carry_state``, ``token_level``,
        ``text_preprocess``, ``sample_prefix``; ``TranslationTask``: ``src_vocab``,
        ``tgt_vocab``, ``num_steps``; ``MaskedLMTask``: ``vocab``, ``max_len``;
        ``RegressionTask``: ``num_inputs``. ``train.py`` refuses any other key.
        """
        raise NotImplementedError

    def sizes(self) -> dict[str, int]:
        """Examples (or tokens) per split after :meth:`setup`, for ``results.json``."""
        raise NotImplementedError

    #: ``data.on_device`` (set by subclasses' constructors): ``auto``, ``True`` or ``False``
    on_device: bool | str = False
    _device: torch.device | None | bool = False  # not resolved yet

    def _split_tensors(self) -> list[torch.Tensor]:
        """Every tensor the loaders would hold on the device (for ``on_device="auto"``)."""
        raise NotImplementedError

    def data_device(self) -> torch.device | None:
        """Where the loaders hold the splits: the training device, or ``None`` (the host).

        Decided once, when the first loader is built (see :func:`resident_device`).
        """
        if self._device is False:
            strategy = getattr(self.trainer, "strategy", None)  # no trainer: the host
            device = getattr(strategy, "root_device", None)
            nbytes = 0
            if device is not None and self.on_device == "auto" and device.type == "cuda":
                nbytes = sum(t.nbytes for t in self._split_tensors())
            self._device = resident_device(self.on_device, device, nbytes)
        return self._device


class TensorDataModule(DataModule):
    """Serves in-memory ``(inputs..., target)`` tensors through :class:`TensorBatchLoader`.

    Subclasses fill ``self.train_set``, ``self.val_set`` and ``self.test_set`` (tuples of equally
    long tensors, target last) in :meth:`setup`. Training batches are reshuffled each epoch from
    ``seed`` and padded evenly across DDP ranks; evaluation batches are unpadded, so metrics
    synced across ranks cover every example exactly once.

    Args:
        batch_size: training (and evaluation) batch size.
        seed: seed of the split and the shuffling.
        on_device: hold the splits on the training device and index there: ``True``,
            ``False`` or ``"auto"`` (on for CUDA when they take at most a quarter of the free
            device memory).
    """

    def __init__(self, batch_size: int = 256, seed: int = 0,
                 on_device: bool | str = "auto") -> None:
        super().__init__()
        check_on_device(on_device)
        self.batch_size = batch_size
        self.seed = seed
        self.on_device = on_device
        self.train_set: tuple[torch.Tensor, ...] | None = None
        self.val_set: tuple[torch.Tensor, ...] | None = None
        self.test_set: tuple[torch.Tensor, ...] | None = None

    def _loader(self, split: str, train: bool) -> TensorBatchLoader:
        tensors = getattr(self, f"{split}_set")
        if tensors is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not loaded the {split} split")
        rank, world = 0, 1
        if self.trainer is not None:
            rank, world = self.trainer.global_rank, self.trainer.world_size
        device = self.data_device()
        if device is not None:  # moved once; the loaders of later stages reuse the copy
            resident = self.__dict__.setdefault("_resident", {})
            if resident.get(split, (None,))[0] is not tensors[0]:
                resident[split] = (tensors[0], tuple(t.to(device) for t in tensors))
            tensors = resident[split][1]
        if not train:
            return eval_loader(tensors, self.batch_size, rank, world, device)
        return TensorBatchLoader(tensors, self.batch_size, shuffle=True, seed=self.seed,
                                 rank=rank, world_size=world, even=True, device=device)

    def _split_tensors(self) -> list[torch.Tensor]:
        return [t for s in (self.train_set, self.val_set, self.test_set) if s for t in s]

    def train_dataloader(self) -> TensorBatchLoader:
        """Shuffled training batches."""
        return self._loader("train", train=True)

    def val_dataloader(self) -> TensorBatchLoader:
        """Validation batches in order."""
        return self._loader("val", train=False)

    def test_dataloader(self) -> TensorBatchLoader:
        """Test batches in order."""
        return self._loader("test", train=False)

    def sizes(self) -> dict[str, int]:
        """Number of examples per split (after :meth:`setup`)."""
        return {k: len(v[0]) for k, v in
                (("train", self.train_set), ("val", self.val_set), ("test", self.test_set)) if v}
