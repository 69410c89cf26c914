"""Plain-PyTorch twins of training's metric arithmetic (torchmetrics and Lightning's logging).

The task modules of ``lit_models/`` measure with torchmetrics objects and ``self.log``; an
evaluation without Lightning (``predict.py eval``, :mod:`d2l_lightning.evaluation`) measures with
these classes instead. Each keeps the states of its twin in the same dtype, adds to them with
the same operations in the same order and divides the same way, so both give the very same
float32 numbers:

- :class:`LoggedMean`: ``self.log(name, value, on_epoch=True, batch_size=n)`` (Lightning's
  batch-size-weighted epoch mean; a value logged once in an epoch-end hook is itself);
- :class:`WeightedMean`: ``torchmetrics.MeanMetric`` (``update(value, weight)``);
- :class:`Accuracy`: ``MulticlassAccuracy(average="micro", ignore_index=...)``;
- :class:`MacroF1`: ``MulticlassF1Score(average="macro")``;
- :class:`CorpusBLEU`: ``SacreBLEUScore(tokenize="none")``, corpus BLEU-4 without smoothing
  (Papineni et al.; d2l §10.7.6 uses a sentence-level variant, :func:`models.bleu.bleu`).

States live on the device of the first update, as a metric moved with its module does.
``tests/test_predict_eval.py`` checks each against its twin on random inputs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch

Number = int | float


def _safe_divide(num: torch.Tensor, denom: torch.Tensor, zero_division: float = 0.0
                 ) -> torch.Tensor:
    """Float division, ``zero_division`` where ``denom`` is 0 (torchmetrics' ``_safe_divide``)."""
    num = num if num.is_floating_point() else num.float()
    denom = denom if denom.is_floating_point() else denom.float()
    zero = torch.full((), zero_division, dtype=num.dtype, device=num.device)
    return torch.where(denom != 0, num / denom, zero)


class LoggedMean:
    """Lightning's epoch mean of a logged scalar: ``sum(value * batch_size) / sum(batch_size)``.

    The sum is float32 (float64 values stay float64), the count an int64 tensor, as in
    ``_ResultMetric``; a python number is logged as a float32 tensor.
    """

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None
        self.count: torch.Tensor | None = None

    def update(self, value: torch.Tensor | Number, batch_size: int = 1) -> None:
        """Add one logged value with its batch size."""
        if not isinstance(value, torch.Tensor):
            value = torch.tensor(value, dtype=torch.float32)
        value = value.detach().squeeze()
        if value.dtype not in (torch.float32, torch.float64):
            value = value.to(torch.float32)
        if self.value is None:
            self.value = torch.tensor(0.0, dtype=torch.float32, device=value.device)
            self.count = torch.tensor(0, device=value.device)
        self.value = self.value + value * batch_size  # not +=: it promotes as Lightning does
        self.count = self.count + batch_size

    @property
    def updated(self) -> bool:
        """Whether anything was logged."""
        return self.value is not None

    def compute(self) -> torch.Tensor:
        """The epoch mean."""
        if self.value is None:
            raise ValueError("nothing was logged")
        return self.value / self.count


def logged(value: torch.Tensor | Number) -> torch.Tensor:
    """What ``self.log`` records for a value logged once in an epoch-end hook."""
    mean = LoggedMean()
    mean.update(value, 1)
    return mean.compute()


class WeightedMean:
    """``torchmetrics.MeanMetric``: float32 ``sum(value * weight) / sum(weight)``.

    NaN values (or weights) are dropped, as its default ``nan_strategy="warn"`` does.
    """

    def __init__(self) -> None:
        self.mean_value: torch.Tensor | None = None
        self.weight: torch.Tensor | None = None

    def update(self, value: torch.Tensor | Number, weight: torch.Tensor | Number | None = None
               ) -> None:
        """Add ``value`` (any shape) with ``weight`` (broadcast to it; default 1)."""
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value, dtype=torch.float32)
        if weight is None:
            weight = torch.ones_like(value)
        elif not isinstance(weight, torch.Tensor):
            weight = torch.as_tensor(weight, dtype=torch.float32, device=value.device)
        weight = torch.broadcast_to(weight, value.shape)
        nans = torch.isnan(value) | torch.isnan(weight)
        if nans.any():
            value, weight = value[~nans], weight[~nans]
        value, weight = value.to(torch.float32), weight.to(torch.float32)
        if value.numel() == 0:
            return
        if self.mean_value is None:
            self.mean_value = torch.tensor(0.0, device=value.device)
            self.weight = torch.tensor(0.0, device=value.device)
        self.mean_value += (value * weight).sum()
        self.weight += weight.sum()

    @property
    def updated(self) -> bool:
        """Whether anything was added."""
        return self.mean_value is not None

    def compute(self) -> torch.Tensor:
        """The weighted mean (NaN before any update, as torchmetrics' 0 / 0)."""
        if self.mean_value is None:
            return torch.tensor(float("nan"))
        return self.mean_value / self.weight


def _labels(preds: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(N, C, ...)`` to labels (argmax over dim 1), both flattened (torchmetrics)."""
    if preds.ndim == target.ndim + 1:
        preds = preds.argmax(dim=1)
    return preds.flatten(), target.flatten()


class Accuracy:
    """``MulticlassAccuracy(average="micro")``: correct / counted, ``ignore_index`` not counted.

    Args:
        ignore_index: a target value that is not counted (e.g. ``<pad>``).
    """

    def __init__(self, ignore_index: int | None = None) -> None:
        self.ignore_index = ignore_index
        self.tp: torch.Tensor | None = None
        self.fn: torch.Tensor | None = None

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of labels, or logits with the classes in dim 1."""
        preds, target = _labels(preds, target)
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            preds, target = preds[keep], target[keep]
        if self.tp is None:
            self.tp = torch.zeros(1, dtype=torch.long, device=target.device)
            self.fn = torch.zeros(1, dtype=torch.long, device=target.device)
        self.tp = self.tp + (preds == target).sum()
        self.fn = self.fn + (preds != target).sum()

    def compute(self) -> torch.Tensor:
        """The accuracy (0 before any update)."""
        if self.tp is None:
            return torch.tensor(0.0)
        tp, fn = self.tp.sum(dim=0), self.fn.sum(dim=0)
        return _safe_divide(tp, tp + fn)


class MacroF1:
    """``MulticlassF1Score(average="macro")``: the mean F1 of the classes that occur.

    A class that is neither predicted nor present counts nothing; an F1 of 0 / 0 is 0.

    Args:
        num_classes: classes.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.confmat: torch.Tensor | None = None

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of labels, or logits with the classes in dim 1."""
        preds, target = _labels(preds, target)
        c = self.num_classes
        bins = torch.bincount(target.long() * c + preds.long(), minlength=c * c)
        if self.confmat is None:
            self.confmat = torch.zeros(c * c, dtype=torch.long, device=bins.device)
        self.confmat = self.confmat + bins

    def compute(self) -> torch.Tensor:
        """The macro F1 (0 before any update)."""
        if self.confmat is None:
            return torch.tensor(0.0)
        confmat = self.confmat.reshape(self.num_classes, self.num_classes)
        tp = confmat.diag()
        fp, fn = confmat.sum(0) - tp, confmat.sum(1) - tp
        beta2 = 1.0
        score = _safe_divide((1 + beta2) * tp, (1 + beta2) * tp + beta2 * fn + fp)
        weights = torch.ones_like(score)
        weights[tp + fp + fn == 0] = 0.0
        return _safe_divide(weights * score, weights.sum(-1, keepdim=True)).sum(-1)


def _ngrams(tokens: Sequence[str], max_n: int) -> Counter:
    """Every n-gram of ``tokens`` for ``n = 1..max_n``, counted."""
    counts: Counter = Counter()
    for n in range(1, max_n + 1):
        for i in range(len(tokens) - n + 1):
            counts[tuple(tokens[i:i + n])] += 1
    return counts


class CorpusBLEU:
    """``SacreBLEUScore(tokenize="none")``: corpus BLEU-4 (0-1) on whitespace tokens.

    Clipped n-gram matches and hypothesis n-grams summed over the corpus (float32, as
    torchmetrics keeps them), uniform weights, no smoothing, the brevity penalty
    ``exp(1 - ref_len / hyp_len)`` when the hypotheses are not longer. Multiply by 100 for
    the 0-100 scale of the logged ``bleu`` metrics.

    Args:
        max_n: longest n-gram.
        device: where the counts live (the model's: its logarithms and exponentials are
            computed there, as the task module's metric does).
    """

    def __init__(self, max_n: int = 4, device: torch.device | str = "cpu") -> None:
        self.max_n, self.device = max_n, device
        self.preds_len = torch.tensor(0.0, device=device)
        self.target_len = torch.tensor(0.0, device=device)
        self.numerator = torch.zeros(max_n, device=device)
        self.denominator = torch.zeros(max_n, device=device)

    def update(self, hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
        """Add hypotheses, each with its references (a sequence of strings)."""
        for hyp, refs in zip(hypotheses, references):
            pred = hyp.split() if hyp else []
            targets = [r.split() if r else [] for r in refs]
            self.preds_len += len(pred)
            diffs = [abs(len(pred) - len(t)) for t in targets]
            self.target_len += len(targets[diffs.index(min(diffs))])
            pred_counts = _ngrams(pred, self.max_n)
            target_counts: Counter = Counter()
            for t in targets:
                target_counts |= _ngrams(t, self.max_n)
            clipped = pred_counts & target_counts
            for gram in clipped:
                self.numerator[len(gram) - 1] += clipped[gram]
            for gram in pred_counts:
                self.denominator[len(gram) - 1] += pred_counts[gram]

    def compute(self) -> torch.Tensor:
        """Corpus BLEU in [0, 1] (0 when some n-gram order has no match)."""
        device = self.device
        if min(self.numerator) == 0.0:
            return torch.tensor(0.0, device=device)
        precision = self.numerator / self.denominator
        weights = torch.tensor([1.0 / self.max_n] * self.max_n, device=device)
        geometric_mean = torch.exp(torch.sum(weights * torch.log(precision)))
        brevity = (torch.tensor(1.0, device=device) if self.preds_len > self.target_len
                   else torch.exp(1 - (self.target_len / self.preds_len)))
        return brevity * geometric_mean
