"""Decoding contract details that the reported BLEU depends on (mutation survivors, issue 18).

The fixed-probability model and its hand-computed answers are those of
``tests/test_reported_numbers.py``.
"""

from __future__ import annotations

import pytest
import torch
from test_reported_numbers import BEAM_CASES, BOS, EOS, FixedMarkov

from d2l_lightning.models import build_model
from d2l_lightning.models.decoding import (
    beam_search,
    greedy_decode,
    length_penalty,
    map_tensors,
    search,
)

SRC, VALID = torch.zeros(2, 3, dtype=torch.long), torch.tensor([3, 2])


def fixed(case: str) -> FixedMarkov:
    return FixedMarkov(BEAM_CASES[case][0]).eval()


def test_entry_point_is_greedy_by_default_and_beam_search_with_a_beam_size() -> None:
    short, beam = fixed("short_wins_unless_penalised"), fixed("beam_beats_greedy")
    assert search(beam, SRC, VALID, BOS, EOS, 4) == greedy_decode(beam, SRC, VALID, BOS, EOS, 4)
    assert search(beam, SRC, VALID, BOS, EOS, 4, beam_size=1, alpha=1.0) == [[2], [2]]
    assert search(beam, SRC, VALID, BOS, EOS, 4, beam_size=2) == [[3, 4], [3, 4]]
    assert search(short, SRC, VALID, BOS, EOS, 4, beam_size=2) == [[2], [2]]  # alpha 0
    assert search(short, SRC, VALID, BOS, EOS, 4, beam_size=2, alpha=1.0) == [[3, 4], [3, 4]]
    assert search(short, SRC, VALID, BOS, EOS, 4, 2, 1.0) == beam_search(
        short, SRC, VALID, BOS, EOS, 4, 2, 1.0)


def tiny_transformer() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("transformer_mt", src_vocab_size=12, tgt_vocab_size=9, num_hiddens=16,
                       ffn_num_hiddens=16, num_heads=2, num_layers=2, dropout=0.0).eval()


def test_entry_point_passes_the_source_lengths_on() -> None:
    model = tiny_transformer()
    src = torch.randint(4, 12, (3, 6), generator=torch.Generator().manual_seed(0))
    valid = torch.tensor([6, 2, 4])  # tokens past these are padding: masked, so they matter
    assert search(model, src, valid, 2, 3, 7) == greedy_decode(model, src, valid, 2, 3, 7)
    assert search(model, src, valid, 2, 3, 7, beam_size=3) == beam_search(model, src, valid, 2,
                                                                           3, 7, 3)
    assert greedy_decode(model, src, valid, 2, 3, 7) != greedy_decode(
        model, src, torch.tensor([6, 6, 6]), 2, 3, 7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("beam_size", [1, 3])
def test_decoding_on_cuda_equals_the_cpu(beam_size: int) -> None:
    """Kills the ``device=`` mutants that are equivalent on a CPU-only machine."""
    model = tiny_transformer()
    src = torch.randint(4, 12, (3, 6), generator=torch.Generator().manual_seed(0))
    valid = torch.tensor([6, 2, 4])
    cpu = search(model, src, valid, 2, 3, 7, beam_size=beam_size, alpha=0.6)
    cuda = search(model.cuda(), src.cuda(), valid.cuda(), 2, 3, 7, beam_size=beam_size,
                  alpha=0.6)
    assert cuda == cpu
    fixed_model = fixed("short_wins_unless_penalised").cuda()
    assert search(fixed_model, SRC.cuda(), VALID.cuda(), BOS, EOS, 4, beam_size=beam_size,
                  alpha=1.0) == ([[2], [2]] if beam_size == 1 else [[3, 4], [3, 4]])


def test_gnmt_length_penalty_values() -> None:
    # ((5 + len) / 6) ** alpha: 1 at length 1, 2 at length 7 with alpha 1; 1 with alpha 0
    lengths = torch.tensor([1, 7, 13])
    assert length_penalty(lengths, 1.0).tolist() == [1.0, 2.0, 3.0]
    assert length_penalty(lengths, 2.0).tolist() == [1.0, 4.0, 9.0]
    assert length_penalty(lengths, 0.0).tolist() == [1.0, 1.0, 1.0]


class CountingMarkov(FixedMarkov):
    calls = 0

    def decode_step(self, tokens, memory, state):
        self.calls += 1
        return super().decode_step(tokens, memory, state)


@pytest.mark.parametrize("beam_size", [1, 2])
def test_decoding_stops_once_every_sentence_has_ended_and_returns_python_ints(beam_size) -> None:
    model = CountingMarkov(BEAM_CASES["short_wins_unless_penalised"][0]).eval()
    out = search(model, SRC, VALID, BOS, EOS, 50, beam_size=beam_size)
    assert out == [[2], [2]]
    assert model.calls == 1 + beam_size  # greedy: "a", "<eos>"; beam 2: a third step ends "b c"
    assert all(type(t) is int for seq in out for t in seq)


def test_attention_of_a_model_without_cross_attention_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="FixedMarkov has no cross-attention"):
        greedy_decode(fixed("beam_beats_greedy"), SRC, VALID, BOS, EOS, 4, return_attention=True)


@pytest.mark.parametrize("name", ["transformer_mt", "seq2seq_bahdanau"])
def test_returned_attention_covers_each_sentences_tokens_and_eos(name: str) -> None:
    torch.manual_seed(0)
    kw = ({"num_hiddens": 16, "ffn_num_hiddens": 16, "num_heads": 2, "num_layers": 2}
          if name == "transformer_mt" else {"embed_size": 8, "num_hiddens": 16, "num_layers": 2})
    model = build_model(name, src_vocab_size=12, tgt_vocab_size=9, dropout=0.0, **kw).eval()
    step, inner = [0], model.decode_step

    def decode_step(tokens, memory, state):  # <eos> (3) after valid_len - 1 tokens
        step[0] = 0 if state is None else step[0] + 1
        logits, state = inner(tokens, memory, state)
        ends = (memory[-1] - 1 <= step[0]).float()  # memory ends with src_valid_len
        return logits + 100 * ends[:, None, None] * (torch.arange(9) == 3), state

    model.decode_step = decode_step
    src = torch.randint(4, 12, (4, 6), generator=torch.Generator().manual_seed(0))
    valid = torch.tensor([6, 2, 4, 5])
    seqs, att = greedy_decode(model, src, valid, 2, 3, 7, return_attention=True)
    assert model.keep_attention is False  # reset after decoding
    layers, heads = (2, 2) if name == "transformer_mt" else (1, 1)
    assert [len(s) for s in seqs] == [5, 1, 3, 4]
    for i, (seq, a) in enumerate(zip(seqs, att)):
        # one row per generated token plus <eos> (or max_len rows without one)
        assert a.shape == (layers, heads, min(len(seq) + 1, 7), 6)
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]))
        assert (a[..., int(valid[i]):] == 0).all()  # never on source padding
        alone, [a_alone] = greedy_decode(model, src[i:i + 1], valid[i:i + 1], 2, 3, 7,
                                         return_attention=True)
        assert alone == [seq]
        torch.testing.assert_close(a, a_alone)


def test_map_tensors_reorders_beam_states_of_nested_containers() -> None:
    """Beam search reorders a model's state with it: dict, tuple and list states alike."""
    t = torch.arange(3)
    state = {"cache": (t, [t + 1, "tag"]), "step": 2, "h": t + 2}
    out = map_tensors(state, lambda x: x * 10)
    assert set(out) == {"cache", "step", "h"} and out["step"] == 2
    assert torch.equal(out["h"], (t + 2) * 10) and torch.equal(out["cache"][0], t * 10)
    assert isinstance(out["cache"], tuple) and isinstance(out["cache"][1], list)
    assert torch.equal(out["cache"][1][0], (t + 1) * 10) and out["cache"][1][1] == "tag"
