"""Shared text pipeline: tokenizers and a JSON-serializable ``Vocab`` (d2l §9.2).

Lightning-free: ``predict.py`` rebuilds the vocabulary of an export from its ``config.json``
with :meth:`Vocab.from_tokens` and encodes prompts exactly as training did.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, overload

import torch

from .download import DataError

UNK = "<unk>"


def preprocess_time_machine(text: str) -> str:
    """d2l §9.2: every run of non-letters becomes one space, then lower-case."""
    return re.sub("[^A-Za-z]+", " ", text).lower()


def tokenize(lines: str | Iterable[str], level: str = "word") -> list[str] | list[list[str]]:
    """Split text into tokens (d2l §9.2).

    Args:
        lines: one string, or an iterable of lines.
        level: ``"char"`` (every character is a token) or ``"word"`` (split on whitespace).

    Returns:
        A list of tokens for one string, else one list of tokens per line.
    """
    if level not in ("char", "word"):
        raise ValueError(f"unknown token level '{level}'; choose from: char, word")
    split = list if level == "char" else str.split
    if isinstance(lines, str):
        return split(lines)
    return [split(line) for line in lines]


def _flatten(tokens: Iterable[Any]) -> Iterable[str]:
    for t in tokens:
        if isinstance(t, str):
            yield t
        else:
            yield from t


class Vocab:
    """Token <-> index map, most frequent first (d2l §9.2).

    Index 0 is ``<unk>``, then the reserved tokens in the given order, then every token seen at
    least ``min_freq`` times, by descending frequency (ties alphabetically, so the order is
    reproducible). Unknown tokens map to ``<unk>``.

    Args:
        tokens: a flat list of tokens or a list of token lists.
        min_freq: drop tokens seen fewer times (they become ``<unk>``).
        reserved_tokens: special tokens such as ``<pad>``, ``<bos>``, ``<eos>``, ``<mask>``.
    """

    def __init__(self, tokens: Iterable[Any] = (), min_freq: int = 0,
                 reserved_tokens: Sequence[str] = ()) -> None:
        counter = Counter(_flatten(tokens))
        self.token_freqs = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
        specials = [UNK, *(t for t in reserved_tokens if t != UNK)]
        seen = set(specials)
        frequent = [t for t, f in self.token_freqs if f >= min_freq and t not in seen]
        self._set_tokens(specials + frequent)

    def _set_tokens(self, idx_to_token: list[str]) -> None:
        if len(set(idx_to_token)) != len(idx_to_token):
            raise ValueError("a vocabulary cannot hold the same token twice")
        if not idx_to_token or idx_to_token[0] != UNK:
            raise ValueError(f"index 0 of a vocabulary must be {UNK}")
        self.idx_to_token = list(idx_to_token)
        self.token_to_idx = {t: i for i, t in enumerate(self.idx_to_token)}

    @classmethod
    def from_tokens(cls, idx_to_token: Sequence[str]) -> Vocab:
        """Rebuild a vocabulary exactly from its index -> token list (e.g. from an export)."""
        vocab = cls.__new__(cls)
        vocab.token_freqs = []
        vocab._set_tokens(list(idx_to_token))
        return vocab

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def __contains__(self, token: str) -> bool:
        return token in self.token_to_idx

    @overload
    def __getitem__(self, tokens: str) -> int: ...
    @overload
    def __getitem__(self, tokens: Sequence[str]) -> list[int]: ...

    def __getitem__(self, tokens):
        if isinstance(tokens, str):
            return self.token_to_idx.get(tokens, 0)
        get = self.token_to_idx.get
        return [get(t, 0) for t in tokens]

    def to_tokens(self, indices: int | Iterable[int]) -> str | list[str]:
        """Index (or indices, a tensor too) back to token(s)."""
        if isinstance(indices, int):
            return self.idx_to_token[indices]
        if isinstance(indices, torch.Tensor):
            indices = indices.tolist()
        return [self.idx_to_token[int(i)] for i in indices]

    def encode(self, tokens: Sequence[str]) -> torch.Tensor:
        """Tokens -> ``int64`` tensor of indices."""
        return torch.tensor(self[list(tokens)], dtype=torch.long)

    @property
    def unk(self) -> int:
        """Index of ``<unk>`` (0)."""
        return 0

    def to_json(self) -> list[str]:
        """The JSON form: the index -> token list (see :meth:`from_tokens`)."""
        return list(self.idx_to_token)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.idx_to_token == other.idx_to_token

    def __repr__(self) -> str:
        head = ", ".join(repr(t) for t in self.idx_to_token[:8])
        return f"Vocab(size={len(self)}, tokens=[{head}{', ...' if len(self) > 8 else ''}])"


def read_text(path: Path, title: str) -> str:
    """Read a UTF-8 text file; unreadable or non-UTF-8 files give one :class:`DataError`."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{title}: {path} is not UTF-8 text ({e.reason} at byte {e.start}); "
                        "the file is corrupt, delete it to download it again") from None
    except OSError as e:
        raise DataError(f"{title}: cannot read {path} ({e.strerror})") from None


#: Text preprocessing by name, as stored in a language model's export (``config["text"]``).
TEXT_PREPROCESSORS = {"none": lambda text: text, "time_machine": preprocess_time_machine}


def prompt_tokens(text: str, level: str, preprocess: str = "none") -> list[str]:
    """A prompt's tokens exactly as the training text's: preprocess, then tokenize.

    Args:
        text: the prompt, e.g. ``"time traveller "``.
        level: ``"char"`` or ``"word"``.
        preprocess: a key of :data:`TEXT_PREPROCESSORS`.
    """
    if preprocess not in TEXT_PREPROCESSORS:
        raise ValueError(f"unknown text preprocessing '{preprocess}'; choose from: "
                         + ", ".join(TEXT_PREPROCESSORS))
    return tokenize(TEXT_PREPROCESSORS[preprocess](text), level)


def encode_prompt(text: str, vocab: Vocab, level: str, preprocess: str = "none") -> torch.Tensor:
    """A prompt's ``int64`` indices ``(T,)`` (:func:`prompt_tokens`; unknown -> ``<unk>``)."""
    return vocab.encode(prompt_tokens(text, level, preprocess))


def join_tokens(tokens: Sequence[str], level: str) -> str:
    """Inverse of :func:`tokenize` for one line: characters concatenated, words spaced."""
    return "".join(tokens) if level == "char" else " ".join(tokens)
