"""Shared attention pieces (models/attention.py): masks, MHA vs torch, caching, padding."""

from __future__ import annotations

import torch

from d2l_lightning.models.attention import (
    AdditiveAttention,
    DotProductAttention,
    MultiHeadAttention,
    PositionalEncoding,
    TransformerEncoderBlock,
    attention_mask,
    masked_softmax,
)


def test_masked_softmax_gives_exact_zeros_past_valid_lengths() -> None:
    torch.manual_seed(0)
    X = torch.randn(2, 3, 5) * 10
    p = masked_softmax(X, torch.tensor([2, 4]))
    assert (p[0, :, 2:] == 0).all() and (p[1, :, 4:] == 0).all()
    assert (p[0, :, :2] > 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 3))
    per_query = masked_softmax(X, torch.tensor([[1, 2, 3], [5, 4, 3]]))
    for b, lens in enumerate([[1, 2, 3], [5, 4, 3]]):
        for q, n in enumerate(lens):
            assert (per_query[b, q, n:] == 0).all() and (per_query[b, q, :n] > 0).all()


def test_causal_mask_offsets_for_cached_queries() -> None:
    m = attention_mask(None, 2, 4, causal=True)[0, 0]
    assert m.tolist() == [[True, True, True, False], [True, True, True, True]]


def test_multi_head_attention_equals_torch_with_copied_weights() -> None:
    torch.manual_seed(0)
    H, heads = 16, 4
    ours = MultiHeadAttention(H, heads, bias=False).eval()
    ref = torch.nn.MultiheadAttention(H, heads, bias=False, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.W_q.weight, ours.W_k.weight, ours.W_v.weight]))
        ref.out_proj.weight.copy_(ours.W_o.weight)
    q, kv = torch.randn(3, 5, H), torch.randn(3, 7, H)
    valid = torch.tensor([7, 3, 5])
    pad = torch.arange(7)[None, :] >= valid[:, None]  # torch: True = ignore
    expected, w_ref = ref(q, kv, kv, key_padding_mask=pad, average_attn_weights=False)
    torch.testing.assert_close(ours(q, kv, kv, valid), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours(q, kv, kv, valid, need_weights=True), expected,
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.attention_weights, w_ref, atol=1e-5, rtol=1e-5)
    causal = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    expected, _ = ref(q, q, q, attn_mask=causal)
    torch.testing.assert_close(ours(q, q, q, causal=True), expected, atol=1e-5, rtol=1e-5)


def test_attention_never_mixes_the_batch() -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2).eval()
    x = torch.randn(4, 6, 8)
    out = mha(x, x, x)
    x2 = x.clone()
    x2[1:] = torch.randn(3, 6, 8)
    torch.testing.assert_close(mha(x2, x2, x2)[0], out[0])


def test_cached_attention_equals_full_causal_attention() -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2).eval()
    x = torch.randn(2, 6, 8)
    full = mha(x, x, x, causal=True)
    out, cache = mha(x[:, :3], x[:, :3], x[:, :3], causal=True,
                     cache=(torch.zeros(2, 2, 0, 4), torch.zeros(2, 2, 0, 4)))
    steps = [out]
    for t in range(3, 6):
        o, cache = mha(x[:, t:t + 1], x[:, t:t + 1], x[:, t:t + 1], causal=True, cache=cache)
        steps.append(o)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_encoder_block_ignores_padding() -> None:
    torch.manual_seed(0)
    for norm_first in (False, True):
        block = TransformerEncoderBlock(8, 16, 2, norm_first=norm_first).eval()
        x = torch.randn(1, 4, 8)
        padded = torch.cat([x, torch.randn(1, 3, 8)], 1)
        out = block(x, torch.tensor([4]))
        out_padded = block(padded, torch.tensor([4]))
        torch.testing.assert_close(out_padded[:, :4], out, atol=1e-5, rtol=1e-5)


def test_additive_attention_weights_respect_valid_lens() -> None:
    torch.manual_seed(0)
    att = AdditiveAttention(8, key_size=4, query_size=6)
    out = att(torch.randn(2, 1, 6), torch.randn(2, 5, 4), torch.randn(2, 5, 3),
              torch.tensor([2, 5]))
    assert out.shape == (2, 1, 3)
    assert (att.attention_weights[0, :, 2:] == 0).all()


def test_positional_encoding_matches_the_book_formula() -> None:
    pe = PositionalEncoding(6, max_len=10)
    P = pe(torch.zeros(1, 10, 6))[0]
    i, j = 3, 2  # column 2j = 4 is sin(i / 10000^(4/6)), 2j+1 = 5 is its cos
    torch.testing.assert_close(P[i, 2 * j], torch.sin(torch.tensor(i / 10000 ** (4 / 6))))
    torch.testing.assert_close(P[i, 2 * j + 1], torch.cos(torch.tensor(i / 10000 ** (4 / 6))))
    torch.testing.assert_close(pe(torch.zeros(1, 2, 6), offset=3)[0], P[3:5])


def test_dot_product_attention_is_the_book_formula_with_padding_masked() -> None:
    """d2l §11.3.3: softmax(Q K^T / sqrt(d)) V, keys past each valid length weighted 0."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 6)
    valid = torch.tensor([2, 5])
    attention = DotProductAttention().eval()
    out = attention(q, k, v, valid)
    scores = q @ k.transpose(1, 2) / 2.0  # sqrt(d) = 2
    scores[0, :, 2:] = float("-inf")  # the mask
    expected = torch.softmax(scores, dim=-1) @ v
    torch.testing.assert_close(out, expected)
    assert torch.all(attention.attention_weights[0, :, 2:] == 0)
