"""English-French translation data (d2l §10.5) on the in-memory tensor path.

Batches are ``(src, tgt_in, src_valid_len, tgt_out)``: ``(B, num_steps)`` source indices ending
in ``<eos>`` and padded, teacher-forcing decoder inputs starting with ``<bos>``, source valid
lengths ``(B,)`` and the target (last, as the project's batch contract wants).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import TensorDataModule
from .corpora import FRA_ENG, extracted_fra_txt
from .download import resolve_data_dir
from .fra_eng_text import fra_eng_splits


class EngFraDataModule(TensorDataModule):
    """fra-eng pairs with separate source/target vocabularies (``<pad> <bos> <eos>``, min_freq 2).

    Full corpus (default): a seeded split in which every English source sentence lies in exactly
    one split (whole source groups are assigned), so no val/test source appears in training.
    ``max_examples=N`` reproduces the book's tiny setting instead: the first ``N`` pairs, the
    last ``val_size`` (default ``N // 5``) of them for validation, in order as d2l 1.0's
    ``MTFraEng(num_train=512, num_val=128)``, with vocabularies of all N pairs as the book
    builds them; the test split is then the validation split. ``val_size=0`` there is d2l
    0.17's ``load_data_nmt``: training on all N pairs, with validation and test on the same
    (training) pairs, an in-sample measure. In the full corpus the vocabularies come from the
    training split only.

    Args:
        data_dir: data root holding ``fra-eng/fra-eng.zip`` (or an extracted ``fra.txt``).
        batch_size: batch size.
        seed: seed of the split and the shuffling.
        num_steps: tokens per sentence after truncation/padding (``<eos>`` included).
        max_examples: use only the first N pairs (book setting).
        val_size: validation pairs (full corpus default 5000; at least, whole groups; with
            ``max_examples``, 0 validates on the training pairs).
        test_size: test pairs (full corpus only; default 5000).
        min_freq: rarer tokens become ``<unk>``.
        on_device: see :class:`datamodules.base.TensorDataModule`.
    """

    def __init__(self, data_dir: str | Path | None = None, batch_size: int = 128, seed: int = 0,
                 num_steps: int = 9, max_examples: int | None = None,
                 val_size: int | None = None, test_size: int = 5000, min_freq: int = 2,
                 on_device: bool | str = "auto") -> None:
        super().__init__(batch_size, seed, on_device)
        self.data_dir = resolve_data_dir(data_dir)
        self.num_steps, self.max_examples = num_steps, max_examples
        self.val_size, self.test_size, self.min_freq = val_size, test_size, min_freq
        self.src_vocab = self.tgt_vocab = None
        self.split_pairs: dict[str, list[tuple[str, str]]] = {}

    def prepare_data(self) -> None:
        """Locate or download the corpus (one clear error offline)."""
        if extracted_fra_txt(self.data_dir) is None:
            FRA_ENG.prepare(self.data_dir)

    def setup(self, stage: str | None = None) -> None:
        """Preprocess, split, build the vocabularies on the training split, encode (once)."""
        if self.train_set is not None:
            return
        data = fra_eng_splits(self.data_dir, self.seed, self.num_steps, self.max_examples,
                              self.val_size, self.test_size, self.min_freq)
        self.split_pairs = data.pairs
        self.src_vocab, self.tgt_vocab = data.src_vocab, data.tgt_vocab
        self.train_set, self.val_set, self.test_set = (data.tensors[s] for s in
                                                       ("train", "val", "test"))

    def data_info(self) -> dict[str, Any]:
        """Vocabularies and ``num_steps`` for the ``TranslationTask`` task module."""
        self.setup()
        return {"src_vocab": self.src_vocab.to_json(), "tgt_vocab": self.tgt_vocab.to_json(),
                "num_steps": self.num_steps}
