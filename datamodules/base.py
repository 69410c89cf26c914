"""The DataModule interface of ``train.py``, and the base for datasets held in memory."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from .loader import TensorBatchLoader


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


class TensorDataModule(DataModule):
    """Serves in-memory ``(inputs..., target)`` tensors through :class:`TensorBatchLoader`.

    Subclasses fill ``self.train_set``, ``self.val_set`` and ``self.test_set`` (tuples of equally
    long tensors, target last) in :meth:`setup`. Training batches are reshuffled each epoch from
    ``seed`` and padded evenly across DDP ranks; evaluation batches are unpadded, so metrics
    synced across ranks cover every example exactly once.

    Args:
        batch_size: training (and evaluation) batch size.
        seed: seed of the split and the shuffling.
    """

    def __init__(self, batch_size: int = 256, seed: int = 0) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.seed = seed
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
        return TensorBatchLoader(tensors, self.batch_size, shuffle=train, seed=self.seed,
                                 rank=rank, world_size=world, even=train)

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
