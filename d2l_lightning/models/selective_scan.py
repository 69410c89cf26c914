"""The selective state-space scan of Mamba (Gu & Dao 2023, Alg. 2), in plain PyTorch.

One contract, three scans (plus the single step). For every batch row, channel ``e`` and time
step ``t``::

    Ā_t = exp(Δ_t A)                  # zero-order hold of A = -exp(A_log) (diagonal)
    B̄x_t = Δ_t B_t x_t                # Euler approximation of the ZOH input term
    h_t = Ā_t ⊙ h_{t-1} + B̄x_t        # (d_state,) per channel; h_{-1} = h0 (zeros)
    y_t = C_t · h_t + D x_t

- :func:`scan_sequential` is the reference: the recurrence, one step after another.
- :func:`scan_associative` computes every ``h_t`` at once with a log-depth associative scan over
  the pairs ``(Ā_t, B̄x_t)``, ``(a1, b1) ∘ (a2, b2) = (a1 a2, a2 b1 + b2)``: the work-efficient
  odd/even recursion (Ladner & Fischer 1980; Blelloch 1990), ``2 log2 T`` levels of whole-tensor
  operations. Products of ``Ā`` stay in ``[0, 1]`` and nothing is divided, so large and tiny
  ``Δ`` are as safe as in the recurrence.
- :func:`scan_chunked` (the default) runs the recurrence in all chunks of ``L`` steps side by
  side and joins the chunks with the same associative scan: ``2 L`` steps, ``L`` chosen so that
  one step's working tensor stays cache-sized (:func:`chunk_size`).
- :func:`scan_step` is one step of the recurrence, for generation (O(1) per token).

Why chunked by default: on a CPU these scans are bound by memory traffic, not arithmetic. The
associative scan writes several ``(B, T, E, N)`` tensors per level and ran at 0.4x the plain
loop's speed at the training recipe's batch (64 x 64); the chunked scan keeps ``(B, K, E, N)``
working tensors (``K = T / L`` chunks) and removes most of the loop's per-step overhead
(``bench/mamba_scan.py``, docs/results-language-models.md).

Inside, everything runs in float32 (float64 stays float64) with autocast switched off, so a
``bf16-mixed`` run keeps the long products of ``Ā`` accurate; the outputs come back in the
dtype of ``x``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Scan = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float32, or float64 when the inputs already are (never lower than float32)."""
    return torch.promote_types(x.dtype, torch.float32)


def _no_autocast(x: torch.Tensor) -> torch.autocast:
    return torch.autocast(device_type=x.device.type, enabled=False)


def discretize(delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, x: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-order hold: ``Ā = exp(Δ A)`` and ``B̄x = Δ B x``, both ``(..., E, N)``.

    ``Δ`` and ``x`` are ``(..., E)``, ``A`` is ``(E, N)``, ``B`` is ``(..., N)``.
    """
    dA = torch.exp(delta[..., None] * A)  # (..., E, N)
    dBx = (delta * x)[..., None] * B[..., None, :]  # (..., E, N)
    return dA, dBx


def scan_step(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
              C: torch.Tensor, D: torch.Tensor, h: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the recurrence, ``(y_t, h_t)`` from ``h_{t-1}``.

    ``x, Δ`` are ``(Bt, E)``, ``B, C`` ``(Bt, N)``, ``h`` ``(Bt, E, N)``; ``y`` is ``(Bt, E)``.
    """
    dtype = _compute_dtype(x)
    with _no_autocast(x):
        x32, delta = x.to(dtype), delta.to(dtype)
        dA, dBx = discretize(delta, A.to(dtype), B.to(dtype), x32)
        h = dA * h.to(dtype) + dBx  # (Bt, E, N)
        y = (h @ C.to(dtype)[..., None])[..., 0] + D.to(dtype) * x32  # (Bt, E)
    return y.to(x.dtype), h


def scan_sequential(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                    C: torch.Tensor, D: torch.Tensor, h0: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference selective scan: :func:`scan_step` for ``t = 0 .. T-1``.

    Args:
        x: inputs ``(Bt, T, E)``.
        delta: step sizes ``Δ > 0`` ``(Bt, T, E)`` (after the softplus).
        A: ``(E, N)``, negative.
        B: input matrix, input-dependent ``(Bt, T, N)``.
        C: output matrix, input-dependent ``(Bt, T, N)``.
        D: skip ``(E,)``.
        h0: initial state ``(Bt, E, N)`` (default zeros).

    Returns:
        ``y`` ``(Bt, T, E)`` in ``x``'s dtype and the last state ``h_T`` ``(Bt, E, N)`` (float32
        or float64).
    """
    h = _initial_state(x, A, h0)
    ys = []
    # unbind, not x[:, t]: one backward node per input instead of T full-size gradient copies
    for x_t, delta_t, B_t, C_t in zip(x.unbind(1), delta.unbind(1), B.unbind(1), C.unbind(1)):
        y, h = scan_step(x_t, delta_t, A, B_t, C_t, D, h)
        ys.append(y)
    return torch.stack(ys, dim=1), h


def scan_chunked(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                 C: torch.Tensor, D: torch.Tensor, h0: torch.Tensor | None = None,
                 chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The selective scan of :func:`scan_sequential` (same arguments and results), by chunks.

    The sequence is cut into ``K`` chunks of ``L = chunk`` steps (default: :func:`chunk_size`).
    (1) The first ``K - 1`` chunks run the recurrence side by side from a zero state: ``L`` steps
    on ``(Bt, K-1, E, N)`` tensors give each chunk's own end state. (2) A log-depth scan
    (:func:`linear_recurrence`) over the chunk summaries ``(Π Ā, own end state)`` gives the true
    state entering every chunk. (3) All ``K`` chunks run their ``L`` steps again from those
    states, reading out ``y``. ``2 L`` whole-batch steps instead of ``T`` small ones; ``K = 1``
    is the plain recurrence.
    """
    dtype = _compute_dtype(x)
    Bt, T, E = x.shape
    N = A.shape[1]
    L = min(T, chunk or chunk_size(Bt, T, E, N))
    K = -(-T // L)
    with _no_autocast(x):
        x32, delta, A, B, C = (t.to(dtype) for t in (x, delta, A, B, C))
        # Δ = 0 on the padding: Ā = 1, B̄x = 0, the state passes through unchanged
        dl, dx = _pad_time(delta, K * L).view(Bt, K, L, E), _pad_time(delta * x32, K * L)
        dx, Bc, Cc = dx.view(Bt, K, L, E), _pad_time(B, K * L).view(Bt, K, L, N), \
            _pad_time(C, K * L).view(Bt, K, L, N)
        h = _initial_state(x, A, h0)[:, None]  # (Bt, 1, E, N): the state entering chunk 0
        steps = zip(dl.unbind(2), dx.unbind(2), Bc.unbind(2))  # (Bt, K, E) / (Bt, K, N)
        terms = [(torch.exp(d[..., None] * A), u[..., None] * b[..., None, :])
                 for d, u, b in steps]  # (Ā, B̄x) of step i of every chunk: (Bt, K, E, N)
        if K > 1:
            own = x32.new_zeros(Bt, K - 1, E, N)
            for dA, dBx in terms:  # (1)
                own = torch.addcmul(dBx[:, :-1], dA[:, :-1], own)
            decay = torch.exp(dl[:, :-1].sum(2)[..., None] * A)  # Π Ā of each chunk
            ends = linear_recurrence(decay, own, None if h0 is None else h0.to(dtype))  # (2)
            h = torch.cat([h, ends], dim=1)  # (Bt, K, E, N)
        ys = []
        for (dA, dBx), c in zip(terms, Cc.unbind(2)):  # (3)
            h = torch.addcmul(dBx, dA, h)
            ys.append((h @ c[..., None])[..., 0])  # (Bt, K, E)
        y = torch.stack(ys, dim=2).view(Bt, K * L, E)[:, :T] + D.to(dtype) * x32  # (Bt, T, E)
    return y.to(x.dtype), h[:, -1]


def chunk_size(batch: int, T: int, E: int, N: int, budget: int = 2 ** 18) -> int:
    """Steps per chunk ``L`` for :func:`scan_chunked`: about ``budget`` numbers per step.

    One step works on ``(batch, K, E, N)`` tensors; ``2 ** 18`` float32 numbers (1 MiB) stay in
    the cache of the CPU where this was measured, and larger ones ran slower per number.
    """
    K = max(1, min(T, budget // (batch * E * N)))
    return -(-T // K)


def scan_associative(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                     C: torch.Tensor, D: torch.Tensor, h0: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The selective scan of :func:`scan_sequential`, as one log-depth associative scan.

    Same arguments and results; :func:`linear_recurrence` runs over all ``T`` steps at once.
    """
    dtype = _compute_dtype(x)
    with _no_autocast(x):
        x32 = x.to(dtype)
        dA, dBx = discretize(delta.to(dtype), A.to(dtype), B.to(dtype), x32)  # (Bt, T, E, N)
        h = linear_recurrence(dA, dBx, None if h0 is None else h0.to(dtype))  # (Bt, T, E, N)
        y = (h @ C.to(dtype)[..., None])[..., 0] + D.to(dtype) * x32  # (Bt, T, E)
    return y.to(x.dtype), h[:, -1]


def linear_recurrence(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """All states of ``h_t = a_t ⊙ h_{t-1} + b_t`` along dim 1, ``h_{-1} = h0``.

    ``a, b`` are ``(Bt, T, ...)``; ``h0`` is ``(Bt, ...)`` or ``None`` (zeros). Returns ``h``
    ``(Bt, T, ...)``. Log-depth odd/even scan: see the module docstring.
    """
    if h0 is not None:  # fold the initial state into the first input: b_0 + a_0 h0
        b = torch.cat([b[:, :1] + a[:, :1] * h0[:, None], b[:, 1:]], dim=1)
    return _odd_even_scan(a, b)


def _odd_even_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    T = a.shape[1]
    if T == 1:
        return b
    if T % 2:  # pad with the identity pair (1, 0) so the steps pair up
        a = torch.cat([a, torch.ones_like(a[:, :1])], dim=1)
        b = torch.cat([b, torch.zeros_like(b[:, :1])], dim=1)
    a_even, a_odd = a[:, 0::2], a[:, 1::2]  # (Bt, T/2, ...) each
    b_even, b_odd = b[:, 0::2], b[:, 1::2]
    # pair (2k, 2k+1) composed into one step; its prefix is the state at odd time 2k+1
    h_odd = _odd_even_scan(a_even * a_odd, a_odd * b_even + b_odd)  # (Bt, T/2, ...)
    # the state at even time 2k continues the odd state 2k-1 by one step
    h_even = torch.cat([b_even[:, :1], a_even[:, 1:] * h_odd[:, :-1] + b_even[:, 1:]], dim=1)
    h = torch.stack([h_even, h_odd], dim=2).flatten(1, 2)  # interleave: (Bt, T(+1), ...)
    return h[:, :T]


def _pad_time(t: torch.Tensor, length: int) -> torch.Tensor:
    """Zeros appended along dim 1 up to ``length``."""
    pad = length - t.shape[1]
    return torch.cat([t, t.new_zeros(t.shape[0], pad, *t.shape[2:])], dim=1) if pad else t


def _initial_state(x: torch.Tensor, A: torch.Tensor, h0: torch.Tensor | None
                   ) -> torch.Tensor:
    dtype = _compute_dtype(x)
    if h0 is None:
        return x.new_zeros(x.shape[0], *A.shape, dtype=dtype)  # (Bt, E, N)
    return h0.to(dtype)


SCANS: dict[str, Scan] = {"chunked": scan_chunked, "associative": scan_associative,
                         "sequential": scan_sequential}
