"""The rows of the results tables: one config file each, with its target and its source.

``bench/reproduce.py`` runs them and writes the tables of ``docs/`` from their ``results.json``.
A row's title and its document come from the first line of its config file
(``# docs/FILE.md: TITLE``); the order within a profile is the order in which rows are run,
most valuable first (a ``--budget-s`` run that stops early has measured those).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Target:
    """What a row should reach: ``metric`` compared with ``value`` by ``op`` (``>=``/``<=``).

    ``text`` is how the table shows it (e.g. ``0.779 (book)``); ``metric`` is a key of
    ``results.json`` such as ``test/acc`` or ``train/ppl``.
    """

    metric: str
    op: str
    value: float
    text: str

    def met(self, results: dict) -> bool | None:
        """Whether ``results`` reach the target (``None``: the metric is not there)."""
        got = results.get(self.metric)
        if got is None:
            return None
        return got >= self.value if self.op == ">=" else got <= self.value


@dataclass(frozen=True)
class Row:
    """One results row: a shipped config (``DATA/STEM``), its target and its source."""

    config: str
    source: str
    target: Target | None = None
    profile: str = "cpu"
    #: the metrics its table shows, in order (results.json keys)
    metrics: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        """``DATA/STEM`` of the config, e.g. ``fashion_mnist/lenet``."""
        p = Path(self.config.removesuffix(".yaml"))
        return f"{p.parent.name}/{p.name}"

    @property
    def path(self) -> Path:
        """The config file (a shipped config's name is found under ``d2l_lightning/configs/``)."""
        from d2l_lightning.training.config import config_path

        return config_path(self.config)

    def header(self) -> tuple[str, str]:
        """``(doc, title)`` from the config file's first line."""
        first = self.path.read_text(encoding="utf-8").splitlines()[0]
        doc, _, title = first.removeprefix("# ").partition(": ")
        return doc, title


def _acc(value: float, text: str) -> Target:
    return Target("test/acc", ">=", value, text)


def _ppl(metric: str, value: float, text: str) -> Target:
    return Target(metric, "<=", value, text)


IMG = ("val/acc", "test/acc")
LM = ("train/ppl", "val/ppl", "test/ppl")
#: the book's printed d2l 0.17 translation loss is train/loss_epoch / num_steps (10)
MT = ("train/loss_epoch", "val/loss", "val/bleu", "test/bleu", "test/bleu_beam")
MLM = ("val/mlm_acc", "val/mlm_ppl", "val/nsp_acc")

ROWS: list[Row] = [
    # --- cpu: the rows a 2-core machine measures (minutes each) -------------------------
    Row("fashion_mnist/lenet", "d2l §7.6", _acc(0.779, "0.779 (book)"), "cpu", IMG),
    Row("fashion_mnist/lenet-book-data", "d2l §7.6 (the book's data setting)",
        _acc(0.779, "0.779 (book)"), "cpu", IMG),
    Row("fashion_mnist/lenet-d2l-0.17", "d2l 0.17 §6.6 (the printed 0.779)",
        _acc(0.779, "0.779 (book)"), "cpu", IMG),
    Row("fashion_mnist/lenet_bn-modern", "ours (improved recipe)",
        _acc(0.90, ">= 0.90"), "cpu", IMG),
    Row("fashion_mnist/softmax_regression", "d2l §4.5", _acc(0.78, "≈ 0.8 (book)"),
        "cpu", IMG),
    Row("fashion_mnist/mlp", "d2l §5.2", _acc(0.7, "> 0.7"), "cpu", IMG),
    Row("fashion_mnist/lenet_bn", "d2l §8.5", _acc(0.807, "0.807 (book)"), "cpu",
        IMG),
    Row("mnist/lenet-modern", "ours (improved recipe)", _acc(0.99, ">= 0.99"),
        "cpu", IMG),
    Row("fra_eng/seq2seq_gru-d2l-0.17", "d2l 0.17 §9.7",
        Target("train/loss_epoch", "<=", 0.21, "0.019 (book) x num_steps 10"), "cpu", MT),
    Row("fra_eng/seq2seq_bahdanau-d2l-0.17", "d2l 0.17 §10.4",
        Target("train/loss_epoch", "<=", 0.22, "0.020 (book) x num_steps 10"), "cpu", MT),
    Row("time_machine/rnn-d2l-0.17", "d2l 0.17 §8.6",
        _ppl("train/ppl", 1.3, "train ppl 1.0-1.3 (book)"), "cpu", LM),
    Row("time_machine/gru-d2l-0.17", "d2l 0.17 §9.1",
        _ppl("train/ppl", 1.3, "train ppl ≈ 1.0-1.1 (book)"), "cpu", LM),
    Row("time_machine/lstm-d2l-0.17", "d2l 0.17 §9.2",
        _ppl("train/ppl", 1.3, "train ppl ≈ 1.0-1.1 (book)"), "cpu", LM),
    Row("time_machine/gpt", "d2l §11.9 (ours: held-out ppl)", None, "cpu", LM),
    Row("time_machine/rnn", "d2l §9.6", None, "cpu", LM),
    Row("time_machine/gru", "d2l §10.2", None, "cpu", LM),
    Row("time_machine/lstm", "d2l §10.1", None, "cpu", LM),
    Row("fra_eng/seq2seq_gru-book", "d2l §10.7", None, "cpu", MT),
    Row("fra_eng/seq2seq_bahdanau-book", "d2l §11.4", None, "cpu", MT),
    Row("fra_eng/transformer_mt-book", "d2l §11.7", None, "cpu", MT),
    Row("fra_eng/transformer_mt-d2l-0.17", "d2l 0.17 §10.7",
        Target("train/loss_epoch", "<=", 0.35, "0.032 (book) x num_steps 10"), "cpu", MT),
    Row("synthetic_regression/linear_regression", "d2l §3.5",
        Target("test/loss", "<=", 0.001, "recovers w, b"), "cpu", ("val/loss", "test/loss")),
    Row("mnist/row_transformer", "d2l §11.7 (ours)", _acc(0.98, ">= 0.98"), "cpu",
        IMG),
    Row("mnist/vit", "d2l §11.8", _acc(0.98, ">= 0.98"), "cpu", IMG),
    Row("time_machine/rnn_scratch", "d2l §9.5", None, "cpu", LM),
    Row("time_machine/gru_scratch", "d2l §10.2", None, "cpu", LM),
    Row("time_machine/lstm_scratch", "d2l §10.1", None, "cpu", LM),
    Row("time_machine/lstm-deep", "d2l §10.3", None, "cpu", LM),
    Row("time_machine/mamba", "Gu & Dao 2023", None, "cpu", LM),
    Row("time_machine/lstm-222-adamw", "ours (Mamba comparison)", None, "cpu", LM),
    Row("fashion_mnist/nin-96px", "d2l §8.3 (CPU-sized)", None, "cpu", IMG),
    Row("time_machine/rnn_scratch-d2l-0.17", "d2l 0.17 §8.5",
        _ppl("train/ppl", 1.3, "train ppl ≈ 1.0 (book)"), "cpu", LM),
    Row("time_machine/gru_scratch-d2l-0.17", "d2l 0.17 §9.1",
        _ppl("train/ppl", 1.3, "train ppl ≈ 1.0-1.1 (book)"), "cpu", LM),
    Row("time_machine/lstm_scratch-d2l-0.17", "d2l 0.17 §9.2",
        _ppl("train/ppl", 1.3, "train ppl ≈ 1.0-1.1 (book)"), "cpu", LM),
    Row("time_machine/lstm-d2l-0.17-deep", "d2l 0.17 §9.3",
        _ppl("train/ppl", 1.3, "train ppl ≈ 1.0 (book)"), "cpu", LM),
    Row("wikitext2/lstm-wikitext-600steps", "pytorch/examples (CPU-sized)", None,
        "cpu", LM),
    Row("wikitext2/gpt-600steps", "Radford et al. 2018 (CPU-sized)", None, "cpu",
        LM),
    Row("wikitext2/mamba-wikitext-600steps", "Gu & Dao 2023 (CPU-sized)", None,
        "cpu", LM),
    Row("wikitext2/gpt-150steps", "Radford et al. 2018 (CPU-sized)", None, "cpu",
        LM),
    Row("fra_eng/seq2seq_gru-full-300steps", "d2l §10.7 (whole corpus)", None,
        "cpu", MT),
    Row("fra_eng/seq2seq_bahdanau-full-300steps", "d2l §11.4 (whole corpus)", None,
        "cpu", MT),
    Row("fra_eng/transformer_mt-full-300steps", "d2l §11.7 (whole corpus)", None,
        "cpu", MT),
    Row("wikitext2/bert_tiny-book-50steps", "d2l §15.10", None, "cpu", MLM),
    Row("wikitext2/bert_tiny-modern", "Devlin et al. 2019 (CPU-sized)", None,
        "cpu", MLM),
    # --- gpu: sized for about 9 minutes of one H200-class GPU, most valuable first --------
    Row("fashion_mnist/resnet18-gpu", "d2l §8.6", _acc(0.893, "0.893 (book)"), "gpu",
        IMG),
    Row("fashion_mnist/resnet18-modern-gpu", "ours (improved recipe)",
        _acc(0.94, ">= 0.94"), "gpu", IMG),
    Row("fashion_mnist/alexnet-gpu", "d2l §8.1", _acc(0.87, "≈ 0.88 (book)"), "gpu",
        IMG),
    Row("fashion_mnist/vgg11_small-gpu", "d2l §8.2", _acc(0.92, "0.920 (book)"),
        "gpu", IMG),
    Row("fashion_mnist/nin-gpu", "d2l §8.3", _acc(0.77, "0.77-0.87 (book)"), "gpu",
        IMG),
    Row("fashion_mnist/googlenet-gpu", "d2l §8.4", _acc(0.886, "0.886 (book)"),
        "gpu", IMG),
    Row("fashion_mnist/densenet-gpu", "d2l §8.7", _acc(0.885, "0.885 (book)"),
        "gpu", IMG),
    Row("wikitext2/lstm-wikitext", "pytorch/examples word_language_model",
        _ppl("test/ppl", 100, "test ppl <= 100"), "gpu", LM),
    Row("wikitext2/lstm-medium", "pytorch/examples word_language_model (medium)",
        _ppl("test/ppl", 87, "test ppl <= 87"), "gpu", LM),
    Row("fra_eng/transformer_mt-full-gpu", "d2l §11.7 (whole corpus)", None, "gpu",
        MT),
    Row("wikitext2/bert_tiny-modern-gpu", "Devlin et al. 2019 (tiny)", None, "gpu",
        MLM),
    Row("fra_eng/seq2seq_gru-full-gpu", "d2l §10.7 (whole corpus)", None, "gpu", MT),
    Row("fra_eng/seq2seq_bahdanau-full-gpu", "d2l §11.4 (whole corpus)", None,
        "gpu", MT),
    # beyond the 9-minute plan (bench/gpu_plan.py): run when --budget-s leaves time
    Row("wikitext2/gpt-wikitext-gpu", "Radford et al. 2018 (the LSTM's size)", None,
        "gpu", LM),
    Row("wikitext2/mamba-wikitext", "Gu & Dao 2023", None, "gpu", LM),
]
