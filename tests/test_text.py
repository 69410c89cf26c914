"""The shared text pipeline: tokenizers and Vocab."""

from __future__ import annotations

import json

import pytest

from datamodules.text import Vocab, preprocess_time_machine, tokenize


def test_preprocess_and_tokenize() -> None:
    text = preprocess_time_machine("The Time-Machine, 1895!\nBy H. G. Wells")
    assert text == "the time machine by h g wells"
    assert tokenize(text, "char")[:4] == ["t", "h", "e", " "]
    assert tokenize(["a b", "c"], "word") == [["a", "b"], ["c"]]
    with pytest.raises(ValueError, match="char, word"):
        tokenize("x", "byte")


def test_vocab_is_frequency_sorted_with_unk_and_reserved_first() -> None:
    vocab = Vocab(["b", "a", "b", "c", "b", "a", "d"], min_freq=2, reserved_tokens=["<pad>"])
    assert vocab.to_json() == ["<unk>", "<pad>", "b", "a"]
    assert vocab["b"] == 2 and vocab["zzz"] == vocab.unk == 0 and vocab["c"] == 0
    assert vocab[["a", "d"]] == [3, 0]
    assert vocab.to_tokens([2, 3]) == ["b", "a"]
    assert vocab.encode(["a", "b"]).tolist() == [3, 2]
    nested = Vocab([["x", "y"], ["y"]])
    assert nested.to_json() == ["<unk>", "y", "x"]


def test_vocab_json_round_trip_is_exact() -> None:
    vocab = Vocab(["the", "time", "traveller"] * 3 + ["<unk>"], reserved_tokens=["<eos>"])
    again = Vocab.from_tokens(json.loads(json.dumps(vocab.to_json())))
    assert again == vocab and again["time"] == vocab["time"]
    with pytest.raises(ValueError):
        Vocab.from_tokens(["a", "<unk>"])
