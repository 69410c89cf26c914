"""WikiText-2 / WikiText-103 word-level language modelling (Merity et al., 2016).

As pytorch/examples ``word_language_model``: every line of ``wiki.{train,valid,test}.tokens``
becomes its words plus ``<eos>`` (empty lines too), the official splits are kept, the
vocabulary holds every type of the training split (WikiText already maps rare words to
``<unk>``), and training batches are ``batchify``-ed streams read in ``bptt`` windows
(``num_steps``) with the hidden state carried across them.
"""

from __future__ import annotations

from typing import Literal

from .corpora import WIKITEXT
from .language_model import LanguageModelDataModule
from .lm_text import wikitext_splits
from .text import Vocab


class WikiTextDataModule(LanguageModelDataModule):
    """Word-level WikiText with the official train / valid / test splits.

    Real WikiText-2: 2,088,628 training tokens, vocabulary 33,278.

    Subclasses set ``name``: ``wikitext2`` or ``wikitext103`` (folder ``wikitext-2/`` or
    ``wikitext-103/``).

    Args:
        data_dir, batch_size, seed, num_steps, sampler, eval_batch_size, on_device: see
            :class:`datamodules.language_model.LanguageModelDataModule` (pytorch/examples: batch
            20, bptt 35, eval batch 10).
    """

    name = "wikitext2"  #: key of ``datamodules.corpora.WIKITEXT``

    def __init__(self, data_dir: str | None = None, batch_size: int = 20, seed: int = 0,
                 num_steps: int = 35, sampler: Literal["random", "sequential"] = "sequential",
                 eval_batch_size: int | None = 10, on_device: bool | str = "auto") -> None:
        super().__init__(data_dir, batch_size, seed, num_steps, sampler, eval_batch_size,
                         on_device)

    def prepare_data(self) -> None:
        """Locate (or download) the three files; one clear error offline."""
        WIKITEXT[self.name].prepare(self.data_dir)

    def load(self) -> tuple[dict[str, list[str]], Vocab]:
        """Tokens of the official splits; the vocabulary of the training split."""
        return wikitext_splits(self.name, self.data_dir)


class WikiText2DataModule(WikiTextDataModule):
    """WikiText-2 (``--data wikitext2``)."""

    name = "wikitext2"


class WikiText103DataModule(WikiTextDataModule):
    """WikiText-103 (``--data wikitext103``), same layout under ``wikitext-103/``."""

    name = "wikitext103"
