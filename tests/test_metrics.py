"""The task modules' logged metrics equal an independent computation (issue 18).

Each test recomputes a logged number from the model's outputs with plain torch: translation
BLEU and token accuracy, the training-epoch means, and BERT's masked-LM / NSP metrics.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import Logger
from test_reported_numbers import quiet_trainer, write_fra, write_wiki
from torch import nn

from d2l_lightning.datamodules.bert import BERTPretrainDataModule
from d2l_lightning.datamodules.fra_eng import EngFraDataModule
from d2l_lightning.datamodules.registry import build_datamodule
from d2l_lightning.lit_models import task_module
from d2l_lightning.models.bleu import corpus_bleu

TINY_MT = {"num_hiddens": 16, "ffn_num_hiddens": 16, "num_heads": 2, "num_layers": 1,
           "dropout": 0.0}


def fra_data(tmp_path: Path, **kw) -> EngFraDataModule:
    dm = EngFraDataModule(write_fra(tmp_path), batch_size=16, num_steps=8, seed=0, **kw)
    dm.setup()
    return dm


class WordByWord(nn.Module):
    """A translation model that emits the French word of the source word at each position.

    The fixture's sentences are word-by-word translations, so it gets most words right; it
    cannot know the last word (``oui`` / ``non``) nor the rare words the vocabularies lack.
    """

    has_attention = False

    def __init__(self, table: torch.Tensor, eos: int, tgt_vocab_size: int) -> None:
        super().__init__()
        self.register_buffer("table", table)  # source id -> target id
        self.eos, self.V = eos, tgt_vocab_size
        self.keep_attention, self.step_attention = False, None
        self.dummy = nn.Parameter(torch.zeros(1))

    def encode(self, src, src_valid_len):
        return src, src_valid_len

    def forward(self, src, tgt_in, src_valid_len):  # teacher forcing changes nothing here
        steps = torch.arange(tgt_in.shape[1]).expand(len(src), -1)
        out = self.table[src.gather(1, steps.clamp(max=src.shape[1] - 1))]
        out = torch.where(steps >= src_valid_len[:, None] - 1, self.eos, out)
        return F.one_hot(out, self.V).float() * 10 + self.dummy

    def decode_step(self, tokens, memory, state):
        src, valid = memory
        step = torch.zeros_like(valid) if state is None else state + 1
        out = self.table[src.gather(1, step.clamp(max=src.shape[1] - 1)[:, None])[:, 0]]
        out = torch.where(step >= valid - 1, self.eos, out)  # src ends with <eos>
        logits = F.one_hot(out, self.V).float() * 10 + self.dummy
        return logits[:, None, :], step


def test_translation_bleu_is_corpus_bleu_of_the_greedy_translations(tmp_path) -> None:
    """``test/bleu``: greedy translations against references cut at ``num_steps``, whose
    out-of-vocabulary words never match (sacreBLEU == our corpus BLEU, tests elsewhere)."""
    dm = fra_data(tmp_path, val_size=40, test_size=40)
    en = ["i", "you", "see", "like", "the", "cat", "dog", ".", "<eos>", "<pad>", "<bos>"]
    fr = ["je", "tu", "vois", "aime", "le", "chat", "chien", ".", "<eos>", "<pad>", "<bos>"]
    sv, tv = dm.src_vocab, dm.tgt_vocab
    table = torch.full((len(sv),), tv["<unk>"])
    for e, f in zip(en, fr):
        table[sv[e]] = tv[f]
    module = task_module("seq2seq")("transformer_mt", **dm.data_info(), model_kwargs=TINY_MT,
                                    beam_size=2, bleu_max_sentences=10)
    module.model = WordByWord(table, tv["<eos>"], len(tv))
    book = ["va !", "j'ai perdu .", "il est riche .", "je suis chez moi ."]
    module.translate = lambda sentences, beam_size=1: book  # the book's four sentences
    dm.batch_size = 4  # val/bleu's first 10 sentences span three batches
    trainer = quiet_trainer(tmp_path)
    [val] = trainer.validate(module, datamodule=dm, verbose=False)
    [test] = trainer.test(module, datamodule=dm, verbose=False)

    def expected_bleu(pairs):
        hyps, refs = [], []
        for source, target in pairs:
            words = source.split()[:7]  # 7 words + <eos> fill num_steps 8
            hyps.append(" ".join(fr[en.index(w)] if w in en and w in sv else "<unk>"
                                 for w in words))
            refs.append(" ".join(w if w in tv else "<unk:ref>" for w in target.split()[:7]))
        return corpus_bleu(hyps, refs)

    expected = expected_bleu(dm.split_pairs["test"])
    assert 20 < expected < 90  # most words right, some not
    assert test["test/bleu"] == pytest.approx(expected, abs=1e-3)
    assert test["test/bleu_beam"] == pytest.approx(expected, abs=1e-3)  # one-hot: same words
    first10 = expected_bleu(dm.split_pairs["val"][:10])
    assert first10 != pytest.approx(expected_bleu(dm.split_pairs["val"]), abs=0.5)
    assert val["val/bleu"] == pytest.approx(first10, abs=1e-3)
    # d2l BLEU(k=2) of the four: 1, 1, (3/4) ** (1/2) * (1/3) ** (1/4) = 0.658 (d2l §10.7.6's
    # "il est riche ." for "il est calme ."), 1
    assert val["val/book_bleu"] == pytest.approx((3 + (3 / 4) ** 0.5 * (1 / 3) ** 0.25) / 4,
                                                 abs=1e-6)


def test_training_epoch_loss_and_accuracy_weight_every_non_pad_token(tmp_path) -> None:
    """``train/loss_epoch`` and ``train/acc``: sums over the epoch's non-pad target tokens."""
    dm = fra_data(tmp_path, max_examples=150)
    torch.manual_seed(0)
    module = task_module("seq2seq")("transformer_mt", **dm.data_info(), model_kwargs=TINY_MT,
                                    optimizer="sgd", lr=0.0)
    with torch.no_grad():  # often <eos>: right at sentence ends, wrong elsewhere
        module.model.dense.bias[dm.tgt_vocab["<eos>"]] += 3.0
    quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=0).fit(module, datamodule=dm)
    src, tgt_in, valid, tgt_out = dm.train_set
    with torch.no_grad():
        logits = module.model.eval()(src, tgt_in, valid)
    real = tgt_out != dm.tgt_vocab["<pad>"]
    nll = F.cross_entropy(logits[real], tgt_out[real])
    acc = (logits.argmax(-1) == tgt_out)[real].double().mean()
    metrics = module.trainer.callback_metrics
    assert float(metrics["train/loss_epoch"]) == pytest.approx(float(nll), rel=1e-5)
    assert 0.05 < float(acc) < 0.95
    assert float(metrics["train/acc"]) == pytest.approx(float(acc), abs=1e-6)


def bert_setup(tmp_path: Path):
    dm = BERTPretrainDataModule(write_wiki(tmp_path), batch_size=8, max_len=20, min_freq=1)
    dm.setup()
    torch.manual_seed(0)
    module = task_module("masked_lm")(
        "bert_tiny", **dm.data_info(), optimizer="sgd", lr=0.0,
        model_kwargs={"num_hiddens": 16, "ffn_num_hiddens": 16, "num_heads": 2,
                      "num_layers": 1, "dropout": 0.0})
    with torch.no_grad():  # <unk> (0), the label of padded slots, is often predicted
        module.model.mlm.mlp[-1].bias[0] += 0.5
    return dm, module


def bert_expected(module, batches) -> dict[str, float]:
    """MLM metrics over real prediction slots only; NSP over examples; loss-weighted means."""
    nll_sum = slots = mlm_right = pads_right = nsp_sum = nsp_right = n = loss_sum = 0.0
    with torch.no_grad():
        for tokens, segments, valid, positions, weights, mlm_y, nsp_y in batches:
            _, mlm, nsp = module.model.eval()(tokens, segments, valid, positions)
            real = weights > 0
            nll = F.cross_entropy(mlm[real], mlm_y[real], reduction="sum")
            nsp_nll = F.cross_entropy(nsp, nsp_y, reduction="sum")
            nll_sum += float(nll)
            slots += float(real.sum())
            mlm_right += float((mlm.argmax(-1) == mlm_y)[real].sum())
            pads_right += float((mlm.argmax(-1) == mlm_y)[~real].sum())
            nsp_sum += float(nsp_nll)
            nsp_right += float((nsp.argmax(-1) == nsp_y).sum())
            loss_sum += (float(nll) / float(real.sum()) + float(nsp_nll) / len(nsp_y)) * len(nsp_y)
            n += len(nsp_y)
    assert mlm_right > 0 and pads_right > 0.5 * mlm_right  # counting pads would show
    return {"mlm_loss": nll_sum / slots, "mlm_acc": mlm_right / slots,
            "nsp_loss": nsp_sum / n, "nsp_acc": nsp_right / n, "loss_per_example": loss_sum / n}


def test_bert_validation_metrics_count_real_prediction_slots_only(tmp_path) -> None:
    dm, module = bert_setup(tmp_path)
    [val] = quiet_trainer(tmp_path).validate(module, datamodule=dm, verbose=False)
    [test] = quiet_trainer(tmp_path).test(module, datamodule=dm, verbose=False)
    for split, got, loader in (("val", val, dm.val_dataloader()),
                               ("test", test, dm.test_dataloader())):
        exp = bert_expected(module, loader)
        assert got[f"{split}/mlm_loss"] == pytest.approx(exp["mlm_loss"], rel=1e-5)
        assert got[f"{split}/mlm_acc"] == pytest.approx(exp["mlm_acc"], abs=1e-6)
        assert got[f"{split}/nsp_loss"] == pytest.approx(exp["nsp_loss"], rel=1e-5)
        assert got[f"{split}/nsp_acc"] == pytest.approx(exp["nsp_acc"], abs=1e-6)
        assert got[f"{split}/mlm_ppl"] == pytest.approx(
            torch.tensor(exp["mlm_loss"]).exp().item(), rel=1e-5)
        assert got[f"{split}/loss"] == pytest.approx(exp["mlm_loss"] + exp["nsp_loss"],
                                                     rel=1e-5)


def test_bert_training_epoch_metrics(tmp_path) -> None:
    dm, module = bert_setup(tmp_path)
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    exp = bert_expected(module, dm.train_dataloader())  # epoch 0's batches, as trained
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert m["train/mlm_loss"] == pytest.approx(exp["mlm_loss"], rel=1e-5)
    assert m["train/mlm_acc"] == pytest.approx(exp["mlm_acc"], abs=1e-6)
    assert m["train/nsp_loss"] == pytest.approx(exp["nsp_loss"], rel=1e-5)
    assert m["train/nsp_acc"] == pytest.approx(exp["nsp_acc"], abs=1e-6)
    assert m["train/loss_epoch"] == pytest.approx(exp["loss_per_example"], rel=1e-5)
    assert m["train/mlm_ppl"] == pytest.approx(torch.tensor(exp["mlm_loss"]).exp().item(),
                                               rel=1e-5)


def test_translation_metric_loss_applies_label_smoothing_over_non_pad_tokens(tmp_path) -> None:
    """``--label-smoothing`` reaches the translation loss (it was only tested for images)."""
    dm = EngFraDataModule(write_fra(tmp_path), batch_size=16, num_steps=12, max_examples=200)
    dm.setup()
    torch.manual_seed(0)
    kw = {"num_hiddens": 16, "ffn_num_hiddens": 16, "num_heads": 2, "num_layers": 1,
          "dropout": 0.0}
    module = task_module("seq2seq")("transformer_mt", **dm.data_info(), model_kwargs=kw,
                                    label_smoothing=0.2)
    src, tgt_in, valid, tgt_out = (t[:16] for t in dm.train_set)
    with torch.no_grad():
        _, loss, mask = module._loss((src, tgt_in, valid, tgt_out))
        out = module.model.eval()(src, tgt_in, valid)
    logits = out[0] if isinstance(out, tuple) else out  # (B, T, V)
    logp = F.log_softmax(logits.double(), -1)[mask]  # (N, V): the non-pad targets
    nll = -logp.gather(1, tgt_out[mask][:, None]).squeeze(1)
    expected = (0.8 * nll - 0.2 * logp.mean(-1)).mean()  # (1 - e) nll + e * uniform CE
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert abs(expected.item() - nll.mean().item()) > 1e-3  # the smoothing changes the value


class _RecordingLogger(Logger):
    """Keeps every ``log_metrics`` call: ``(step, metrics)``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, dict]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.calls.append((step, dict(metrics)))


class _StepLosses(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def test_step_train_loss_metric_is_written_at_step_0_and_every_n_steps(tmp_path) -> None:
    """The per-step ``train/loss`` points: steps 0, n - 1, 2n - 1, ..., each with its loss."""
    dm = build_datamodule("synthetic_regression", num_train=160, num_val=16, batch_size=16)
    module = task_module("regression")("linear_regression", num_inputs=2, optimizer="sgd",
                                       lr=0.05)
    logger, losses = _RecordingLogger(), _StepLosses()
    L.Trainer(accelerator="cpu", devices=1, logger=logger, max_epochs=1, limit_val_batches=0,
              log_every_n_steps=4, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, callbacks=[losses], default_root_dir=tmp_path,
              ).fit(module, datamodule=dm)
    points = [(step, m["train/loss"]) for step, m in logger.calls if "train/loss" in m]
    assert [step for step, _ in points] == [0, 3, 7]  # 10 steps
    assert [v for _, v in points] == pytest.approx([losses.losses[s] for s in (0, 3, 7)])
