"""BERT pretraining (issue 6): data masking/NSP, masked losses, padding, training, export."""

from __future__ import annotations

import random
from pathlib import Path

import lightning as L
import pytest
import torch

from conftest import ROOT, read_results, run_cli
from d2l_lightning.cli import train
from d2l_lightning.datamodules.bert import BERTPretrainDataModule, EpochLoader
from d2l_lightning.datamodules.bert_text import unigram_baseline
from d2l_lightning.datamodules.loader import TensorBatchLoader
from d2l_lightning.lit_models import load_checkpoint
from d2l_lightning.lit_models.masked_lm import MaskedLMTask, bert_losses
from d2l_lightning.models import build_model, load_exported
from d2l_lightning.models.bert import BERTEncoder, BERTModel, fill_mask

WORDS = [f"w{i}" for i in range(60)]


def write_wikitext(root: Path, seed: int = 0, lines: tuple[int, int, int] = (300, 40, 40)
                   ) -> Path:
    """A tiny WikiText-2 in the real format: `` = Title = `` headings, paragraph lines."""
    rng = random.Random(seed)
    folder = root / "wikitext-2"
    folder.mkdir(parents=True, exist_ok=True)
    weights = [1 / (i + 1) for i in range(len(WORDS))]
    for split, n in zip(("train", "valid", "test"), lines):
        out = []
        for i in range(n):
            if i % 10 == 0:
                out += [" ", f" = Title {i} = ", " "]
            sentences = [" ".join(rng.choices(WORDS, weights, k=rng.randint(3, 12)))
                         for _ in range(rng.randint(1, 5))]
            out.append(" " + " . ".join(sentences).capitalize() + " . ")
        (folder / f"wiki.{split}.tokens").write_text("\n".join(out) + "\n")
    return root


@pytest.fixture(scope="module")
def wiki_root(tmp_path_factory) -> Path:
    return write_wikitext(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def dm(wiki_root) -> BERTPretrainDataModule:
    d = BERTPretrainDataModule(wiki_root, batch_size=16, seed=0, max_len=32)
    d.prepare_data()
    d.setup()
    return d


def _epochs(dm: BERTPretrainDataModule, n: int) -> list[torch.Tensor]:
    draws = [dm._draw("train", e) for e in range(n)]
    return [torch.cat([d[i] for d in draws]) for i in range(7)]


def test_masking_proportions_and_never_special_tokens(dm) -> None:
    tokens, segments, valid_lens, pos, weights, labels, _ = _epochs(dm, 8)
    v = dm.vocab
    specials = torch.tensor([v["<pad>"], v["<cls>"], v["<sep>"], v["<mask>"]])
    real = weights > 0
    assert real.sum() > 3000
    # the number of prediction slots per example: max(1, round(15% of the tokens))
    expected = torch.clamp(torch.round(valid_lens * 0.15), min=1)
    torch.testing.assert_close(real.sum(1).float(), expected.float())
    # predicted positions are inside the sequence, never <cls>/<sep>/<pad>, and distinct
    assert (pos[real] > 0).all() and (pos[real] < valid_lens[:, None].expand_as(pos)[real]).all()
    assert not torch.isin(labels[real], specials).any()
    for row in range(200):
        p = pos[row][real[row]]
        assert len(p.unique()) == len(p)
    # 80% <mask>, 10% random word, 10% unchanged
    shown = tokens.gather(1, pos)[real]
    lab = labels[real]
    frac_mask = (shown == v["<mask>"]).float().mean().item()
    frac_same = (shown == lab).float().mean().item()
    frac_random = 1 - frac_mask - frac_same
    assert abs(frac_mask - 0.8) < 0.03, frac_mask
    assert abs(frac_same - 0.1) < 0.03, frac_same  # (+ a random word equal to the label)
    assert abs(frac_random - 0.1) < 0.03, frac_random
    assert not torch.isin(shown[shown != v["<mask>"]], specials).any()
    # padded slots: weight 0, position 0 (<cls> stays), label 0
    assert (pos[~real] == 0).all() and (labels[~real] == 0).all()
    assert (tokens[:, 0] == v["<cls>"]).all()
    # structure: <cls> A <sep> B <sep> <pad>..., segments 0 then 1
    rows = torch.arange(len(tokens))
    assert (tokens[rows, valid_lens - 1] == v["<sep>"]).all()
    assert (tokens[torch.arange(tokens.shape[1])[None] >= valid_lens[:, None]] == v["<pad>"]).all()
    assert (segments[rows, valid_lens - 1] == 1).all() and (segments[:, :2] == 0).all()


def test_nsp_balance_true_pairs_and_per_epoch_redraw(dm) -> None:
    *_, nsp = _epochs(dm, 8)
    assert abs(nsp.float().mean().item() - 0.5) < 0.04
    e0, e0_again, e1 = dm._draw("train", 0), dm._draw("train", 0), dm._draw("train", 1)
    for a, b in zip(e0, e0_again):
        assert torch.equal(a, b)  # seeded by (seed, epoch)
    assert not torch.equal(e0[0], e1[0]) and not torch.equal(e0[6], e1[6])
    # a true pair's segment B is the next sentence of segment A in the corpus
    c = dm.corpora["train"]
    tokens, segments, valid_lens, pos, *_ = e0
    sep = dm.vocab["<sep>"]
    for i in torch.nonzero(e0[6] == 1).squeeze(1)[:50].tolist():
        a = c.first[i]
        la, lb = int(c.lengths[a]), int(c.lengths[a + 1])
        assert int(valid_lens[i]) == la + lb + 3 and int(tokens[i, la + 1]) == sep


def test_epoch_loader_redraws_each_epoch_and_resumes_exactly(dm) -> None:
    loader = dm.train_dataloader()
    assert isinstance(loader, EpochLoader)
    first = next(iter(loader))
    loader.sampler.set_epoch(1)
    second_epoch = list(loader)
    assert not torch.equal(first[0], second_epoch[0][0])
    resumed = dm.train_dataloader()
    resumed.load_state_dict({"epoch": 1, "trained": 1})
    for a, b in zip(next(iter(resumed)), second_epoch[1]):
        assert torch.equal(a, b)


def test_padded_prediction_slots_contribute_nothing_to_the_loss() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, requires_grad=True)
    nsp_logits = torch.randn(3, 2)
    weights = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 0, 0, 0, 0]]).float()
    labels = torch.randint(0, 11, (3, 5))
    nsp = torch.tensor([0, 1, 1])
    loss, _, n = bert_losses(logits, nsp_logits, weights, labels, nsp)
    (grad,) = torch.autograd.grad(loss, logits)
    other = labels.clone()
    other[weights == 0] = (labels[weights == 0] + 3) % 11
    loss2, _, _ = bert_losses(logits, nsp_logits, weights, other, nsp)
    (grad2,) = torch.autograd.grad(loss2, logits)
    torch.testing.assert_close(loss, loss2)
    torch.testing.assert_close(grad, grad2)
    assert (grad[weights == 0] == 0).all() and n == 7
    nll = torch.nn.functional.cross_entropy(logits[weights > 0], labels[weights > 0])
    torch.testing.assert_close(loss, nll)  # mean over the 7 real slots only


def test_attention_ignores_padding_and_positions_learn() -> None:
    torch.manual_seed(0)
    model = BERTModel(50, num_hiddens=16, ffn_num_hiddens=32, num_heads=2, num_layers=2,
                      max_len=12).eval()
    tokens = torch.randint(5, 50, (1, 7))
    segments = torch.tensor([[0, 0, 0, 0, 1, 1, 1]])
    enc, mlm, nsp = model(tokens, segments, torch.tensor([7]), torch.tensor([[1, 2]]))
    padded = torch.cat([tokens, torch.ones(1, 5, dtype=torch.long)], 1)  # <pad> = 1
    seg_padded = torch.cat([segments, torch.zeros(1, 5, dtype=torch.long)], 1)
    enc2, mlm2, nsp2 = model(padded, seg_padded, torch.tensor([7]), torch.tensor([[1, 2]]))
    torch.testing.assert_close(enc2[:, :7], enc, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mlm2, mlm, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(nsp2, nsp, atol=1e-5, rtol=1e-5)
    enc3, *_ = model(padded, seg_padded, None, torch.tensor([[1, 2]]))  # without the mask
    assert not torch.allclose(enc3[:, :7], enc, atol=1e-3)
    # every parameter (the learned positions included) gets a gradient
    model.train()
    _, mlm, nsp = model(padded, seg_padded, torch.tensor([7]), torch.tensor([[1, 2]]))
    (mlm.sum() + nsp.sum()).backward()
    assert isinstance(model.encoder.pos_embedding, torch.nn.Parameter)
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.encoder.pos_embedding.grad[0, 7:].abs().sum() == 0  # padded positions


def test_overfit_one_batch_mlm_and_nsp_accuracy_reach_one(dm) -> None:
    torch.manual_seed(0)
    batch = tuple(t[:16] for t in dm.train_set)
    module = MaskedLMTask("bert_tiny", dm.vocab.to_json(), 32, optimizer="adam", lr=3e-3,
                      model_kwargs={"num_hiddens": 32, "ffn_num_hiddens": 64, "dropout": 0.0})
    trainer = L.Trainer(max_epochs=15, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    data = TensorBatchLoader(tuple(t.repeat(10, *[1] * (t.dim() - 1)) for t in batch), 16,
                             shuffle=True)
    trainer.fit(module, train_dataloaders=data)
    m = trainer.callback_metrics
    assert m["train/mlm_acc"] == 1.0 and m["train/nsp_acc"] == 1.0, dict(m)
    assert m["train/mlm_loss"] < 0.1


def test_unigram_baseline_counts_real_slots_only() -> None:
    weights = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([[7, 7, 0], [9, 0, 0]])
    assert unigram_baseline(weights, labels) == (7, pytest.approx(2 / 3))
    assert unigram_baseline(weights, labels, token=9)[1] == pytest.approx(1 / 3)


def test_short_run_export_round_trip_and_checkpoint(wiki_root, tmp_path) -> None:
    run = tmp_path / "run"
    assert train.main(["--model", "bert_tiny", "--data", "wikitext2", "--max-len", "32",
                       "--batch-size", "8", "--model-arg", "num_hiddens=32",
                       "--model-arg", "ffn_num_hiddens=64", "--max-epochs", "1",
                       "--limit-train-batches", "1", "--limit-val-batches", "1",
                       "--limit-test-batches", "1", "--data-dir",
                       str(wiki_root), "--run-dir", str(run), "--no-progress-bar"]) == 0
    res = read_results(run)
    for key in ("val/mlm_loss", "val/mlm_acc", "val/mlm_ppl", "val/nsp_acc", "test/nsp_acc"):
        assert key in res, key
    assert res["val/mlm_ppl"] == pytest.approx(torch.tensor(res["val/mlm_loss"]).exp().item(),
                                               rel=1e-4)
    assert res["dataset_sizes"]["train"] > 0 and res["dataset_sizes"]["vocab"] > 5
    model, cfg = load_exported(run / "export")
    encoder, enc_cfg = load_exported(run / "export" / "encoder")
    assert cfg["task"] == "masked_lm" and cfg["max_len"] == 32 and "<mask>" in cfg["vocab"]
    assert isinstance(encoder, BERTEncoder) and enc_cfg["arch"] == "bert_encoder"
    assert enc_cfg["vocab"] == cfg["vocab"]
    tokens = torch.tensor([[3, 10, 11, 4, 12, 4]])
    seg = torch.tensor([[0, 0, 0, 0, 1, 1]])
    torch.testing.assert_close(encoder(tokens, seg, torch.tensor([6])),
                               model(tokens, seg, torch.tensor([6]))[0])
    # the checkpoint rebuilds the same model
    ckpt = load_checkpoint(run / "checkpoints" / "last.ckpt")
    torch.testing.assert_close(ckpt.model.eval()(tokens, seg, torch.tensor([6]))[2],
                               model(tokens, seg, torch.tensor([6]))[2])
    preds = fill_mask(model, cfg["vocab"], ["w1", "<mask>", "w2"], top_k=3)
    assert preds[0][0] == 2 and len(preds[0][1]) == 3
    # predict.py without Lightning: fill-mask on the whole model, embed on the encoder
    out = run_cli("tests/without_lightning.py", "predict.py", "fill-mask", "--export",
                  str(run / "export"), "W1 <mask> w2 .", "--top-k", "2", check=True)
    assert out.stdout.startswith("<mask> at 2: ") and out.stdout.count("(") == 2
    pt = tmp_path / "e.pt"
    run_cli("tests/without_lightning.py", "predict.py", "embed", "--export",
            str(run / "export" / "encoder"), "w1 w2 .", "w3", "--out", str(pt), check=True)
    saved = torch.load(pt)
    assert saved["encodings"].shape == (7, 32) and saved["tokens"][0] == "<cls>"
    ids = torch.tensor([[cfg["vocab"].index(t) if t in cfg["vocab"] else 0
                         for t in saved["tokens"]]])
    torch.testing.assert_close(saved["encodings"][None],
                               encoder(ids, saved["segments"][None], torch.tensor([7])))
    bad = run_cli("predict.py", "fill-mask", "--export", str(run / "export"), "no mask here")
    assert bad.returncode == 1 and "no <mask>" in bad.stderr


def test_registry_presets_and_encoder_is_not_trainable() -> None:
    tiny = build_model("bert_tiny", vocab_size=100)
    assert len(tiny.encoder.blks) == 2 and tiny.encoder.token_embedding.embedding_dim == 128
    assert tiny.encoder.blks[0].attention.num_heads == 2
    assert tiny.encoder.blks[0].ffn.dense1.out_features == 256
    small = build_model("bert_small", vocab_size=100)
    assert len(small.encoder.blks) == 4 and small.encoder.pos_embedding.shape[1] == 128
    proc = run_cli(str(ROOT / "train.py"), "--model", "bert_encoder", "--data", "wikitext2")
    assert proc.returncode == 2 and "cannot train" in proc.stderr


def test_real_wikitext2_sizes(real_data_dir) -> None:
    d = BERTPretrainDataModule(real_data_dir, seed=0, max_len=64)
    d.setup()
    sizes = d.sizes()
    assert sizes["train_paragraphs"] > 14000 and sizes["vocab"] > 19000
    assert sizes["train"] > 40000 and sizes["val"] > 4000
