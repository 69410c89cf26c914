"""text.py unit by unit: preprocessing, tokenizers, ``Vocab`` (order, lookups, JSON form, repr),
prompts encoded as the training text was, and reading a corpus file."""

from __future__ import annotations

import pytest
import torch

from d2l_lightning.datamodules.download import DataError
from d2l_lightning.datamodules.text import (
    TEXT_PREPROCESSORS,
    Vocab,
    encode_prompt,
    join_tokens,
    preprocess_time_machine,
    prompt_tokens,
    read_text,
    tokenize,
)

# --- preprocessing and tokenizers -------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("The Time-Machine, 1895!\nBy H. G. Wells", "the time machine by h g wells"),
    ("  a--b  ", " a b "),          # every run of non-letters is one space, kept at the ends
    ("ÉCOLE x", " cole x"),          # non-ASCII letters are not letters here (d2l)
    ("AbC", "abc"),
    ("", ""),
])
def test_preprocess_keeps_ascii_letters_lower_cased_and_one_space_per_gap(text,
                                                                         expected) -> None:
    assert preprocess_time_machine(text) == expected


@pytest.mark.parametrize("level, text, tokens", [
    ("char", "ab c", ["a", "b", " ", "c"]),
    ("word", " ab  c\n", ["ab", "c"]),
])
def test_tokenize_one_string_gives_one_token_list(level, text, tokens) -> None:
    assert tokenize(text, level) == tokens
    assert join_tokens(tokens, level) == (text if level == "char" else "ab c")


def test_tokenize_is_word_level_by_default_and_takes_any_iterable_of_lines() -> None:
    assert tokenize("ab c") == ["ab", "c"]
    assert tokenize(iter(["a b", "", "cd"]), "char") == [["a", " ", "b"], [], ["c", "d"]]
    assert tokenize(("a b", "c"), "word") == [["a", "b"], ["c"]]


@pytest.mark.parametrize("level", ["byte", "Char", "WORD", ""])
def test_tokenize_refuses_an_unknown_level_naming_the_choices(level) -> None:
    with pytest.raises(ValueError) as e:
        tokenize("x", level)
    assert str(e.value) == f"unknown token level '{level}'; choose from: char, word"


@pytest.mark.parametrize("level, tokens, text", [
    ("char", ["a", " ", "b"], "a b"), ("word", ["a", "b"], "a b"), ("word", [], ""),
])
def test_join_tokens_inverts_tokenize(level, tokens, text) -> None:
    assert join_tokens(tokens, level) == text


# --- Vocab ------------------------------------------------------------------------------------


def test_vocab_orders_by_count_then_alphabetically_after_unk_and_reserved() -> None:
    vocab = Vocab(list("ccbbbaad") + ["<eos>"], reserved_tokens=["<pad>", "<unk>", "<eos>"])
    assert vocab.to_json() == ["<unk>", "<pad>", "<eos>", "b", "a", "c", "d"]
    assert vocab.token_freqs == [("b", 3), ("a", 2), ("c", 2), ("<eos>", 1), ("d", 1)]
    assert len(vocab) == 7


@pytest.mark.parametrize("min_freq, kept", [
    (0, ["b", "a", "c"]), (1, ["b", "a", "c"]), (2, ["b", "a"]), (3, ["b"]), (4, []),
])
def test_vocab_keeps_tokens_seen_at_least_min_freq_times(min_freq, kept) -> None:
    assert Vocab(list("abbbac"), min_freq=min_freq).to_json() == ["<unk>", *kept]


def test_vocab_default_is_unk_alone() -> None:
    vocab = Vocab()
    assert vocab.to_json() == ["<unk>"] and vocab.token_freqs == [] and vocab["x"] == 0


def test_vocab_of_token_lists_counts_every_token() -> None:
    vocab = Vocab([["x", "y"], ["y"], "z"])  # lists and single tokens mixed
    assert vocab.to_json() == ["<unk>", "y", "x", "z"]


def test_vocab_lookups_map_unknown_tokens_to_unk() -> None:
    vocab = Vocab(list("aab"), reserved_tokens=["<pad>"])
    assert vocab["a"] == 2 and vocab["<pad>"] == 1 and vocab["zz"] == vocab.unk == 0
    assert vocab[["b", "zz", "a"]] == [3, 0, 2] and vocab[("a",)] == [2] and vocab[[]] == []
    assert "a" in vocab and "zz" not in vocab and "<unk>" in vocab


def test_vocab_to_tokens_takes_an_int_a_list_or_a_tensor() -> None:
    vocab = Vocab(list("aab"))
    assert vocab.to_tokens(1) == "a" and vocab.to_tokens(0) == "<unk>"
    assert vocab.to_tokens([2, 1]) == ["b", "a"]
    assert vocab.to_tokens(torch.tensor([2, 0, 1])) == ["b", "<unk>", "a"]


def test_vocab_encode_is_an_int64_tensor_of_indices() -> None:
    vocab = Vocab(list("aab"))
    got = vocab.encode(("b", "q", "a"))  # any sequence
    assert got.dtype == torch.int64 and got.tolist() == [2, 0, 1]
    assert vocab.encode([]).dtype == torch.int64 and vocab.encode([]).shape == (0,)


def test_vocab_from_tokens_rebuilds_the_same_map() -> None:
    again = Vocab.from_tokens(("<unk>", "b", "a"))
    assert again.to_json() == ["<unk>", "b", "a"] and again.token_freqs == []
    assert again["a"] == 2 and again.to_tokens(1) == "b"
    assert again == Vocab(list("abb")) and again != Vocab(list("aab"))
    assert again != ["<unk>", "b", "a"]  # only a Vocab equals a Vocab


@pytest.mark.parametrize("tokens, message", [
    (["<unk>", "a", "a"], "a vocabulary cannot hold the same token twice"),
    (["a", "<unk>"], "index 0 of a vocabulary must be <unk>"),
    ([], "index 0 of a vocabulary must be <unk>"),
])
def test_vocab_from_tokens_refuses_a_broken_list(tokens, message) -> None:
    with pytest.raises(ValueError) as e:
        Vocab.from_tokens(tokens)
    assert str(e.value) == message


def test_vocab_to_json_is_a_copy() -> None:
    vocab = Vocab(list("ab"))
    vocab.to_json().append("x")
    assert vocab.to_json() == ["<unk>", "a", "b"]


@pytest.mark.parametrize("n, expected", [
    (1, "Vocab(size=2, tokens=['<unk>', 'a'])"),
    (7, "Vocab(size=8, tokens=['<unk>', 'a', 'b', 'c', 'd', 'e', 'f', 'g'])"),
    (8, "Vocab(size=9, tokens=['<unk>', 'a', 'b', 'c', 'd', 'e', 'f', 'g', ...])"),
])
def test_vocab_repr_shows_the_size_and_at_most_eight_tokens(n, expected) -> None:
    assert repr(Vocab(list("abcdefghij"[:n]))) == expected


# --- prompts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, level, preprocess, tokens", [
    ("Time, Traveller", "word", "none", ["Time,", "Traveller"]),
    ("Time, Traveller", "word", "time_machine", ["time", "traveller"]),
    ("Ab!", "char", "time_machine", ["a", "b", " "]),
    ("Ab!", "char", "none", ["A", "b", "!"]),
])
def test_prompt_tokens_are_preprocessed_then_tokenized(text, level, preprocess,
                                                       tokens) -> None:
    assert prompt_tokens(text, level, preprocess) == tokens


def test_prompt_is_not_preprocessed_by_default() -> None:
    assert prompt_tokens("A b", "char") == ["A", " ", "b"]
    vocab = Vocab(list("Ab "))
    assert encode_prompt("A b", vocab, "char").tolist() == vocab[["A", " ", "b"]]


def test_encode_prompt_gives_the_training_indices() -> None:
    vocab = Vocab(tokenize(preprocess_time_machine("The time traveller, the time"), "word"))
    got = encode_prompt("THE Time-Lord", vocab, "word", "time_machine")
    assert got.dtype == torch.int64 and got.tolist() == [vocab["the"], vocab["time"], 0]


def test_prompt_with_an_unknown_preprocessing_is_refused_naming_the_choices() -> None:
    with pytest.raises(ValueError) as e:
        prompt_tokens("x", "char", "lower")
    assert str(e.value) == "unknown text preprocessing 'lower'; choose from: none, time_machine"
    assert list(TEXT_PREPROCESSORS) == ["none", "time_machine"]


# --- reading a corpus file --------------------------------------------------------------------


def test_read_text_reads_utf8(tmp_path) -> None:
    f = tmp_path / "t.txt"
    f.write_bytes("café\n".encode())
    assert read_text(f, "T") == "café\n"


def test_read_text_of_non_utf8_bytes_is_one_sentence(tmp_path) -> None:
    f = tmp_path / "t.txt"
    f.write_bytes(b"ab\xff")
    with pytest.raises(DataError) as e:
        read_text(f, "The Time Machine")
    assert str(e.value) == (f"The Time Machine: {f} is not UTF-8 text (invalid start byte at "
                            "byte 2); the file is corrupt, delete it to download it again")
    assert e.value.__suppress_context__


def test_read_text_of_an_unreadable_path_is_one_sentence(tmp_path) -> None:
    with pytest.raises(DataError) as e:
        read_text(tmp_path, "T")  # a folder
    assert str(e.value) == f"T: cannot read {tmp_path} (Is a directory)"
    assert e.value.__suppress_context__
