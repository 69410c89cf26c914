"""Guards for the numbers in docs/: decoding, BLEU, accuracy, schedules, segments, vocabularies.

Every test has a worked example whose expected value is computed by hand (in the comments) or
by an independent reference inside the test, and each one fails when the one-line bug named
in its docstring is introduced (issue 18).
"""

from __future__ import annotations

import gzip
import itertools
import math
import random
from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torchmetrics.text import SacreBLEUScore

from d2l_lightning.datamodules.bert import BERTPretrainDataModule
from d2l_lightning.datamodules.fra_eng import EngFraDataModule
from d2l_lightning.datamodules.registry import build_datamodule
from d2l_lightning.lit_models import task_module
from d2l_lightning.models import build_model
from d2l_lightning.models.bert import get_tokens_and_segments
from d2l_lightning.models.bleu import bleu, corpus_bleu
from d2l_lightning.models.decoding import beam_search, greedy_decode
from d2l_lightning.models.generate import generate

# --- beam search on a fixed-probability next-token model -------------------------------------

BOS, EOS, A, B, C = 0, 1, 2, 3, 4
AFTER_EOS = {t: 0.2 for t in range(5)}  # a search that extends a finished beam pays log 5


class FixedMarkov(nn.Module):
    """A translation model whose next-token distribution depends on the last token only.

    ``table[last] = {token: probability}``; missing tokens have probability 0. It follows the
    interface of :mod:`models.decoding` (``encode``, ``decode_step``); the state is the last
    token, batch-first, so beam search can reorder it.
    """

    def __init__(self, table: dict[int, dict[int, float]]) -> None:
        super().__init__()
        probs = torch.zeros(5, 5, dtype=torch.float64)
        for last, dist in table.items():
            for token, p in dist.items():
                probs[last, token] = p
        self.register_buffer("log_probs", probs.log())  # log 0 = -inf: never chosen
        self.keep_attention, self.step_attention = False, None

    def encode(self, src: torch.Tensor, src_valid_len: torch.Tensor):
        return (src,)

    def decode_step(self, tokens: torch.Tensor, memory, state):
        return self.log_probs[tokens[:, -1]][:, None, :], tokens[:, -1:]

    def sequence_log_prob(self, seq: list[int]) -> float:
        """Summed log-probability of ``seq`` after ``<bos>``, up to and including ``<eos>``."""
        last, total = BOS, 0.0
        for t in seq:
            total += float(self.log_probs[last, t])
            last = t
            if t == EOS:
                break
        return total


def gnmt_penalty(length: int, alpha: float) -> float:
    return ((5 + length) / 6) ** alpha


def exhaustive_best(model: FixedMarkov, max_len: int, alpha: float) -> list[int]:
    """Best ``log p / ((5 + len) / 6) ** alpha`` over every sequence up to ``max_len``.

    Candidates are every sequence that ends at its first ``<eos>`` and every ``<eos>``-free
    sequence of ``max_len`` tokens; ``len`` counts the ``<eos>``. Returned without ``<eos>``.
    """
    words = [A, B, C]
    candidates = [[*body, EOS] for n in range(max_len) for body in
                  itertools.product(words, repeat=n)]
    candidates += [list(body) for body in itertools.product(words, repeat=max_len)]
    scored = [(model.sequence_log_prob(c) / gnmt_penalty(len(c), alpha), c) for c in candidates]
    best = max(scored)[1]
    return best[:-1] if best[-1] == EOS else best


# Each case: the table, max_len, and the hand-computed answers of greedy search and of beam
# search with 2 beams, without (alpha 0) and with (alpha 1) the GNMT length penalty.
BEAM_CASES = {
    # log .36 = -1.0217 ("a <eos>", len 2) beats log(.4 * .92 * .95) = log .3496 = -1.0510
    # ("b c <eos>", len 3) without a penalty; with alpha 1, -1.0217 / (7/6) = -0.8757 loses to
    # -1.0510 / (8/6) = -0.7882. Beam trace: step 2 keeps "b c" (log .368) and the finished
    # "a <eos>" (log .36); step 3 ends both. A search that extends the finished "a <eos>"
    # pays log .2 at step 3 and returns "b c" without a penalty; one whose lengths keep
    # growing after <eos> ranks "a <eos>" as length 3 (-0.766) and returns "a" with alpha 1.
    "short_wins_unless_penalised": (
        {BOS: {A: .6, B: .4}, A: {EOS: .6, C: .4}, B: {C: .92, EOS: .08},
         C: {EOS: .95, C: .05}, EOS: AFTER_EOS},
        4, [A], [A], [B, C]),
    # Greedy takes "a" (.6) then "<eos>" (.55 > .45): log .33 = -1.1087. Beam 2 keeps "b c"
    # (log .368) over "a c" (log .27) and returns "b c <eos>" (log .3496 = -1.0510).
    "beam_beats_greedy": (
        {BOS: {A: .6, B: .4}, A: {EOS: .55, C: .45}, B: {C: .92, EOS: .08},
         C: {EOS: .95, C: .05}, EOS: AFTER_EOS},
        4, [A], [B, C], [B, C]),
    # "a <eos>" finishes at step 2 (log .42 = -0.868) while "b c c c c c" stays unfinished to
    # max_len 6 (log(.4 * .9 ** 5) = -1.443): the frozen score must survive four more steps
    # (extended, it would pay 4 * log 5 and lose). With alpha 1: -0.868 / (7/6) = -0.744
    # beats -1.443 / (11/6) = -0.787.
    "finished_beam_waits_for_an_unfinished_one": (
        {BOS: {A: .6, B: .4}, A: {EOS: .7, C: .3}, B: {C: .9, EOS: .1},
         C: {C: .9, EOS: .1}, EOS: AFTER_EOS},
        6, [A], [A], [A]),
}


@pytest.mark.parametrize("case", list(BEAM_CASES))
def test_beam_search_with_and_without_length_penalty_on_a_fixed_model(case: str) -> None:
    """Bugs caught: inverting the length penalty (``scores * length_penalty(...)``); letting a
    finished beam extend after ``<eos>`` (dropping the ``torch.where(finished, frozen, logp)``
    line); counting length after ``<eos>`` (``lengths.gather(1, beam) + 1``)."""
    table, max_len, greedy, beam0, beam1 = BEAM_CASES[case]
    model = FixedMarkov(table).eval()
    src, valid = torch.zeros(1, 3, dtype=torch.long), torch.tensor([3])
    assert greedy_decode(model, src, valid, BOS, EOS, max_len) == [greedy]
    assert beam_search(model, src, valid, BOS, EOS, max_len, beam_size=2) == [beam0]
    assert beam_search(model, src, valid, BOS, EOS, max_len, beam_size=2, alpha=1.0) == [beam1]
    # A batch of the same sentence three times decodes each one alone.
    src3, valid3 = src.repeat(3, 1), valid.repeat(3)
    assert beam_search(model, src3, valid3, BOS, EOS, max_len, 2, alpha=1.0) == [beam1] * 3


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0, 2.0])
@pytest.mark.parametrize("case", list(BEAM_CASES))
def test_a_beam_wide_enough_finds_the_exhaustive_best(case: str, alpha: float) -> None:
    """Independent reference: the best of every sequence by ``log p / ((5 + len) / 6) ** a``."""
    table, max_len, *_ = BEAM_CASES[case]
    model = FixedMarkov(table).eval()
    src, valid = torch.zeros(1, 3, dtype=torch.long), torch.tensor([3])
    expected = exhaustive_best(model, max_len, alpha)
    assert beam_search(model, src, valid, BOS, EOS, max_len, beam_size=5 ** max_len,
                       alpha=alpha) == [expected]


# --- BLEU -------------------------------------------------------------------------------------

def sacrebleu(hyps: list[str], refs: list[str]) -> float:
    return float(SacreBLEUScore(tokenize="none")(hyps, [[r] for r in refs])) * 100


def test_bleu_clips_repeated_ngrams_to_their_reference_count() -> None:
    """Bug caught: no clipping (``label_subs[gram] > 0`` -> ``gram in label_subs`` in ``bleu``,
    or ``min(c, rc[g])`` -> ``c`` in ``corpus_bleu``)."""
    # "le" occurs once in the reference: 1 of the 4 unigrams matches, p1 = 1/4, equal lengths
    # (brevity 1), BLEU(k=1) = p1 ** (1/2) = 0.5; unclipped it would be 1.
    assert bleu("le le le le", "le chat est noir", k=1) == 0.5
    # Corpus BLEU-4 of "le chat est noir le chat est noir" against "le chat est noir ce soir .":
    # clipped matches / totals: 1-grams 4/8, 2-grams 3/7 (le chat, chat est, est noir), 3-grams
    # 2/6, 4-grams 1/5; 8 >= 7 tokens so brevity 1: 100 * (4/8 * 3/7 * 2/6 * 1/5) ** (1/4).
    hyp, ref = ["le chat est noir le chat est noir"], ["le chat est noir ce soir ."]
    expected = 100 * (4 / 8 * 3 / 7 * 2 / 6 * 1 / 5) ** 0.25
    assert corpus_bleu(hyp, ref) == pytest.approx(expected, rel=1e-12)
    assert sacrebleu(hyp, ref) == pytest.approx(expected, abs=1e-3)


def test_corpus_brevity_penalty_on_short_hypotheses_matches_sacrebleu() -> None:
    """Bug caught: no corpus brevity penalty (``bp = 1.0``)."""
    # Every hypothesis is a prefix of its reference, so all n-gram precisions are 1 and BLEU is
    # the brevity penalty alone: r = 6 + 7 = 13 reference tokens, h = 4 + 5 = 9 hypothesis
    # tokens, 100 * exp(1 - 13/9) = 64.12.
    refs = ["il est calme et content .", "je suis chez moi ce soir ."]
    hyps = ["il est calme et", "je suis chez moi ce"]
    expected = 100 * math.exp(1 - 13 / 9)
    assert corpus_bleu(hyps, refs) == pytest.approx(expected, rel=1e-12)
    assert sacrebleu(hyps, refs) == pytest.approx(expected, abs=1e-3)
    # the penalty is over the corpus, not per sentence: one long hypothesis offsets a short one
    # (r = 13, h = 4 + 9 = 13: no penalty; precisions 1-grams 12/13 ... computed by sacreBLEU)
    mixed = ["il est calme et", "je suis chez moi ce soir , je crois"]
    assert corpus_bleu(mixed, refs) == pytest.approx(sacrebleu(mixed, refs), abs=1e-3)
    # sentence-level d2l BLEU: exp(1 - 4/2) for a correct prefix of half the length
    assert bleu("il est", "il est calme .", k=2) == pytest.approx(math.exp(1 - 4 / 2), rel=1e-12)


def test_bleu_default_is_the_books_k2_and_long_predictions_get_no_bonus() -> None:
    # 5 predicted tokens for 4 reference tokens: brevity exp(min(0, 1 - 4/5)) = 1 (no bonus);
    # p1 = 4/5 (the second "." is unmatched), p2 = 3/4 ("il est", "est calme", "calme ."),
    # BLEU(k=2) = (4/5) ** (1/2) * (3/4) ** (1/4) = 0.8323 (k=3 would add (2/3) ** (1/8)).
    expected = (4 / 5) ** 0.5 * (3 / 4) ** 0.25
    assert bleu("il est calme . .", "il est calme .") == pytest.approx(expected, rel=1e-12)
    assert bleu("il est calme . .", "il est calme .", k=2) == pytest.approx(expected, rel=1e-12)


def test_bleu_matches_each_reference_ngram_as_often_as_it_occurs() -> None:
    # "le chat" occurs twice in both: every n-gram matches, BLEU is exactly 1
    assert bleu("le chat et le chat", "le chat et le chat", k=2) == 1.0
    # a word the reference has twice matches twice, not three times: p1 = 4/5
    assert bleu("le le le chat .", "le chat le noir .", k=1) == pytest.approx((4 / 5) ** 0.5)


def test_corpus_bleu_edge_cases_match_sacrebleu() -> None:
    # A hypothesis shorter than n has no n-grams (it adds nothing to that order's total):
    # h = 2 + 7 = 9, r = 4 + 7 = 11, every n-gram matches (9/9, 7/7, 5/5, 4/4):
    # 100 * exp(1 - 11/9).
    hyps, refs = ["il est", "je suis chez moi ce soir ."], ["il est calme .",
                                                            "je suis chez moi ce soir ."]
    assert corpus_bleu(hyps, refs) == pytest.approx(100 * math.exp(1 - 11 / 9), rel=1e-12)
    assert sacrebleu(hyps, refs) == pytest.approx(100 * math.exp(1 - 11 / 9), abs=1e-3)
    # no matching 4-gram (1-grams 3/4, 2-grams 2/3, 3-grams 1/2, 4-grams 0/1): BLEU 0
    assert corpus_bleu(["le chat est noir"], ["le chat est blanc"]) == 0.0
    assert sacrebleu(["le chat est noir"], ["le chat est blanc"]) == 0.0
    # BLEU-1 of a one-token corpus: p1 = 1, h = r = 1
    assert corpus_bleu(["chat"], ["chat"], max_n=1) == 100.0
    with pytest.raises(ValueError):  # one reference per hypothesis, never silently truncated
        corpus_bleu(["le chat"], ["le chat", "un chien"])


# --- GPT: cached generation for every positional encoding -----------------------------------

GPT_POSITIONS = ("learned", "sinusoidal")


def tiny_gpt(positions: str, max_len: int = 32) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("gpt", vocab_size=11, num_hiddens=16, num_layers=2, num_heads=2,
                        max_len=max_len, positions=positions).double()
    with torch.no_grad():  # large weights: positions change the outputs visibly
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


@pytest.mark.parametrize("positions", GPT_POSITIONS)
def test_gpt_cached_halves_equal_one_full_pass(positions: str) -> None:
    """Bug caught: the cache offset ignored for sinusoidal positions
    (``self.pos_encoding(h * math.sqrt(self.num_hiddens), offset)`` without ``offset``)."""
    model = tiny_gpt(positions)
    X = torch.randint(0, 11, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, _ = model(X)
        first, cache = model(X[:, :5])
        second, cache = model(X[:, 5:9], cache)
        third, _ = model(X[:, 9:], cache)
        steps, state = [], None
        for t in range(12):  # one token at a time, as generation feeds it
            out, state = model(X[:, t:t + 1], state)
            steps.append(out)
    torch.testing.assert_close(torch.cat([first, second, third], 1), full)
    torch.testing.assert_close(torch.cat(steps, 1), full)


@pytest.mark.parametrize("positions", GPT_POSITIONS)
def test_gpt_cached_generation_equals_full_recomputation(positions: str) -> None:
    model = tiny_gpt(positions, max_len=10)  # 4 + 12 tokens: slides past max_len too
    prefix = torch.randint(0, 11, (2, 4), generator=torch.Generator().manual_seed(2))
    seq = prefix
    with torch.no_grad():
        for _ in range(12):
            logits, _ = model(seq[:, -10:])
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(generate(model, prefix, 12), seq[:, 4:])


# --- BERT segments ----------------------------------------------------------------------------

def test_bert_segment_ids_are_exact_around_sep() -> None:
    """Bug caught: the first ``<sep>`` marked as segment B (``t >= la_ + 1`` in
    ``make_examples``, or the same in ``get_tokens_and_segments``)."""
    tokens, segments = get_tokens_and_segments(["a", "b"], ["c", "d", "e"])
    assert tokens == ["<cls>", "a", "b", "<sep>", "c", "d", "e", "<sep>"]
    assert segments == [0, 0, 0, 0, 1, 1, 1, 1]
    assert get_tokens_and_segments(["a"]) == (["<cls>", "a", "<sep>"], [0, 0, 0])


def write_wiki(root: Path) -> Path:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(30)]
    folder = root / "wikitext-2"
    folder.mkdir(parents=True)
    for split, n in (("train", 60), ("valid", 12), ("test", 12)):
        lines = [" ", f" = Title {split} = ", " "]
        for _ in range(n):
            sentences = [" ".join(rng.choices(words, k=rng.randint(2, 7)))
                         for _ in range(rng.randint(2, 4))]
            lines.append(" " + " . ".join(sentences) + " . ")
        (folder / f"wiki.{split}.tokens").write_text("\n".join(lines) + "\n")
    return root


def test_bert_pretraining_examples_have_exact_segments(tmp_path) -> None:
    """Every example: segment 0 for ``<cls> A <sep>``, 1 for ``B <sep>``, 0 for padding."""
    dm = BERTPretrainDataModule(write_wiki(tmp_path), batch_size=8, max_len=20, min_freq=1)
    dm.setup()
    sep, cls = dm.vocab["<sep>"], dm.vocab["<cls>"]
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(1)  # a re-drawn epoch as well
    redrawn = [torch.cat(parts) for parts in zip(*loader)]
    checked = 0
    for tokens, segments, valid_lens, *_ in (dm.train_set, dm.val_set, dm.test_set, redrawn):
        for row, seg, n in zip(tokens.tolist(), segments.tolist(), valid_lens.tolist()):
            s1, s2 = (i for i, t in enumerate(row) if t == sep)  # exactly two <sep>
            assert row[0] == cls and n == s2 + 1
            assert seg == [0] * (s1 + 1) + [1] * (s2 - s1) + [0] * (len(row) - s2 - 1)
            checked += 1
    assert checked > 100


# --- fra-eng vocabularies ---------------------------------------------------------------------

def write_fra(root: Path, n_groups: int = 120) -> Path:
    """fra.txt: common words everywhere, plus one rare word pair per source group.

    Each group repeats its rare English and French word twice (two translations), so whichever
    split a group lands in, its rare words reach min_freq 2 there and nowhere else.
    """
    rng = random.Random(0)
    en, fr = ["i", "you", "see", "like", "the", "cat", "dog"], ["je", "tu", "vois", "aime",
                                                               "le", "chat", "chien"]
    lines = []
    for g in range(n_groups):
        idx = [rng.randrange(len(en)) for _ in range(rng.randint(2, 4))]
        source = " ".join(en[i] for i in idx) + f" rare{g}."
        for k in range(2):
            lines.append(f"{source.capitalize()}\t{' '.join(fr[i] for i in idx)} rare{g} "
                         f"{'oui' if k else 'non'}.")
    path = root / "fra-eng" / "fra.txt"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def frequent(sentences: list[str], min_freq: int = 2) -> set[str]:
    counts = Counter(t for s in sentences for t in s.split())
    return {t for t, c in counts.items() if c >= min_freq}


SPECIALS = {"<unk>", "<pad>", "<bos>", "<eos>"}


def test_fra_eng_vocabularies_come_from_the_training_split_only(tmp_path) -> None:
    """Bug caught: vocabularies of all pairs in the full corpus (``src_tok, tgt_tok =
    tokens["train"]`` replaced by the tokens of ``pairs``), a leak of held-out words."""
    root = write_fra(tmp_path)
    dm = EngFraDataModule(root, num_steps=8, val_size=40, test_size=40, seed=0)
    dm.setup()
    train = dm.split_pairs["train"]
    held_out = dm.split_pairs["val"] + dm.split_pairs["test"]
    for side, vocab in ((0, dm.src_vocab), (1, dm.tgt_vocab)):
        expected = SPECIALS | frequent([p[side] for p in train])
        leak = frequent([p[side] for p in held_out]) - expected
        assert len(leak) >= 20  # the fixture has held-out-only words that would qualify
        assert set(vocab.idx_to_token) == expected
    # The book setting (max_examples) builds them from all N pairs, as d2l does.
    book = EngFraDataModule(root, num_steps=8, max_examples=200)
    book.setup()
    pairs = book.split_pairs["train"] + book.split_pairs["val"]
    assert set(book.src_vocab.idx_to_token) == SPECIALS | frequent([p[0] for p in pairs])
    assert set(book.tgt_vocab.idx_to_token) == SPECIALS | frequent([p[1] for p in pairs])


# --- seq2seq accuracy -------------------------------------------------------------------------

def quiet_trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=tmp_path, **kwargs)


def test_seq2seq_val_acc_is_the_accuracy_over_non_pad_target_tokens(tmp_path) -> None:
    """Bug caught: ``<pad>`` positions counted (``ignore_index=self.pad`` dropped)."""
    dm = EngFraDataModule(write_fra(tmp_path), batch_size=16, num_steps=12, max_examples=200)
    dm.setup()
    torch.manual_seed(0)
    module = task_module("seq2seq")(
        "transformer_mt", **dm.data_info(), bleu_max_sentences=4,
        model_kwargs={"num_hiddens": 16, "ffn_num_hiddens": 16, "num_heads": 2,
                      "num_layers": 1, "dropout": 0.0})
    eos = dm.tgt_vocab["<eos>"]
    with torch.no_grad():  # mostly <eos>, some words: neither 0 nor 1, and pads mispredicted
        module.model.dense.bias[eos] += 3.0
    trainer = quiet_trainer(tmp_path)
    [val] = trainer.validate(module, datamodule=dm, verbose=False)
    [test] = trainer.test(module, datamodule=dm, verbose=False)
    for split, result in (("val", val), ("test", test)):
        src, tgt_in, valid, tgt_out = getattr(dm, f"{split}_set")
        with torch.no_grad():
            pred = module.model.eval()(src, tgt_in, valid).argmax(-1)
        real = tgt_out != dm.tgt_vocab["<pad>"]
        expected = (pred == tgt_out)[real].double().mean().item()
        with_pads = (pred == tgt_out).double().mean().item()
        assert 0.05 < expected < 0.95 and abs(with_pads - expected) > 0.05
        assert result[f"{split}/acc"] == pytest.approx(expected, abs=1e-6)


# --- learning-rate schedules ------------------------------------------------------------------

class LRRecorder(L.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def lr_curve(scheduler: str, tmp_path: Path, lr: float = 0.1, epochs: int = 3,
             val: bool = False) -> list[float]:
    """The learning rate of each training step: 10 steps per epoch."""
    dm = build_datamodule("synthetic_regression", num_train=160, num_val=16, batch_size=16)
    module = task_module("regression")("linear_regression", num_inputs=2, optimizer="sgd",
                                       lr=lr, scheduler=scheduler)
    recorder = LRRecorder()
    quiet_trainer(tmp_path, max_epochs=epochs, callbacks=[recorder],
                  limit_val_batches=1.0 if val else 0).fit(module, datamodule=dm)
    assert len(recorder.lrs) == 10 * epochs
    return recorder.lrs


def test_cosine_schedule_steps_every_batch_and_ends_below_a_tenth(tmp_path) -> None:
    """Bug caught: per-epoch stepping (``"interval": "step"`` -> ``"epoch"``)."""
    lrs = lr_curve("cosine", tmp_path)
    # CosineAnnealingLR over T = 30 steps: lr_s = 0.1 * (1 + cos(pi * s / 30)) / 2
    expected = [0.1 * (1 + math.cos(math.pi * s / 30)) / 2 for s in range(30)]
    assert lrs == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert all(a > b for a, b in zip(lrs[:10], lrs[1:11]))  # changes at every step of epoch 0
    assert lrs[-1] < 0.1 * 0.1


def test_one_cycle_schedule_steps_every_batch_and_peaks_at_lr(tmp_path) -> None:
    """Bug caught: per-epoch stepping (``"interval": "step"`` -> ``"epoch"``)."""
    lrs = lr_curve("onecycle", tmp_path)
    assert lrs[0] == pytest.approx(0.1 / 25)  # OneCycleLR starts at max_lr / div_factor
    peak = max(range(30), key=lrs.__getitem__)
    assert 0.95 * 0.1 <= lrs[peak] <= 0.1 and 7 <= peak <= 10  # pct_start 0.3 of 30 steps
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))  # rising every step
    assert all(a > b for a, b in zip(lrs[peak:-1], lrs[peak + 1:]))  # then falling every step
    assert lrs[-1] < 0.1 * 1e-3


def test_step_schedule_divides_by_ten_at_epoch_boundaries_only(tmp_path) -> None:
    lrs = lr_curve("step", tmp_path, epochs=6)  # StepLR(step_size = 6 epochs // 3 = 2, 0.1)
    assert lrs == pytest.approx([0.1] * 20 + [0.01] * 20 + [0.001] * 20)


def test_plateau_schedule_divides_by_ten_after_two_epochs_without_improvement(tmp_path) -> None:
    # lr 1e-12: the float32 weights (and val/loss) do not move, and any improvement would count
    # (threshold 0); epoch 0 sets the best, epochs 1, 2 and 3 do not improve, the third
    # exceeds patience 2: epoch 4 at lr/10
    lrs = lr_curve("plateau", tmp_path, lr=1e-12, epochs=5, val=True)
    assert lrs == pytest.approx([1e-12] * 40 + [1e-13] * 10, rel=1e-9)


# --- image / label pairing against the raw IDX files -----------------------------------------

def raw_idx(path: Path) -> np.ndarray:
    """An independent IDX reader: big-endian header ``0 0 8 ndim``, dims, then uint8 data."""
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    assert data[:3] == b"\x00\x00\x08"
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def raw_pairs(folder: Path, prefix: str) -> dict[bytes, set[int]]:
    """Image bytes -> the labels the raw files give that image."""
    def find(stem: str) -> Path:
        return next(p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file())

    images = raw_idx(find(f"{prefix}-images-idx3-ubyte"))
    labels = raw_idx(find(f"{prefix}-labels-idx1-ubyte"))
    pairs: dict[bytes, set[int]] = {}
    for image, label in zip(images.reshape(len(images), -1), labels.tolist()):
        pairs.setdefault(image.tobytes(), set()).add(label)
    return pairs


def assert_paired_as_in_raw_files(name: str, root: Path, folder: Path) -> None:
    dm = build_datamodule(name, data_dir=root, batch_size=1000)
    dm.prepare_data()
    dm.setup()
    train, test = raw_pairs(folder, "train"), raw_pairs(folder, "t10k")
    batches = list(dm.train_dataloader())
    loader = (torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    for split, (x, y), raw in (("train", dm.train_set, train), ("val", dm.val_set, train),
                               ("test", dm.test_set, test), ("train batches", loader, train)):
        flat = x.reshape(len(x), -1).numpy()
        wrong = sum(int(label) not in raw.get(image.tobytes(), ())
                    for image, label in zip(flat, y.tolist()))
        assert wrong == 0, f"{name} {split}: {wrong} of {len(y)} images carry another label"


def test_images_keep_the_labels_of_the_raw_idx_files(data_root) -> None:
    """Bug caught: images and labels shuffled apart (``labels[tr]`` -> ``labels[:len(tr)]``)."""
    assert_paired_as_in_raw_files("mnist", data_root, data_root / "mnist")
    assert_paired_as_in_raw_files("fashion_mnist", data_root, data_root / "fashion-mnist")


@pytest.mark.parametrize("name, folder", [("mnist", "mnist"), ("fashion_mnist", "fashion-mnist")])
def test_real_images_keep_the_labels_of_the_raw_idx_files(real_data_dir, name, folder) -> None:
    assert_paired_as_in_raw_files(name, real_data_dir, real_data_dir / folder)
