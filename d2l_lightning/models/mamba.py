"""Mamba: a selective state-space language model (Gu & Dao 2023; not in d2l).

Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (2023).

Each layer is ``X + Mixer(RMSNorm(X))`` (pre-norm residual); the mixer is the Mamba block of
the paper's Fig. 3 / Alg. 2:

1. ``in_proj`` maps ``d_model`` to ``2 d_inner`` (``d_inner = expand * d_model``): a main branch
   ``x`` and a gate branch ``z``;
2. ``x`` goes through a causal depthwise ``Conv1d`` (kernel ``d_conv``) and SiLU;
3. the selective SSM (:mod:`models.selective_scan`): ``Δ = softplus(W_Δ x + b_Δ)`` through a
   rank ``dt_rank`` bottleneck, input-dependent ``B, C``, ``A = -exp(A_log)``, skip ``D``;
4. the SSM output is gated by ``SiLU(z)`` and projected back to ``d_model``.

The state of a layer for generation is ``(conv_state, ssm_state)``: the last ``d_conv - 1``
inputs of the convolution ``(B, d_inner, d_conv - 1)`` and ``h`` ``(B, d_inner, d_state)``.
Neither grows with the sequence, so each new token costs the same time and memory.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .registry import Recipe, register
from .selective_scan import SCANS, scan_step

LayerState = tuple[torch.Tensor, torch.Tensor]
MambaState = tuple[LayerState, ...]


class MambaMixer(nn.Module):
    """The Mamba block (Gu & Dao 2023, Fig. 3; selective SSM of Alg. 2).

    Args:
        d_model: model width.
        d_state: SSM state size ``N`` per channel.
        expand: ``d_inner = expand * d_model``.
        d_conv: kernel of the causal depthwise convolution.
        dt_rank: rank of the ``Δ`` projection.
        scan: ``"chunked"``, ``"associative"`` or ``"sequential"`` (the reference); see
            :mod:`models.selective_scan`.
        dt_min, dt_max: the initial ``Δ`` is log-uniform in ``[dt_min, dt_max]``.
    """

    def __init__(self, d_model: int, d_state: int = 16, expand: int = 2, d_conv: int = 4,
                 dt_rank: int = 1, scan: str = "chunked", dt_min: float = 1e-3,
                 dt_max: float = 1e-1) -> None:
        super().__init__()
        _scan_runs_eagerly()
        if scan not in SCANS:
            raise ValueError(f"unknown scan '{scan}'; choose from: {', '.join(SCANS)}")
        E = expand * d_model
        self.d_inner, self.d_state, self.d_conv, self.dt_rank = E, d_state, d_conv, dt_rank
        self.scan = scan
        self.in_proj = nn.Linear(d_model, 2 * E, bias=False)
        self.conv1d = nn.Conv1d(E, E, d_conv, groups=E)  # padding comes from the state
        self.x_proj = nn.Linear(E, dt_rank + 2 * d_state, bias=False)  # Δ (low rank), B, C
        self.dt_proj = nn.Linear(dt_rank, E)
        self.out_proj = nn.Linear(E, d_model, bias=False)
        # S4D-real: A = -(1, 2, ..., N) in every channel
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(E, 1)  # (E, N)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(E))
        with torch.no_grad():
            nn.init.uniform_(self.dt_proj.weight, -dt_rank ** -0.5, dt_rank ** -0.5)
            # softplus(b_Δ) = dt, dt log-uniform in [dt_min, dt_max]: b_Δ = dt + log(1 - e^-dt)
            dt = torch.exp(torch.rand(E) * (math.log(dt_max) - math.log(dt_min))
                           + math.log(dt_min)).clamp(min=1e-4)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def empty_state(self, batch_size: int, like: torch.Tensor) -> LayerState:
        """Zero ``(conv_state, ssm_state)``: the state before the first token."""
        conv = like.new_zeros(batch_size, self.d_inner, self.d_conv - 1)
        ssm = like.new_zeros(batch_size, self.d_inner, self.d_state,
                             dtype=torch.promote_types(like.dtype, torch.float32))
        return conv, ssm

    def forward(self, X: torch.Tensor, state: LayerState | None = None
                ) -> tuple[torch.Tensor, LayerState]:
        """``(B, T, d_model)`` -> ``(B, T, d_model)``, continuing from ``state``.

        Returns the output and the state after these ``T`` tokens; ``T = 1`` with a state is one
        O(1) generation step.
        """
        conv_state, h = state if state is not None else self.empty_state(X.shape[0], X)
        x, z = self.in_proj(X).chunk(2, dim=-1)  # (B, T, E) each
        x = torch.cat([conv_state.to(x.dtype), x.transpose(1, 2)], dim=2)  # (B, E, K-1+T)
        conv_state = x[:, :, x.shape[2] - (self.d_conv - 1):].contiguous()  # last K-1 inputs
        x = F.silu(self._conv(x)).transpose(1, 2)  # (B, T, E)
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        y, h = self.ssm(x, dt, B, C, h)  # (B, T, E)
        return self.out_proj(y * F.silu(z)), (conv_state, h)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        """Depthwise causal convolution: ``(B, E, K-1+T)`` (state, inputs) -> ``(B, E, T)``."""
        w, b = self.conv1d.weight, self.conv1d.bias  # (E, 1, K), (E,)
        if x.shape[2] == self.d_conv:  # one position (generation): a dot product per channel,
            return (x * w[:, 0]).sum(-1, keepdim=True) + b[:, None]  # ~7x cheaper than conv1d
        return F.conv1d(x, w, b, groups=self.d_inner)

    # torch.compile runs the scan eagerly (a graph break): its loops over time and chunks,
    # unrolled, took inductor 6 minutes for one training step on our 2-vCPU VM, against 86 s
    # for the rest of the model with the scan left out (issue 16). The mark is set when the
    # first mixer is built (`_scan_runs_eagerly`): torch.compiler.disable imports torch._dynamo,
    # 1.3-1.8 s that every process importing the models would otherwise pay.
    def ssm(self, x: torch.Tensor, dt: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
            h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The selective SSM in float32 (autocast off): ``Δ = softplus(W_Δ dt + b_Δ)``."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(device_type=x.device.type, enabled=False):
            delta = F.softplus(F.linear(dt.to(dtype), self.dt_proj.weight.to(dtype),
                                        self.dt_proj.bias.to(dtype)))  # (B, T, E)
            A = -torch.exp(self.A_log.to(dtype))  # (E, N)
            if x.shape[1] == 1:  # one new token (generation): a single recurrence step
                y, h = scan_step(x[:, 0], delta[:, 0], A, B[:, 0], C[:, 0], self.D, h)
                return y[:, None], h
            return SCANS[self.scan](x, delta, A, B, C, self.D, h)


def _scan_runs_eagerly() -> None:
    """Mark ``MambaMixer.ssm`` for torch.compile to run eagerly (once per process)."""
    if not getattr(MambaMixer.ssm, "_runs_eagerly", False):
        MambaMixer.ssm = torch.compiler.disable(MambaMixer.ssm)
        MambaMixer.ssm._runs_eagerly = True


class MambaBlock(nn.Module):
    """Pre-norm residual layer: ``X + dropout(Mixer(RMSNorm(X)))``."""

    def __init__(self, d_model: int, dropout: float = 0.0, **mixer_kwargs) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(d_model, eps=1e-5)
        self.mixer = MambaMixer(d_model, **mixer_kwargs)
        self.dropout = nn.Dropout(dropout)

    def forward(self, X: torch.Tensor, state: LayerState | None = None
                ) -> tuple[torch.Tensor, LayerState]:
        """``(B, T, d_model)`` -> ``(B, T, d_model)`` and the layer's new state."""
        out, state = self.mixer(self.norm(X), state)
        return X + self.dropout(out), state


class Mamba(nn.Module):
    """Mamba language model: embedding, ``num_layers`` Mamba blocks, RMSNorm, tied LM head.

    ``state`` is one ``(conv_state, ssm_state)`` pair per layer; ``forward(X, state)``
    continues the sequence exactly, so the model is ``recurrent``: its state may be carried
    across sequentially partitioned training batches, and generation feeds one token at a time.

    Args:
        vocab_size: tokens.
        num_hiddens: model width ``d_model``.
        num_layers: Mamba blocks (``n_layers``).
        d_state: SSM state size ``N``.
        expand: ``d_inner = expand * num_hiddens``.
        d_conv: causal convolution kernel.
        dt_rank: rank of the ``Δ`` projection; ``"auto"`` is ``ceil(num_hiddens / 16)``.
        dropout: on the embeddings and on each block's output (the paper uses none).
        tie_weights: the LM head reuses the embedding matrix.
        scan: ``"chunked"`` (default), ``"associative"`` or ``"sequential"`` (the reference):
            the same function computed three ways (:mod:`models.selective_scan`).
    """

    recurrent, bidirectional, max_len = True, False, None  # the NextTokenModel interface

    def __init__(self, vocab_size: int, num_hiddens: int = 64, num_layers: int = 2,
                 d_state: int = 16, expand: int = 2, d_conv: int = 4,
                 dt_rank: int | str = "auto", dropout: float = 0.0, tie_weights: bool = True,
                 scan: str = "chunked") -> None:
        super().__init__()
        for name, size in (("vocab_size", vocab_size), ("num_hiddens", num_hiddens),
                           ("d_state", d_state), ("expand", expand), ("d_conv", d_conv)):
            if size < 1:  # else a traceback deep inside (d_state 0 divides by zero in the scan)
                raise ValueError(f"{name} must be at least 1, got {size}")
        if dt_rank == "auto":
            dt_rank = math.ceil(num_hiddens / 16)
        if not isinstance(dt_rank, int) or dt_rank < 1:
            raise ValueError(f"dt_rank must be a positive int or 'auto', got {dt_rank!r}")
        self.embedding = nn.Embedding(vocab_size, num_hiddens)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            MambaBlock(num_hiddens, dropout, d_state=d_state, expand=expand, d_conv=d_conv,
                       dt_rank=dt_rank, scan=scan) for _ in range(num_layers))
        self.norm = nn.RMSNorm(num_hiddens, eps=1e-5)
        self.decoder = nn.Linear(num_hiddens, vocab_size, bias=False)
        nn.init.normal_(self.embedding.weight, std=0.02)
        with torch.no_grad():  # scale the residual branches' output projections (GPT-2)
            for block in self.blocks:
                block.mixer.out_proj.weight /= math.sqrt(num_layers)
        if tie_weights:
            self.decoder.weight = self.embedding.weight

    @property
    def scan(self) -> str:
        """Which scan every layer runs (``"chunked"``, ``"associative"``, ``"sequential"``)."""
        return self.blocks[0].mixer.scan if len(self.blocks) else "chunked"

    @scan.setter
    def scan(self, name: str) -> None:
        if name not in SCANS:
            raise ValueError(f"unknown scan '{name}'; choose from: {', '.join(SCANS)}")
        for block in self.blocks:
            block.mixer.scan = name

    def forward(self, X: torch.Tensor, state: MambaState | None = None
                ) -> tuple[torch.Tensor, MambaState]:
        """Token ids ``(B, T)`` -> logits ``(B, T, vocab_size)`` and the state after them."""
        h = self.dropout(self.embedding(X))  # (B, T, H)
        states = []
        for i, block in enumerate(self.blocks):
            h, s = block(h, None if state is None else state[i])
            states.append(s)
        return self.decoder(self.norm(h)), tuple(states)


# Not in the book (d2l has no state-space models; listed beside GPT, §11.9). Sized to GPT's:
# a Transformer block holds ~12 d^2 parameters, a Mamba layer ~6 d^2 (in_proj 4 d^2, out_proj
# 2 d^2), so twice GPT's layers (as the paper's comparisons do), at the width that comes closest
# to GPT's total. Time Machine: 4 x 118 -> 405,094 parameters vs GPT's 2 x 128 recipe 408,576
# (-0.9%); same data, optimiser, schedule and epochs as that recipe.
_TM = Recipe(optimizer="adamw", lr=3e-3, batch_size=64, max_epochs=20, weight_decay=0.01,
             scheduler="cosine", gradient_clip_val=1.0,
             model_kwargs={"num_hiddens": 118, "num_layers": 4, "dropout": 0.1},
             data_kwargs={"num_steps": 64})
# WikiText-2 (word level, data "wikitext2"): 4 x 196 -> 7,572,460 parameters vs the 2 x 200 GPT
# of docs/results-language-models.md, 7,634,000 (-0.8%; the tied 33,278-word embedding is most
# of both). pytorch/examples' batch 20 x bptt 35, sequential streams with the state carried.
_WIKITEXT = Recipe(optimizer="adamw", lr=3e-3, batch_size=20, max_epochs=10, weight_decay=0.01,
                   scheduler="cosine", gradient_clip_val=1.0,
                   model_kwargs={"num_hiddens": 196, "num_layers": 4, "dropout": 0.1},
                   data="wikitext2", data_kwargs={"num_steps": 35})


@register("mamba", task="language_modeling", data="time_machine", section="11.9",
          recipes={"d2l": _TM, "wikitext": _WIKITEXT})
def mamba(vocab_size: int = 28, num_hiddens: int = 64, num_layers: int = 2, d_state: int = 16,
          expand: int = 2, d_conv: int = 4, dt_rank: int | str = "auto", dropout: float = 0.0,
          tie_weights: bool = True, scan: str = "chunked") -> Mamba:
    """Mamba selective state-space language model (Gu & Dao 2023)."""
    return Mamba(vocab_size, num_hiddens, num_layers, d_state, expand, d_conv, dt_rank,
                 dropout, tie_weights, scan)
