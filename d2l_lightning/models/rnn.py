"""Recurrent LMs: RNN (d2l §9.5-9.6), LSTM (§10.1), GRU (§10.2), deep (§10.3), bi (§10.4).

The ``*_scratch`` models spell out the book's gate equations with plain parameters and loop over
time; the concise ones wrap ``nn.RNN/GRU/LSTM`` (``batch_first=True``). Both keep their state in
PyTorch's layout: ``(num_layers, B, H)``, or ``(h, c)`` of that shape for LSTMs, so a scratch
stack can load the weights of the matching torch module (:meth:`StackedRNNScratch.load_torch`)
and reproduce its outputs exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .generate import BIDIRECTIONAL_LM_REFUSAL
from .registry import Recipe, register

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def _param(*shape: int, sigma: float) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape) * sigma)


def _zeros(n: int) -> nn.Parameter:
    return nn.Parameter(torch.zeros(n))


class RNNScratch(nn.Module):
    """One tanh RNN layer, d2l §9.5: ``H_t = tanh(X_t W_xh + H_{t-1} W_hh + b_h)``.

    Args:
        num_inputs: input features.
        num_hiddens: hidden units ``H``.
        sigma: std of the Gaussian weight init (the book: 0.01).
    """

    def __init__(self, num_inputs: int, num_hiddens: int, sigma: float = 0.01) -> None:
        super().__init__()
        self.num_hiddens = num_hiddens
        self.W_xh = _param(num_inputs, num_hiddens, sigma=sigma)
        self.W_hh = _param(num_hiddens, num_hiddens, sigma=sigma)
        self.b_h = _zeros(num_hiddens)

    def forward(self, X: torch.Tensor, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``X`` ``(B, T, in)``, ``H`` ``(B, H)`` -> outputs ``(B, T, H)``, last ``H``."""
        XW = X @ self.W_xh + self.b_h  # all time steps' input terms at once: (B, T, H)
        outputs = []
        for t in range(X.shape[1]):
            H = torch.tanh(XW[:, t] + H @ self.W_hh)
            outputs.append(H)
        return torch.stack(outputs, dim=1), H

    @torch.no_grad()
    def load_torch(self, m: nn.RNN, layer: int) -> None:
        """Copy layer ``layer`` of ``nn.RNN`` (its two biases add up to ``b_h``)."""
        w_ih, w_hh, b_ih, b_hh = _torch_layer(m, layer)
        self.W_xh.copy_(w_ih.T)
        self.W_hh.copy_(w_hh.T)
        self.b_h.copy_(b_ih + b_hh)


class LSTMScratch(nn.Module):
    """One LSTM layer, d2l §10.1.

    ``I = σ(X W_xi + H W_hi + b_i)``, ``F = σ(X W_xf + H W_hf + b_f)``,
    ``O = σ(X W_xo + H W_ho + b_o)``, ``C~ = tanh(X W_xc + H W_hc + b_c)``,
    ``C = F ⊙ C + I ⊙ C~``, ``H = O ⊙ tanh(C)``. The state is ``(H, C)``.
    """

    gates = ("i", "f", "c", "o")  # nn.LSTM's row order: input, forget, cell (g), output

    def __init__(self, num_inputs: int, num_hiddens: int, sigma: float = 0.01) -> None:
        super().__init__()
        self.num_hiddens = num_hiddens
        for g in self.gates:
            setattr(self, f"W_x{g}", _param(num_inputs, num_hiddens, sigma=sigma))
            setattr(self, f"W_h{g}", _param(num_hiddens, num_hiddens, sigma=sigma))
            setattr(self, f"b_{g}", _zeros(num_hiddens))

    def _cat(self, prefix: str) -> torch.Tensor:
        return torch.cat([getattr(self, f"{prefix}{g}") for g in self.gates], dim=-1)

    def forward(self, X: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``X`` ``(B, T, in)``, ``(H, C)`` ``(B, H)`` each -> ``(B, T, H)``, ``(H, C)``."""
        H, C = state
        XW = X @ self._cat("W_x") + self._cat("b_")  # (B, T, 4H), gates i, f, c, o
        W_h = self._cat("W_h")
        outputs = []
        for t in range(X.shape[1]):
            i, f, c, o = (XW[:, t] + H @ W_h).chunk(4, dim=-1)
            C = torch.sigmoid(f) * C + torch.sigmoid(i) * torch.tanh(c)
            H = torch.sigmoid(o) * torch.tanh(C)
            outputs.append(H)
        return torch.stack(outputs, dim=1), (H, C)

    @torch.no_grad()
    def load_torch(self, m: nn.LSTM, layer: int) -> None:
        """Copy layer ``layer`` of ``nn.LSTM``."""
        w_ih, w_hh, b_ih, b_hh = _torch_layer(m, layer)
        for k, g in enumerate(self.gates):
            rows = slice(k * self.num_hiddens, (k + 1) * self.num_hiddens)
            getattr(self, f"W_x{g}").copy_(w_ih[rows].T)
            getattr(self, f"W_h{g}").copy_(w_hh[rows].T)
            getattr(self, f"b_{g}").copy_(b_ih[rows] + b_hh[rows])


class GRUScratch(nn.Module):
    """One GRU layer, d2l §10.2.

    ``R = σ(X W_xr + H W_hr + b_r)``, ``Z = σ(X W_xz + H W_hz + b_z)``,
    ``H = Z ⊙ H + (1 - Z) ⊙ H~`` with the candidate ``H~`` either

    * the book's (``reset_after=False``): ``tanh(X W_xh + (R ⊙ H) W_hh + b_h)``, or
    * ``nn.GRU``'s / cuDNN's (``reset_after=True``, Cho et al. 2014 v3):
      ``tanh(X W_xh + b_h + R ⊙ (H W_hh + b_hh))``, the reset applied after the product.

    The two are different functions; only the second can load ``nn.GRU`` weights exactly.
    """

    gates = ("r", "z", "h")  # nn.GRU's row order: reset, update, new

    def __init__(self, num_inputs: int, num_hiddens: int, sigma: float = 0.01,
                 reset_after: bool = True) -> None:
        super().__init__()
        self.num_hiddens = num_hiddens
        self.reset_after = reset_after
        for g in self.gates:
            setattr(self, f"W_x{g}", _param(num_inputs, num_hiddens, sigma=sigma))
            setattr(self, f"W_h{g}", _param(num_hiddens, num_hiddens, sigma=sigma))
            setattr(self, f"b_{g}", _zeros(num_hiddens))
        if reset_after:
            self.b_hh = _zeros(num_hiddens)  # bias inside the reset product

    def forward(self, X: torch.Tensor, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``X`` ``(B, T, in)``, ``H`` ``(B, H)`` -> outputs ``(B, T, H)``, last ``H``."""
        W_x = torch.cat([self.W_xr, self.W_xz, self.W_xh], dim=-1)
        XW = X @ W_x + torch.cat([self.b_r, self.b_z, self.b_h])  # (B, T, 3H)
        W_rz = torch.cat([self.W_hr, self.W_hz], dim=-1)
        outputs = []
        for t in range(X.shape[1]):
            xr, xz, xh = XW[:, t].chunk(3, dim=-1)
            hr, hz = (H @ W_rz).chunk(2, dim=-1)
            R, Z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            if self.reset_after:
                H_tilde = torch.tanh(xh + R * (H @ self.W_hh + self.b_hh))
            else:
                H_tilde = torch.tanh(xh + (R * H) @ self.W_hh)
            H = Z * H + (1 - Z) * H_tilde
            outputs.append(H)
        return torch.stack(outputs, dim=1), H

    @torch.no_grad()
    def load_torch(self, m: nn.GRU, layer: int) -> None:
        """Copy layer ``layer`` of ``nn.GRU`` (needs ``reset_after=True``)."""
        if not self.reset_after:
            raise ValueError("nn.GRU applies the reset gate after W_hh (reset_after=True); the "
                             "book's form (reset_after=False) cannot reproduce it")
        w_ih, w_hh, b_ih, b_hh = _torch_layer(m, layer)
        H = self.num_hiddens
        for k, g in enumerate(self.gates):
            rows = slice(k * H, (k + 1) * H)
            getattr(self, f"W_x{g}").copy_(w_ih[rows].T)
            getattr(self, f"W_h{g}").copy_(w_hh[rows].T)
            getattr(self, f"b_{g}").copy_(b_ih[rows] + (b_hh[rows] if g != "h" else 0))
        self.b_hh.copy_(b_hh[2 * H:])


def _torch_layer(m: nn.RNNBase, layer: int) -> tuple[torch.Tensor, ...]:
    if m.bidirectional or not m.bias or m.proj_size:
        raise ValueError("only unidirectional torch RNNs with biases and no projection load")
    return tuple(getattr(m, f"{n}_l{layer}") for n in
                 ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))


_SCRATCH = {"rnn": RNNScratch, "gru": GRUScratch, "lstm": LSTMScratch}
_TORCH = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


class StackedRNNScratch(nn.Module):
    """Deep RNN, d2l §10.3: layer ``l`` reads layer ``l-1``'s outputs; dropout between layers.

    Same call and state layout as ``nn.RNN/GRU/LSTM(batch_first=True)``.

    Args:
        cell: ``"rnn"``, ``"gru"`` or ``"lstm"``.
        num_inputs: input features.
        num_hiddens: hidden units per layer.
        num_layers: stacked layers.
        dropout: dropout on each layer's outputs except the last (as ``nn.RNN``).
        **cell_kwargs: extra layer options (``sigma``, GRU ``reset_after``).
    """

    def __init__(self, cell: str, num_inputs: int, num_hiddens: int, num_layers: int = 1,
                 dropout: float = 0.0, **cell_kwargs) -> None:
        super().__init__()
        self.cell = cell
        self.num_hiddens = num_hiddens
        self.layers = nn.ModuleList(
            _SCRATCH[cell](num_inputs if i == 0 else num_hiddens, num_hiddens, **cell_kwargs)
            for i in range(num_layers))
        self.dropout = nn.Dropout(dropout)

    def forward(self, X: torch.Tensor, state: State | None = None
                ) -> tuple[torch.Tensor, State]:
        """``(B, T, in)`` -> outputs ``(B, T, H)`` of the top layer and the new state."""
        L, B = len(self.layers), X.shape[0]
        if state is None:
            zeros = X.new_zeros(L, B, self.num_hiddens)
            state = (zeros, zeros) if self.cell == "lstm" else zeros
        new_h, new_c = [], []
        for i, layer in enumerate(self.layers):
            if i > 0:
                X = self.dropout(X)
            if self.cell == "lstm":
                X, (h, c) = layer(X, (state[0][i], state[1][i]))
                new_c.append(c)
            else:
                X, h = layer(X, state[i])
            new_h.append(h)
        h = torch.stack(new_h)  # (L, B, H)
        return X, ((h, torch.stack(new_c)) if self.cell == "lstm" else h)

    def load_torch(self, m: nn.RNNBase) -> StackedRNNScratch:
        """Copy every layer's weights from the matching ``nn.RNN/GRU/LSTM``; returns self."""
        if type(m) is not _TORCH[self.cell] or m.num_layers != len(self.layers):
            raise ValueError(f"need an nn.{_TORCH[self.cell].__name__} with "
                             f"{len(self.layers)} layers, got {m}")
        if self.cell == "rnn" and m.nonlinearity != "tanh":
            raise ValueError("RNNScratch uses tanh")
        for i, layer in enumerate(self.layers):
            layer.load_torch(m, i)
        return self


class RNNLM(nn.Module):
    """Recurrent language model: embedding, RNN stack, linear decoder (d2l §9.5-§10.3).

    For character level the book feeds one-hot vectors: ``one_hot(x) @ W_xh``. An
    ``nn.Embedding`` is exactly that lookup (row ``x`` of a matrix); ``embed_size=0`` feeds the
    book's one-hot vectors themselves. Dropout (word level, as pytorch/examples
    word_language_model) acts on the embeddings, between layers and before the decoder.

    Args:
        vocab_size: tokens.
        num_hiddens: hidden units per layer.
        num_layers: stacked layers (§10.3).
        dropout: dropout probability.
        tie_weights: share the embedding and decoder matrices (Press & Wolf 2017); needs
            ``embed_size == num_hiddens``.
        embed_size: embedding width (default ``num_hiddens``; ``0``: one-hot inputs).
        cell: ``"rnn"``, ``"gru"`` or ``"lstm"``.
        scratch: explicit-equation layers instead of ``nn.RNN/GRU/LSTM``.
    """

    recurrent, bidirectional, max_len = True, False, None  # the NextTokenModel interface

    def __init__(self, vocab_size: int, num_hiddens: int = 32, num_layers: int = 1,
                 dropout: float = 0.0, tie_weights: bool = False, embed_size: int | None = None,
                 cell: str = "lstm", scratch: bool = False) -> None:
        super().__init__()
        if cell not in _SCRATCH:
            raise ValueError(f"unknown cell '{cell}'; choose from: {', '.join(_SCRATCH)}")
        E = num_hiddens if embed_size is None else embed_size
        if tie_weights and num_hiddens != E:
            raise ValueError(f"tie_weights needs embed_size == num_hiddens (the decoder maps "
                             f"{num_hiddens} hidden units back through the embedding), "
                             f"got embed_size={E} (0: one-hot inputs, no matrix to tie)")
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, E) if E else None
        num_inputs = E or vocab_size
        if scratch:
            self.rnn = StackedRNNScratch(cell, num_inputs, num_hiddens, num_layers, dropout)
        else:
            self.rnn = _TORCH[cell](num_inputs, num_hiddens, num_layers, batch_first=True,
                                    dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.decoder = nn.Linear(num_hiddens, vocab_size)
        if self.embedding is not None:
            nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if tie_weights:
            self.decoder.weight = self.embedding.weight

    def forward(self, X: torch.Tensor, state: State | None = None
                ) -> tuple[torch.Tensor, State]:
        """Token ids ``(B, T)`` -> logits ``(B, T, vocab_size)`` and the new state."""
        if self.embedding is None:
            # (B, T, V), the book's inputs, in the weights' dtype (float64, bf16-true...)
            emb = F.one_hot(X, self.vocab_size).to(self.decoder.weight.dtype)
        else:
            emb = self.dropout(self.embedding(X))  # (B, T, E)
        out, state = self.rnn(emb, state)  # (B, T, H)
        return self.decoder(self.dropout(out)), state


class BiLSTMEncoder(nn.Module):
    """Bidirectional LSTM encoder, d2l §10.4: outputs ``(B, T, 2H)`` (forward ‖ backward).

    It is an encoder only. ``BIDIRECTIONAL_LM_REFUSAL``: the backward half at position ``t``
    summarises ``x_{t+1} ... x_T``, so as a next-token predictor it would copy the target in
    training and generate nonsense (the book's example) when the future is not there.
    """

    recurrent, bidirectional, max_len = False, True, None  # the NextTokenModel interface

    def __init__(self, vocab_size: int, num_hiddens: int = 32, num_layers: int = 1,
                 dropout: float = 0.0, embed_size: int | None = None) -> None:
        super().__init__()
        E = embed_size or num_hiddens
        self.embedding = nn.Embedding(vocab_size, E)
        self.rnn = nn.LSTM(E, num_hiddens, num_layers, batch_first=True, bidirectional=True,
                           dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)

    def forward(self, X: torch.Tensor, state: State | None = None
                ) -> tuple[torch.Tensor, State]:
        """``(B, T)`` ids -> ``(B, T, 2H)`` outputs and ``(h, c)`` ``(2 L, B, H)``."""
        return self.rnn(self.dropout(self.embedding(X)), state)


# d2l 1.0, char-level Time Machine (data "time_machine"): batch 1024, num_steps 32, SGD, clip 1.
_CHAR = {"embed_size": 0, "num_hiddens": 32}
_STEPS = {"num_steps": 32}


def _d2l(lr: float, epochs: int) -> Recipe:
    return Recipe(optimizer="sgd", lr=lr, batch_size=1024, max_epochs=epochs,
                  gradient_clip_val=1.0, model_kwargs=_CHAR, data_kwargs=_STEPS)


# §10.3 deep RNN: two layers, lr 2, 100 epochs (the book trains the GRU and the scratch RNN).
_DEEP = Recipe(optimizer="sgd", lr=2.0, batch_size=1024, max_epochs=100, gradient_clip_val=1.0,
               model_kwargs={**_CHAR, "num_layers": 2}, data_kwargs=_STEPS)
# d2l 0.17 (§8.5-§9.3), the edition whose printed training perplexities are 1.0-1.3: the
# first 10,000 characters only, sequential partitioning, batch 32, num_steps 35, 500 epochs.
_V017_DATA = {"num_steps": 35, "sampler": "sequential", "max_tokens": 10_000}


def _v017(num_hiddens: int, lr: float = 1.0, num_layers: int = 1) -> Recipe:
    return Recipe(optimizer="sgd", lr=lr, batch_size=32, max_epochs=500, gradient_clip_val=1.0,
                  model_kwargs={"embed_size": 0, "num_hiddens": num_hiddens,
                                "num_layers": num_layers}, data="time_machine",
                  data_kwargs=_V017_DATA)


_V017_DEEP = _v017(256, lr=2.0, num_layers=2)  # §9.3
# pytorch/examples word_language_model, for word-level WikiText-2 (data "wikitext2"): SGD lr 20,
# divided by 4 after every epoch whose validation loss is not below the best so far (the
# plateau schedule with factor 0.25, patience 0), bptt 35.
_WORD = {"num_layers": 2, "tie_weights": True}
_ANNEAL = {"scheduler": "plateau", "plateau_factor": 0.25, "plateau_patience": 0}
_WIKITEXT = Recipe(optimizer="sgd", lr=20.0, batch_size=20, max_epochs=40, gradient_clip_val=0.25,
                   data="wikitext2", data_kwargs={"num_steps": 35}, **_ANNEAL,
                   model_kwargs={**_WORD, "num_hiddens": 200, "dropout": 0.2})
_MEDIUM = Recipe(optimizer="sgd", lr=20.0, batch_size=20, max_epochs=40, gradient_clip_val=0.25,
                 data="wikitext2", data_kwargs={"num_steps": 35}, **_ANNEAL,
                 model_kwargs={**_WORD, "num_hiddens": 650, "dropout": 0.5})

_LM = {"task": "language_modeling", "data": "time_machine"}


def _builder(cell: str, scratch: bool):
    def build(vocab_size: int = 28, num_hiddens: int = 32, num_layers: int = 1,
              dropout: float = 0.0, tie_weights: bool = False,
              embed_size: int | None = None) -> RNNLM:
        return RNNLM(vocab_size, num_hiddens, num_layers, dropout, tie_weights, embed_size,
                     cell=cell, scratch=scratch)

    build.__doc__ = f"{'Scratch' if scratch else 'Concise'} {cell.upper()} language model."
    return build


def _recipes(lr: float, epochs: int, v017_hiddens: int = 256) -> dict[str, Recipe]:
    return {"d2l": _d2l(lr, epochs), "deep": _DEEP, "d2l-0.17": _v017(v017_hiddens),
            "d2l-0.17-deep": _V017_DEEP}


register("rnn_scratch", section="9.5", recipes=_recipes(1.0, 100, v017_hiddens=512),
         **_LM)(_builder("rnn", True))
register("rnn", section="9.6", recipes=_recipes(1.0, 100), **_LM)(_builder("rnn", False))
register("lstm_scratch", section="10.1", recipes=_recipes(4.0, 50),
         **_LM)(_builder("lstm", True))
register("lstm", section="10.1",
         recipes={**_recipes(4.0, 50), "wikitext": _WIKITEXT, "medium": _MEDIUM},
         **_LM)(_builder("lstm", False))
register("gru_scratch", section="10.2", recipes=_recipes(4.0, 50), **_LM)(_builder("gru", True))
register("gru", section="10.2", recipes=_recipes(4.0, 50), **_LM)(_builder("gru", False))


@register("bi_lstm", task="sequence_encoding", data="time_machine", section="10.4",
          cannot_train=BIDIRECTIONAL_LM_REFUSAL,
          recipes={"d2l": Recipe(optimizer="sgd", lr=4.0, batch_size=1024, max_epochs=50,
                                 gradient_clip_val=1.0, model_kwargs={"num_hiddens": 32},
                                 data_kwargs=_STEPS)})
def bi_lstm(vocab_size: int = 28, num_hiddens: int = 32, num_layers: int = 1,
            dropout: float = 0.0, embed_size: int | None = None) -> BiLSTMEncoder:
    """Bidirectional LSTM encoder (not a language model; see BIDIRECTIONAL_LM_REFUSAL)."""
    return BiLSTMEncoder(vocab_size, num_hiddens, num_layers, dropout, embed_size)
