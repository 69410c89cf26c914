"""The DataModule base of the language-model corpora (d2l §9.3).

The samplers (``random`` windows or ``sequential`` streams) and the evaluation batches live in
the Lightning-free :mod:`datamodules.lm_text`, which ``predict.py eval`` reads as well.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from .base import DataModule
from .download import DataError
from .lm_text import (
    SAMPLERS,
    RandomWindowLoader,
    SequentialLoader,
    default_eval_batch_size,
    eval_stream_loader,
)
from .loader import check_on_device, to_device
from .text import Vocab


class LanguageModelDataModule(DataModule):
    """Token streams of a train/val/test split served as language-model batches.

    Subclasses implement :meth:`load` (token lists per split and the vocabulary) and set
    ``level``, ``preprocess`` (a key of ``datamodules.text.TEXT_PREPROCESSORS``) and
    ``sample_prefix`` (a prompt of known tokens for the sample-generation callback).
    Validation and test always use sequential partitioning without offset (every target token
    once); the hidden state is carried there too when training carries it.

    Args:
        data_dir: data root.
        batch_size: training batch size (windows or streams per rank).
        seed: seed of the window order and offsets.
        num_steps: tokens per sequence (d2l ``num_steps``, pytorch/examples ``bptt``).
        sampler: ``random`` or ``sequential``.
        eval_batch_size: streams of the validation / test splits (default:
            ``min(batch_size, 64)``).
        on_device: hold the int64 token streams on the training device and cut the batches
            there: ``True``, ``False`` or ``"auto"`` (see
            :meth:`datamodules.base.DataModule.data_device`).
    """

    level = "word"
    preprocess = "none"
    sample_prefix = "the"
    #: sequential training batches start at a random offset each epoch (d2l), else at 0
    random_offset = False

    def __init__(self, data_dir: str | None = None, batch_size: int = 32, seed: int = 0,
                 num_steps: int = 35, sampler: Literal["random", "sequential"] = "sequential",
                 eval_batch_size: int | None = None, on_device: bool | str = "auto") -> None:
        super().__init__()
        check_on_device(on_device)
        self.on_device = on_device
        if sampler not in SAMPLERS:
            raise DataError(f"unknown sampler '{sampler}'; choose from: {', '.join(SAMPLERS)}")
        for name, value in (("batch_size", batch_size), ("num_steps", num_steps),
                            ("eval_batch_size", eval_batch_size or 1)):
            if value < 1:
                raise DataError(f"{name} must be positive, got {value}")
        self.data_dir, self.batch_size, self.seed = data_dir, batch_size, seed
        self.num_steps, self.sampler = num_steps, sampler
        self.eval_batch_size = default_eval_batch_size(batch_size, eval_batch_size)
        self.vocab: Vocab | None = None
        self.corpora: dict[str, torch.Tensor] = {}

    def load(self) -> tuple[dict[str, list[str]], Vocab]:
        """Tokens of ``train``, ``val`` and ``test``, and the vocabulary (from ``train``)."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Tokenize and encode the splits once."""
        if self.vocab is not None:
            return
        tokens, vocab = self.load()
        self.corpora = {k: vocab.encode(v) for k, v in tokens.items()}
        self.vocab = vocab

    def data_info(self) -> dict[str, Any]:
        """Task-module arguments: vocabulary, state carrying, how to encode prompts."""
        self.setup()
        return {"vocab": self.vocab.to_json(), "carry_state": self.sampler == "sequential",
                "token_level": self.level, "text_preprocess": self.preprocess,
                "sample_prefix": self.sample_prefix}

    def sizes(self) -> dict[str, int]:
        """Tokens per split and the vocabulary size (after :meth:`setup`)."""
        return {**{k: len(v) for k, v in self.corpora.items()},
                "vocab": len(self.vocab) if self.vocab else 0}

    def _rank(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _split_tensors(self) -> list[torch.Tensor]:
        return list(self.corpora.values())

    def _corpus(self, split: str) -> torch.Tensor:
        """The split's token stream, moved once to :meth:`data_device` if it is set."""
        device = self.data_device()
        if device is None:
            return self.corpora[split]
        resident = self.__dict__.setdefault("_resident", {})
        if split not in resident:
            resident[split] = to_device(self.corpora[split], device)
        return resident[split]

    def train_dataloader(self) -> RandomWindowLoader | SequentialLoader:
        """Random windows or sequential streams of the training split."""
        rank, world = self._rank()
        corpus, device = self._corpus("train"), self.data_device()
        if self.sampler == "random":
            return RandomWindowLoader(corpus, self.batch_size, self.num_steps, self.seed, rank,
                                      world, device=device)
        return SequentialLoader(corpus, self.batch_size, self.num_steps,
                                random_offset=self.random_offset, seed=self.seed, rank=rank,
                                world_size=world, device=device)

    def _eval_loader(self, split: str) -> SequentialLoader:
        rank, world = self._rank()
        return eval_stream_loader(self._corpus(split), self.eval_batch_size, self.num_steps, rank,
                           world, self.data_device())

    def val_dataloader(self) -> SequentialLoader:
        """Sequential streams of the validation split."""
        return self._eval_loader("val")

    def test_dataloader(self) -> SequentialLoader:
        """Sequential streams of the test split."""
        return self._eval_loader("test")
