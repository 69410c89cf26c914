"""Language-model architectures: scratch == torch, causality, caches, tying, export, overfit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from d2l_lightning.models import build_model, get_spec, load_exported, model_names, save_export
from d2l_lightning.models.generate import generate, sample_next
from d2l_lightning.models.rnn import BIDIRECTIONAL_LM_REFUSAL, GRUScratch, StackedRNNScratch

LM_MODELS = model_names("language_modeling")
V = 11


def small(name: str, **kw) -> nn.Module:
    """A tiny model of the registry: 2 layers, width 16."""
    extra = {"num_heads": 2, "max_len": 64} if name == "gpt" else {}
    return build_model(name, **{"vocab_size": V, "num_hiddens": 16, "num_layers": 2,
                                **extra, **kw})


def randomize(model: nn.Module, std: float = 0.3) -> nn.Module:
    """Large random weights so outputs vary a lot from token to token (no near-ties)."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model


def test_all_lm_architectures_are_registered() -> None:
    expected = {"rnn", "gru", "lstm", "rnn_scratch", "gru_scratch", "lstm_scratch", "gpt"}
    assert expected <= set(LM_MODELS)
    assert get_spec("bi_lstm").task == "sequence_encoding"
    for name in LM_MODELS:
        assert build_model(name, vocab_size=28) is not None  # defaults alone build


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_scratch_equals_torch_given_the_same_weights(cell: str, num_layers: int) -> None:
    torch.manual_seed(0)
    ref = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[cell](
        5, 8, num_layers, batch_first=True)
    ours = StackedRNNScratch(cell, 5, 8, num_layers).load_torch(ref)
    X = torch.randn(3, 6, 5)
    h0 = torch.randn(num_layers, 3, 8)
    state = (h0, torch.randn(num_layers, 3, 8)) if cell == "lstm" else h0
    out_ref, s_ref = ref(X, state)
    out, s = ours(X, state)
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=0)
    for a, b in zip(torch.utils._pytree.tree_leaves(s), torch.utils._pytree.tree_leaves(s_ref)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_scratch_language_model_equals_concise_one(cell: str) -> None:
    torch.manual_seed(0)
    concise = small(cell)
    scratch = small(f"{cell}_scratch")
    scratch.rnn.load_torch(concise.rnn)
    scratch.embedding.load_state_dict(concise.embedding.state_dict())
    scratch.decoder.load_state_dict(concise.decoder.state_dict())
    X = torch.randint(0, V, (2, 7))
    torch.testing.assert_close(scratch(X)[0], concise(X)[0], atol=1e-5, rtol=0)


def test_book_gru_is_a_different_function_and_follows_its_equation() -> None:
    torch.manual_seed(0)
    book = GRUScratch(4, 3, sigma=0.5, reset_after=False)
    X, H = torch.randn(2, 1, 4), torch.randn(2, 3)
    _, H1 = book(X, H)
    x = X[:, 0]
    R = torch.sigmoid(x @ book.W_xr + H @ book.W_hr + book.b_r)
    Z = torch.sigmoid(x @ book.W_xz + H @ book.W_hz + book.b_z)
    H_tilde = torch.tanh(x @ book.W_xh + (R * H) @ book.W_hh + book.b_h)
    torch.testing.assert_close(H1, Z * H + (1 - Z) * H_tilde)
    with pytest.raises(ValueError, match="reset"):
        book.load_torch(nn.GRU(4, 3), 0)
    with pytest.raises(ValueError, match="LSTM"):
        StackedRNNScratch("lstm", 4, 3).load_torch(nn.GRU(4, 3))


def test_lstm_parameters_follow_the_books_named_equations() -> None:
    """The d2l names mean what the book says (a swapped gate would still match nn.LSTM)."""
    torch.manual_seed(0)
    ours = StackedRNNScratch("lstm", 4, 3).load_torch(nn.LSTM(4, 3)).layers[0]
    X, H, C = torch.randn(2, 1, 4), torch.randn(2, 3), torch.randn(2, 3)
    _, (H1, C1) = ours(X, (H, C))
    x, p = X[:, 0], ours

    def gate(g: str, act=torch.sigmoid) -> torch.Tensor:
        return act(x @ getattr(p, f"W_x{g}") + H @ getattr(p, f"W_h{g}") + getattr(p, f"b_{g}"))

    C_expected = gate("f") * C + gate("i") * gate("c", torch.tanh)
    torch.testing.assert_close(C1, C_expected)
    torch.testing.assert_close(H1, gate("o") * torch.tanh(C_expected))


@pytest.mark.parametrize("name", LM_MODELS)
def test_lm_shapes_finite_and_every_parameter_learns(name: str) -> None:
    torch.manual_seed(0)
    model = small(name, dropout=0.1).train()
    X = torch.randint(0, V, (3, 9))
    logits, state = model(X)
    assert logits.shape == (3, 9, V)
    assert torch.isfinite(logits).all()
    assert not torch.allclose(logits.softmax(-1).sum(-1), logits.sum(-1))  # logits, not probs
    F.cross_entropy(logits.reshape(-1, V), torch.randint(0, V, (27,))).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}.{pname} gets no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{name}.{pname}"
    assert isinstance(model.recurrent, bool) and model.recurrent == (name != "gpt")


@pytest.mark.parametrize("name", LM_MODELS)
def test_state_carry_equals_one_pass(name: str) -> None:
    """Two halves with the state handed over == one pass (RNN state / GPT key-value cache)."""
    torch.manual_seed(0)
    model = randomize(small(name).double()).eval()
    X = torch.randint(0, V, (2, 10))
    with torch.no_grad():
        full, _ = model(X)
        first, state = model(X[:, :6])
        second, _ = model(X[:, 6:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), full)


CAUSAL_CASES = [(n, {}) for n in LM_MODELS] + [("gpt", {"positions": "sinusoidal"})]


@pytest.mark.parametrize(("name", "kw"), CAUSAL_CASES)
def test_changing_token_t_plus_1_never_changes_outputs_up_to_t(name: str, kw: dict) -> None:
    torch.manual_seed(0)
    model = randomize(small(name, **kw)).eval()
    X = torch.randint(0, V, (2, 8))
    with torch.no_grad():
        base, _ = model(X)
        for t in range(7):
            Y = X.clone()
            Y[:, t + 1] = (Y[:, t + 1] + 1) % V
            out, _ = model(Y)
            torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1])
            assert not torch.allclose(out[:, t + 1], base[:, t + 1])  # the change is seen


def full_recompute_greedy(model: nn.Module, prefix: torch.Tensor, n: int) -> torch.Tensor:
    max_len = getattr(model, "max_len", None) or 10**9
    seq = prefix
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(seq[:, -max_len:])
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return seq[:, prefix.shape[1]:]


@pytest.mark.parametrize("name", LM_MODELS)
def test_cached_generation_equals_greedy_full_recomputation(name: str) -> None:
    torch.manual_seed(0)
    kw = {"max_len": 12} if name == "gpt" else {}  # 5 + 20 tokens: GPT slides past 12
    model = randomize(small(name, **kw).double(), std=1.0).train()
    prefix = torch.randint(0, V, (2, 5))
    out = generate(model, prefix, 20)
    assert model.training  # mode restored
    model.eval()
    expected = full_recompute_greedy(model, prefix, 20)
    assert out.shape == (2, 20)
    assert torch.equal(out, expected)
    assert len(set(out.flatten().tolist())) > 2  # not a constant sequence
    assert torch.equal(generate(model, prefix[0], 20), expected[0])  # (T0,) prefix


def test_sampling_is_reproducible_and_top_k_1_is_greedy() -> None:
    torch.manual_seed(0)
    model = randomize(small("gpt"))
    prefix = torch.randint(0, V, (2, 4))
    a = generate(model, prefix, 15, temperature=1.0, generator=torch.Generator().manual_seed(1))
    b = generate(model, prefix, 15, temperature=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert torch.equal(generate(model, prefix, 15, temperature=0.7, top_k=1),
                       generate(model, prefix, 15))
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0]])
    draws = {int(sample_next(logits, 2.0, top_k=2)) for _ in range(200)}
    assert draws == {1, 2}
    with pytest.raises(ValueError):
        sample_next(logits, -1.0)


def test_gpt_refuses_contexts_past_max_len() -> None:
    model = small("gpt", max_len=8)
    with pytest.raises(ValueError, match="max_len"):
        model(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize("name", ["lstm", "gru_scratch", "rnn", "gpt"])
def test_tied_weights_share_storage_and_survive_export(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    kw = {"vocab_size": V, "num_hiddens": 16, "tie_weights": True}
    if name == "gpt":
        kw["num_heads"] = 2
    model = randomize(build_model(name, **kw)).eval()
    assert model.decoder.weight is model.embedding.weight
    n_tied = sum(p.numel() for p in model.parameters())
    untied = build_model(name, **{**kw, "tie_weights": False})
    assert sum(p.numel() for p in untied.parameters()) == n_tied + V * 16
    save_export(model, {"arch": name, "model_kwargs": kw}, tmp_path)
    loaded, _ = load_exported(tmp_path)
    assert loaded.decoder.weight.data_ptr() == loaded.embedding.weight.data_ptr()
    X = torch.randint(0, V, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(loaded(X)[0], model(X)[0])


def test_tie_weights_needs_matching_sizes() -> None:
    with pytest.raises(ValueError, match="embed_size"):
        build_model("lstm", vocab_size=V, num_hiddens=16, embed_size=8, tie_weights=True)


def test_one_hot_inputs_have_the_books_parameter_count() -> None:
    H = 32
    model = build_model("rnn_scratch", vocab_size=28, num_hiddens=H, embed_size=0)
    book = 28 * H + H * H + H + H * 28 + 28  # W_xh, W_hh, b_h, W_hq, b_q (d2l §9.5)
    assert model.embedding is None
    assert sum(p.numel() for p in model.parameters()) == book


@pytest.mark.parametrize("name", ["lstm", "gpt"])
def test_overfits_one_small_batch(name: str) -> None:
    torch.manual_seed(0)
    model = small(name)
    seq = torch.randint(0, V, (4, 13))
    seq[:, 0] = torch.arange(4)  # rows differ from the first token: every target is learnable
    X, Y = seq[:, :-1], seq[:, 1:]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        loss = F.cross_entropy(model(X)[0].reshape(-1, V), Y.reshape(-1))
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, loss.item()


def test_bidirectional_encoder_sees_the_future_and_is_refused_as_lm() -> None:
    torch.manual_seed(0)
    enc = build_model("bi_lstm", vocab_size=V, num_hiddens=8).eval()
    X = torch.randint(0, V, (2, 6))
    out, (h, c) = enc(X)
    assert out.shape == (2, 6, 16) and h.shape == (2, 2, 8)
    Y = X.clone()
    Y[:, 4] = (Y[:, 4] + 1) % V
    # position 3's output changes when token 4 does: the backward half read the future
    assert not torch.allclose(enc(Y)[0][:, 3], out[:, 3])
    assert "x_{t+1}" in BIDIRECTIONAL_LM_REFUSAL
    with pytest.raises(ValueError, match="bidirectional"):
        generate(enc, X[0], 3)


@pytest.mark.parametrize("name", LM_MODELS)
def test_recipes_build_and_clip_gradients(name: str) -> None:
    spec = get_spec(name)
    for recipe in spec.recipes.values():
        assert recipe.gradient_clip_val is not None
        assert recipe.data_kwargs.get("num_steps", 0) > 0
        build_model(name, vocab_size=28, **recipe.model_kwargs)
