"""Language-model batches (d2l §9.3) and the DataModule base of the language-model corpora.

Two samplers turn a token stream into ``(X, Y)`` batches, ``Y`` being ``X`` shifted by one:

- ``random`` (d2l §9.3 random sampling): each epoch starts at a random offset below
  ``num_steps``, cuts the rest into non-overlapping windows and shuffles them; no hidden state
  can be carried from one batch to the next.
- ``sequential`` (d2l §9.3 sequential partitioning, pytorch/examples ``batchify``): the stream
  is cut into ``batch_size`` contiguous rows; batch ``i + 1`` continues batch ``i`` in every
  row, so a recurrent model may carry its (detached) hidden state across batches.

Both loaders are seeded per epoch, shard across DDP ranks (each rank gets its own windows or
its own rows) and record how many batches of the epoch they served, so a mid-epoch checkpoint
resumes on the exact next batch, as :class:`datamodules.loader.TensorBatchLoader` does.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Literal

import torch

from .base import DataModule
from .download import DataError
from .loader import IndexSampler, ResumableLoader, check_on_device, to_device
from .text import Vocab

SAMPLERS = ("random", "sequential")


def _offset(seed: int, epoch: int, num_steps: int) -> int:
    """The epoch's random start offset in ``[0, num_steps)``, the same on every rank."""
    g = torch.Generator().manual_seed((seed + 1) * 1_000_003 + epoch)
    return int(torch.randint(num_steps, (1,), generator=g))


class RandomWindowLoader(ResumableLoader):
    """d2l §9.3 random sampling over a 1-D ``corpus`` of token ids.

    Every epoch has the same number of windows, ``(len(corpus) - num_steps) // num_steps``,
    whatever its offset; the last batch may have fewer rows.

    Args:
        corpus: ``int64`` token ids, shape ``(N,)``.
        batch_size: windows per batch (per rank).
        num_steps: tokens per window.
        seed, rank, world_size: see :class:`datamodules.loader.IndexSampler`.
        device: hold the corpus on this device and cut the windows there (``None``: where it
            is).
    """

    def __init__(self, corpus: torch.Tensor, batch_size: int, num_steps: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1,
                 device: torch.device | None = None) -> None:
        super().__init__()
        n = (len(corpus) - num_steps) // num_steps
        if n < 1:
            raise DataError(f"{len(corpus)} tokens are too few for windows of {num_steps} "
                            "(lower --num-steps)")
        self.corpus = to_device(corpus, device)
        self.batch_size, self.num_steps = batch_size, num_steps
        self.seed, self.device = seed, device
        self.sampler = IndexSampler(n, shuffle=True, seed=seed, rank=rank,
                                    world_size=world_size, even=True)
        self._steps = to_device(torch.arange(num_steps + 1), device)

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def window_starts(self) -> torch.Tensor:
        """This epoch's window starts on this rank, in batch order."""
        offset = _offset(self.seed, self.sampler.epoch, self.num_steps)
        return offset + self.sampler.indices() * self.num_steps

    def _batches(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        starts = to_device(self.window_starts(), self.device)  # one copy per epoch
        for b in range(start, len(self)):
            s = starts[b * self.batch_size:(b + 1) * self.batch_size]
            windows = self.corpus[s[:, None] + self._steps]  # (B, T + 1)
            yield windows[:, :-1], windows[:, 1:]


class SequentialLoader(ResumableLoader):
    """Sequential partitioning: ``batch_size`` contiguous streams per rank (``batchify``).

    The corpus is cut into ``batch_size * world_size`` equally long rows (rank ``r`` takes rows
    ``r * batch_size ...``); batch ``i`` holds columns ``[i * num_steps, (i + 1) * num_steps)``
    and its targets one column later. The last batch may be shorter in time, so every target
    token of a row is predicted exactly once.

    Args:
        corpus: ``int64`` token ids, shape ``(N,)``.
        batch_size: streams (rows) per rank.
        num_steps: tokens per batch row (pytorch/examples ``bptt``).
        random_offset: drop a random number (< ``num_steps``) of leading tokens each epoch, as
            d2l's ``seq_data_iter_sequential``, so window boundaries move between epochs.
        seed, rank, world_size, device: as :class:`RandomWindowLoader`.
    """

    def __init__(self, corpus: torch.Tensor, batch_size: int, num_steps: int,
                 random_offset: bool = False, seed: int = 0, rank: int = 0,
                 world_size: int = 1, device: torch.device | None = None) -> None:
        super().__init__()
        streams = batch_size * world_size
        spare = num_steps - 1 if random_offset else 0
        self.length = (len(corpus) - spare) // streams  # tokens per row
        if self.length < 2:
            raise DataError(f"{len(corpus)} tokens are too few for {streams} streams: if the "
                            "text file is empty or cut short, delete it so it is downloaded "
                            "again (or point --data-dir at a complete copy); else lower "
                            "--batch-size")
        self.corpus, self.device = to_device(corpus, device), device
        self.batch_size, self.num_steps = batch_size, num_steps
        self.random_offset, self.seed, self.rank, self.streams = random_offset, seed, rank, streams
        self.sampler = IndexSampler(1, shuffle=False)  # only tracks the epoch

    def __len__(self) -> int:
        return math.ceil((self.length - 1) / self.num_steps)

    def rows(self) -> torch.Tensor:
        """This epoch's streams of this rank, ``(batch_size, length)``."""
        offset = _offset(self.seed, self.sampler.epoch, self.num_steps) if self.random_offset else 0
        data = self.corpus[offset:offset + self.streams * self.length]
        data = data.view(self.streams, self.length)  # (streams, L)
        return data[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def _batches(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        data = self.rows()
        for b in range(start, len(self)):
            i = b * self.num_steps
            t = min(self.num_steps, self.length - 1 - i)
            yield data[:, i:i + t].contiguous(), data[:, i + 1:i + 1 + t].contiguous()


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
        self.eval_batch_size = eval_batch_size or min(batch_size, 64)
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
        corpus = self._corpus(split)
        streams = max(1, min(self.eval_batch_size, (len(corpus) - 1) // (2 * world)))
        return SequentialLoader(corpus, streams, self.num_steps, rank=rank, world_size=world,
                                device=self.data_device())

    def val_dataloader(self) -> SequentialLoader:
        """Sequential streams of the validation split."""
        return self._eval_loader("val")

    def test_dataloader(self) -> SequentialLoader:
        """Sequential streams of the test split."""
        return self._eval_loader("test")
