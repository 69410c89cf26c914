"""Translation (issue 5): fra-eng data, the three models, decoding, BLEU, training, export."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.text import SacreBLEUScore

from conftest import ROOT, read_results, run_cli
from d2l_lightning.cli import train
from d2l_lightning.datamodules import DataError
from d2l_lightning.datamodules.fra_eng import EngFraDataModule
from d2l_lightning.datamodules.fra_eng_text import (
    preprocess_fra_eng,
    split_by_source,
    tokenize_sentence,
)
from d2l_lightning.lit_models import TranslationTask, load_checkpoint
from d2l_lightning.models import build_model, get_spec, load_exported
from d2l_lightning.models.bleu import bleu, corpus_bleu
from d2l_lightning.models.decoding import beam_search, greedy_decode

MODELS = ["seq2seq_gru", "seq2seq_bahdanau", "transformer_mt"]
SMALL = {"seq2seq_gru": {"embed_size": 16, "num_hiddens": 24, "num_layers": 2, "dropout": 0.0},
         "seq2seq_bahdanau": {"embed_size": 16, "num_hiddens": 24, "num_layers": 2,
                              "dropout": 0.0},
         "transformer_mt": {"num_hiddens": 24, "ffn_num_hiddens": 32, "num_heads": 4,
                            "num_layers": 2, "dropout": 0.0}}
EN = ["i", "you", "he", "we", "they", "see", "like", "want", "the", "cat", "dog", "house", "red",
      "big", "now"]
FR = ["je", "tu", "il", "nous", "ils", "vois", "aime", "veux", "le", "chat", "chien", "maison",
      "rouge", "grand", "maintenant"]
FR_ENDS = [".", " !", "\u202f?"]


def write_fra_txt(folder: Path, n: int = 400, seed: int = 0) -> Path:
    """A fra.txt in the real format: word-by-word pairs, repeated sources, U+202F / U+00A0."""
    rng = random.Random(seed)
    lines = ["Go.\tVa !", "Run!\tCours\u202f!", "Run!\tCourez\u202f!", "I lost.\tJ'ai perdu.",
             "He's calm.\tIl est calme.", "I'm home.\tJe suis chez moi.", "Wait!\tAttends\xa0!"]
    while len(lines) < n:
        idx = [rng.randrange(len(EN)) for _ in range(rng.randint(2, 6))]
        en = " ".join(EN[i] for i in idx).capitalize()
        fr = " ".join(FR[i] for i in idx).capitalize()
        end = rng.choice([".", "!", "?"])
        for _ in range(rng.choice([1, 1, 2])):  # some sources have several translations
            lines.append(f"{en}{end}\t{fr}{rng.choice(FR_ENDS)}")
    path = folder / "fra-eng" / "fra.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines[:n]) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def fra_root(tmp_path_factory) -> Path:
    return write_fra_txt(tmp_path_factory.mktemp("fra"))


def small_model(name: str, V_src: int = 20, V_tgt: int = 18, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(name, src_vocab_size=V_src, tgt_vocab_size=V_tgt, **SMALL[name]).eval()


# --- data -----------------------------------------------------------------------------------

def test_preprocessing_is_the_books() -> None:
    assert preprocess_fra_eng("Go.\tVa !") == "go .\tva !"
    assert preprocess_fra_eng("Cours\u202f!") == "cours !"
    assert preprocess_fra_eng("Attends\xa0!") == "attends !"
    assert preprocess_fra_eng("Hi,you?") == "hi ,you ?"
    assert tokenize_sentence("je  suis .") == ["je", "suis", "."]


def test_split_never_puts_a_val_or_test_source_in_train(fra_root) -> None:
    dm = EngFraDataModule(fra_root, batch_size=16, num_steps=8, val_size=40, test_size=40,
                          seed=3)
    dm.setup()
    sources = {k: {p[0] for p in v} for k, v in dm.split_pairs.items()}
    assert not sources["train"] & sources["val"] and not sources["train"] & sources["test"]
    assert not sources["val"] & sources["test"]
    sizes = dm.sizes()
    assert sizes["val"] >= 40 and sizes["test"] >= 40 and sum(sizes.values()) == 400
    # repeated sources exist in the fixture, so grouping matters
    all_src = [p[0] for v in dm.split_pairs.values() for p in v]
    assert len(set(all_src)) < len(all_src)
    dm2 = EngFraDataModule(fra_root, num_steps=8, val_size=40, test_size=40, seed=3)
    dm2.setup()
    assert dm2.split_pairs == dm.split_pairs
    dm3 = EngFraDataModule(fra_root, num_steps=8, val_size=40, test_size=40, seed=4)
    dm3.setup()
    assert dm3.split_pairs["test"] != dm.split_pairs["test"]


def test_batches_follow_the_contract_and_the_book_layout(fra_root) -> None:
    dm = EngFraDataModule(fra_root, batch_size=16, num_steps=6, max_examples=100)
    dm.setup()
    assert dm.sizes() == {"train": 80, "val": 20, "test": 20}
    assert dm.split_pairs["train"][0] == ("go .", "va !")  # book setting: corpus order
    src, tgt_in, src_valid_len, tgt_out = next(iter(dm.train_dataloader()))
    assert src.shape == tgt_in.shape == tgt_out.shape == (16, 6) and src_valid_len.shape == (16,)
    sv, tv = dm.src_vocab, dm.tgt_vocab
    assert sv.idx_to_token[:4] == ["<unk>", "<pad>", "<bos>", "<eos>"]
    assert (tgt_in[:, 0] == tv["<bos>"]).all()
    assert torch.equal(tgt_in[:, 1:], tgt_out[:, :-1])  # shifted by one
    for row, n in zip(src, src_valid_len):
        assert (row[:n] != sv["<pad>"]).all() and (row[n:] == sv["<pad>"]).all()
    full_src, _, full_len, _ = dm.train_set
    # "go" occurs once in the fixture, so min_freq 2 makes it <unk>; "i" is frequent
    assert sv.to_tokens(full_src[0, :full_len[0]]) == ["<unk>", ".", "<eos>"]
    assert "i" in sv and "go" not in sv
    info = dm.data_info()
    assert info["num_steps"] == 6 and info["tgt_vocab"] == tv.to_json()


# --- models ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_source_padding_never_changes_the_output(name) -> None:
    model = small_model(name)
    src = torch.tensor([[5, 6, 7, 3, 1, 1], [8, 3, 1, 1, 1, 1]])
    valid = torch.tensor([4, 2])
    tgt = torch.randint(4, 18, (2, 5))
    longer = torch.cat([src, torch.ones(2, 4, dtype=torch.long)], 1)
    garbage = src.clone()
    garbage[0, 4:], garbage[1, 2:] = 9, 11  # anything past the valid length is ignored
    with torch.no_grad():
        ref = model(src, tgt, valid)
        for other in (longer, garbage):
            torch.testing.assert_close(model(other, tgt, valid), ref, atol=1e-5, rtol=1e-5)
            assert greedy_decode(model, other, valid, 2, 3, 7) == greedy_decode(
                model, src, valid, 2, 3, 7)


@pytest.mark.parametrize("name", MODELS)
def test_decoder_cannot_see_the_future(name) -> None:
    model = small_model(name)
    src, valid = torch.randint(4, 20, (3, 5)), torch.tensor([5, 3, 4])
    tgt = torch.randint(4, 18, (3, 6))
    with torch.no_grad():
        ref = model(src, tgt, valid)
        for t in range(5):
            changed = tgt.clone()
            changed[:, t + 1:] = torch.randint(4, 18, changed[:, t + 1:].shape)
            out = model(src, changed, valid)
            torch.testing.assert_close(out[:, :t + 1], ref[:, :t + 1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_incremental_decoding_equals_teacher_forcing(name) -> None:
    model = small_model(name)
    src, valid = torch.randint(4, 20, (3, 5)), torch.tensor([5, 3, 4])
    tgt = torch.randint(4, 18, (3, 6))
    with torch.no_grad():
        full = model(src, tgt, valid)
        memory, state, steps = model.encode(src, valid), None, []
        for t in range(tgt.shape[1]):
            logits, state = model.decode_step(tgt[:, t:t + 1], memory, state)
            steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_models_return_logits_not_probabilities() -> None:
    for name in MODELS:
        out = small_model(name)(torch.randint(4, 20, (2, 4)), torch.randint(4, 18, (2, 3)),
                                torch.tensor([4, 2]))
        assert out.shape == (2, 3, 18)
        assert not torch.allclose(out.exp().sum(-1), torch.ones(2, 3), atol=1e-3)


# --- decoding -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_beam_one_equals_greedy(name) -> None:
    model = small_model(name, seed=1)
    src = torch.randint(4, 20, (6, 5))
    valid = torch.tensor([5, 1, 2, 3, 4, 5])
    greedy = greedy_decode(model, src, valid, 2, 3, 8)
    assert beam_search(model, src, valid, 2, 3, 8, beam_size=1) == greedy
    assert beam_search(model, src, valid, 2, 3, 8, beam_size=1, alpha=0.6) == greedy


def _sequence_logp(model, src, valid, seq: list[int], bos: int, eos: int) -> float:
    tgt_in = torch.tensor([[bos, *seq[:-1]]])
    logp = model(src, tgt_in, valid).log_softmax(-1)[0]
    return float(logp[torch.arange(len(seq)), torch.tensor(seq)].sum())


def test_wide_beam_finds_the_exhaustive_best() -> None:
    torch.manual_seed(0)
    V, max_len, bos, eos = 5, 3, 2, 3
    model = build_model("transformer_mt", src_vocab_size=8, tgt_vocab_size=V,
                        **SMALL["transformer_mt"]).eval()
    with torch.no_grad():  # a peaked output layer, so sequences differ clearly in score
        model.dense.weight.mul_(8)
    src, valid = torch.tensor([[4, 5, 6, 3]]), torch.tensor([4])
    candidates = []
    for L in range(1, max_len + 1):
        for body in itertools.product([t for t in range(V) if t != eos], repeat=L - 1):
            candidates.append([*body, eos])
        if max_len == L:
            candidates += [list(b) for b in itertools.product(
                [t for t in range(V) if t != eos], repeat=L)]
    with torch.no_grad():
        scored = [(_sequence_logp(model, src, valid, c, bos, eos), c) for c in candidates]
    best = max(scored)[1]
    best = best[:-1] if best[-1] == eos else best
    assert beam_search(model, src, valid, bos, eos, max_len, beam_size=V ** max_len) == [best]


# --- BLEU -----------------------------------------------------------------------------------

def test_book_bleu_reproduces_the_worked_values() -> None:
    assert bleu("il est riche .", "il est calme .", k=2) == pytest.approx(0.658, abs=1e-3)
    assert bleu("je suis chez moi .", "je suis chez moi .", k=2) == 1.0
    assert bleu("va !", "va !", k=2) == 1.0
    assert bleu("", "va !", k=2) == 0.0
    # brevity: a correct but short prediction is penalised by exp(1 - 4/2)
    assert bleu("il est", "il est calme .", k=2) == pytest.approx(0.36788, abs=1e-4)


def test_corpus_bleu_is_100_on_identical_corpora_and_matches_sacrebleu() -> None:
    refs = ["je suis chez moi .", "il est calme .", "j'ai perdu mes clefs hier soir ."]
    sacre = SacreBLEUScore(tokenize="none")
    assert float(sacre(refs, [[r] for r in refs])) * 100 == pytest.approx(100.0)
    assert corpus_bleu(refs, refs) == pytest.approx(100.0)
    hyps = ["je suis chez moi !", "il est calme .", "j'ai perdu les clefs hier soir ."]
    ours = corpus_bleu(hyps, refs)
    theirs = float(SacreBLEUScore(tokenize="none")(hyps, [[r] for r in refs])) * 100
    assert 0 < ours < 100 and ours == pytest.approx(theirs, abs=1e-3)


# --- task module and training ---------------------------------------------------------------

def test_loss_ignores_padding(fra_root) -> None:
    dm = EngFraDataModule(fra_root, num_steps=8, max_examples=50)
    module = TranslationTask("transformer_mt", **{k: v for k, v in dm.data_info().items()},
                     model_kwargs=SMALL["transformer_mt"]).eval()
    src, tgt_in, vl, tgt_out = (t[:8] for t in dm.train_set)
    logits, loss, mask = module._loss((src, tgt_in, vl, tgt_out))
    manual = F.cross_entropy(logits[mask], tgt_out[mask])
    torch.testing.assert_close(loss, manual)
    assert mask.sum() < mask.numel()  # the batch has padding to ignore


@pytest.mark.parametrize("name", MODELS)
def test_overfit_a_small_batch_to_exact_translations(fra_root, name) -> None:
    dm = EngFraDataModule(fra_root, num_steps=8, max_examples=60)
    dm.setup()
    torch.manual_seed(0)
    module = TranslationTask(name, **dm.data_info(), model_kwargs={**SMALL[name], "dropout": 0.0},
                     lr=0.01)
    train_pairs = dm.split_pairs["train"]
    sources = [p[0] for p in train_pairs]
    rows = [i for i in range(7, 40) if sources.count(sources[i]) == 1][:8]  # one target each
    pairs = [train_pairs[i] for i in rows]
    batch = tuple(t[rows] for t in dm.train_set)
    opt = torch.optim.Adam(module.parameters(), lr=0.01)
    module.train()
    for _ in range(150):
        opt.zero_grad()
        _, loss, _ = module._loss(batch)
        loss.backward()
        opt.step()
    assert module.translate([p[0] for p in pairs]) == [p[1] for p in pairs]
    assert module.translate([p[0] for p in pairs], beam_size=3) == [p[1] for p in pairs]


def test_fit_logs_bleu_exports_and_predict_translates(fra_root, tmp_path) -> None:
    run = tmp_path / "run"
    rc = train.main(["--model", "transformer_mt", "--data", "fra_eng", "--data-dir",
                     str(fra_root), "--run-dir", str(run), "--no-progress-bar",
                     "--max-examples", "120", "--max-epochs", "2", "--num-hiddens", "32",
                     "--model-arg", "ffn_num_hiddens=32", "--beam-size", "2"])
    assert rc == 0
    results = read_results(run)
    for key in ("val/loss", "val/acc", "val/bleu", "val/book_bleu", "test/bleu",
                "test/bleu_beam"):
        assert key in results, key
    assert sorted(p.name for p in (run / "attention").glob("*.png")) == [
        f"sentence{i}.png" for i in range(4)]
    # the export alone rebuilds the model; the checkpoint's module with the exported weights
    # translates exactly as predict.py does from the export
    model, config = load_exported(run / "export")
    module = load_checkpoint(run / "checkpoints" / "last.ckpt").eval()
    assert config["src_vocab"] == module.hparams.src_vocab and config["num_steps"] == 9
    assert config["tgt_vocab"] == module.hparams.tgt_vocab
    module.model.load_state_dict(model.state_dict())
    expected = module.translate(["go .", "i'm home ."], beam_size=2)
    proc = run_cli(str(ROOT / "tests" / "without_lightning.py"), str(ROOT / "predict.py"),
                   "translate", "--export", str(run / "export"), "Go.", "I'm home.",
                   "--beam-size", "2", check=True)
    assert proc.stdout.splitlines() == [f"Go. => {expected[0]}",
                                        f"I'm home. => {expected[1]}"]


@pytest.mark.parametrize("name", ["seq2seq_gru", "seq2seq_bahdanau"])
def test_fast_dev_run_rnn_models(fra_root, tmp_path, name) -> None:
    assert train.main(["--model", name, "--data", "fra_eng", "--data-dir", str(fra_root),
                       "--run-dir", str(tmp_path / "run"), "--no-progress-bar",
                       "--fast-dev-run", "--num-hiddens", "16", "--model-arg",
                       "embed_size=8"]) == 0
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()


def test_real_corpus_split_sizes(real_data_dir) -> None:
    dm = EngFraDataModule(real_data_dir, num_steps=15)
    dm.setup()
    sizes = dm.sizes()
    assert sum(sizes.values()) == 167_130
    assert {p[0] for p in dm.split_pairs["test"]}.isdisjoint(p[0] for p in dm.split_pairs["train"])


def test_wandb_gets_translation_table_and_heatmaps_but_no_vocab(fra_root, tmp_path) -> None:
    pytest.importorskip("wandb")
    import glob

    from wandb_reader import read_run

    run = tmp_path / "run"
    run_cli("train.py", "--model", "seq2seq_bahdanau", "--data", "fra_eng", "--data-dir",
            str(fra_root), "--run-dir", str(run), "--no-progress-bar", "--max-examples", "80",
            "--max-epochs", "1", "--num-hiddens", "16", "--model-arg", "embed_size=8",
            "--logger", "wandb", "--no-test", check=True, timeout=240)
    files = glob.glob(str(run / "wandb" / "offline-run-*" / "run-*.wandb"))
    logged = read_run(Path(files[0]))
    keys = set().union(*logged["history"])
    assert "val/bleu" in keys and "val/translations/_type" in keys
    assert "attention/captions" in keys  # the heatmaps, as W&B images
    assert logged["config"]["model"]["name"] == "seq2seq_bahdanau"
    assert "src_vocab" not in str(logged["config"]) and "tgt_vocab" not in str(logged["config"])


@pytest.mark.parametrize("name", ["seq2seq_gru", "seq2seq_bahdanau"])
def test_rnn_translation_models_use_the_books_xavier_init(name) -> None:
    """d2l §10.7 Xavier-initialises Linear and GRU weights (held-out BLEU 6.5 -> 13.5 here)."""
    torch.manual_seed(0)
    model = build_model(name, src_vocab_size=300, tgt_vocab_size=200)
    for weight in (model.dense.weight, model.rnn.weight_hh_l0, model.encoder.rnn.weight_ih_l0):
        fan_out, fan_in = weight.shape
        bound = (6 / (fan_in + fan_out)) ** 0.5
        assert weight.abs().max() <= bound and weight.abs().max() > 0.95 * bound
    # the `full` recipe keeps PyTorch's initialisation (better after 300 whole-corpus steps)
    full = get_spec(name).recipe("full").model_kwargs
    assert full["init"] == "pytorch"
    plain = build_model(name, src_vocab_size=300, tgt_vocab_size=200, **full)
    assert plain.dense.weight.abs().max() < 0.9 * (6 / (128 + 200)) ** 0.5
    with pytest.raises(ValueError, match="xavier, pytorch"):
        build_model(name, src_vocab_size=3, tgt_vocab_size=3, init="he")


def test_fra_eng_split_sizes_defaults_and_refusals(fra_root) -> None:
    """Book setting: the last val_size pairs (default a fifth); full corpus: by source groups."""
    book = EngFraDataModule(fra_root, max_examples=100)
    book.setup()
    assert [len(book.split_pairs[s]) for s in ("train", "val")] == [80, 20]
    book = EngFraDataModule(fra_root, max_examples=100, val_size=7)
    book.setup()
    assert [len(book.split_pairs[s]) for s in ("train", "val")] == [93, 7]
    for bad in (100, 101):  # 0 is d2l 0.17's setting: test_book_settings.py
        with pytest.raises(DataError, match=f"^fra-eng: val_size {bad} does not fit 100 pairs$"):
            EngFraDataModule(fra_root, max_examples=100, val_size=bad).setup()
    # full corpus: the default val_size (5,000) and test_size do not fit 400 pairs; nor do an
    # empty validation split or sizes that leave no training data
    for kw, val in (({"test_size": 10}, 5000), ({"val_size": 0, "test_size": 10}, 0),
                    ({"val_size": 200, "test_size": 200}, 200)):
        with pytest.raises(DataError, match=f"^fra-eng: 400 pairs are too few for val_size {val} "
                                            f"and test_size {kw['test_size']}"):
            EngFraDataModule(fra_root, **kw).setup()


def test_fra_eng_split_min_freq_reaches_both_vocabularies(fra_root) -> None:
    sizes = {}
    for min_freq in (1, 2):
        dm = EngFraDataModule(fra_root, val_size=40, test_size=40, min_freq=min_freq)
        dm.setup()
        sizes[min_freq] = (len(dm.src_vocab), len(dm.tgt_vocab))
    assert sizes[1][0] > sizes[2][0] and sizes[1][1] > sizes[2][1]


def test_split_by_source_fills_test_then_val_to_exactly_their_sizes_with_single_groups() -> None:
    train, val, test = split_by_source([f"s{i}" for i in range(10)], 2, 3, seed=0)
    assert (len(train), len(val), len(test)) == (5, 2, 3)
    assert sorted(train + val + test) == list(range(10))


def test_preprocess_spaces_punctuation_from_the_second_character_on() -> None:
    assert preprocess_fra_eng("a!") == "a !" and preprocess_fra_eng("!a") == "!a"
