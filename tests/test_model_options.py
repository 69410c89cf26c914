"""Every option of every registered model that changes the code path, exercised (issue 18).

``CASES`` holds, per registered model, tiny base arguments and the option values that take
another code path (positional encoding, tying, depth > 1, dropout > 0, one-hot inputs,
activation / pooling / init choices...). Each case runs through the shape, causality (where
causal), export round-trip and eval-determinism tests; ``test_every_option_is_exercised``
fails when a model or a builder argument is added without a row here.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from d2l_lightning.models import build_model, get_spec, load_exported, model_names, save_export
from d2l_lightning.models.decoding import beam_search, greedy_decode

# seq2seq_bahdanau with one layer: torch warns that its GRU dropout acts between layers only
pytestmark = pytest.mark.filterwarnings("ignore:dropout option adds dropout:UserWarning")

#: builder arguments that only size tensors (set small below, never a code-path choice)
SIZES = {"num_classes", "in_channels", "image_size", "num_inputs", "vocab_size",
         "src_vocab_size", "tgt_vocab_size", "num_hiddens", "ffn_num_hiddens",
         "mlp_num_hiddens", "num_heads", "max_len", "patch_size", "num_channels",
         "growth_rate", "ratio", "embed_size", "d_state", "expand", "d_conv"}

_RNN_LM = ({"vocab_size": 11, "num_hiddens": 16, "num_layers": 1, "dropout": 0.0},
           [{"num_layers": 2}, {"dropout": 0.3}, {"num_layers": 2, "dropout": 0.3},
            {"tie_weights": True}, {"embed_size": 0}, {"embed_size": 8}])
_BERT = ({"vocab_size": 20, "num_hiddens": 16, "ffn_num_hiddens": 16, "num_heads": 2,
          "num_layers": 1, "dropout": 0.0, "max_len": 12},
         [{"num_layers": 2}, {"dropout": 0.3}, {"activation": "relu"},
          {"activation": "gelu", "num_layers": 2, "dropout": 0.3}])
_RNN_MT = ({"src_vocab_size": 13, "tgt_vocab_size": 11, "embed_size": 8, "num_hiddens": 16,
            "num_layers": 1, "dropout": 0.0},
           [{"num_layers": 2}, {"num_layers": 2, "dropout": 0.3}, {"init": "pytorch"},
            {"init": "xavier"}])  # (one layer: GRU dropout acts between layers only)
_VGG = ({"num_classes": 10, "image_size": 32, "ratio": 8, "num_hiddens": 32, "dropout": 0.0},
        [{"dropout": 0.5}])

#: name -> (base arguments, option overrides); one case per override, plus the base alone
CASES: dict[str, tuple[dict, list[dict]]] = {
    "lenet": ({"image_size": 28}, [{"activation": "relu"}, {"pool": "max"},
                                   {"activation": "sigmoid", "pool": "avg"}]),
    "lenet_bn": ({"image_size": 28}, [{"activation": "relu"}, {"pool": "max"},
                                      {"activation": "sigmoid", "pool": "avg"}]),
    "alexnet": ({"image_size": 72, "num_hiddens": 32, "dropout": 0.0}, [{"dropout": 0.5}]),
    "row_transformer": ({"image_size": 8, "num_hiddens": 16, "ffn_num_hiddens": 16,
                         "num_heads": 2, "num_blks": 1, "dropout": 0.0},
                        [{"num_blks": 2}, {"dropout": 0.3}]),
    "vit": ({"image_size": 8, "patch_size": 4, "num_hiddens": 16, "mlp_num_hiddens": 16,
             "num_heads": 2, "num_blks": 1, "emb_dropout": 0.0, "blk_dropout": 0.0},
            [{"num_blks": 2}, {"emb_dropout": 0.3}, {"blk_dropout": 0.3},
             {"use_bias": True}, {"use_bias": False}]),
    "bert_tiny": _BERT,
    "bert_small": _BERT,
    "bert_encoder": _BERT,
    "densenet": ({"image_size": 32, "num_channels": 8, "growth_rate": 4, "arch": (1, 1)},
                 [{"arch": (2, 1, 1)}]),
    "rnn_scratch": _RNN_LM, "rnn": _RNN_LM, "lstm_scratch": _RNN_LM, "lstm": _RNN_LM,
    "gru_scratch": _RNN_LM, "gru": _RNN_LM,
    "bi_lstm": ({"vocab_size": 11, "num_hiddens": 8, "num_layers": 1, "dropout": 0.0},
                [{"num_layers": 2}, {"dropout": 0.3}, {"num_layers": 2, "dropout": 0.3},
                 {"embed_size": 4}]),
    "googlenet": ({"image_size": 32}, []),
    "gpt": ({"vocab_size": 11, "num_hiddens": 16, "num_layers": 1, "num_heads": 2,
             "max_len": 16, "dropout": 0.0},
            [{"positions": "sinusoidal"}, {"positions": "learned"}, {"tie_weights": False},
             {"tie_weights": True}, {"num_layers": 2}, {"dropout": 0.3},
             {"positions": "sinusoidal", "num_layers": 2, "dropout": 0.3},
             {"ffn_num_hiddens": 8}]),
    "mamba": ({"vocab_size": 11, "num_hiddens": 16, "num_layers": 1, "d_state": 4,
               "dropout": 0.0},
              [{"scan": "associative"}, {"scan": "sequential"}, {"tie_weights": False},
               {"num_layers": 2}, {"dropout": 0.3}, {"dt_rank": 2},
               {"num_layers": 2, "dropout": 0.3, "scan": "sequential"}]),
    "linear_regression": ({"num_inputs": 3}, []),
    "softmax_regression": ({"image_size": 28}, []),
    "mlp": ({"image_size": 28, "num_hiddens": 16, "dropout": 0.0},
            [{"num_hiddens": [16, 8]}, {"dropout": 0.3}, {"num_hiddens": [16, 8], "dropout": 0.3}]),
    "nin": ({"image_size": 72, "dropout": 0.0}, [{"dropout": 0.5}]),
    "resnet18": ({"image_size": 32}, []),
    "resnet34": ({"image_size": 32}, []),
    "seq2seq_gru": _RNN_MT,
    "seq2seq_bahdanau": (_RNN_MT[0], [*_RNN_MT[1], {"dropout": 0.3}]),  # attention dropout
    "transformer_mt": ({"src_vocab_size": 13, "tgt_vocab_size": 11, "num_hiddens": 16,
                        "ffn_num_hiddens": 16, "num_heads": 2, "num_layers": 1, "dropout": 0.0,
                        "max_len": 32},
                       [{"num_layers": 2}, {"dropout": 0.3}, {"num_layers": 2, "dropout": 0.3}]),
    "vgg11": _VGG,
    "vgg11_small": _VGG,
}


def case_id(name: str, override: dict) -> str:
    return name + "".join(f"-{k}={v}" for k, v in override.items())


ALL = [pytest.param(n, {**b, **o}, id=case_id(n, o)) for n, (b, opts) in CASES.items()
       for o in [{}, *opts]]
CAUSAL_TASKS = ("language_modeling", "seq2seq")
CAUSAL = [p for p in ALL if get_spec(p.values[0]).task in CAUSAL_TASKS]


def task(name: str) -> str:
    return get_spec(name).task


def build(name: str, kw: dict, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, **kw)


def inputs(name: str, kw: dict) -> tuple:
    """Small model inputs for the model's task family (seeded)."""
    g = torch.Generator().manual_seed(1)
    t = task(name)
    if t == "image_classification":
        return (torch.randn(3, kw.get("in_channels", 1), kw["image_size"], kw["image_size"],
                            generator=g),)
    if t == "regression":
        return (torch.randn(4, kw["num_inputs"], generator=g),)
    if t in ("language_modeling", "sequence_encoding"):
        return (torch.randint(0, kw["vocab_size"], (2, 7), generator=g),)
    if t in ("masked_lm", "text_encoding"):
        L = kw["max_len"]
        tokens = torch.randint(5, kw["vocab_size"], (2, L), generator=g)
        segments = (torch.arange(L) >= L // 2).long().expand(2, L)
        valid = torch.tensor([L, L - 3])
        extra = (torch.tensor([[1, 3], [2, 4]]),) if t == "masked_lm" else ()
        return (tokens, segments, valid, *extra)
    if t == "seq2seq":
        src = torch.randint(4, kw["src_vocab_size"], (3, 6), generator=g)
        tgt = torch.randint(4, kw["tgt_vocab_size"], (3, 5), generator=g)
        return src, tgt, torch.tensor([6, 2, 4])
    raise AssertionError(f"no inputs for task {t}")


def outputs(model: nn.Module, args: tuple) -> list[torch.Tensor]:
    """Every tensor the model returns for ``args`` (states and caches included)."""
    out = model(*args)
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def test_every_option_is_exercised() -> None:
    """Every model has a row, and every non-size argument takes two values across its cases."""
    assert set(CASES) == set(model_names())
    for name, (base, options) in CASES.items():
        params = inspect.signature(get_spec(name).builder).parameters
        for arg, param in params.items():
            if arg in SIZES:
                continue
            values = {repr({**base, **o}.get(arg, param.default)) for o in [{}, *options]}
            assert len(values) >= 2, f"{name}: option '{arg}' is only run with {values}"


@pytest.mark.parametrize("name, arg, values", [
    ("lenet", "activation", ["sigmoid", "relu"]), ("lenet", "pool", ["avg", "max"]),
    ("lenet_bn", "activation", ["sigmoid", "relu"]), ("lenet_bn", "pool", ["avg", "max"]),
    ("gpt", "positions", ["learned", "sinusoidal"]),
    ("mamba", "scan", ["chunked", "associative", "sequential"]),
    ("bert_tiny", "activation", ["gelu", "relu"]),
    ("seq2seq_gru", "init", ["xavier", "pytorch"]), ("seq2seq_bahdanau", "init",
                                                      ["xavier", "pytorch"])])
def test_unknown_choices_are_refused_naming_the_ones_exercised(name, arg, values) -> None:
    """A choice argument refuses a typo and names its choices, all of which CASES runs."""
    base, options = CASES[name]
    assert {o[arg] for o in options if arg in o} | {base.get(arg, inspect.signature(
        get_spec(name).builder).parameters[arg].default)} == set(values)
    with pytest.raises(ValueError) as info:
        build(name, {**base, arg: "no-such-choice"})
    assert all(v in str(info.value) for v in values), str(info.value)


@pytest.mark.parametrize("name, kw", ALL)
def test_shape_and_finite(name: str, kw: dict) -> None:
    model = build(name, kw).train()
    args = inputs(name, kw)
    out = model(*args)
    t, B = task(name), len(args[0])
    if t == "image_classification":
        expected = [(B, kw.get("num_classes", 10))]
    elif t == "regression":
        expected = [(B, 1)]
    elif t == "language_modeling":
        expected = [(B, 7, kw["vocab_size"])]
    elif t == "sequence_encoding":
        expected = [(B, 7, 2 * kw["num_hiddens"])]
    elif t == "masked_lm":
        expected = [(B, kw["max_len"], kw["num_hiddens"]), (B, 2, kw["vocab_size"]), (B, 2)]
    elif t == "text_encoding":
        expected = [(B, kw["max_len"], kw["num_hiddens"])]
    else:  # seq2seq
        expected = [(B, args[1].shape[1], kw["tgt_vocab_size"])]
    got = out if isinstance(out, tuple) else (out,)
    assert [tuple(o.shape) for o in got[:len(expected)]] == expected
    assert all(torch.isfinite(o).all() for o in got[:len(expected)])


@pytest.mark.parametrize("name, kw", CAUSAL)
def test_causal_and_incremental(name: str, kw: dict) -> None:
    """Output t never depends on input t + 1; a step-by-step pass equals the full one."""
    model = build(name, kw).double().eval()
    with torch.no_grad():
        for p in model.parameters():  # large weights: every input visibly changes the output
            p.normal_(0, 0.3)
        if task(name) == "language_modeling":
            (X,) = inputs(name, kw)
            base, _ = model(X)
            for t in range(X.shape[1] - 1):
                Y = X.clone()
                Y[:, t + 1] = (Y[:, t + 1] + 1) % kw["vocab_size"]
                out, _ = model(Y)
                assert torch.equal(out[:, :t + 1], base[:, :t + 1])
                assert not torch.equal(out[:, t + 1], base[:, t + 1])
            first, state = model(X[:, :3])
            second, _ = model(X[:, 3:], state)
            torch.testing.assert_close(torch.cat([first, second], 1), base)
        else:  # seq2seq: the decoder under teacher forcing, then step by step
            src, tgt, valid = inputs(name, kw)
            base = model(src, tgt, valid)
            for t in range(tgt.shape[1] - 1):
                changed = tgt.clone()
                changed[:, t + 1:] = (changed[:, t + 1:] + 1) % kw["tgt_vocab_size"]
                torch.testing.assert_close(model(src, changed, valid)[:, :t + 1],
                                           base[:, :t + 1])
            memory, state, steps = model.encode(src, valid), None, []
            for t in range(tgt.shape[1]):
                logits, state = model.decode_step(tgt[:, t:t + 1], memory, state)
                steps.append(logits)
            torch.testing.assert_close(torch.cat(steps, 1), base)


@pytest.mark.parametrize("name, kw", ALL)
def test_export_round_trip(name: str, kw: dict, tmp_path) -> None:
    model = build(name, kw).eval()
    save_export(model, {"arch": name, "model_kwargs": kw}, tmp_path)
    loaded, cfg = load_exported(tmp_path)
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.state_dict().keys() == model.state_dict().keys()
    args = inputs(name, kw)
    with torch.no_grad():
        for a, b in zip(outputs(loaded, args), outputs(model, args), strict=True):
            assert torch.equal(a, b)


def has_dropout(kw: dict) -> bool:
    return any("dropout" in k and v > 0 for k, v in kw.items())


@pytest.mark.parametrize("name, kw", ALL)
def test_eval_mode_is_bit_deterministic(name: str, kw: dict) -> None:
    """Bug caught: dropout left active in eval mode (``p = self.dropout if self.training else
    0.0`` -> ``p = self.dropout`` in ``MultiHeadAttention``)."""
    model = build(name, kw)
    args = inputs(name, kw)
    if has_dropout(kw):  # the option is live: two training passes differ
        model.train()
        torch.manual_seed(1)
        a = outputs(model, args)
        torch.manual_seed(2)
        b = outputs(model, args)
        assert any(not torch.equal(x, y) for x, y in zip(a, b)), "dropout > 0 changes nothing"
    model.eval()
    with torch.no_grad():
        runs = []
        for seed in (1, 2):
            torch.manual_seed(seed)
            out = outputs(model, args)
            if task(name) == "seq2seq":  # decoding too, with attention weights kept
                src, _, valid = args
                out += [torch.tensor(sum(beam_search(model, src, valid, 1, 3, 5, 3), []))]
                if getattr(model, "has_attention", False):
                    _, att = greedy_decode(model, src, valid, 1, 3, 5, return_attention=True)
                    out += att
            runs.append(out)
    for x, y in zip(*runs, strict=True):
        assert torch.equal(x, y)
