"""Language modelling: Time Machine / WikiText data, LanguageModelingTask, generation, CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from conftest import ROOT, read_results, run_cli
from d2l_lightning.cli import train
from d2l_lightning.cli.predict import main as predict_main
from d2l_lightning.datamodules import corpora
from d2l_lightning.datamodules.download import DataError
from d2l_lightning.datamodules.lm_text import RandomWindowLoader, SequentialLoader
from d2l_lightning.datamodules.registry import build_datamodule
from d2l_lightning.datamodules.text import Vocab, preprocess_time_machine
from d2l_lightning.lit_models import LanguageModelingTask, load_checkpoint
from d2l_lightning.models import model_names
from d2l_lightning.models.generate import generate

BOOK = """The Time Machine, by H. G. Wells [1898]




I


The Time Traveller (for so it will be convenient to speak of him)
was expounding a recondite matter to us.  His grey eyes shone and
twinkled, and his usually pale face was flushed and animated.  The
fire burned brightly, and the soft radiance of the incandescent
lights in the lilies of silver caught the bubbles that flashed and
passed in our glasses.  Our chairs, being his patents, embraced and
caressed us rather than submitted to be sat upon, and there was that
luxurious after-dinner atmosphere when thought roams gracefully
free of the trammels of precision.  And he put it to us in this
way--marking the points with a lean forefinger--as we sat and lazily
admired his earnestness over this new paradox (as we thought it)
and his fecundity.
"""
WIKI_WORDS = ["the", "of", "and", "in", "to", "a", "was", "is", "for", "on", "as", "by",
              "with", "game", "@-@", "@,@", "that", "from", "his", "it", "at", "season",
              "album", "song", "first", "<unk>", ",", ".", "(", ")", "'s", "time", "war"]


def write_wikitext(folder: Path, seed: int = 0) -> Path:
    """``wiki.{train,valid,test}.tokens`` in the real layout: headings, blank lines, @-@."""
    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 30), ("valid", 8), ("test", 8)):
        lines = [" "]
        for i in range(n):
            if i % 6 == 0:
                lines += [f" = Heading {split} {i} = ", " "]
            idx = torch.randint(len(WIKI_WORDS), (int(torch.randint(5, 25, (1,), generator=g)),),
                                generator=g)
            lines.append(" " + " ".join(WIKI_WORDS[j] for j in idx.tolist()) + " ")
        if split == "valid":
            lines.append(" zyzzyva appears only in valid . ")
        (folder / f"wiki.{split}.tokens").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def lm_root(tmp_path_factory) -> Path:
    """A data root with a small Time Machine and WikiText-2 in their real formats."""
    root = tmp_path_factory.mktemp("lmdata")
    (root / "timemachine").mkdir()
    (root / "timemachine" / "timemachine.txt").write_text(BOOK * 6, encoding="utf-8")
    write_wikitext(root / "wikitext-2")
    return root


class Batches:
    """A fixed list of batches as one loader (a bare list would be several loaders)."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def quiet_trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    return L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=tmp_path, **kwargs)


# ---------------------------------------------------------------- data
def test_time_machine_vocab_sizes_and_held_out_tail(lm_root) -> None:
    dm = build_datamodule("time_machine", "language_modeling", data_dir=str(lm_root),
                          batch_size=8, num_steps=10)
    dm.prepare_data()
    info = dm.data_info()
    text = preprocess_time_machine(BOOK * 6)
    n_val = int(len(text) * 0.1)
    train_text, tail = text[:-n_val], text[-n_val:]
    assert info["vocab"] == Vocab(list(train_text)).to_json() and info["vocab"][0] == "<unk>"
    assert set(info["vocab"][1:]) <= set(" abcdefghijklmnopqrstuvwxyz")
    assert dm.sizes() == {"train": len(train_text), "val": n_val, "test": n_val,
                          "vocab": len(info["vocab"])}
    vocab = Vocab.from_tokens(info["vocab"])
    assert "".join(vocab.to_tokens(dm.corpora["val"])) == tail  # the held-out tail
    assert info["carry_state"] is False and info["token_level"] == "char"
    # every training window is text of the training part; every validation batch of the tail
    for x, y in dm.train_dataloader():
        for row in torch.cat([x, y[:, -1:]], 1)[:5]:
            assert "".join(vocab.to_tokens(row)) in train_text
    for x, _ in dm.val_dataloader():
        assert "".join(vocab.to_tokens(x[0])) in tail
    word = build_datamodule("time_machine", "language_modeling", data_dir=str(lm_root),
                            level="word", sampler="sequential", batch_size=4, num_steps=5)
    info = word.data_info()
    assert "traveller" in info["vocab"] and info["carry_state"] is True
    assert word.sizes()["train"] + word.sizes()["val"] == len(text.split())


def test_time_machine_max_tokens_truncates_training_text_only(lm_root) -> None:
    """d2l 0.17's ``max_tokens``: fewer training tokens; vocabulary and held-out tail unchanged."""
    full = build_datamodule("time_machine", "language_modeling", data_dir=str(lm_root),
                            batch_size=2, num_steps=5)
    short = build_datamodule("time_machine", "language_modeling", data_dir=str(lm_root),
                             batch_size=2, num_steps=5, max_tokens=60, sampler="sequential")
    full.setup(), short.setup()
    assert short.sizes()["train"] == 60 < full.sizes()["train"]
    assert torch.equal(short.corpora["train"], full.corpora["train"][:60])
    assert torch.equal(short.corpora["val"], full.corpora["val"])
    assert short.data_info()["vocab"] == full.data_info()["vocab"]
    batches = list(short.train_dataloader())
    rows = torch.cat([x for x, _ in batches] + [batches[-1][1][:, -1:]], 1)  # (B, L) streams
    first_60 = "".join(full.vocab.to_tokens(full.corpora["train"][:60]))
    for row in rows:  # each stream is contiguous text from the first 60 characters
        assert "".join(full.vocab.to_tokens(row)) in first_60
    with pytest.raises(DataError, match="max_tokens"):
        build_datamodule("time_machine", "language_modeling", data_dir=str(lm_root), max_tokens=1)


def test_wikitext_eos_per_line_official_splits_train_vocab(lm_root, monkeypatch) -> None:
    dm = build_datamodule("wikitext2", "language_modeling", data_dir=str(lm_root), batch_size=4)
    dm.prepare_data()
    info = dm.data_info()
    lines = (lm_root / "wikitext-2" / "wiki.train.tokens").read_text().splitlines()
    assert dm.sizes()["train"] == sum(len(line.split()) + 1 for line in lines)
    vocab = Vocab.from_tokens(info["vocab"])
    assert int((dm.corpora["train"] == vocab["<eos>"]).sum()) == len(lines)
    types = {w for line in lines for w in line.split()} | {"<eos>", "<unk>"}
    assert set(info["vocab"]) == types  # every training type, nothing from valid / test
    assert "@-@" in vocab and "zyzzyva" not in vocab
    assert info["carry_state"] is True and info["token_level"] == "word"
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == y.shape == (4, 35) and x.dtype == torch.long
    # WikiText-103: same layout under wikitext-103/ (its canonical sizes are unknown, so
    # corpora.py checksums files of any size: give the fixture sizes to let it read them)
    shutil.copytree(lm_root / "wikitext-2", lm_root / "wikitext-103", dirs_exist_ok=True)
    corpus = corpora.WIKITEXT["wikitext103"]
    sizes = tuple((lm_root / "wikitext-103" / f.name).stat().st_size + 1 for f in corpus.files)
    monkeypatch.setitem(corpora.WIKITEXT, "wikitext103", dataclasses.replace(corpus, sizes=sizes))
    dm103 = build_datamodule("wikitext103", "language_modeling", data_dir=str(lm_root),
                             batch_size=4)
    assert dm103.data_info()["vocab"] == info["vocab"]


def test_sequential_batches_continue_every_row() -> None:
    corpus = torch.arange(1000)
    loader = SequentialLoader(corpus, batch_size=4, num_steps=7)
    batches = list(loader)
    assert len(batches) == len(loader) == math.ceil((250 - 1) / 7)
    for (x0, y0), (x1, _) in zip(batches, batches[1:]):
        assert torch.equal(x1[:, 0], x0[:, -1] + 1)  # row r of batch i+1 continues row r of i
        assert torch.equal(y0, x0 + 1)
    targets = torch.cat([y for _, y in batches], 1)
    assert torch.equal(targets.flatten().sort().values,
                       torch.cat([torch.arange(r * 250 + 1, (r + 1) * 250) for r in range(4)]))
    # two DDP ranks: their own streams; d2l random offset moves the windows between epochs
    r0, r1 = (list(SequentialLoader(corpus, 2, 7, rank=r, world_size=2)) for r in (0, 1))
    assert torch.equal(r0[0][0], batches[0][0][:2]) and torch.equal(r1[0][0], batches[0][0][2:])
    shifted = SequentialLoader(corpus, 4, 7, random_offset=True, seed=1)
    starts = []
    for epoch in range(4):
        shifted.sampler.set_epoch(epoch)
        starts.append(int(next(iter(shifted))[0][0, 0]))
    assert len(set(starts)) > 1 and all(0 <= s < 7 for s in starts)


def test_random_windows_cover_the_data_without_overlap() -> None:
    corpus = torch.arange(500)
    loader = RandomWindowLoader(corpus, batch_size=8, num_steps=10, seed=3)
    epochs = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        xs = [x for x, y in loader if torch.equal(y, x + 1)]
        assert len(xs) == len(loader) == math.ceil(49 / 8)
        x = torch.cat(xs)
        assert torch.equal(x - x[:, :1], torch.arange(10).expand_as(x))  # contiguous windows
        starts = x[:, 0].sort().values
        assert len(starts) == 49 and torch.equal(starts, starts[0] + 10 * torch.arange(49))
        assert 0 <= int(starts[0]) < 10  # random offset, then non-overlapping tiles
        epochs.append(x[:, 0])
    assert not torch.equal(epochs[0], epochs[1])  # reshuffled (and re-offset) each epoch
    # two DDP ranks (48 windows, no padding needed): disjoint halves of the same tiling
    corpus = torch.arange(490)
    shards = [torch.cat([x for x, _ in RandomWindowLoader(corpus, 8, 10, 3, r, 2)])[:, 0]
              for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 24
    assert not set(shards[0].tolist()) & set(shards[1].tolist())


@pytest.mark.parametrize("cls", ["random", "sequential"])
def test_mid_epoch_resume_gives_the_next_batch(cls) -> None:
    def make():
        if cls == "random":
            return RandomWindowLoader(torch.arange(400), 4, 6, seed=1)
        return SequentialLoader(torch.arange(400), 4, 6, random_offset=True, seed=1)

    loader = make()
    loader.sampler.set_epoch(2)
    it = iter(loader)
    next(it), next(it)
    state = loader.state_dict()
    expected = next(it)
    again = make()
    again.load_state_dict(state)
    assert torch.equal(next(iter(again))[0], expected[0])


# ---------------------------------------------------------------- task module
class FixedLM(nn.Module):
    """Logits from a lookup table of the current token (table zeros: the uniform model)."""

    recurrent = True

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table.clone())
        self.calls: list[tuple] = []

    def forward(self, x, state=None):
        self.calls.append((state is None, None if state is None else state.clone(),
                           None if state is None else state.grad_fn))
        logits = self.table[x]  # (B, T, V)
        new_state = (x.float().sum(1, keepdim=True) * self.table.sum() if state is None
                     else state + x.float().sum(1, keepdim=True) * self.table.sum())
        return logits, new_state


def lm_module(vocab_size: int, **kwargs) -> LanguageModelingTask:
    vocab = ["<unk>", *(chr(97 + i) for i in range(vocab_size - 1))]
    return LanguageModelingTask("lstm", vocab, model_kwargs={"num_hiddens": 8}, sample_tokens=0,
                         **kwargs)


def test_uniform_model_perplexity_equals_vocab_size(tmp_path) -> None:
    module = lm_module(13)
    module.model = FixedLM(torch.zeros(13, 13))
    loader = SequentialLoader(torch.randint(13, (301,)), 3, 7)
    out = quiet_trainer(tmp_path).validate(module, loader, verbose=False)[0]
    assert out["val/ppl"] == pytest.approx(13.0, rel=1e-5)
    assert out["val/loss"] == pytest.approx(math.log(13), rel=1e-6)


def test_perplexity_is_token_weighted_over_the_epoch(tmp_path) -> None:
    torch.manual_seed(0)
    table = torch.randn(5, 5) * 3
    # two batches of very different size and loss: exp(mean NLL) != mean of batch ppls
    batches = [(torch.zeros(1, 2, dtype=torch.long), torch.full((1, 2), 4)),
               (torch.randint(5, (4, 9)), torch.randint(5, (4, 9)))]
    nll = [nn.functional.cross_entropy(table[x].reshape(-1, 5), y.reshape(-1), reduction="sum")
           for x, y in batches]
    count = sum(y.numel() for _, y in batches)
    expected = math.exp(float(sum(nll)) / count)
    batch_mean = sum(math.exp(float(n) / y.numel()) for n, (_, y) in zip(nll, batches)) / 2
    assert abs(batch_mean - expected) / expected > 0.1  # the batches do tell them apart
    module = lm_module(5, optimizer="sgd", lr=0.0)
    module.model = FixedLM(table)
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(module, Batches(batches), Batches(batches))
    assert float(trainer.callback_metrics["val/ppl"]) == pytest.approx(expected, rel=1e-5)
    assert float(trainer.callback_metrics["train/ppl"]) == pytest.approx(expected, rel=1e-5)
    out = trainer.test(module, Batches(batches), verbose=False)[0]
    assert out["test/ppl"] == pytest.approx(expected, rel=1e-5)


def test_state_is_carried_detached_and_reset_each_epoch_and_eval(tmp_path) -> None:
    loader = SequentialLoader(torch.randint(5, (200,)), 2, 8)  # 13 batches, 3 used per epoch
    module = lm_module(5, carry_state=True, optimizer="sgd", lr=0.01)
    module.model = spy = FixedLM(torch.randn(5, 5))
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=3, limit_val_batches=2,
                            num_sanity_val_steps=0)
    trainer.fit(module, loader, loader)
    fresh = [c[0] for c in spy.calls]
    # epoch 0: 3 train batches then 2 val; epoch 1 the same: each loop starts from None
    assert fresh == [True, False, False, True, False] * 2
    assert all(grad_fn is None for _, _, grad_fn in spy.calls)  # detached
    # not carried with random windows, nor for a non-recurrent model (GPT)
    module = lm_module(5, carry_state=False)
    module.model = spy = FixedLM(torch.randn(5, 5))
    quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=0).fit(
        module, loader)
    assert all(c[0] for c in spy.calls)
    gpt = LanguageModelingTask("gpt", module.hparams.vocab, model_kwargs={"num_hiddens": 8,
                        "num_heads": 2, "num_layers": 1}, carry_state=True, sample_tokens=0)
    assert gpt.carries_state is False


def test_carried_state_equals_the_previous_output(tmp_path) -> None:
    """Sequential batches: batch i+1 starts from batch i's final state, detached."""
    loader = SequentialLoader(torch.randint(5, (200,)), 2, 8)
    module = lm_module(5, carry_state=True, optimizer="sgd", lr=0.0)
    module.model = spy = FixedLM(torch.randn(5, 5))
    quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=0).fit(
        module, loader)
    batches = list(loader)[:3]
    total = spy.table.sum().detach()
    expected = batches[0][0].float().sum(1, keepdim=True) * total
    assert torch.allclose(spy.calls[1][1], expected)
    expected = expected + batches[1][0].float().sum(1, keepdim=True) * total
    assert torch.allclose(spy.calls[2][1], expected)


def test_overfit_one_batch(tmp_path) -> None:
    torch.manual_seed(0)
    x = torch.randint(1, 10, (4, 12))
    x[:, 0] = torch.arange(4)  # distinct first tokens: every row is predictable from its prefix
    y = torch.roll(x, -1, 1)
    module = LanguageModelingTask("lstm", ["<unk>", *"abcdefghi"], model_kwargs={"num_hiddens": 48},
                           optimizer="adam", lr=0.02, sample_tokens=0)
    trainer = quiet_trainer(tmp_path, max_epochs=1, gradient_clip_val=1.0)
    trainer.fit(module, Batches([(x, y)] * 150))
    assert float(trainer.callback_metrics["train/loss_epoch"]) < 1.5  # mean over the epoch
    logits, _ = module.model(x)
    assert (logits.argmax(-1) == y).float().mean() == 1.0
    assert nn.functional.cross_entropy(logits.reshape(-1, 10), y.reshape(-1)) < 0.05


# ---------------------------------------------------------------- train.py / predict.py
LM_MODELS = model_names("language_modeling")
SMALL = ["--num-hiddens", "16", "--num-layers", "1", "--batch-size", "4", "--num-steps", "8",
         "--no-progress-bar"]


@pytest.mark.parametrize("data", ["time_machine", "wikitext2"])
@pytest.mark.parametrize("model", LM_MODELS)
def test_fast_dev_run_every_model_and_dataset(lm_root, tmp_path, model, data) -> None:
    run = tmp_path / "run"
    rc = train.main(["--model", model, "--data", data, "--data-dir", str(lm_root),
                     "--run-dir", str(run), "--fast-dev-run", *SMALL])
    assert rc == 0
    res = read_results(run)
    assert math.isfinite(res["val/ppl"]) and math.isfinite(res["test/ppl"])
    assert res["val/ppl"] == pytest.approx(math.exp(res["val/loss"]), rel=1e-5)
    samples = (run / "samples.txt").read_text().splitlines()
    assert len(samples) == 2 and "greedy" in samples[0] and "top-k" in samples[1]


def test_d2l_017_recipe_reaches_the_datamodule(lm_root, tmp_path) -> None:
    run = tmp_path / "run"
    assert train.main(["--model", "gru", "--recipe", "d2l-0.17", "--data", "time_machine",
                       "--data-dir", str(lm_root), "--run-dir", str(run), "--max-steps", "1",
                       "--limit-val-batches", "1", "--no-test",
                       "--num-hiddens", "8", "--data-arg", "max_tokens=200",
                       "--no-progress-bar"]) == 0
    res = read_results(run)
    assert res["dataset_sizes"]["train"] == 200  # the flag overrides the recipe's 10,000
    cfg = (run / "config.yaml").read_text()
    assert "sampler: sequential" in cfg and "num_steps: 35" in cfg
    # the DataModule itself got the sequential sampler: only then does the task carry the state
    assert load_checkpoint(run / "checkpoints" / "last.ckpt").hparams.carry_state is True


def test_time_machine_word_level_sequential_through_train_py(lm_root, tmp_path) -> None:
    run = tmp_path / "run"
    assert train.main(["--model", "gru", "--data", "time_machine", "--level", "word",
                       "--sampler", "sequential", "--data-dir", str(lm_root), "--run-dir",
                       str(run), "--fast-dev-run", *SMALL]) == 0
    cfg = json.loads((run / "export" / "config.json").read_text())
    assert cfg["text"]["level"] == "word" and "traveller" in cfg["vocab"]
    sample = (run / "samples.txt").read_text().splitlines()[0]
    assert "'time traveller' -> '" in sample  # word-level prompt of known words
    # WikiText has words only: a flag its DataModule does not take
    assert train.main(["--model", "gru", "--data", "wikitext2", "--level", "word"]) == 2


def test_export_round_trip_and_predict_generate(lm_root, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert train.main(["--model", "lstm", "--data", "time_machine", "--data-dir", str(lm_root),
                       "--run-dir", str(run), "--max-epochs", "2", "--no-test", *SMALL]) == 0
    cfg = json.loads((run / "export" / "config.json").read_text())
    assert cfg["task"] == "language_modeling" and cfg["vocab"][0] == "<unk>"
    assert cfg["text"] == {"level": "char", "preprocess": "time_machine",
                           "prefix": "time traveller "}
    module = load_checkpoint(run / "checkpoints" / "last.ckpt")
    greedy = generate(module.model, module.encode_prompt("Time-Traveller!"), 20)
    expected = "time traveller " + module.ids_to_text(greedy)  # "!" becomes a space, as in training
    predict = str(ROOT / "predict.py")
    without = str(ROOT / "tests" / "without_lightning.py")
    base = [without, predict, "generate", "--export", str(run / "export"), "--num-tokens", "20"]
    proc = run_cli(*base, "--prefix", "Time-Traveller!", check=True)
    assert proc.stdout.removesuffix("\n") == expected  # prefix preprocessed as in training
    # the same command in-process (already shown Lightning-free): seeded sampling repeats
    sampled = []
    capsys.readouterr()  # drop train.py's output
    for seed in ("1", "1", "2"):
        assert predict_main(base[2:] + ["--temperature", "1", "--top-k", "5", "--seed", seed]) == 0
        sampled.append(capsys.readouterr().out)
    assert sampled[0] == sampled[1] and sampled[0].startswith("time traveller ")
    assert sampled[0] != sampled[2]
    assert predict_main(["generate", "--export", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("data, needle", [("time_machine", "The Time Machine is missing"),
                                          ("wikitext2", "WikiText-2 is missing")])
def test_missing_data_offline_is_one_clear_error(tmp_path, capsys, data, needle) -> None:
    rc = train.main(["--model", "lstm", "--data", data, "--data-dir", str(tmp_path / "empty"),
                     "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith(f"error: {needle}")
    assert not (tmp_path / "run").exists()


def test_bi_lstm_is_refused_as_a_language_model(capsys) -> None:
    from d2l_lightning.models.rnn import BIDIRECTIONAL_LM_REFUSAL

    assert train.main(["--model", "bi_lstm", "--data", "time_machine"]) == 2
    assert BIDIRECTIONAL_LM_REFUSAL in capsys.readouterr().err


def test_real_data_sizes(real_data_dir) -> None:
    tm = build_datamodule("time_machine", "language_modeling", data_dir=str(real_data_dir))
    tm.setup()
    sizes = tm.sizes()
    assert sizes["train"] + sizes["val"] == 173_428 and sizes["vocab"] == 28
    wt = build_datamodule("wikitext2", "language_modeling", data_dir=str(real_data_dir))
    wt.setup()
    assert wt.sizes()["train"] == 2_088_628 and wt.sizes()["vocab"] == 33_278


def test_sample_callback_writes_file_and_wandb_table(tmp_path) -> None:
    from types import SimpleNamespace

    from lightning.pytorch.loggers import WandbLogger

    from d2l_lightning.callbacks.generation import SampleGeneration

    class TableOnly(WandbLogger):  # records tables; never starts a W&B run
        def __init__(self) -> None:
            self.tables = []

        def log_table(self, key, columns=None, data=None, **kwargs) -> None:
            self.tables.append((key, columns, data))

    module = lm_module(6, token_level="char", sample_prefix="ab ")
    logger = TableOnly()
    cb = SampleGeneration(module.hparams.sample_prefix, num_tokens=7, temperature=1.0, top_k=3)
    for epoch in range(2):
        trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True,
                                  current_epoch=epoch, global_step=10 * epoch,
                                  default_root_dir=str(tmp_path), loggers=[logger])
        cb.on_validation_epoch_end(trainer, module)
    lines = (tmp_path / "samples.txt").read_text().splitlines()
    assert len(lines) == 4 and lines[2].startswith("epoch 1 step 10 greedy: 'ab ' -> '")
    key, columns, rows = logger.tables[-1]
    assert key == "samples" and columns[-1] == "text" and len(rows) == 4
    assert rows[0][-1] == rows[2][-1] and rows[0][2] == "greedy"  # same weights, same greedy
    assert all(r[-1] for r in rows)
