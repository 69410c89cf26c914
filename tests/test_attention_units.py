"""Unit properties of models/attention.py with exact small numbers (d2l §11.3-§11.7)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from d2l_lightning.models.attention import (
    AdditiveAttention,
    DotProductAttention,
    MultiHeadAttention,
    PositionalEncoding,
    PositionWiseFFN,
    TransformerEncoderBlock,
    attention_mask,
    masked_softmax,
)

T, F_ = True, False


def test_mask_from_per_sequence_valid_lens_is_b_1_1_k() -> None:
    m = attention_mask(torch.tensor([1, 3]), 2, 4)
    assert m.shape == (2, 1, 1, 4)
    assert m[:, 0, 0].tolist() == [[T, F_, F_, F_], [T, T, T, F_]]


def test_mask_from_per_query_valid_lens_is_b_1_q_k() -> None:
    m = attention_mask(torch.tensor([[1, 2], [3, 0]]), 2, 3)
    assert m.shape == (2, 1, 2, 3)
    assert m[:, 0].tolist() == [[[T, F_, F_], [T, T, F_]], [[T, T, T], [F_, F_, F_]]]


def test_mask_is_none_without_lens_or_causality() -> None:
    assert attention_mask(None, 3, 3) is None


def test_causal_mask_is_lower_triangular_and_combines_with_lens() -> None:
    only = attention_mask(None, 3, 3, causal=True)
    assert only.shape == (1, 1, 3, 3)
    assert only[0, 0].tolist() == [[T, F_, F_], [T, T, F_], [T, T, T]]
    both = attention_mask(torch.tensor([2]), 3, 3, causal=True)
    assert both[0, 0].tolist() == [[T, F_, F_], [T, T, F_], [T, T, F_]]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lens", [torch.tensor([1, 2]), torch.tensor([[1, 2], [2, 3]]), None])
def test_mask_is_built_on_the_requested_device(causal: bool, lens: torch.Tensor | None) -> None:
    """The meta device stands in for an accelerator: any tensor left on the CPU would clash."""
    meta = torch.device("meta")
    if lens is not None or causal:
        assert attention_mask(lens, 2, 3, causal, device=meta).device == meta
    if lens is not None:
        assert masked_softmax(torch.zeros(2, 2, 3, device=meta), lens).device == meta


def test_three_dim_scores_take_per_query_lens_with_q_not_k() -> None:
    p = masked_softmax(torch.zeros(1, 2, 3), torch.tensor([[1, 3]]))
    assert p.shape == (1, 2, 3)
    torch.testing.assert_close(p[0], torch.tensor([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]]))


def test_masked_softmax_of_equal_scores_is_uniform_over_valid_keys() -> None:
    p = masked_softmax(torch.zeros(2, 1, 4), torch.tensor([2, 4]))
    assert p.shape == (2, 1, 4)
    assert p[:, 0].tolist() == [[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]]


def test_masked_softmax_without_mask_is_softmax() -> None:
    X = torch.tensor([[[0.0, math.log(3.0)]]])
    torch.testing.assert_close(masked_softmax(X), torch.tensor([[[0.25, 0.75]]]))


def test_explicit_mask_takes_precedence_over_valid_lens() -> None:
    mask = torch.tensor([[[F_, T, T]]])
    p = masked_softmax(torch.zeros(1, 1, 3), torch.tensor([1]), mask=mask)
    assert p.tolist() == [[[0.0, 0.5, 0.5]]]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_masked_keys_get_exact_zero_in_every_precision(dtype: torch.dtype) -> None:
    X = torch.tensor([[[-60000.0, 0.0, 60000.0]]], dtype=dtype)
    p = masked_softmax(X, torch.tensor([2]))
    assert p[0, 0, 2].item() == 0.0
    assert p[0, 0, 1].item() == 1.0


def test_four_dim_scores_take_per_query_lens() -> None:
    p = masked_softmax(torch.zeros(1, 2, 2, 3), torch.tensor([[1, 3]]))
    expected = torch.tensor([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    assert p.shape == (1, 2, 2, 3)
    torch.testing.assert_close(p[0], expected.expand(2, 2, 3))


def test_additive_attention_is_the_books_formula() -> None:
    """score(q, k) = w_v^T tanh(W_q q + W_k k); sizes default to num_hiddens; no biases."""
    torch.manual_seed(0)
    att = AdditiveAttention(3, key_size=2, query_size=4)
    assert [m.weight.shape for m in (att.W_k, att.W_q, att.w_v)] == [(3, 2), (3, 4), (1, 3)]
    assert all(m.bias is None for m in (att.W_k, att.W_q, att.w_v))
    assert att.dropout.p == 0.0 and att.attention_weights is None
    q, k, v = torch.randn(2, 2, 4), torch.randn(2, 3, 2), torch.randn(2, 3, 5)
    out = att(q, k, v, torch.tensor([3, 1]))
    s = torch.tanh(q[:, :, None] @ att.W_q.weight.T + (k @ att.W_k.weight.T)[:, None])
    scores = (s @ att.w_v.weight.T)[..., 0]
    scores[1, :, 1:] = -torch.inf
    w = torch.softmax(scores, -1)
    torch.testing.assert_close(att.attention_weights, w)
    torch.testing.assert_close(out, w @ v)
    square = AdditiveAttention(3)
    assert square.W_k.weight.shape == square.W_q.weight.shape == (3, 3)


def test_dot_product_attention_scales_by_sqrt_d_and_takes_a_mask() -> None:
    att = DotProductAttention()
    assert att.dropout.p == 0.0 and att.attention_weights is None
    q = torch.tensor([[[2.0, 0.0, 0.0, 0.0]]])  # d = 4: scores k.q / 2
    k = torch.tensor([[[math.log(3.0), 0, 0, 0], [0.0, 0, 0, 0], [9.0, 0, 0, 0]]])
    v = torch.tensor([[[4.0], [8.0], [100.0]]])
    out = att(q, k, v, mask=torch.tensor([[[T, T, F_]]]))
    torch.testing.assert_close(att.attention_weights, torch.tensor([[[0.75, 0.25, 0.0]]]))
    torch.testing.assert_close(out, torch.tensor([[[5.0]]]))


def test_split_and_merge_heads_move_only_the_feature_axis() -> None:
    mha = MultiHeadAttention(6, 3)
    X = torch.arange(2 * 4 * 6.0).view(2, 4, 6)
    s = mha.split_heads(X)
    assert s.shape == (2, 3, 4, 2)
    assert s[1, 2, 3].tolist() == X[1, 3, 4:6].tolist()  # head h holds features 2h, 2h+1
    assert torch.equal(mha.merge_heads(s), X)


def test_heads_must_divide_the_width() -> None:
    with pytest.raises(ValueError, match="num_hiddens=10 is not divisible by num_heads=4"):
        MultiHeadAttention(10, 4)


def test_multi_head_defaults_have_no_bias_and_no_dropout() -> None:
    mha = MultiHeadAttention(4, 2)
    assert mha.dropout == 0.0 and mha.num_heads == 2 and mha.attention_weights is None
    assert all(getattr(mha, n).bias is None for n in ("W_q", "W_k", "W_v", "W_o"))
    with_bias = MultiHeadAttention(4, 2, 0.3, bias=True)
    assert with_bias.dropout == 0.3
    assert all(getattr(with_bias, n).bias.shape == (4,) for n in ("W_q", "W_k", "W_v", "W_o"))


@pytest.mark.parametrize("need_weights", [False, True])
def test_each_batch_row_depends_only_on_its_own_input(need_weights: bool) -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2).eval()
    x = torch.randn(3, 5, 8)
    lens = torch.tensor([5, 2, 3])
    out = mha(x, x, x, lens, causal=True, need_weights=need_weights)
    for b in range(3):
        alone = mha(x[b:b + 1], x[b:b + 1], x[b:b + 1], lens[b:b + 1], causal=True,
                    need_weights=need_weights)
        torch.testing.assert_close(out[b:b + 1], alone, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("need_weights", [False, True])
def test_multi_head_mask_follows_the_inputs_device(need_weights: bool) -> None:
    meta = torch.device("meta")
    mha = MultiHeadAttention(4, 2).to(meta)
    x = torch.zeros(2, 3, 4, device=meta)
    lens = torch.tensor([1, 2], device=meta)
    assert mha(x, x, x, lens, causal=True, need_weights=need_weights).shape == (2, 3, 4)


@pytest.mark.parametrize("training", [False, True])
def test_explicit_path_equals_the_fast_path_without_dropout(training: bool) -> None:
    """Scores scale by sqrt(d) (d = 3 per head, not the 2 heads); p = 0 drops nothing."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(6, 2).train(training)
    with torch.no_grad():
        for p in mha.parameters():
            p.normal_(0, 1.0)
    q, kv = torch.randn(2, 3, 6), torch.randn(2, 4, 6)
    lens = torch.tensor([4, 2])
    torch.testing.assert_close(mha(q, kv, kv, lens, need_weights=True), mha(q, kv, kv, lens))


def test_fast_path_keeps_no_weights() -> None:
    mha = MultiHeadAttention(4, 2)
    x = torch.ones(1, 2, 4)
    mha(x, x, x)
    assert mha.attention_weights is None


def test_explicit_path_keeps_masked_weights_b_heads_q_k() -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(4, 2).eval()
    x = torch.randn(2, 3, 4)
    mha(x, x, x, torch.tensor([1, 3]), causal=True, need_weights=True)
    w = mha.attention_weights
    assert w.shape == (2, 2, 3, 3)
    assert (w[0, :, :, 1:] == 0).all() and (w[0, :, :, 0] == 1).all()
    assert (w[1].triu(1) == 0).all()


@pytest.mark.parametrize("need_weights", [False, True])
def test_attention_dropout_acts_in_training_only(need_weights: bool) -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(4, 2, dropout=0.999)
    x = torch.randn(1, 3, 4)
    mha.eval()
    plain = mha(x, x, x, need_weights=need_weights)
    mha.train()
    dropped = mha(x, x, x, need_weights=need_weights)
    assert not torch.allclose(dropped, plain)
    mha.eval()
    torch.testing.assert_close(mha(x, x, x, need_weights=need_weights), plain)


def test_cache_returns_the_extended_keys_and_values() -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(4, 2).eval()
    x = torch.randn(1, 3, 4)
    empty = torch.zeros(1, 2, 0, 2)
    out, (k, v) = mha(x, x, x, cache=(empty, empty))
    assert k.shape == v.shape == (1, 2, 3, 2)
    torch.testing.assert_close(k, mha.split_heads(mha.W_k(x)))
    torch.testing.assert_close(v, mha.split_heads(mha.W_v(x)))
    torch.testing.assert_close(out, mha(x, x, x))


@pytest.mark.parametrize("H", [4, 5])
def test_positional_encoding_table_is_sin_cos_of_pos_over_10000_pow(H: int) -> None:
    pe = PositionalEncoding(H, max_len=7)
    P = pe(torch.zeros(1, 7, H))[0]
    for i in range(7):
        for j in range(H):
            angle = i / 10000 ** ((j - j % 2) / H)
            expected = math.sin(angle) if j % 2 == 0 else math.cos(angle)
            assert P[i, j].item() == pytest.approx(expected, abs=1e-6)


def test_positional_encoding_defaults_and_bounds() -> None:
    pe = PositionalEncoding(4)
    assert pe.P.shape == (1, 1000, 4) and pe.dropout.p == 0.0
    assert "P" not in pe.state_dict()
    short = PositionalEncoding(4, max_len=5)
    X = torch.ones(2, 2, 4, dtype=torch.bfloat16)
    out = short(X, offset=3)  # positions 3, 4: exactly fills max_len
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, X + short.P[:, 3:5].bfloat16())
    with pytest.raises(ValueError, match="length 6 exceeds max_len=5"):
        short(X, offset=4)


@pytest.mark.parametrize(("activation", "act"), [("relu", nn.ReLU), ("gelu", nn.GELU)])
def test_ffn_is_dense_act_dense(activation: str, act: type) -> None:
    torch.manual_seed(0)
    ffn = PositionWiseFFN(3, 5, activation)
    assert isinstance(ffn.act, act) and ffn.dropout.p == 0.0
    X = torch.randn(2, 4, 3)
    torch.testing.assert_close(ffn(X), ffn.dense2(act()(ffn.dense1(X))))
    assert PositionWiseFFN(3, 5).act.__class__ is nn.ReLU


def test_ffn_refuses_unknown_activation() -> None:
    with pytest.raises(ValueError, match="unknown activation 'relu6'; choose from: relu, gelu"):
        PositionWiseFFN(3, 5, "relu6")


def test_ffn_dropout_acts_after_activation_and_output() -> None:
    ffn = PositionWiseFFN(3, 5, dropout=0.5).train()
    assert ffn.dropout.p == 0.5
    torch.manual_seed(0)
    X = torch.randn(1, 2, 3)
    torch.manual_seed(1)
    out = ffn(X)
    torch.manual_seed(1)
    h = nn.functional.dropout(ffn.act(ffn.dense1(X)), 0.5)
    torch.testing.assert_close(out, nn.functional.dropout(ffn.dense2(h), 0.5))


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_block_is_residual_plus_layer_norm(norm_first: bool) -> None:
    torch.manual_seed(0)
    b = TransformerEncoderBlock(4, 6, 2, norm_first=norm_first).eval()
    with torch.no_grad():
        for p in b.parameters():
            p.normal_(0, 0.5)
    X = torch.randn(2, 3, 4)
    lens = torch.tensor([3, 2])
    out = b(X, lens)
    if norm_first:
        h = b.norm1(X)
        X1 = X + b.attention(h, h, h, lens)
        expected = X1 + b.ffn(b.norm2(X1))
    else:
        Y = b.norm1(X + b.attention(X, X, X, lens))
        expected = b.norm2(Y + b.ffn(Y))
    torch.testing.assert_close(out, expected)
    assert b.norm_first is norm_first


def test_encoder_block_passes_causal_weights_and_cache() -> None:
    torch.manual_seed(0)
    b = TransformerEncoderBlock(4, 6, 2).eval()
    X = torch.randn(1, 3, 4)
    empty = torch.zeros(1, 2, 0, 2)
    out, (k, v) = b(X, causal=True, need_weights=True, cache=(empty, empty))
    assert k.shape == (1, 2, 3, 2)
    assert (b.attention.attention_weights[0].triu(1) == 0).all()
    torch.testing.assert_close(out, b(X, causal=True))
    assert not torch.allclose(b(X, causal=True), b(X))


@pytest.mark.parametrize(("mlp_dropout", "ffn_p", "block_p"), [(False, 0.0, 0.3), (True, 0.3, 0.0)])
def test_dropout_layout_of_the_encoder_block(mlp_dropout: bool, ffn_p: float,
                                             block_p: float) -> None:
    b = TransformerEncoderBlock(4, 6, 2, dropout=0.3, mlp_dropout=mlp_dropout,
                                activation="gelu", bias=True)
    assert (b.ffn.dropout.p, b.dropout.p, b.attention.dropout) == (ffn_p, block_p, 0.3)
    assert isinstance(b.ffn.act, nn.GELU) and b.attention.W_q.bias is not None
    assert b.ffn.dense1.weight.shape == (6, 4) and b.attention.num_heads == 2


def test_encoder_block_defaults() -> None:
    b = TransformerEncoderBlock(4, 6, 2)
    assert (b.norm_first, b.dropout.p, b.ffn.dropout.p, b.attention.dropout) == (
        False, 0.0, 0.0, 0.0)
    assert isinstance(b.ffn.act, nn.ReLU) and b.attention.W_q.bias is None
    assert b.norm1.normalized_shape == b.norm2.normalized_shape == (4,)
    dropped = TransformerEncoderBlock(4, 6, 2, dropout=0.3)  # the book's AddNorm layout
    assert (dropped.dropout.p, dropped.ffn.dropout.p) == (0.3, 0.0)
    b(torch.ones(1, 2, 4))
    assert b.attention.attention_weights is None  # the fast path by default
