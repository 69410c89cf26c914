"""Autoregressive generation from a language model (d2l §9.5.6 ``predict``), plain PyTorch.

Works for every ``language_modeling`` model of the registry: the prefix is fed once, then one
token at a time through ``model(token, state)``, where ``state`` is the RNN hidden state, the
GPT key/value cache or Mamba's per-layer ``(conv_state, ssm_state)``, so each new token costs one
step, not a recomputation of the sequence (for the RNNs and Mamba a step of constant cost; for
GPT one that grows with the cache).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

BIDIRECTIONAL_LM_REFUSAL = (
    "a bidirectional RNN cannot be a next-token language model: its backward direction has "
    "already read x_{t+1}, ..., x_T when it outputs position t, so in training it simply copies "
    "the answer from the future (near-zero loss) and at generation time, where the future does "
    "not exist yet, it produces nonsense (d2l §10.4). Use bi_lstm as an encoder "
    "(sequence_encoding), and lstm/gru/rnn/gpt for language modeling."
)


class NextTokenModel(Protocol):
    """What generation and the language-model task need from a model (d2l §9.5's ``RNNLM``).

    ``model(X, state)`` maps token ids ``(B, T)`` and a state (``None`` at the start: an RNN's
    hidden state, a Transformer's key/value cache) to ``(logits (B, T, V), new state)``.

    Attributes:
        recurrent: the state may be carried from one training batch to the next (sequential
            partitioning, truncated BPTT); a key/value cache may not.
        bidirectional: the model reads the future, so it is an encoder, never a language model.
        max_len: the longest context it can attend to (``None``: unbounded).
    """

    recurrent: bool
    bidirectional: bool
    max_len: int | None

    def __call__(self, X: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        """``(logits (B, T, V), state)`` of token ids ``(B, T)``."""


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int = 0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one token per row of ``logits`` ``(B, V)``: greedy, or sampled.

    Args:
        logits: unnormalised scores of the next token.
        temperature: ``0`` picks the argmax; otherwise sample from ``softmax(logits / T)``.
        top_k: if ``> 0``, sample among the ``k`` likeliest tokens only.
        generator: random source for reproducible sampling.

    Returns:
        ``(B,)`` token ids.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def generate(model: NextTokenModel, prefix: torch.Tensor, num_tokens: int, temperature: float = 0.0,
             top_k: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Continue ``prefix`` by ``num_tokens`` tokens.

    Models with a ``max_len`` (GPT's position table) SLIDE: once the context would exceed
    ``max_len``, each further token is predicted from a fresh pass over the last ``max_len``
    tokens (the cache is rebuilt, so positions stay within what the model knows). RNNs have no
    limit. The model runs in eval mode under ``torch.no_grad()``; its mode is restored after.

    Args:
        model: a registered language model, ``forward(X, state) -> (logits, state)``.
        prefix: ``(T0,)`` or ``(B, T0)`` token ids, ``T0 >= 1``.
        num_tokens: tokens to generate.
        temperature: ``0`` = greedy; see :func:`sample_next`.
        top_k: restrict sampling to the ``k`` likeliest tokens (``0``: all).
        generator: random source for sampling.

    Returns:
        The new token ids only: ``(num_tokens,)`` or ``(B, num_tokens)``.
    """
    if model.bidirectional:
        raise ValueError(BIDIRECTIONAL_LM_REFUSAL)
    single = prefix.dim() == 1
    prefix = prefix.to(next(model.parameters()).device)
    seq = prefix[None] if single else prefix  # (B, T0)
    if seq.shape[1] < 1:
        raise ValueError("generate needs a prefix of at least one token")
    max_len = model.max_len
    was_training = model.training
    model.eval()
    new: list[torch.Tensor] = []
    try:
        with torch.no_grad():
            ctx = seq if max_len is None else seq[:, -max_len:]
            logits, state = model(ctx)
            length = ctx.shape[1]  # tokens behind ``state``
            for i in range(num_tokens):
                token = sample_next(logits[:, -1], temperature, top_k, generator)  # (B,)
                new.append(token)
                if i == num_tokens - 1:
                    break
                if max_len is not None:
                    seq = torch.cat([seq, token[:, None]], dim=1)  # (B, T + 1)
                    if length >= max_len:  # slide: recompute over the last max_len tokens
                        seq = seq[:, -max_len:]
                        logits, state = model(seq)
                        continue
                logits, state = model(token[:, None], state)
                length += 1
    finally:
        model.train(was_training)
    out = torch.stack(new, dim=1) if new else seq.new_zeros(seq.shape[0], 0)
    return out[0] if single else out
