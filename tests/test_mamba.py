"""Mamba (issue 14): the scans agree, causality, recurrent generation, gradients, init, export."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, run_cli
from d2l_lightning.cli import train
from d2l_lightning.cli.predict import main as predict_main
from d2l_lightning.lit_models import LanguageModelingTask, load_checkpoint
from d2l_lightning.models import build_model, get_spec, load_exported
from d2l_lightning.models.generate import generate
from d2l_lightning.models.mamba import Mamba
from d2l_lightning.models.selective_scan import (
    SCANS,
    chunk_size,
    linear_recurrence,
    scan_chunked,
    scan_sequential,
)

FAST = ["chunked", "associative"]
V = 11


def scan_inputs(T: int, Bt: int = 2, E: int = 6, N: int = 4, delta=None, seed: int = 0,
                dtype=torch.float32) -> tuple:
    """Random ``(x, Δ, A, B, C, D, h0)`` of the selective scan; ``Δ`` from softplus by default."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    x = randn(Bt, T, E)
    if delta is None:  # what the model produces: softplus around its initial range
        delta = F.softplus(randn(Bt, T, E) - 3.0)
    A = -torch.exp(randn(E, N))
    return x, delta.to(dtype), A, randn(Bt, T, N), randn(Bt, T, N), randn(E), randn(Bt, E, N)


def small(**kw) -> Mamba:
    return build_model("mamba", **{"vocab_size": V, "num_hiddens": 16, "num_layers": 2, **kw})


def randomize(model: Mamba, std: float = 0.3) -> Mamba:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):  # keep A = -exp(A_log) in a realistic range
                p.uniform_(-1.0, 2.5)
            else:
                p.normal_(0, std)
    return model


# ---------------------------------------------------------------- the scans
@pytest.mark.parametrize("scan", FAST)
@pytest.mark.parametrize("T", [1, 2, 7, 64, 1024, 1037])
@pytest.mark.parametrize("with_h0", [False, True])
def test_fast_scans_equal_the_sequential_recurrence(scan: str, T: int, with_h0: bool) -> None:
    x, delta, A, B, C, D, h0 = scan_inputs(T, seed=T)
    h0 = h0 if with_h0 else None
    y_ref, h_ref = scan_sequential(x, delta, A, B, C, D, h0)
    y, h = SCANS[scan](x, delta, A, B, C, D, h0)
    assert y.dtype == h.dtype == torch.float32 and y.shape == x.shape and h.shape == (2, 6, 4)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("scan", FAST)
def test_extreme_step_sizes(scan: str) -> None:
    """Δ over eight decades: Ā underflows to exactly 0 (Δ|A| > 104) or stays within 1e-6 of 1."""
    T = 1024
    g = torch.Generator().manual_seed(1)
    delta = 10 ** (torch.rand(2, T, 6, generator=g) * 8 - 6)  # 1e-6 .. 1e2
    x, delta, A, B, C, D, h0 = scan_inputs(T, delta=delta, seed=1)
    x = x / (1 + delta)  # |Δ x| <= 1: outputs of order 1, where float32 resolves 1e-5
    dA = torch.exp(delta[..., None] * A)
    assert (dA == 0).any() and (dA > 1 - 1e-6).any()
    y_ref, h_ref = scan_sequential(x, delta, A, B, C, D, h0)
    y, h = SCANS[scan](x, delta, A, B, C, D, h0)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("T", "chunk"), [(50, 1), (50, 3), (50, 16), (50, 50), (50, 64),
                                          (1037, 32)])
def test_chunked_scan_for_every_chunk_length(T: int, chunk: int) -> None:
    """Padding (50 % 3, 50 % 16, 1037 % 32), one step per chunk (1), one chunk in all (50, 64)."""
    x, delta, A, B, C, D, h0 = scan_inputs(T, seed=chunk)
    y_ref, h_ref = scan_sequential(x, delta, A, B, C, D, h0)
    y, h = scan_chunked(x, delta, A, B, C, D, h0, chunk=chunk)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=0)
    assert chunk_size(1, 1024, 236, 16) == 15 and chunk_size(64, 64, 236, 16) == 64


@pytest.mark.parametrize("scan", FAST)
def test_fast_scans_have_the_gradients_of_the_recurrence(scan: str) -> None:
    inputs = [t.requires_grad_() for t in scan_inputs(37, seed=5, dtype=torch.float64)]
    grads = []
    for fn in (scan_sequential, SCANS[scan]):
        y, h = fn(*inputs)
        g = torch.autograd.grad((y.sin().sum() + h.square().sum()), inputs)
        grads.append(g)
    for name, a, b in zip(("x", "delta", "A", "B", "C", "D", "h0"), *grads):
        torch.testing.assert_close(a, b, msg=f"d/d{name}")


def test_linear_recurrence_is_the_loop() -> None:
    g = torch.Generator().manual_seed(0)
    a, b, h0 = torch.rand(3, 21, 5, generator=g), torch.randn(3, 21, 5, generator=g), \
        torch.randn(3, 5, generator=g)
    h, expected = h0, []
    for t in range(21):
        h = a[:, t] * h + b[:, t]
        expected.append(h)
    torch.testing.assert_close(linear_recurrence(a, b, h0), torch.stack(expected, 1))


def test_scan_runs_in_float32_under_autocast() -> None:
    """bf16 inputs under autocast: the state is float32 and y is the float32 result, rounded."""
    x, delta, A, B, C, D, h0 = scan_inputs(40, seed=3)
    low = [t.bfloat16() for t in (x, delta, B, C)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, h = scan_chunked(low[0], low[1], A, low[2], low[3], D, h0)
    y32, h32 = scan_chunked(*(t.float() for t in low[:2]), A, low[2].float(), low[3].float(),
                            D, h0)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    assert torch.equal(h, h32) and torch.equal(y, y32.bfloat16())
    model = small()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, state = model(torch.randint(0, V, (2, 9)))
    assert logits.dtype == torch.bfloat16 and all(h.dtype == torch.float32 for _, h in state)


# ---------------------------------------------------------------- the model
def test_block_shapes_and_initialisation() -> None:
    model = build_model("mamba", vocab_size=V, num_hiddens=40, num_layers=3)
    mixer = model.blocks[0].mixer
    assert mixer.dt_rank == math.ceil(40 / 16) == 3 and mixer.d_inner == 80
    assert mixer.in_proj.out_features == 160 and mixer.x_proj.out_features == 3 + 2 * 16
    assert mixer.conv1d.kernel_size == (4,) and mixer.conv1d.groups == 80
    torch.testing.assert_close(-torch.exp(mixer.A_log), -torch.arange(1.0, 17).expand(80, 16))
    assert torch.equal(mixer.D, torch.ones(80))
    dt = F.softplus(mixer.dt_proj.bias)  # Δ at init for a zero input to dt_proj
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 1e-1 * 1.001 and dt.std() > 0.01
    assert model.decoder.weight is model.embedding.weight
    assert model.recurrent is True
    ranked = build_model("mamba", vocab_size=V, num_hiddens=40, dt_rank=5)
    assert ranked.blocks[0].mixer.dt_rank == 5
    with pytest.raises(ValueError, match="scan"):
        build_model("mamba", vocab_size=V, scan="fft")
    with pytest.raises(ValueError, match="dt_rank"):
        build_model("mamba", vocab_size=V, dt_rank="big")


@pytest.mark.parametrize("scan", [*FAST, "sequential"])
def test_changing_token_t_plus_1_never_changes_outputs_up_to_t(scan: str) -> None:
    torch.manual_seed(0)
    model = randomize(small(scan=scan)).eval()
    X = torch.randint(0, V, (2, 37))
    with torch.no_grad():
        base, _ = model(X)
        for t in (0, 5, 17, 35):
            Y = X.clone()
            Y[:, t + 1] = (Y[:, t + 1] + 1) % V
            out, _ = model(Y)
            assert torch.equal(out[:, : t + 1], base[:, : t + 1])
            assert not torch.allclose(out[:, t + 1], base[:, t + 1])


@pytest.mark.parametrize("scan", [*FAST, "sequential"])
def test_step_by_step_logits_equal_the_full_forward(scan: str) -> None:
    """Prefix, then one token at a time with (conv_state, ssm_state): the full pass's logits."""
    torch.manual_seed(0)
    model = randomize(small(scan=scan)).eval()
    X = torch.randint(0, V, (2, 40))
    with torch.no_grad():
        full, _ = model(X)
        logits, state = model(X[:, :5])
        steps = [logits]
        sizes = set()
        for t in range(5, 40):
            logits, state = model(X[:, t:t + 1], state)
            steps.append(logits)
            sizes.add(sum(s.numel() for layer in state for s in layer))
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    conv_state, h = state[0]
    assert conv_state.shape == (2, 32, 3) and h.shape == (2, 32, 16)
    assert len(sizes) == 1  # constant memory: the state never grows


def test_generate_uses_the_recurrent_state() -> None:
    """generate() feeds one token at a time: the same tokens as greedy full recomputation."""
    torch.manual_seed(0)
    model = randomize(small().double(), std=1.0)
    prefix = torch.randint(0, V, (2, 5))
    calls = []
    model.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[1]))
    out = generate(model, prefix, 30)
    assert calls == [5] + [1] * 29  # prefix once, then single tokens
    seq = prefix
    with torch.no_grad():
        for _ in range(30):
            seq = torch.cat([seq, model(seq)[0][:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq[:, 5:]) and len(set(out.flatten().tolist())) > 2


def test_gradients_reach_every_parameter_and_match_the_reference_scan() -> None:
    torch.manual_seed(0)
    model = small(dropout=0.0).double()
    X = torch.randint(0, V, (3, 23))
    grads = {}
    for scan in ("sequential", "chunked", "associative"):
        model.scan = scan
        model.zero_grad()
        logits, _ = model(X[:, :-1])
        F.cross_entropy(logits.reshape(-1, V), X[:, 1:].reshape(-1)).backward()
        grads[scan] = {n: p.grad.clone() for n, p in model.named_parameters()}
    names = set(grads["sequential"])
    assert {"blocks.0.mixer.A_log", "blocks.1.mixer.D", "blocks.0.mixer.dt_proj.bias",
            "blocks.1.mixer.conv1d.bias"} <= names
    for n, g in grads["sequential"].items():
        assert torch.isfinite(g).all() and g.abs().sum() > 0, n
        for scan in FAST:
            torch.testing.assert_close(grads[scan][n], g, msg=f"{scan}: {n}")


def test_overfits_one_batch_that_needs_long_memory() -> None:
    """Four rows share 16 filler tokens; what follows depends on the first token only.

    Beyond the convolution's reach (2 layers x 3 steps) only the SSM state can remember the
    row, so the first prediction after the filler (log 4 for a model without memory) is the
    test that the selective scan carries information.
    """
    torch.manual_seed(0)
    model = small()
    g = torch.Generator().manual_seed(0)
    filler = torch.randint(0, V, (16,), generator=g)
    seq = torch.stack([torch.cat([torch.tensor([i]), filler,
                                  torch.randint(0, V, (8,), generator=g)]) for i in range(4)])
    X, Y = seq[:, :-1], seq[:, 1:]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        logits = model(X)[0]
        loss = F.cross_entropy(logits.reshape(-1, V), Y.reshape(-1))
        loss.backward()
        opt.step()
    after_filler = F.cross_entropy(logits[:, 16], Y[:, 16])
    assert loss.item() < 0.05 and after_filler.item() < 0.05, (loss.item(), after_filler.item())


@pytest.mark.parametrize(("recipe", "gpt_kwargs"), [
    ("d2l", {"vocab_size": 28, **get_spec("gpt").recipe("d2l").model_kwargs}),
    ("wikitext", {"vocab_size": 33_278, "num_hiddens": 200, "num_layers": 2, "num_heads": 4,
                  "max_len": 64})])  # the GPT row of docs/results-language-models.md
def test_recipes_match_gpt_parameter_counts(recipe: str, gpt_kwargs: dict) -> None:
    def count(m):
        return sum(p.numel() for p in m.parameters())

    ours = build_model("mamba", vocab_size=gpt_kwargs["vocab_size"],
                       **get_spec("mamba").recipe(recipe).model_kwargs)
    gpt = build_model("gpt", **gpt_kwargs)
    assert abs(count(ours) / count(gpt) - 1) < 0.01, (count(ours), count(gpt))


# ---------------------------------------------------------------- train.py / export / predict.py
TEXT = ("The Time Traveller (for so it will be convenient to speak of him) was expounding a "
        "recondite matter to us. His grey eyes shone and twinkled, and his usually pale face "
        "was flushed and animated.\n") * 30


def test_train_export_and_predict_generate_without_lightning(tmp_path: Path, capsys) -> None:
    (tmp_path / "data" / "timemachine").mkdir(parents=True)
    (tmp_path / "data" / "timemachine" / "timemachine.txt").write_text(TEXT)
    run = tmp_path / "run"
    assert train.main(["--model", "mamba", "--data", "time_machine", "--data-dir",
                       str(tmp_path / "data"), "--run-dir", str(run), "--max-steps", "3",
                       "--num-hiddens", "16", "--num-layers", "2", "--batch-size", "8",
                       "--num-steps", "16", "--limit-val-batches", "2", "--no-test",
                       "--no-progress-bar"]) == 0
    cfg = json.loads((run / "export" / "config.json").read_text())
    assert cfg["arch"] == "mamba" and cfg["model_kwargs"]["dt_rank"] == "auto"
    module = load_checkpoint(run / "checkpoints" / "last.ckpt")
    loaded, _ = load_exported(run / "export")
    X = torch.randint(0, len(cfg["vocab"]), (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded(X)[0], module.model.eval()(X)[0])
    expected = "time traveller" + module.ids_to_text(
        generate(module.model, module.encode_prompt("time traveller"), 25))
    base = [str(ROOT / "predict.py"), "generate", "--export", str(run / "export"),
            "--num-tokens", "25", "--prefix", "time traveller"]
    proc = run_cli(str(ROOT / "tests" / "without_lightning.py"), *base, check=True)
    assert proc.stdout.removesuffix("\n") == expected
    capsys.readouterr()
    assert predict_main(base[1:] + ["--temperature", "1", "--top-k", "3", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("time traveller")
    # a recurrent model: with sequential batches its state is carried (like the LSTM's)
    lm = LanguageModelingTask("mamba", cfg["vocab"], {"num_hiddens": 8}, carry_state=True,
                       sample_tokens=0)
    assert lm.carries_state is True
