"""Unit properties of models/rnn.py: one-step cells by hand, state shapes, options (d2l §9-10)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from d2l_lightning.models import rnn
from d2l_lightning.models.rnn import (
    RNNLM,
    BiLSTMEncoder,
    GRUScratch,
    LSTMScratch,
    RNNScratch,
    StackedRNNScratch,
)


def _randomize(m: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
    return m


def test_scratch_weights_are_gaussian_times_sigma_and_zero_biases() -> None:
    torch.manual_seed(0)
    cell = RNNScratch(3, 2)
    torch.manual_seed(0)
    torch.testing.assert_close(cell.W_xh, torch.randn(3, 2) * 0.01)
    torch.testing.assert_close(cell.W_hh, torch.randn(2, 2) * 0.01)
    assert cell.b_h.tolist() == [0.0, 0.0] and cell.num_hiddens == 2
    assert cell.W_xh.requires_grad and cell.b_h.requires_grad


@pytest.mark.parametrize("cls", [LSTMScratch, GRUScratch])
def test_gated_cells_init_every_gate_with_sigma(cls: type) -> None:
    torch.manual_seed(0)
    cell = cls(3, 2, sigma=2.0)
    torch.manual_seed(0)
    for g in cls.gates:
        torch.testing.assert_close(getattr(cell, f"W_x{g}"), torch.randn(3, 2) * 2.0)
        torch.testing.assert_close(getattr(cell, f"W_h{g}"), torch.randn(2, 2) * 2.0)
        assert getattr(cell, f"b_{g}").tolist() == [0.0, 0.0]
    assert cell.num_hiddens == 2
    torch.manual_seed(0)
    default = cls(3, 2)
    torch.manual_seed(0)
    torch.testing.assert_close(default.W_xr if cls is GRUScratch else default.W_xi,
                               torch.randn(3, 2) * 0.01)
    if cls is GRUScratch:
        assert cell.reset_after is True and cell.b_hh.tolist() == [0.0, 0.0]
        assert not hasattr(GRUScratch(3, 2, reset_after=False), "b_hh")


def test_rnn_two_steps_by_hand() -> None:
    torch.manual_seed(0)
    cell = _randomize(RNNScratch(2, 3))
    X, H = torch.randn(2, 2, 2), torch.randn(2, 3)
    out, H2 = cell(X, H)
    h = H
    for t in range(2):
        h = torch.tanh(X[:, t] @ cell.W_xh + h @ cell.W_hh + cell.b_h)
        torch.testing.assert_close(out[:, t], h)
    assert out.shape == (2, 2, 3)
    torch.testing.assert_close(H2, h)


def test_lstm_two_steps_by_hand() -> None:
    torch.manual_seed(0)
    p = _randomize(LSTMScratch(2, 3))
    X, H, C = torch.randn(2, 2, 2), torch.randn(2, 3), torch.randn(2, 3)
    out, (H2, C2) = p(X, (H, C))

    def gate(g: str, x: torch.Tensor, h: torch.Tensor, act=torch.sigmoid) -> torch.Tensor:
        return act(x @ getattr(p, f"W_x{g}") + h @ getattr(p, f"W_h{g}") + getattr(p, f"b_{g}"))

    h, c = H, C
    for t in range(2):
        x = X[:, t]
        c = gate("f", x, h) * c + gate("i", x, h) * gate("c", x, h, torch.tanh)
        h = gate("o", x, h) * torch.tanh(c)
        torch.testing.assert_close(out[:, t], h)
    torch.testing.assert_close(H2, h)
    torch.testing.assert_close(C2, c)


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_two_steps_by_hand(reset_after: bool) -> None:
    torch.manual_seed(0)
    p = _randomize(GRUScratch(2, 3, reset_after=reset_after))
    X, H = torch.randn(2, 2, 2), torch.randn(2, 3)
    out, H2 = p(X, H)
    h = H
    for t in range(2):
        x = X[:, t]
        R = torch.sigmoid(x @ p.W_xr + h @ p.W_hr + p.b_r)
        Z = torch.sigmoid(x @ p.W_xz + h @ p.W_hz + p.b_z)
        if reset_after:
            cand = torch.tanh(x @ p.W_xh + p.b_h + R * (h @ p.W_hh + p.b_hh))
        else:
            cand = torch.tanh(x @ p.W_xh + (R * h) @ p.W_hh + p.b_h)
        h = Z * h + (1 - Z) * cand
        torch.testing.assert_close(out[:, t], h)
    torch.testing.assert_close(H2, h)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_load_torch_maps_rows_and_sums_biases(cell: str) -> None:
    torch.manual_seed(0)
    ref = _randomize({"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[cell](2, 3, 2))
    ours = StackedRNNScratch(cell, 2, 3, 2)
    assert ours.load_torch(ref) is ours
    gates = {"rnn": ("h",), "gru": ("r", "z", "h"), "lstm": ("i", "f", "c", "o")}[cell]
    for layer in range(2):
        w_ih, w_hh, b_ih, b_hh = (getattr(ref, f"{n}_l{layer}") for n in
                                  ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        p = ours.layers[layer]
        for k, g in enumerate(gates):
            rows = slice(3 * k, 3 * k + 3)
            torch.testing.assert_close(getattr(p, f"W_x{g}"), w_ih[rows].T)
            torch.testing.assert_close(getattr(p, f"W_h{g}"), w_hh[rows].T)
            inner = cell == "gru" and g == "h"  # nn.GRU's b_hn stays inside the reset product
            torch.testing.assert_close(getattr(p, f"b_{g}"),
                                       b_ih[rows] + (0 if inner else b_hh[rows]))
        if cell == "gru":
            torch.testing.assert_close(p.b_hh, b_hh[6:])


_ONLY = "^only unidirectional torch RNNs with biases and no projection load$"


@pytest.mark.parametrize(("m", "match"), [
    (nn.GRU(2, 3, bidirectional=True), _ONLY),
    (nn.GRU(2, 3, bias=False), _ONLY),
    (nn.GRU(2, 3, num_layers=2), "need an nn.GRU with 1 layers"),
    (nn.LSTM(2, 3), "need an nn.GRU with 1 layers"),
])
def test_load_torch_refuses_what_it_cannot_reproduce(m: nn.Module, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        StackedRNNScratch("gru", 2, 3).load_torch(m)


def test_load_torch_refuses_projections_and_relu() -> None:
    with pytest.raises(ValueError, match="no projection"):
        StackedRNNScratch("lstm", 2, 3).load_torch(nn.LSTM(2, 3, proj_size=2))
    with pytest.raises(ValueError, match="^RNNScratch uses tanh$"):
        StackedRNNScratch("rnn", 2, 3).load_torch(nn.RNN(2, 3, nonlinearity="relu"))
    with pytest.raises(ValueError, match="reset gate after W_hh"):
        GRUScratch(2, 3, reset_after=False).load_torch(nn.GRU(2, 3), 0)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_stack_defaults_to_zero_state_of_shape_l_b_h(cell: str) -> None:
    torch.manual_seed(0)
    stack = _randomize(StackedRNNScratch(cell, 2, 3, num_layers=2))
    assert (stack.cell, stack.num_hiddens, len(stack.layers), stack.dropout.p) == (cell, 3, 2,
                                                                                   0.0)
    assert stack.layers[0].W_xh.shape[0] == 2 if cell != "lstm" else True
    X = torch.randn(4, 5, 2)
    out, state = stack(X)
    assert out.shape == (4, 5, 3)
    zeros = torch.zeros(2, 4, 3)
    leaves = state if cell == "lstm" else (state,)
    assert [s.shape for s in leaves] == [(2, 4, 3)] * len(leaves)
    out0, state0 = stack(X, (zeros, zeros) if cell == "lstm" else zeros)
    torch.testing.assert_close(out, out0)
    torch.testing.assert_close(leaves[0][1], out[:, -1])  # top layer's h = its last output
    first, _ = stack.layers[0](X, *([(zeros[0], zeros[0])] if cell == "lstm" else [zeros[0]]))
    second, _ = stack.layers[1](first, *([(zeros[1], zeros[1])] if cell == "lstm" else [zeros[1]]))
    torch.testing.assert_close(out, second)


def test_stack_passes_cell_kwargs_and_input_sizes() -> None:
    stack = StackedRNNScratch("gru", 5, 3, 3, sigma=0.0, reset_after=False)
    assert [layer.W_xr.shape for layer in stack.layers] == [(5, 3), (3, 3), (3, 3)]
    assert all(not layer.reset_after and (layer.W_xr == 0).all() for layer in stack.layers)


def test_dropout_acts_between_layers_only() -> None:
    """p = 1 zeroes the second layer's input but neither the input nor the top output."""
    torch.manual_seed(0)
    stack = _randomize(StackedRNNScratch("rnn", 2, 3, 2, dropout=1.0)).train()
    X, h0 = torch.randn(1, 4, 2), torch.randn(2, 1, 3)
    out, h = stack(X, h0)
    _, h_first = stack.layers[0](X, h0[0])
    expected, _ = stack.layers[1](torch.zeros(1, 4, 3), h0[1])
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(h[0], h_first)


@pytest.mark.parametrize("scratch", [False, True])
def test_rnnlm_defaults_and_init(scratch: bool) -> None:
    torch.manual_seed(0)
    m = RNNLM(7, scratch=scratch)
    assert m.embedding.weight.shape == (7, 32) and m.decoder.weight.shape == (7, 32)
    assert m.dropout.p == 0.0 and m.vocab_size == 7
    assert isinstance(m.rnn, StackedRNNScratch if scratch else nn.LSTM)
    if scratch:
        assert (m.rnn.cell, len(m.rnn.layers), m.rnn.dropout.p) == ("lstm", 1, 0.0)
    else:
        assert (m.rnn.num_layers, m.rnn.batch_first, m.rnn.dropout) == (1, True, 0.0)
    for w in (m.embedding.weight, m.decoder.weight):
        assert -0.1 <= w.min() < -0.09 and 0.09 < w.max() <= 0.1
    assert (m.decoder.bias == 0).all()
    assert m.embedding.weight is not m.decoder.weight
    assert (RNNLM.recurrent, RNNLM.bidirectional, RNNLM.max_len) == (True, False, None)


def test_torch_rnn_dropout_only_with_several_layers() -> None:
    assert RNNLM(7, 4, num_layers=1, dropout=0.5).rnn.dropout == 0.0
    deep = RNNLM(7, 4, num_layers=2, dropout=0.5, cell="gru")
    assert isinstance(deep.rnn, nn.GRU) and deep.rnn.dropout == 0.5 and deep.dropout.p == 0.5
    assert (deep.rnn.input_size, deep.rnn.hidden_size, deep.rnn.num_layers) == (4, 4, 2)
    scratch = RNNLM(7, 4, num_layers=2, dropout=0.5, cell="rnn", scratch=True)
    assert scratch.rnn.cell == "rnn" and scratch.rnn.dropout.p == 0.5


def test_one_hot_inputs_feed_the_vocabulary_in_the_weights_dtype() -> None:
    torch.manual_seed(0)
    m = RNNLM(5, 3, embed_size=0, cell="rnn", scratch=True).double()
    assert m.embedding is None and m.rnn.layers[0].W_xh.shape == (5, 3)
    X = torch.tensor([[3, 0]])  # the largest id is below V - 1: one_hot must get V
    logits, h = m(X)
    expected, h_ref = m.rnn(torch.eye(5, dtype=torch.float64)[X])
    torch.testing.assert_close(logits, m.decoder(expected))
    torch.testing.assert_close(h, h_ref)
    assert logits.shape == (1, 2, 5) and logits.dtype == torch.float64


def test_embedding_dropout_and_decoder_dropout_in_training() -> None:
    torch.manual_seed(0)
    m = RNNLM(5, 3, embed_size=2, dropout=1.0, cell="gru").train()
    assert m.embedding.weight.shape == (5, 2) and m.rnn.input_size == 2
    logits, _ = m(torch.tensor([[1, 2, 3]]))
    torch.testing.assert_close(logits, m.decoder.bias.expand(1, 3, 5))  # output dropped
    m.decoder.bias.data.fill_(0.0)
    out = m(torch.tensor([[1]]))[1]
    torch.testing.assert_close(out, m.rnn(torch.zeros(1, 1, 2))[1])  # embeddings dropped


def test_tied_weights_share_the_embedding() -> None:
    m = RNNLM(6, 4, tie_weights=True)
    assert m.decoder.weight is m.embedding.weight


@pytest.mark.parametrize(("kw", "match"), [
    ({"cell": "lstmx"}, "unknown cell 'lstmx'; choose from: rnn, gru, lstm"),
    ({"tie_weights": True, "embed_size": 3}, "got embed_size=3"),
    ({"tie_weights": True, "embed_size": 0}, "got embed_size=0"),
])
def test_rnnlm_refuses_bad_options(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RNNLM(6, 4, **kw)


def test_bidirectional_encoder_shapes_and_options() -> None:
    torch.manual_seed(0)
    enc = BiLSTMEncoder(6, 4, num_layers=2, dropout=0.5, embed_size=3)
    assert enc.embedding.weight.shape == (6, 3) and enc.rnn.dropout == 0.5
    assert enc.rnn.bidirectional and enc.rnn.batch_first and enc.dropout.p == 0.5
    out, (h, c) = enc.eval()(torch.tensor([[1, 2, 3]]))
    assert out.shape == (1, 3, 8) and h.shape == c.shape == (4, 1, 4)
    default = BiLSTMEncoder(6)
    assert default.embedding.weight.shape == (6, 32) and default.rnn.dropout == 0.0
    assert default.rnn.num_layers == 1 and default.dropout.p == 0.0
    assert BiLSTMEncoder(6, 4, dropout=0.5).rnn.dropout == 0.0
    assert (BiLSTMEncoder.recurrent, BiLSTMEncoder.bidirectional) == (False, True)


def test_d2l_recipes_hold_the_books_numbers() -> None:
    r = rnn._d2l(4.0, 50)
    assert (r.optimizer, r.lr, r.batch_size, r.max_epochs, r.gradient_clip_val) == (
        "sgd", 4.0, 1024, 50, 1.0)
    assert r.model_kwargs == {"embed_size": 0, "num_hiddens": 32}
    assert r.data_kwargs == {"num_steps": 32}
    v = rnn._v017(256, lr=2.0, num_layers=2)
    assert (v.optimizer, v.lr, v.batch_size, v.max_epochs, v.gradient_clip_val, v.data) == (
        "sgd", 2.0, 32, 500, 1.0, "time_machine")
    assert v.model_kwargs == {"embed_size": 0, "num_hiddens": 256, "num_layers": 2}
    assert v.data_kwargs == {"num_steps": 35, "sampler": "sequential", "max_tokens": 10_000}
    assert (rnn._v017(8).lr, rnn._v017(8).model_kwargs["num_layers"]) == (1.0, 1)
    recipes = rnn._recipes(1.0, 100, v017_hiddens=512)
    assert list(recipes) == ["d2l", "deep", "d2l-0.17", "d2l-0.17-deep"]
    assert recipes["d2l"] == rnn._d2l(1.0, 100) and recipes["deep"] is rnn._DEEP
    assert recipes["d2l-0.17"] == rnn._v017(512)
    assert recipes["d2l-0.17-deep"] is rnn._V017_DEEP
    assert rnn._recipes(1.0, 100)["d2l-0.17"].model_kwargs["num_hiddens"] == 256


@pytest.mark.parametrize(("cell", "scratch"), [("gru", True), ("lstm", False)])
def test_builders_pass_every_argument(cell: str, scratch: bool) -> None:
    build = rnn._builder(cell, scratch)
    assert build.__doc__ == f"{'Scratch' if scratch else 'Concise'} {cell.upper()} language model."
    m = build()
    assert m.vocab_size == 28 and m.decoder.weight.shape == (28, 32)
    assert isinstance(m.rnn, StackedRNNScratch) is scratch and m.dropout.p == 0.0
    assert (len(m.rnn.layers) if scratch else m.rnn.num_layers) == 1
    assert m.decoder.weight is not m.embedding.weight
    m = build(9, 6, 2, 0.5, True, 6)
    assert (m.vocab_size, m.embedding.weight.shape, m.dropout.p) == (9, (9, 6), 0.5)
    assert m.decoder.weight is m.embedding.weight
    layers = len(m.rnn.layers) if scratch else m.rnn.num_layers
    assert layers == 2 and (m.rnn.cell if scratch else type(m.rnn).__name__.lower()) == cell
    assert build(embed_size=3).embedding.weight.shape == (28, 3)


def test_bidirectional_encoder_drops_its_embeddings_in_training() -> None:
    torch.manual_seed(0)
    enc = BiLSTMEncoder(6, 4, dropout=1.0).train()
    out, _ = enc(torch.tensor([[1, 2]]))
    torch.testing.assert_close(out, enc.rnn(torch.zeros(1, 2, 4))[0])


def test_bidirectional_encoder_starts_from_the_given_state() -> None:
    torch.manual_seed(0)
    enc = BiLSTMEncoder(6, 4).eval()
    X = torch.tensor([[1, 2]])
    state = (torch.ones(2, 1, 4), torch.ones(2, 1, 4))
    torch.testing.assert_close(enc(X, state)[0], enc.rnn(enc.embedding(X), state)[0])
    assert not torch.allclose(enc(X, state)[0], enc(X)[0])
