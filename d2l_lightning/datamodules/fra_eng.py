"""English-French translation data (d2l §10.5) on the in-memory tensor path.

Batches are ``(src, tgt_in, src_valid_len, tgt_out)``: ``(B, num_steps)`` source indices ending
in ``<eos>`` and padded, teacher-forcing decoder inputs starting with ``<bos>``, source valid
lengths ``(B,)`` and the target (last, as the project's batch contract wants).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import TensorDataModule
from .corpora import FRA_ENG, extracted_fra_txt, read_fra_eng
from .download import DataError, resolve_data_dir
from .fra_eng_text import (
    build_vocab,
    encode_source,
    encode_target,
    parse_pairs,
    split_by_source,
    tokenize_sentence,
)


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
        pairs = parse_pairs(read_fra_eng(self.data_dir), self.max_examples)
        if not pairs:
            raise DataError(f"fra-eng: the corpus under {self.data_dir / 'fra-eng'} holds no "
                            "'English<TAB>French' line; delete it so it is downloaded again, "
                            "or point --data-dir at a complete copy")
        if self.max_examples:
            val = self.val_size if self.val_size is not None else len(pairs) // 5
            if not 0 <= val < len(pairs):
                raise DataError(f"fra-eng: val_size {val} does not fit {len(pairs)} pairs")
            idx = {"train": list(range(len(pairs) - val)),
                   "val": list(range(len(pairs) - val, len(pairs))) if val else
                   list(range(len(pairs)))}  # 0: d2l 0.17, everything trains (in-sample val)
            idx["test"] = idx["val"]
        else:
            val = self.val_size if self.val_size is not None else 5000
            tr, va, te = split_by_source([p[0] for p in pairs], val, self.test_size, self.seed)
            if not tr or not va or not te:
                raise DataError(f"fra-eng: {len(pairs)} pairs are too few for val_size {val} "
                                f"and test_size {self.test_size}")
            idx = {"train": tr, "val": va, "test": te}
        tokens = {k: ([tokenize_sentence(pairs[i][0]) for i in v],
                      [tokenize_sentence(pairs[i][1]) for i in v]) for k, v in idx.items()}
        self.split_pairs = {k: [pairs[i] for i in v] for k, v in idx.items()}
        # Full corpus: vocabularies of the training split only. Book setting: of all N pairs,
        # as d2l builds them before splitting (so "he's" of "he's calm ." is known).
        if self.max_examples:
            src_tok = [tokenize_sentence(p[0]) for p in pairs]
            tgt_tok = [tokenize_sentence(p[1]) for p in pairs]
        else:
            src_tok, tgt_tok = tokens["train"]
        self.src_vocab = build_vocab(src_tok, self.min_freq)
        self.tgt_vocab = build_vocab(tgt_tok, self.min_freq)
        for split, (src_tok, tgt_tok) in tokens.items():
            src, src_valid_len = encode_source(src_tok, self.src_vocab, self.num_steps)
            tgt_in, tgt_out = encode_target(tgt_tok, self.tgt_vocab, self.num_steps)
            setattr(self, f"{split}_set", (src, tgt_in, src_valid_len, tgt_out))

    def data_info(self) -> dict[str, Any]:
        """Vocabularies and ``num_steps`` for the ``TranslationTask`` task module."""
        self.setup()
        return {"src_vocab": self.src_vocab.to_json(), "tgt_vocab": self.tgt_vocab.to_json(),
                "num_steps": self.num_steps}
