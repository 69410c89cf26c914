"""Every dataset's validation and test batches without Lightning, as its DataModule serves them.

``predict.py eval`` rebuilds a run's evaluation batches from the ``data`` section of its config
with :func:`eval_data`. The DataModules build their splits through the same functions, so both
see the same examples in the same batches and order:
:func:`datamodules.idx.idx_splits`, :func:`datamodules.folder.folder_splits`,
:mod:`datamodules.lm_text`, :func:`datamodules.fra_eng_text.fra_eng_splits`,
:func:`datamodules.bert_text.pretrain_corpora` and :func:`synthetic_regression`.
Evaluation batches of tensors held in memory come from :func:`datamodules.loader.eval_loader`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .download import DataError, resolve_data_dir
from .loader import eval_loader

#: the splits an evaluation reads
EVAL_SPLITS = ("val", "test")


@dataclass
class EvalData:
    """One evaluation split, batched.

    Attributes:
        loader: the batches (an iterable with a length), in the DataModule's order.
        info: what the task module learns from the data besides the export: the vocabularies
            (``Vocab``; compared with the export's), ``carry_state`` for language models.
        note: a remark for the user (e.g. test is the validation split), or ``None``.
    """

    loader: Iterable[tuple[torch.Tensor, ...]]
    info: dict[str, Any] = field(default_factory=dict)
    note: str | None = None


def synthetic_regression(w: Sequence[float], b: float, noise: float, num_train: int,
                         num_val: int, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Seeded draws of ``X ~ N(0, I)`` and ``y = Xw + b + noise * N(0, 1)`` (d2l §3.3).

    ``num_train`` training examples, then ``num_val`` each for validation and test, from one
    generator; ``y`` is ``(N, 1)``, the model's output shape.
    """
    w_ = torch.tensor(list(w), dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    n = num_train + 2 * num_val
    X = torch.randn(n, len(w_), generator=g)
    y = X @ w_ + float(b) + float(noise) * torch.randn(n, generator=g)
    y = y.unsqueeze(1)
    a, c = num_train, num_train + num_val
    return {"train": (X[:a], y[:a]), "val": (X[a:c], y[a:c]), "test": (X[c:], y[c:])}


def _key(data: Mapping[str, Any], key: str) -> Any:
    if key not in data:
        raise DataError(f"the run's data section lacks '{key}' (data '{data.get('name')}'); "
                        "re-export the run with export.py")
    return data[key]


def _idx(data: Mapping[str, Any], seed: int, split: str, batch_size: int) -> EvalData:
    from .idx import IDX_DATASETS, idx_splits

    ds = IDX_DATASETS[data["name"]]
    tensors = idx_splits(ds, _key(data, "data_dir"), seed, _key(data, "val_size"),
                         _key(data, "setting"), _key(data, "train_fraction"),
                         splits=(split,))[split]
    return EvalData(eval_loader(tensors, batch_size), {"class_names": list(ds.classes)})


def _folder(data: Mapping[str, Any], seed: int, split: str, batch_size: int) -> EvalData:
    from .folder import folder_splits, load_folder

    root = data.get("data_dir") or data.get("root")
    if not root:
        raise DataError("image_folder needs its folder: --data-dir PATH")
    cache = load_folder(Path(root).expanduser(), _key(data, "image_size"),
                        _key(data, "channels"), write=False)  # nothing written
    splits, test_is_val = folder_splits(cache, seed, _key(data, "val_size"),
                                        _key(data, "train_fraction"))
    note = (f"{root} has no test/ folder: the test split is the validation split"
            if test_is_val and split == "test" else None)
    return EvalData(eval_loader(splits[split], batch_size), {"class_names": cache.classes},
                    note)


def _synthetic(data: Mapping[str, Any], seed: int, split: str, batch_size: int) -> EvalData:
    splits = synthetic_regression(*(_key(data, k) for k in (
        "w", "b", "noise", "num_train", "num_val")), seed)
    return EvalData(eval_loader(splits[split], batch_size))


def _language_model(data: Mapping[str, Any], seed: int, split: str,
                    batch_size: int | None) -> EvalData:
    from .lm_text import (
        default_eval_batch_size,
        eval_stream_loader,
        time_machine_splits,
        wikitext_splits,
    )

    name, data_dir = data["name"], data.get("data_dir")
    if name == "time_machine":
        tokens, vocab = time_machine_splits(data_dir, _key(data, "level"),
                                            _key(data, "val_fraction"), _key(data, "max_tokens"))
    else:
        tokens, vocab = wikitext_splits(name, data_dir)
    streams = batch_size or default_eval_batch_size(_key(data, "batch_size"),
                                                    _key(data, "eval_batch_size"))
    loader = eval_stream_loader(vocab.encode(tokens[split]), streams,
                                _key(data, "num_steps"))
    return EvalData(loader, {"vocab": vocab,
                             "carry_state": _key(data, "sampler") == "sequential"})


def _fra_eng(data: Mapping[str, Any], seed: int, split: str, batch_size: int) -> EvalData:
    from .fra_eng_text import fra_eng_splits

    splits = fra_eng_splits(resolve_data_dir(data.get("data_dir")), seed,
                            *(_key(data, k) for k in ("num_steps", "max_examples", "val_size",
                                                      "test_size", "min_freq")))
    return EvalData(eval_loader(splits.tensors[split], batch_size),
                    {"src_vocab": splits.src_vocab, "tgt_vocab": splits.tgt_vocab})


def _bert(data: Mapping[str, Any], seed: int, split: str, batch_size: int) -> EvalData:
    from .bert_text import EVAL_DRAWS, draw_examples, pretrain_corpora

    vocab, corpora = pretrain_corpora(resolve_data_dir(data.get("data_dir")),
                                      *(_key(data, k) for k in ("max_len", "min_freq",
                                                                "max_examples")))
    tensors = draw_examples(corpora[split], vocab, seed, EVAL_DRAWS[split])
    return EvalData(eval_loader(tensors, batch_size), {"vocab": vocab})


#: ``(data name, task family)`` -> its evaluation split; the pairs of
#: ``datamodules.registry.DATAMODULES`` (a test checks)
BUILDERS: dict[tuple[str, str], Callable[..., EvalData]] = {
    ("mnist", "image_classification"): _idx,
    ("fashion_mnist", "image_classification"): _idx,
    ("image_folder", "image_classification"): _folder,
    ("synthetic_regression", "regression"): _synthetic,
    ("time_machine", "language_modeling"): _language_model,
    ("wikitext2", "language_modeling"): _language_model,
    ("wikitext103", "language_modeling"): _language_model,
    ("fra_eng", "seq2seq"): _fra_eng,
    ("wikitext2", "masked_lm"): _bert,
}


def eval_data(data: Mapping[str, Any], task: str, split: str, seed: int,
              batch_size: int | None = None) -> EvalData:
    """A run's validation or test split, batched as its DataModule batches it.

    Args:
        data: the run config's ``data`` section (``name`` and the DataModule's arguments;
            ``data_dir`` already chosen: ``None`` is ``$D2L_DATA_DIR``, else ``./data``).
        task: the model's task family.
        split: ``val`` or ``test``.
        seed: the run's seed (``run.seed``), which seeds the split.
        batch_size: evaluation batch size (default: the run's; language models: streams).

    Raises:
        DataError: an unknown dataset or split, missing or corrupt data.
    """
    if split not in EVAL_SPLITS:
        raise DataError(f"unknown split '{split}'; choose from: {', '.join(EVAL_SPLITS)}")
    build = BUILDERS.get((data.get("name"), task))
    if build is None:
        raise DataError(f"no evaluation data '{data.get('name')}' for {task} models")
    if build is not _language_model:
        batch_size = batch_size or _key(data, "batch_size")
    return build(data, seed, split, batch_size)
