"""Unit tests of models/export.py (2 of 2): each field of an export's config checked against
the model it describes (vocabularies, special tokens, lengths, decoding settings), at its
limits and one past them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from export_helpers import BERT, MT, S2S, SOFTMAX, WORDS, _save

from d2l_lightning.models import build_model
from d2l_lightning.models import export as ex
from d2l_lightning.models.export import ExportError


def _fields(tmp_path: Path, arch: str, kwargs: dict, **fields: Any) -> str | None:
    """``check_export``'s refusal of an export of ``arch`` with ``fields`` (``None``: taken)."""
    out = _save(tmp_path, arch, kwargs, **fields)
    try:
        ex.check_export(out)
    except ExportError as e:
        return str(e).removeprefix(f"{out / 'config.json'}: ").removesuffix(
            "; re-export the model with export.py")
    return None


SEQ = {"src_vocab": WORDS, "tgt_vocab": WORDS}


@pytest.mark.parametrize("arch, kwargs, fields, why", [
    ("softmax_regression", SOFTMAX, {"task": "seq2seq"},
     "'task' is 'seq2seq', but a 'softmax_regression' model does image_classification"),
    ("softmax_regression", SOFTMAX, {"run_config": []},
     "'run_config' must be a mapping (the run's resolved config)"),
    ("softmax_regression", SOFTMAX, {"class_names": ["a", "b"]},
     "'class_names' holds 2 names, but the 'softmax_regression' model has 3 outputs"),
    ("softmax_regression", {}, {"class_names": list("abc")},  # the builder's default: 10
     "'class_names' holds 3 names, but the 'softmax_regression' model has 10 outputs"),
    ("softmax_regression", SOFTMAX, {"class_names": ["a", True, "c"]},
     "'class_names' must be a list of names (strings or numbers)"),
    ("softmax_regression", SOFTMAX, {"class_names": "abc"},
     "'class_names' must be a list of names (strings or numbers)"),
    ("softmax_regression", SOFTMAX, {"preprocess": {"image_size": 4, "in_channels": 1},
                                     "class_names": list("ab")},
     "'class_names' holds 2 names, but the 'softmax_regression' model has 3 outputs"),
    ("softmax_regression", SOFTMAX, {"preprocess": {"image_size": 5, "in_channels": 1}},
     "'preprocess' describes 1-channel 5x5 inputs, which the model does not take (a and b "
     "must have same reduction dim, but got [1, 25] X [16, 3].)"),
    ("transformer_mt", MT, {**SEQ, "tgt_vocab": WORDS[:5]},
     "'tgt_vocab' holds 5 tokens, but the model's embedding has 6 (model_kwargs.tgt_vocab_size)"),
    ("transformer_mt", MT, {**SEQ, "src_vocab": ["<unk>", 1]},
     "'src_vocab' must be a list of tokens (strings)"),
    ("transformer_mt", MT, {**SEQ, "src_vocab": "abc"},
     "'src_vocab' must be a list of tokens (strings)"),
    ("transformer_mt", MT, {**SEQ, "src_vocab": []}, "'src_vocab' must start with <unk>"),
    ("transformer_mt", MT, {**SEQ, "src_vocab": WORDS[1:] + WORDS[:1]},
     "'src_vocab' must start with <unk>"),
    ("transformer_mt", MT, {**SEQ, "src_vocab": WORDS[:5] + ["go"]},
     "'src_vocab' holds a token twice"),
    ("transformer_mt", MT, {**SEQ, "special_tokens": {"pad": "<pad>", "x": "<x>"}},
     "'special_tokens' names '<x>', which 'src_vocab' does not hold"),
    ("transformer_mt", MT, {"tgt_vocab": WORDS, "special_tokens": ["<eos>", "<e>"]},
     "'special_tokens' names '<e>', which 'tgt_vocab' does not hold"),
    ("transformer_mt", MT, {**SEQ, "special_tokens": ["<pad>", 3]},
     "'special_tokens' must be a list or mapping of tokens"),
    ("transformer_mt", MT, {**SEQ, "special_tokens": "<pad>"},
     "'special_tokens' must be a list or mapping of tokens"),
    ("transformer_mt", MT, {"num_steps": 1001},
     "'num_steps' must be a whole number from 1 to 1000 (the longest sequence the model "
     "takes), got 1001"),
    ("transformer_mt", MT, {"max_decode_len": 0},
     "'max_decode_len' must be a whole number from 1 to 1000 (the longest sequence the model "
     "takes), got 0"),
    ("transformer_mt", MT, {"num_steps": True},
     "'num_steps' must be a whole number from 1 to 1000 (the longest sequence the model "
     "takes), got true"),
    ("seq2seq_gru", S2S, {"num_steps": 10_001},
     "'num_steps' must be a whole number from 1 to 10000 (the longest sequence the model "
     "takes), got 10001"),
    ("bert_tiny", BERT, {"max_len": 17},
     "'max_len' must be a whole number from 1 to 16 (the longest sequence the model takes), "
     "got 17"),
    ("bert_encoder", BERT, {"max_len": 17},
     "'max_len' must be a whole number from 1 to 16 (the longest sequence the model takes), "
     "got 17"),
    ("transformer_mt", MT, {"tgt_vocab": WORDS, "beam_size": 7},
     "'beam_size' must be a whole number from 1 to the target vocabulary's size, got 7"),
    ("transformer_mt", MT, {"beam_size": 0},
     "'beam_size' must be a whole number from 1 to the target vocabulary's size, got 0"),
    ("transformer_mt", MT, {"beam_size": 2.0},
     "'beam_size' must be a whole number from 1 to the target vocabulary's size, got 2.0"),
    ("transformer_mt", MT, {"length_penalty": True},
     "'length_penalty' must be a finite number, got true"),
    ("transformer_mt", MT, {"length_penalty": "0"},
     "'length_penalty' must be a finite number, got '0'"),
    ("transformer_mt", MT, {"preprocess": 1}, "'preprocess' must name the text preprocessing"),
    ("bert_tiny", BERT, {"lowercase": "yes"}, "'lowercase' must be true or false, got 'yes'"),
    ("bert_encoder", BERT, {"lowercase": 1}, "'lowercase' must be true or false, got 1"),
    ("bert_tiny", BERT, {"pretrained_arch": 1}, "'pretrained_arch' must be a model name"),
    ("gru", {"vocab_size": 6, "num_hiddens": 4}, {"text": {"level": "byte"}},
     "'text' must be a mapping whose 'level' is 'char' or 'word'"),
    ("gru", {"vocab_size": 6, "num_hiddens": 4}, {"text": ["char"]},
     "'text' must be a mapping whose 'level' is 'char' or 'word'"),
    ("gru", {"vocab_size": 6, "num_hiddens": 4}, {"text": {"level": "char", "prefix": ""}},
     "'text.preprocess' must be a string, got null"),
    ("gru", {"vocab_size": 6, "num_hiddens": 4},
     {"text": {"level": "word", "preprocess": "none", "prefix": 3}},
     "'text.prefix' must be a string, got 3"),
    ("gru", {"vocab_size": 6, "num_hiddens": 4}, {"vocab": WORDS[:4]},
     "'vocab' holds 4 tokens, but the model's embedding has 6 (model_kwargs.vocab_size)"),
])
def test_check_names_the_field_that_does_not_fit(arch: str, kwargs: dict, fields: dict,
                                                 why: str, tmp_path: Path) -> None:
    assert _fields(tmp_path, arch, kwargs, **fields) == why


@pytest.mark.parametrize("arch, kwargs, fields", [
    ("softmax_regression", SOFTMAX, {"class_names": [0, "b", 2], "run_config": {"a": 1}}),
    ("softmax_regression", SOFTMAX, {"preprocess": {"mean": [0.5]}, "class_names": list("abc")}),
    ("softmax_regression", SOFTMAX, {"preprocess": {"image_size": 4, "in_channels": 1},
                                     "class_names": list("abc")}),
    ("transformer_mt", MT, {**SEQ, "special_tokens": {"pad": "<pad>"}, "num_steps": 1000,
                            "max_decode_len": 1, "beam_size": 6, "length_penalty": 0.75,
                            "preprocess": "d2l_fra_eng"}),
    ("transformer_mt", MT, {"special_tokens": ["<x>"], "beam_size": 10**6, "length_penalty": 1}),
    ("seq2seq_gru", S2S, {"num_steps": 10_000, "beam_size": 1}),
    ("transformer_mt", {**MT, "tgt_vocab_size": 1}, {"tgt_vocab": ["<unk>"]}),  # beam 1
    ("bert_tiny", BERT, {"vocab": WORDS, "max_len": 16, "special_tokens": ["<pad>"],
                         "lowercase": False, "pretrained_arch": "bert_tiny"}),
    ("gru", {"vocab_size": 6, "num_hiddens": 4},
     {"vocab": WORDS, "text": {"level": "char", "preprocess": "none", "prefix": ""}}),
    ("linear_regression", {"num_inputs": 2}, {"beam_size": 0, "lowercase": 2, "vocab": 1,
                                              "text": 1}),
    ("gru", {"vocab_size": 6, "num_hiddens": 4}, {"vocab": WORDS}),
])
def test_check_takes_fields_at_their_limits(arch: str, kwargs: dict, fields: dict,
                                            tmp_path: Path) -> None:
    assert _fields(tmp_path, arch, kwargs, **fields) is None


def test_a_special_token_list_is_checked_against_every_vocabulary(tmp_path: Path) -> None:
    assert _fields(tmp_path, "transformer_mt", MT, src_vocab=WORDS,
                   tgt_vocab=[*WORDS[:5], "<x>"], special_tokens=["."]) == \
        "'special_tokens' names '.', which 'tgt_vocab' does not hold"


@pytest.mark.parametrize("arch, kwargs, lengths", [
    ("transformer_mt", MT, [1000]), ("bert_tiny", BERT, [16]), ("seq2seq_gru", S2S, [])])
def test_position_tables_are_the_longest_sequences(arch: str, kwargs: dict,
                                                   lengths: list[int]) -> None:
    with torch.device("meta"):
        model = build_model(arch, **kwargs)
    assert sorted(ex._position_tables(model)) == lengths
