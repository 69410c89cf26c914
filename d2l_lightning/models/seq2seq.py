"""RNN encoder-decoders for machine translation: d2l §10.7 (GRU) and §11.4 (Bahdanau).

All translation models share one interface (see :mod:`models.decoding`):

- ``forward(src (B, S), tgt_in (B, T), src_valid_len (B,)) -> logits (B, T, V_tgt)``
  (teacher forcing);
- ``encode(src, src_valid_len) -> memory`` (a tuple of batch-first tensors);
- ``decode_step(tokens (B, 1), memory, state) -> (logits (B, 1, V_tgt), state)``, with
  ``state=None`` at the first step; every tensor of ``state`` is batch-first, so beam search
  can reorder it with ``index_select(0, ...)``.

``keep_attention = True`` makes ``decode_step`` keep ``step_attention`` ``(B, layers, heads, S)``
(the cross-attention of the step) for heatmaps.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .attention import AdditiveAttention
from .registry import Recipe, register

#: CPU-sized whole-corpus setting (``full`` recipes): 10 tokens cover 80% of the targets;
#: min_freq 5 shrinks the French output layer from 17k to 9k words (the main CPU cost).
FULL_DATA = {"num_steps": 10, "min_freq": 5, "val_size": 2000, "test_size": 5000}


#: d2l 0.17's setting (``load_data_nmt(64, 10)``, whose printed losses 0.019-0.03 are often
#: compared with ours): ``tokenize_nmt`` stops at ``i > num_examples`` with the default 600, so
#: it trains on the first 601 pairs, all of them; nothing is held out, so ``val_size: 0`` makes
#: validation and test the training pairs (the book also translates training sentences).
#: Its printed loss is d2l 0.17's ``MaskedSoftmaxCELoss`` (a sequence's masked loss averaged
#: over all ``num_steps`` positions) summed over the epoch and divided by the target tokens:
#: our ``train/loss_epoch`` divided by ``num_steps`` (10).
V017_DATA = {"num_steps": 10, "max_examples": 601, "val_size": 0}


def v017_recipe(max_epochs: int, model_kwargs: dict) -> Recipe:
    """d2l 0.17's ``train_seq2seq``: Adam lr 0.005, batch 64, gradient norm clipped at 1."""
    return Recipe(optimizer="adam", lr=0.005, batch_size=64, max_epochs=max_epochs,
                  gradient_clip_val=1.0, data_kwargs=V017_DATA, model_kwargs=model_kwargs)


_V017_RNN = {"embed_size": 32, "num_hiddens": 32, "num_layers": 2, "dropout": 0.1}

#: The book's setting (d2l 1.0 ``MTFraEng``: 640 pairs) and the whole-corpus one, for both RNN
#: models; ``full`` keeps PyTorch's initialisation (see :class:`Seq2SeqGRU`).
RNN_RECIPES = {
    "d2l": Recipe(optimizer="adam", lr=0.005, batch_size=128, max_epochs=30,
                  gradient_clip_val=1.0, data_kwargs={"num_steps": 9, "max_examples": 640}),
    "full": Recipe(optimizer="adam", lr=0.005, batch_size=256, max_epochs=1,
                   gradient_clip_val=1.0, data_kwargs=FULL_DATA,
                   model_kwargs={"embed_size": 128, "num_hiddens": 128, "dropout": 0.1,
                                 "init": "pytorch"}),
}


class Seq2SeqEncoder(nn.Module):
    """Embedding + multi-layer GRU encoder, d2l §10.7.1.

    Unlike the book, padded steps are skipped (packed sequences): the final state is the one at
    each sentence's valid length, so adding padding never changes it.
    """

    def __init__(self, vocab_size: int, embed_size: int, num_hiddens: int, num_layers: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_size)
        self.rnn = nn.GRU(embed_size, num_hiddens, num_layers, dropout=dropout,
                          batch_first=True)

    def forward(self, src: torch.Tensor,
                src_valid_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, S)`` -> outputs ``(B, S, H)`` (zeros past valid lengths), state ``(L, B, H)``."""
        X = self.embedding(src)  # (B, S, E)
        lengths = src_valid_len.clamp(min=1).cpu()
        packed = pack_padded_sequence(X, lengths, batch_first=True, enforce_sorted=False)
        out, state = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])
        return out, state


class _RNNDecoderBase(nn.Module):
    """Shared parts of the two RNN translation models."""

    has_attention = False

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, embed_size: int,
                 num_hiddens: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        self.encoder = Seq2SeqEncoder(src_vocab_size, embed_size, num_hiddens, num_layers,
                                      dropout)
        self.embedding = nn.Embedding(tgt_vocab_size, embed_size)
        self.rnn = nn.GRU(embed_size + num_hiddens, num_hiddens, num_layers, dropout=dropout,
                          batch_first=True)
        self.dense = nn.Linear(num_hiddens, tgt_vocab_size)
        self.keep_attention = False
        self.step_attention: torch.Tensor | None = None

    def init_seq2seq(self, init: str = "xavier") -> None:
        """The book's initialisation (d2l §10.7.2): Xavier-uniform Linear and GRU weights.

        Call it last in a subclass constructor; ``init="pytorch"`` keeps the layers' defaults.
        """
        if init not in ("xavier", "pytorch"):
            raise ValueError(f"unknown init '{init}'; choose from: xavier, pytorch")
        if init == "pytorch":
            return
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
            elif isinstance(module, nn.GRU):
                for name, param in module.named_parameters():
                    if "weight" in name:
                        nn.init.xavier_uniform_(param)

    def encode(self, src: torch.Tensor, src_valid_len: torch.Tensor):
        """Memory: ``(enc_outputs (B, S, H), enc_state (B, L, H), src_valid_len (B,))``."""
        out, state = self.encoder(src, src_valid_len)
        return out, state.transpose(0, 1).contiguous(), src_valid_len

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor,
                src_valid_len: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``(B, T, V_tgt)``."""
        logits, _ = self.decode(tgt_in, self.encode(src, src_valid_len), None)
        return logits

    def decode_step(self, tokens: torch.Tensor, memory, state):
        """One step: ``(B, 1)`` tokens -> ``(B, 1, V)`` logits and the next state."""
        return self.decode(tokens, memory, state)


@register("seq2seq_gru", task="seq2seq", data="fra_eng", section="10.7",
          recipes={**RNN_RECIPES, "d2l-0.17": v017_recipe(300, _V017_RNN)})  # d2l 0.17 §9.7
class Seq2SeqGRU(_RNNDecoderBase):
    """GRU encoder-decoder, d2l §10.7.

    The encoder's final top-layer state (the context) is concatenated to every decoder input,
    and the encoder's final state initialises the decoder.

    Args:
        src_vocab_size: source vocabulary size.
        tgt_vocab_size: target vocabulary size.
        embed_size: embedding size (book: 256).
        num_hiddens: GRU width (book: 256).
        num_layers: GRU layers (book: 2).
        dropout: dropout between GRU layers (book: 0.2).
        init: ``"xavier"`` (the book's ``init_seq2seq``) or ``"pytorch"`` (the layers' own
            defaults; the ``full`` recipe's: far better after 300 whole-corpus steps, see
            docs/results-translation.md).
    """

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, embed_size: int = 256,
                 num_hiddens: int = 256, num_layers: int = 2, dropout: float = 0.2,
                 init: str = "xavier") -> None:
        super().__init__(src_vocab_size, tgt_vocab_size, embed_size, num_hiddens, num_layers,
                         dropout)
        self.init_seq2seq(init)

    def decode(self, tgt: torch.Tensor, memory, state):
        """``(B, T)`` tokens -> ``(B, T, V)`` logits; ``state`` is ``(B, L, H)`` or ``None``."""
        _, enc_state, _ = memory
        if state is None:
            state = enc_state
        X = self.embedding(tgt)  # (B, T, E)
        context = enc_state[:, -1:].expand(-1, X.shape[1], -1)  # (B, T, H)
        out, h = self.rnn(torch.cat([X, context], -1), state.transpose(0, 1).contiguous())
        return self.dense(out), h.transpose(0, 1)


@register("seq2seq_bahdanau", task="seq2seq", data="fra_eng", section="11.4",
          recipes={**RNN_RECIPES, "d2l-0.17": v017_recipe(250, _V017_RNN)})  # d2l 0.17 §10.4
class Seq2SeqBahdanau(_RNNDecoderBase):
    """GRU encoder-decoder with additive attention, d2l §11.4.

    At each step the query is the decoder's top-layer state; the context, attention over the
    encoder outputs (padding masked by ``src_valid_len``), is concatenated to the step's
    embedded input.

    Args: as :class:`Seq2SeqGRU`.
    """

    has_attention = True

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, embed_size: int = 256,
                 num_hiddens: int = 256, num_layers: int = 2, dropout: float = 0.2,
                 init: str = "xavier") -> None:
        super().__init__(src_vocab_size, tgt_vocab_size, embed_size, num_hiddens, num_layers,
                         dropout)
        self.attention = AdditiveAttention(num_hiddens, dropout)
        self.init_seq2seq(init)

    def decode(self, tgt: torch.Tensor, memory, state):
        """Step by step over ``(B, T)``; ``state`` is the hidden state ``(B, L, H)``."""
        enc_outputs, enc_state, valid_len = memory
        h = (enc_state if state is None else state).transpose(0, 1).contiguous()  # (L, B, H)
        X = self.embedding(tgt)  # (B, T, E)
        outputs, weights = [], []
        for t in range(X.shape[1]):
            query = h[-1][:, None]  # (B, 1, H)
            context = self.attention(query, enc_outputs, enc_outputs, valid_len)  # (B, 1, H)
            out, h = self.rnn(torch.cat([X[:, t:t + 1], context], -1), h)
            outputs.append(out)
            if self.keep_attention:
                weights.append(self.attention.attention_weights)  # (B, 1, S)
        if self.keep_attention:
            self.step_attention = weights[-1][:, None]  # (B, 1 layer, 1 head, S)
        return self.dense(torch.cat(outputs, 1)), h.transpose(0, 1)
