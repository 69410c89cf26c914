"""Language-model data without Lightning: the corpora's token splits and their batches (d2l §9).

The token splits of *The Time Machine* (d2l §9.2) and WikiText, the vocabulary built from the
training split, and the two samplers that turn a token stream into ``(X, Y)`` batches, ``Y``
being ``X`` shifted by one (d2l §9.3):

- ``random`` (d2l §9.3 random sampling): each epoch starts at a random offset below
  ``num_steps``, cuts the rest into non-overlapping windows and shuffles them; no hidden state
  can be carried from one batch to the next.
- ``sequential`` (d2l §9.3 sequential partitioning, pytorch/examples ``batchify``): the stream
  is cut into ``batch_size`` contiguous rows; batch ``i + 1`` continues batch ``i`` in every
  row, so a recurrent model may carry its (detached) hidden state across batches.

Both loaders are seeded per epoch, shard across DDP ranks (each rank gets its own windows or
its own rows) and record how many batches of the epoch they served, so a mid-epoch checkpoint
resumes on the exact next batch, as :class:`datamodules.loader.TensorBatchLoader` does.
:mod:`datamodules.language_model` serves them as DataModules; ``predict.py eval`` reads the
same splits and evaluation batches here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from .corpora import TIME_MACHINE, read_time_machine, read_wikitext
from .download import DataError
from .loader import IndexSampler, ResumableLoader, to_device
from .text import Vocab, preprocess_time_machine, tokenize

#: WikiText's end-of-line token (pytorch/examples ``Corpus.tokenize``)
EOS = "<eos>"

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


def default_eval_batch_size(batch_size: int, eval_batch_size: int | None) -> int:
    """Validation / test streams: ``eval_batch_size``, else ``min(batch_size, 64)``."""
    return eval_batch_size or min(batch_size, 64)


def eval_stream_loader(corpus: torch.Tensor, batch_size: int, num_steps: int, rank: int = 0,
                world_size: int = 1, device: torch.device | None = None) -> SequentialLoader:
    """Validation / test batches: sequential streams without offset (every target token once).

    At most ``batch_size`` streams per rank, fewer when the split is too short to give each
    stream two tokens.
    """
    streams = max(1, min(batch_size, (len(corpus) - 1) // (2 * world_size)))
    return SequentialLoader(corpus, streams, num_steps, rank=rank, world_size=world_size,
                            device=device)


def time_machine_splits(data_dir: str | None, level: str, val_fraction: float,
                        max_tokens: int | None) -> tuple[dict[str, list[str]], Vocab]:
    """*The Time Machine*'s tokens: training text and a held-out tail (val = test), d2l §9.2.

    d2l preprocessing (runs of non-letters become one space, lower-case), ``char`` or ``word``
    tokens. The last ``val_fraction`` of the tokens is both the validation and the test split;
    the vocabulary comes from the training part, of which only the first ``max_tokens`` train.
    """
    tokens = tokenize(preprocess_time_machine(read_time_machine(data_dir)), level)
    n_val = max(1, int(len(tokens) * val_fraction))
    if len(tokens) - n_val < 2:
        raise DataError(
            f"The Time Machine ({TIME_MACHINE.path('timemachine.txt', data_dir)}) holds "
            f"only {len(tokens)} {level} tokens: the file is empty or cut short; delete "
            "it so it is downloaded again, or point --data-dir at a complete copy")
    train, tail = tokens[:-n_val], tokens[-n_val:]
    return {"train": train[:max_tokens], "val": tail, "test": tail}, Vocab(train)


def wikitext_tokens(lines: list[str]) -> list[str]:
    """Words of every line followed by ``<eos>`` (pytorch/examples ``Corpus.tokenize``)."""
    out: list[str] = []
    for line in lines:
        out += line.split()
        out.append(EOS)
    return out


def wikitext_splits(name: str, data_dir: str | None) -> tuple[dict[str, list[str]], Vocab]:
    """Tokens of WikiText's official splits (``name``: ``wikitext2`` or ``wikitext103``).

    The vocabulary holds every type of the training split, ``<eos>`` first after ``<unk>``.
    """
    tokens = {split: wikitext_tokens(read_wikitext(name, file, data_dir))
              for split, file in (("train", "train"), ("val", "valid"), ("test", "test"))}
    return tokens, Vocab(tokens["train"], reserved_tokens=[EOS])
