"""The shared text pipeline: tokenizers and Vocab."""

from __future__ import annotations

import json

import pytest

from d2l_lightning.datamodules.text import Vocab, preprocess_time_machine, tokenize


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


def test_corpus_checksum_is_checked_at_the_canonical_size(tmp_path) -> None:
    import d2l_lightning.datamodules.corpora as corpora
    from d2l_lightning.datamodules import DataError

    folder = tmp_path / "timemachine"
    folder.mkdir()
    small = folder / "timemachine.txt"
    small.write_text("The Time Machine, by H. G. Wells\n")  # a fixture: read as it is
    assert corpora.read_time_machine(tmp_path).startswith("The Time Machine")
    small.write_bytes(b"x" * corpora.TIME_MACHINE.sizes[0])  # canonical size, wrong bytes
    with pytest.raises(DataError, match="fails its checksum"):
        corpora.read_time_machine(tmp_path)


def test_missing_corpora_offline_name_files_folder_and_source(tmp_path) -> None:
    import d2l_lightning.datamodules.corpora as corpora
    from d2l_lightning.datamodules import DataError

    with pytest.raises(DataError) as e:
        corpora.read_wikitext("wikitext103", "train", tmp_path)
    msg = str(e.value)
    assert "WikiText-103" in msg and "wiki.train.tokens" in msg and str(tmp_path) in msg
    assert "huggingface.co" in msg and "D2L_DATA_DIR" in msg
    with pytest.raises(DataError, match="unknown WikiText split"):
        corpora.read_wikitext("wikitext2", "dev", tmp_path)


def test_fra_eng_from_zip_or_extracted_and_bad_zip(tmp_path) -> None:
    import zipfile

    import d2l_lightning.datamodules.corpora as corpora
    from d2l_lightning.datamodules import DataError

    folder = tmp_path / "fra-eng"
    folder.mkdir()
    with zipfile.ZipFile(folder / "fra-eng.zip", "w") as z:
        z.writestr("fra-eng/fra.txt", "Go.\tVa !\nHi.\tSalut !\n")
    assert corpora.read_fra_eng(tmp_path).splitlines()[0] == "Go.\tVa !"
    (folder / "fra-eng.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a valid zip"):
        corpora.read_fra_eng(tmp_path)
    (folder / "fra.txt").write_text("Run!\tCours !\n", encoding="utf-8")
    assert corpora.read_fra_eng(tmp_path) == "Run!\tCours !\n"


def test_real_corpora_have_the_documented_sizes(real_data_dir) -> None:
    import d2l_lightning.datamodules.corpora as corpora
    text = preprocess_time_machine(corpora.read_time_machine(real_data_dir))
    assert len(text) == 173_428 and len(Vocab(tokenize(text, "char"))) == 28
    assert len(corpora.read_wikitext("wikitext2", "valid", real_data_dir)) == 3_760
    assert len(corpora.read_fra_eng(real_data_dir).splitlines()) == 167_130
