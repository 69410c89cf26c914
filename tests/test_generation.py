"""Generation details behind the samples we report (mutation survivors of models/generate.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from d2l_lightning.models import build_model
from d2l_lightning.models.generate import generate, sample_next


class CallLog(nn.Module):
    """Wraps a language model and records the length of every input it is given."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.lengths = model, []
        self.recurrent, self.bidirectional = model.recurrent, model.bidirectional
        self.max_len = model.max_len

    def forward(self, X, state=None):
        self.lengths.append(X.shape[1])
        return self.model(X, state)


def tiny(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    extra = {"num_heads": 2, "max_len": 8} if name == "gpt" else {}
    model = build_model(name, vocab_size=11, num_hiddens=16, **extra, **kw)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model.eval()


@pytest.mark.parametrize("name", ["lstm", "gpt", "mamba"])
def test_one_pass_over_the_prefix_then_one_step_per_token(name: str) -> None:
    model = CallLog(tiny(name))
    generate(model, torch.tensor([[1, 2, 3]]), 5)
    assert model.lengths == [3, 1, 1, 1, 1]  # no pass after the last token


def test_gpt_slides_only_once_its_context_is_full() -> None:
    model = CallLog(tiny("gpt"))  # max_len 8
    out = generate(model, torch.tensor([[1, 2, 3, 4, 5, 6]]), 6)
    # 6 prefix tokens, cached steps up to 8, then a fresh pass over the last 8 per token
    assert model.lengths == [6, 1, 1, 8, 8, 8]
    long_prefix = torch.randint(0, 11, (2, 13), generator=torch.Generator().manual_seed(1))
    seq = long_prefix
    with torch.no_grad():  # a prefix longer than max_len: only its last 8 tokens are read
        for _ in range(4):
            seq = torch.cat([seq, model.model(seq[:, -8:])[0][:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(generate(model, long_prefix, 4), seq[:, 13:])
    assert out.shape == (1, 6)


@pytest.mark.parametrize("name", ["lstm", "gpt"])
def test_prefix_of_one_token_and_zero_new_tokens(name: str) -> None:
    model = tiny(name)
    assert generate(model, torch.tensor([4]), 3).shape == (3,)
    empty = generate(model, torch.tensor([[1, 2, 3], [4, 5, 6]]), 0)
    assert empty.shape == (2, 0) and empty.dtype == torch.long
    assert generate(model, torch.tensor([1, 2, 3]), 0).shape == (0,)
    with pytest.raises(ValueError, match="^generate needs a prefix of at least one token$"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 3)


def test_default_is_greedy_and_sampling_uses_every_token_unless_top_k() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 5, generator=g) * 0.1  # nearly uniform rows
    assert torch.equal(sample_next(logits), logits.argmax(-1))
    drawn = sample_next(logits, temperature=1.0, generator=g)
    assert len(drawn.unique()) == 5  # top_k 0: every token can be drawn
    model = tiny("lstm")
    prefix = torch.tensor([[1, 2, 3]])
    sampled = generate(model, prefix, 30, temperature=1.0, generator=g)
    assert not torch.equal(sampled, generate(model, prefix, 30))
    with pytest.raises(ValueError, match="temperature must be >= 0, got -1"):
        sample_next(logits, -1.0)


def test_temperature_divides_the_logits() -> None:
    # logits (0, log 3): softmax(logits / T) gives token 1 probability 3 ** (1/T) / (1 + ...):
    # 0.75 at T = 1, 0.9 at T = 0.5, 3 ** 0.5 / (1 + 3 ** 0.5) = 0.634 at T = 2
    logits = torch.tensor([0.0, float(torch.tensor(3.0).log())]).expand(20000, 2)
    for T, p in ((1.0, 0.75), (0.5, 0.9), (2.0, 3 ** 0.5 / (1 + 3 ** 0.5))):
        draws = sample_next(logits, T, generator=torch.Generator().manual_seed(0))
        assert draws.float().mean().item() == pytest.approx(p, abs=0.015)
