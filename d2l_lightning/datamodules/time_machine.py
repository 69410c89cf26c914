"""*The Time Machine* (H. G. Wells) as character- or word-level language-model data (d2l §9.2)."""

from __future__ import annotations

from typing import Literal

from .corpora import TIME_MACHINE
from .download import DataError
from .language_model import LanguageModelDataModule
from .lm_text import time_machine_splits
from .text import Vocab


class TimeMachineDataModule(LanguageModelDataModule):
    """H. G. Wells, *The Time Machine* (d2l §9.2): characters (or words) of the book.

    d2l preprocessing (runs of non-letters become one space, lower-case). The last
    ``val_fraction`` of the tokens is held out: it is both the validation and the test split
    (the model never trains on it); the vocabulary comes from the training part. The real file
    gives 173,428 characters and 28 tokens including ``<unk>``.

    Args:
        data_dir, batch_size, seed, num_steps, eval_batch_size, on_device: see
            :class:`LanguageModelDataModule` (d2l: batch 1024, ``num_steps`` 32).
        level: ``char`` (d2l) or ``word``.
        sampler: ``random`` (default) or ``sequential``.
        val_fraction: held-out tail of the book.
        max_tokens: train on only the first ``max_tokens`` tokens of the book (d2l 0.17's
            ``load_corpus_time_machine(max_tokens=10000)``, the setting of the perplexities the
            book prints); the vocabulary and the held-out tail stay those of the whole book.
    """

    preprocess = "time_machine"
    random_offset = True

    def __init__(self, data_dir: str | None = None, batch_size: int = 1024, seed: int = 0,
                 num_steps: int = 32, level: Literal["char", "word"] = "char",
                 sampler: Literal["random", "sequential"] = "random",
                 val_fraction: float = 0.1, eval_batch_size: int | None = None,
                 max_tokens: int | None = None, on_device: bool | str = "auto") -> None:
        super().__init__(data_dir, batch_size, seed, num_steps, sampler, eval_batch_size,
                         on_device)
        if level not in ("char", "word"):
            raise DataError(f"unknown token level '{level}'; choose from: char, word")
        if not 0.0 < val_fraction < 1.0:
            raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if max_tokens is not None and max_tokens < 2:
            raise DataError(f"max_tokens must be at least 2, got {max_tokens}")
        self.level, self.val_fraction, self.max_tokens = level, val_fraction, max_tokens
        self.sample_prefix = "time traveller " if level == "char" else "time traveller"

    def prepare_data(self) -> None:
        """Locate (or download) the book; one clear error offline (checked when read)."""
        TIME_MACHINE.prepare(self.data_dir)

    def load(self) -> tuple[dict[str, list[str]], Vocab]:
        """The book's tokens, split into training text and a held-out tail."""
        return time_machine_splits(self.data_dir, self.level, self.val_fraction, self.max_tokens)
