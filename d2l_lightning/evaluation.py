"""Evaluate an exported model as its run's ``trainer.validate`` / ``test`` did, in plain torch.

One function per task family runs the task module's validation / test step and epoch-end code
on the same batches, with the metric twins of :mod:`d2l_lightning.models.metrics`, so the
numbers equal the run's ``results.json`` ``val/*`` and ``test/*`` to the last digit (same
device type, one process). :func:`evaluate_export` picks the family and its settings from an
export's ``config.json`` (its ``run_config``); :func:`num_batches` is Lightning's
``limit_val_batches`` / ``limit_test_batches``. ``predict.py eval`` is the command line. It
sits above ``models/`` and ``datamodules/`` (it needs both) and imports neither Lightning nor
torchmetrics.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from d2l_lightning.models.bert import bert_losses
from d2l_lightning.models.decoding import greedy_decode, map_tensors, search
from d2l_lightning.models.metrics import (
    Accuracy,
    CorpusBLEU,
    LoggedMean,
    MacroF1,
    WeightedMean,
    logged,
)
from d2l_lightning.models.preprocess import preprocess_images

Batch = tuple[torch.Tensor, ...]
Metrics = dict[str, float]
#: Lightning's precision settings and what they run: autocast (``-mixed``) or a dtype (``-true``)
MIXED = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}
TRUE = {"16-true": torch.float16, "bf16-true": torch.bfloat16, "64-true": torch.float64,
        "32-true": None, "32": None}


def num_batches(length: int, limit: int | float | None) -> int:
    """Batches an evaluation runs of a loader of ``length`` (Lightning's ``limit_*_batches``).

    An int is a number of batches, a float a fraction (``int(fraction * length)``), ``None``
    all of them.

    Raises:
        ValueError: a fraction that leaves no batch (Lightning refuses it too).
    """
    if limit is None or length == 0:
        return length
    if isinstance(limit, int):  # bool is no limit Lightning takes
        return min(length, limit)
    n = int(length * limit)
    if n == 0 and limit > 0.0:
        raise ValueError(f"a limit of {limit} of {length} batches leaves no batch")
    return n


class Precision:
    """How Lightning's precision plugin runs an evaluation step, and where.

    ``-mixed``: each step under ``torch.autocast``; ``-true``: the model and the batch's
    floating-point tensors in that dtype, which is also the default dtype during each step.

    Args:
        precision: the ``trainer.precision`` of the run (``None``: 32-bit).
        device: where the model runs.
    """

    def __init__(self, precision: str | None, device: torch.device | str) -> None:
        name = str(precision) if precision is not None else "32-true"
        if name not in MIXED and name not in TRUE:
            raise ValueError(f"precision {name!r} is not one this evaluation reproduces "
                             f"(one of {', '.join([*MIXED, *TRUE])})")
        self.device = torch.device(device)
        self.autocast = MIXED.get(name)
        self.dtype = TRUE.get(name)

    def module(self, model: nn.Module) -> nn.Module:
        """The model on the device, in the precision's dtype."""
        model = model.to(self.device)
        return model.to(self.dtype) if self.dtype is not None else model

    def batch(self, batch: Batch) -> Batch:
        """The batch converted as the precision plugin does, then moved to the device."""
        if self.dtype is not None:
            batch = tuple(t.to(self.dtype) if t.is_floating_point() else t for t in batch)
        return tuple(t.to(self.device) for t in batch)

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """The context of one validation / test step."""
        if self.autocast is not None:
            with torch.autocast(self.device.type, dtype=self.autocast):
                yield
        elif self.dtype is not None:
            default = torch.get_default_dtype()
            torch.set_default_dtype(self.dtype)
            try:
                yield
            finally:
                torch.set_default_dtype(default)
        else:
            yield


def _steps(batches: Iterable[Batch], precision: Precision) -> Iterator[Batch]:
    """The batches on the device, each yielded inside the step's precision context."""
    for batch in batches:
        batch = precision.batch(batch)
        with precision.step():
            yield batch


def _result(split: str, values: dict[str, Any]) -> Metrics:
    return {f"{split}/{k}": float(v) for k, v in values.items()}


def evaluate_image_classification(model: nn.Module, batches: Iterable[Batch], split: str,
                                  preprocess: dict[str, Any], num_classes: int,
                                  channels_last: bool = False,
                                  precision: Precision | None = None) -> Metrics:
    """``loss``, ``acc`` and macro ``f1`` of ``(uint8 images, labels)`` batches (d2l §4.4).

    Images are preprocessed on the device as the task module's ``on_after_batch_transfer``
    does (normalised, resized, centre crop of augmented data); the loss is the batch mean,
    averaged over the split weighted by batch size.
    """
    precision = precision or Precision(None, "cpu")
    loss, acc, f1 = LoggedMean(), Accuracy(), MacroF1(num_classes)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    for batch in batches:
        x, y = precision.batch(batch)
        x = preprocess_images(x, preprocess["mean"], preprocess["std"], preprocess["resize"],
                              channels_last, preprocess.get("channels"),
                              center_crop=preprocess.get("center_crop"))
        with precision.step():
            logits = model(x)
            loss.update(F.cross_entropy(logits, y), len(y))
            acc.update(logits, y)
            f1.update(logits, y)
    if not loss.updated:
        return {}
    # acc and f1 are logged as metric objects: Lightning reports their compute() as is
    return _result(split, {"loss": loss.compute(), "acc": acc.compute(), "f1": f1.compute()})


def evaluate_language_model(model: nn.Module, batches: Iterable[Batch], split: str,
                            carry_state: bool, precision: Precision | None = None) -> Metrics:
    """``loss`` (token-weighted NLL) and ``ppl`` (its exponential) of ``(X, Y)`` batches.

    With sequentially partitioned batches (``carry_state``) a recurrent model's state is
    carried from one batch to the next, from zero at the start and whenever the number of
    rows changes (d2l §9.7), as the task module does.
    """
    precision = precision or Precision(None, "cpu")
    carries = bool(carry_state and model.recurrent)
    nll, rows, state = WeightedMean(), None, None
    for x, y in _steps(batches, precision):
        logits, new_state = model(x, state if carries and rows == x.shape[0] else None)
        if carries:
            rows, state = x.shape[0], map_tensors(new_state, torch.Tensor.detach)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        nll.update(loss, y.numel())
    if not nll.updated:
        return {}
    value = nll.compute()
    return _result(split, {"loss": logged(value), "ppl": logged(value.exp())})


def evaluate_translation(model: nn.Module, batches: Iterable[Batch], split: str,
                         src_vocab: Any, tgt_vocab: Any, num_steps: int, max_len: int,
                         label_smoothing: float = 0.0, beam_size: int = 1,
                         length_penalty: float = 0.0, bleu_max_sentences: int = 1000,
                         precision: Precision | None = None) -> Metrics:
    """Teacher-forced ``loss`` and ``acc`` (non-pad tokens), and BLEU of decoded sentences.

    Validation: greedy ``bleu`` of the first ``bleu_max_sentences`` pairs and ``book_bleu``,
    the mean d2l BLEU(k=2) of the book's four sentences (d2l §10.7.6). Test: greedy ``bleu``
    of every pair and, with ``beam_size > 1``, ``bleu_beam`` (d2l §10.8). ``src_vocab`` and
    ``tgt_vocab`` are :class:`datamodules.text.Vocab`.
    """
    from d2l_lightning.datamodules.fra_eng_text import (
        BOOK_PAIRS,
        BOS,
        EOS,
        PAD,
        bleu_texts,
        translate,
    )
    from d2l_lightning.models.bleu import bleu

    precision = precision or Precision(None, "cpu")
    pad, bos, eos = tgt_vocab[PAD], tgt_vocab[BOS], tgt_vocab[EOS]
    loss, acc = LoggedMean(), Accuracy(ignore_index=pad)
    greedy = CorpusBLEU(device=precision.device)
    beam = CorpusBLEU(device=precision.device)
    decoded = 0

    def add(metric: CorpusBLEU, src: torch.Tensor, valid: torch.Tensor, tgt_out: torch.Tensor,
            decode: Callable[..., list[list[int]]], *args: Any) -> None:
        rows = bleu_texts(src, tgt_out, decode(model, src, valid, bos, eos, max_len, *args),
                          src_vocab, tgt_vocab)
        metric.update([r[2] for r in rows], [[r[1]] for r in rows])

    for src, tgt_in, valid, tgt_out in _steps(batches, precision):
        logits = model(src, tgt_in, valid)
        mask = tgt_out != pad
        loss.update(F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=pad,
                                    label_smoothing=label_smoothing), int(mask.sum()))
        acc.update(logits.argmax(-1).flatten(), tgt_out.flatten())
        if split == "val":
            n = min(bleu_max_sentences - decoded, len(src))
            if n > 0:
                add(greedy, src[:n], valid[:n], tgt_out[:n], greedy_decode)
                decoded += n
        else:
            add(greedy, src, valid, tgt_out, greedy_decode)
            if beam_size > 1:
                add(beam, src, valid, tgt_out, search, beam_size, length_penalty)
    out = {"loss": loss.compute(), "acc": acc.compute()} if loss.updated else {}
    out["bleu"] = logged(greedy.compute() * 100)
    if split == "val":  # the epoch-end hook: outside the step's precision context
        hyps = translate(model, [s for s, _ in BOOK_PAIRS], src_vocab, tgt_vocab, num_steps,
                         max_len, 1, length_penalty)
        scores = [bleu(h, r, k=2) for (_, r), h in zip(BOOK_PAIRS, hyps)]
        out["book_bleu"] = logged(sum(scores) / len(BOOK_PAIRS))
    elif beam_size > 1:
        out["bleu_beam"] = logged(beam.compute() * 100)
    return _result(split, out)


def evaluate_masked_lm(model: nn.Module, batches: Iterable[Batch], split: str,
                       precision: Precision | None = None) -> Metrics:
    """BERT's ``mlm_loss`` (over real prediction slots), ``nsp_loss``, accuracies, ``mlm_ppl``.

    ``loss`` is ``mlm_loss + nsp_loss`` (d2l §15.10); ``mlm_ppl`` is ``exp(mlm_loss)``, capped
    at ``exp(50)``.
    """
    precision = precision or Precision(None, "cpu")
    mlm_loss, nsp_loss, mlm_acc, nsp_acc = WeightedMean(), WeightedMean(), Accuracy(), Accuracy()
    for tokens, segments, valid_lens, positions, weights, mlm_y, nsp_y in _steps(batches,
                                                                                  precision):
        _, mlm_logits, nsp_logits = model(tokens, segments, valid_lens, positions)
        mlm, nsp, n_real = bert_losses(mlm_logits, nsp_logits, weights, mlm_y, nsp_y)
        real = weights > 0
        mlm_loss.update(mlm, n_real)
        nsp_loss.update(nsp, len(nsp_y))
        mlm_acc.update(mlm_logits[real], mlm_y[real])
        nsp_acc.update(nsp_logits, nsp_y)
    values = {"mlm_loss": mlm_loss.compute(), "nsp_loss": nsp_loss.compute(),
              "mlm_acc": mlm_acc.compute(), "nsp_acc": nsp_acc.compute()}
    values["mlm_ppl"] = torch.exp(values["mlm_loss"].clamp(max=50.0))
    values["loss"] = values["mlm_loss"] + values["nsp_loss"]
    return _result(split, {k: logged(v) for k, v in values.items()})


def evaluate_regression(model: nn.Module, batches: Iterable[Batch], split: str,
                        precision: Precision | None = None) -> Metrics:
    """``loss``: the squared error (d2l §3.5), averaged over the split weighted by batch size."""
    precision = precision or Precision(None, "cpu")
    loss = LoggedMean()
    for X, y in _steps(batches, precision):
        loss.update(F.mse_loss(model(X), y), len(y))
    return _result(split, {"loss": loss.compute()}) if loss.updated else {}


def evaluate_export(model: nn.Module, config: dict[str, Any], batches: Iterable[Batch],
                    split: str, device: torch.device | str = "cpu",
                    data: dict[str, Any] | None = None) -> Metrics:
    """Evaluate an exported model on a split's batches with its run's settings.

    Args:
        model: the model of :func:`models.load_exported`.
        config: its ``config.json``, with ``run_config`` (the task settings and precision).
        batches: the split's batches, already limited (see :func:`num_batches`).
        split: ``val`` or ``test``.
        device: where the model runs.
        data: what the data tells the task module besides the export (language models:
            ``carry_state``; translation: ``src_vocab`` and ``tgt_vocab`` as ``Vocab``).

    Raises:
        ValueError: a task family or precision this evaluation does not reproduce.
    """
    run = config["run_config"]
    task, settings, data = config.get("task"), run.get("task", {}), data or {}
    precision = Precision(run.get("trainer", {}).get("precision"), device)
    model = precision.module(model).eval()
    with torch.inference_mode():
        if task == "image_classification":
            return evaluate_image_classification(
                model, batches, split, config["preprocess"], len(config["class_names"]),
                bool(settings.get("channels_last")), precision)
        if task == "language_modeling":
            return evaluate_language_model(model, batches, split, data["carry_state"],
                                           precision)
        if task == "seq2seq":
            return evaluate_translation(
                model, batches, split, data["src_vocab"], data["tgt_vocab"],
                config["num_steps"], config["max_decode_len"],
                settings.get("label_smoothing", 0.0), config.get("beam_size", 1),
                config.get("length_penalty", 0.0), settings.get("bleu_max_sentences", 1000),
                precision)
        if task == "masked_lm":
            return evaluate_masked_lm(model, batches, split, precision)
        if task == "regression":
            return evaluate_regression(model, batches, split, precision)
    raise ValueError(f"no evaluation of '{task}' models")


def with_saved_dtype(model: nn.Module, export: str | os.PathLike) -> nn.Module:
    """The exported model with float64 weights if they were saved so (a ``64-true`` run).

    :func:`models.load_exported` builds a float32 model, which would round such weights;
    lower precisions (``bf16-true``, ``16-true``) are exact in float32.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    from d2l_lightning.compat import upgrade_state_dict
    from d2l_lightning.models.export import WEIGHTS_NAME

    path = str(Path(export) / WEIGHTS_NAME)
    with safe_open(path, framework="pt") as f:
        doubles = any(f.get_slice(k).get_dtype() == "F64" for k in f.keys())  # noqa: SIM118
    if not doubles:
        return model
    device = next(iter(model.state_dict().values())).device
    model.double().load_state_dict(upgrade_state_dict(load_file(path, device=str(device))))
    return model


def batch_limit(trainer: dict[str, Any], split: str) -> int | float | None:
    """The run's limit on ``split``'s batches, as its Trainer set it from the ``trainer`` section.

    ``fast_dev_run`` runs that many batches (``True``: one), ``overfit_batches`` limits the
    validation batches, else ``limit_val_batches`` / ``limit_test_batches``.
    """
    overfit, fast = trainer.get("overfit_batches") or 0, trainer.get("fast_dev_run") or 0
    if split == "val" and overfit > 0:
        return overfit
    if fast:
        return int(fast)
    return trainer.get(f"limit_{split}_batches")


def torch_flags(run_config: dict[str, Any]) -> None:
    """Set the process-wide torch flags the run's Trainer set (matmul precision, cuDNN)."""
    run, trainer = run_config.get("run", {}), run_config.get("trainer", {})
    torch.set_float32_matmul_precision(run.get("matmul_precision") or "highest")
    deterministic, benchmark = trainer.get("deterministic"), trainer.get("benchmark")
    if deterministic and benchmark is None:
        benchmark = False
    if benchmark is not None:
        torch.backends.cudnn.benchmark = benchmark
    if deterministic == "warn":
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif isinstance(deterministic, bool):
        torch.use_deterministic_algorithms(deterministic)
    if deterministic:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
