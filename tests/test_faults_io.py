"""The fault table (docs/reliability.md), part 2: data, downloads, W&B, exports, predict.py.

Every row asserts the exit status, that the error is one line on stderr without a traceback,
and that every file that existed before is byte-identical after (see tests/test_faults.py).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import socket
import time
from pathlib import Path

import pytest

from conftest import call, make_idx_dataset, run_cli
from d2l_lightning.cli import predict, train
from faults_helpers import TINY, assert_unchanged, one_error_line, snapshot

# ---------------------------------------------------------------------------------------------
# Data: rows already handled well, kept that way


def test_missing_dataset_offline_creates_nothing(tmp_path, capsys) -> None:
    """A typo in --data-dir: one sentence, and no empty folders at that path."""
    typo = tmp_path / "dta"
    code, _, err = call(train.main, "--model", "mlp", "--data", "mnist", "--data-dir", typo,
                        "--run-dir", tmp_path / "run", capsys=capsys)
    line = one_error_line(err)
    assert code == 1 and line.startswith("error: MNIST is missing"), line
    assert not typo.exists() and not (tmp_path / "run").exists()


def test_truncated_dataset_is_one_sentence(tmp_path, capsys) -> None:
    root = tmp_path / "data"
    make_idx_dataset(root / "mnist", n_train=48, n_test=12)
    f = root / "mnist" / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-30])
    before = snapshot(root)
    code, _, err = call(train.main, *TINY, "--data-dir", root, "--run-dir", tmp_path / "run",
                        capsys=capsys)
    assert code == 1 and "truncated" in one_error_line(err)
    assert_unchanged(before, root)


# ---------------------------------------------------------------------------------------------
# Downloads on a network that accepts connections and never answers


@pytest.fixture
def silent_mirrors():
    """Two local mirrors that accept connections (the kernel's backlog) and never answer."""
    servers = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        servers.append(s)
    yield [f"http://127.0.0.1:{s.getsockname()[1]}/" for s in servers]
    for s in servers:
        s.close()


def _four_files(mirrors: list[str]):
    from d2l_lightning.datamodules.download import RemoteFile

    return [RemoteFile(f"f{i}.gz", "md5:" + "0" * 32, mirrors) for i in range(4)]


def test_hanging_download_waits_one_budget_for_the_whole_dataset(silent_mirrors, tmp_path,
                                                                  monkeypatch, capsys) -> None:
    """4 files x 2 silent mirrors wait 2 s in all (the budget), not 8 x the timeout."""
    from d2l_lightning.datamodules.download import DataError, ensure_files

    monkeypatch.setenv("D2L_DOWNLOAD_TIMEOUT", "2")
    folder = tmp_path / "typo" / "mnist"
    t0 = time.monotonic()
    with pytest.raises(DataError) as info:
        ensure_files("MNIST", folder, _four_files(silent_mirrors), [None] * 4)
    elapsed = time.monotonic() - t0
    assert 1.5 < elapsed < 4, elapsed
    tried = capsys.readouterr().out.splitlines()
    assert tried == [f"downloading f0.gz from {m}f0.gz (waiting at most 1 s for an answer)"
                     for m in silent_mirrors]
    msg = str(info.value)
    assert "\n" not in msg and "MNIST is missing" in msg and "timed out" in msg
    assert not (tmp_path / "typo").exists()  # nothing created: nothing was downloaded


def test_a_mirror_that_does_not_answer_is_skipped_for_the_other_files(silent_mirrors, tmp_path,
                                                                      monkeypatch,
                                                                      capsys) -> None:
    """The first mirror is silent, the second (a local folder) serves every file."""
    from d2l_lightning.datamodules.download import RemoteFile, ensure_files

    monkeypatch.setenv("D2L_DOWNLOAD_TIMEOUT", "2")
    good = tmp_path / "mirror"
    good.mkdir()
    files = []
    for i in range(3):
        payload = f"file {i}".encode()
        (good / f"f{i}.gz").write_bytes(payload)
        files.append(RemoteFile(f"f{i}.gz", "md5:" + hashlib.md5(payload).hexdigest(),
                                [silent_mirrors[0], good.as_uri()]))
    t0 = time.monotonic()
    ensure_files("X", tmp_path / "x", files, [None] * 3)
    assert time.monotonic() - t0 < 3  # one wait for the silent mirror, not one per file
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["f0.gz", "f1.gz", "f2.gz"]
    tried = [line for line in capsys.readouterr().out.splitlines() if silent_mirrors[0] in line]
    assert len(tried) == 1 and "f0.gz" in tried[0]  # the silent mirror is not tried again


@pytest.mark.slow
def test_hanging_download_with_the_default_budget(silent_mirrors, tmp_path) -> None:
    """The default budget (20 s) through the real MNIST file list: 240 s before issue 12."""
    import dataclasses

    from d2l_lightning.datamodules.download import DEFAULT_TIMEOUT, DataError, ensure_files
    from d2l_lightning.datamodules.idx import MNIST

    ds = dataclasses.replace(MNIST, mirrors=tuple(silent_mirrors))
    t0 = time.monotonic()
    with pytest.raises(DataError):
        ensure_files(ds.title, tmp_path / "mnist", ds.remote_files(), [None] * 4)
    assert time.monotonic() - t0 < DEFAULT_TIMEOUT + 5


# ---------------------------------------------------------------------------------------------
# W&B with an API key but no network


def test_wandb_with_a_key_and_no_network_goes_offline_at_once(data_root, tmp_path) -> None:
    """Before issue 12: a 66 s stall, then a traceback."""
    run = tmp_path / "run"
    env = {"WANDB_API_KEY": "0123456789abcdef" * 2 + "01234567", "WANDB_MODE": "",
           "HOME": str(tmp_path), "WANDB_BASE_URL": f"http://127.0.0.1:{_free_port()}"}
    t0 = time.monotonic()
    proc = run_cli("train.py", *TINY, "--data-dir", str(data_root), "--run-dir", str(run),
                   "--limit-train-batches", "2", "--logger", "wandb", env=env, timeout=120)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stdout.count("W&B: cannot reach") == 1, proc.stdout[-2000:]
    assert list((run / "wandb").glob("offline-run-*")) and (run / "results.json").is_file()
    assert elapsed < 40, elapsed  # a whole run; the W&B part is a refused connection


def _free_port() -> int:
    with socket.socket() as s:  # bound, then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Data that is there but unusable: the sentence gives the next step


def _bad_corpus(root: Path, kind: str) -> list[str]:
    """Write one broken corpus under ``root``; return the train.py flags that read it."""
    if kind == "empty-timemachine":
        (root / "timemachine").mkdir(parents=True)
        (root / "timemachine" / "timemachine.txt").write_text("")
        return ["--model", "gru", "--data", "time_machine"]
    if kind == "empty-wikitext-train":
        (root / "wikitext-2").mkdir(parents=True)
        for split in ("train", "valid", "test"):
            text = "" if split == "train" else " = A = \n the time machine is here . \n"
            (root / "wikitext-2" / f"wiki.{split}.tokens").write_text(text)
        return ["--model", "lstm", "--data", "wikitext2"]
    (root / "fra-eng").mkdir(parents=True)  # fra-eng without a tab
    (root / "fra-eng" / "fra.txt").write_text("Go. Va !\nRun! Cours !\n" * 20)
    return ["--model", "seq2seq_gru", "--data", "fra_eng", "--max-examples", "40"]


@pytest.mark.parametrize("kind", ["empty-timemachine", "empty-wikitext-train",
                                  "fra-eng-without-tabs"])
def test_unusable_corpus_says_what_to_do(kind, tmp_path, capsys) -> None:
    root = tmp_path / "data"
    flags = _bad_corpus(root, kind)
    before = snapshot(root)
    code = train.main([*flags, "--data-dir", str(root), "--run-dir", str(tmp_path / "run"),
                       "--max-epochs", "1", "--no-progress-bar"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 1 and "delete it so it is downloaded again" in line, line
    assert_unchanged(before, root)


# ---------------------------------------------------------------------------------------------
# predict.py: bad values and untrusted exports


@pytest.fixture(scope="module")
def image_export(tmp_path_factory) -> Path:
    """A small classifier export (mlp on a tiny MNIST)."""
    root = tmp_path_factory.mktemp("pexport")
    make_idx_dataset(root / "data" / "mnist", n_train=48, n_test=12)
    assert train.main([*TINY, "--data-dir", str(root / "data"), "--run-dir",
                       str(root / "run"), "--limit-train-batches", "2"]) == 0
    return root / "run" / "export"


@pytest.mark.parametrize("args, needle", [
    (["generate", "--export", "E", "--temperature", "nan"], "--temperature: expected a finite"),
    (["generate", "--export", "E", "--num-tokens", "-3"], "--num-tokens: expected a whole"),
    (["classify", "--export", "E", "--top-k", "-1", "x.png"], "--top-k: expected a whole"),
    (["fill-mask", "--export", "E", "--top-k", "-1", "a <mask> ."], "--top-k: expected a whole"),
    (["translate", "--export", "E", "--beam-size", "0", "hi ."], "--beam-size: expected a whole"),
], ids=["generate-temperature-nan", "generate-num-tokens-negative", "classify-top-k-negative",
        "fill-mask-top-k-negative", "translate-beam-0"])
def test_predict_values_are_refused_at_parse_time(args, needle, capsys) -> None:
    code, _, err = call(predict.main, *args, capsys=capsys)
    line = one_error_line(err)
    assert code == 2 and needle in line, line


def _edited_export(export: Path, tmp_path: Path, edit) -> Path:
    import json
    import shutil

    out = tmp_path / "export"
    shutil.copytree(export, out)
    cfg = json.loads((out / "config.json").read_text())
    edit(cfg)
    (out / "config.json").write_text(json.dumps(cfg))
    return out


@pytest.mark.parametrize("edit, needle", [
    (lambda c: c["model_kwargs"].update(num_hiddens=10**9), "do not match"),
    (lambda c: c["model_kwargs"].update(depth=3), "do not build"),
    (lambda c: c["model_kwargs"].update(num_hiddens=-5), "do not build"),
    (lambda c: c.pop("preprocess"), "lacks preprocess"),
    (lambda c: c["preprocess"].pop("std"), "'preprocess' must hold mean, std"),
    (lambda c: c.update(model_kwargs=[1]), "'model_kwargs' must be a mapping"),
], ids=["huge-size", "unknown-argument", "negative-argument", "no-preprocess",
        "preprocess-without-std", "model-kwargs-not-a-mapping"])
def test_untrusted_export_config_is_refused_before_building(edit, needle, image_export,
                                                            tmp_path, capsys) -> None:
    export = _edited_export(image_export, tmp_path, edit)
    before = snapshot(export)
    t0 = time.monotonic()
    code, _, err = call(predict.main, "classify", "--export", export,
                        image_export.parent.parent / "data" / "mnist"
                        / "t10k-images-idx3-ubyte.gz", capsys=capsys)
    line = one_error_line(err)
    assert code == 1 and needle in line, line
    assert time.monotonic() - t0 < 60  # a 10**9-wide layer would allocate ~3 GB first
    assert_unchanged(before, export)


@pytest.fixture(scope="module")
def text_exports(tmp_path_factory) -> dict[str, Path]:
    """A character-level GRU on a tiny Time Machine, a GRU translator on a tiny fra-eng."""
    from test_language_modeling import BOOK
    from test_seq2seq import write_fra_txt

    root = tmp_path_factory.mktemp("texports")
    (root / "data" / "timemachine").mkdir(parents=True)
    (root / "data" / "timemachine" / "timemachine.txt").write_text(BOOK * 6)
    write_fra_txt(root / "data")
    short = ["--max-epochs", "1", "--limit-train-batches", "2", "--limit-val-batches", "1",
             "--limit-test-batches", "1", "--no-progress-bar", "--data-dir", str(root / "data")]
    assert train.main(["--model", "gru", "--data", "time_machine", "--num-hiddens", "16",
                       "--run-dir", str(root / "lm"), *short]) == 0
    assert train.main(["--model", "seq2seq_gru", "--data", "fra_eng", "--max-examples", "200",
                       "--num-hiddens", "16", "--run-dir", str(root / "mt"), *short]) == 0
    return {"lm": root / "lm" / "export", "mt": root / "mt" / "export"}


def test_translate_refuses_empty_input_and_warns_about_long_input(text_exports,
                                                                   capsys) -> None:
    code, _, err = call(predict.main, "translate", "--export", text_exports["mt"], "",
                        capsys=capsys)
    line = one_error_line(err)
    assert code == 1 and "holds no word to translate" in line, line
    long = " ".join(["go"] * 500) + " ."
    code, _, err = call(predict.main, "translate", "--export", text_exports["mt"], long,
                        capsys=capsys)
    line = one_error_line(err)
    assert code == 0 and line.startswith("warning: sentence 1 has 501 tokens"), line


def test_generate_names_the_characters_it_drops(text_exports, capsys) -> None:
    code, _, err = call(predict.main, "generate", "--export", text_exports["lm"], "--prefix",
                        "time 1 traveller!", "--num-tokens", "5", capsys=capsys)
    line = one_error_line(err)
    assert code == 0 and "does not keep these characters" in line, line
    assert line.endswith("prefix: '!' '1'"), line


def test_wandb_online_without_a_key_says_it_goes_offline(tmp_path, monkeypatch, caplog) -> None:
    import logging

    from d2l_lightning.callbacks.wandb_logging import make_wandb_logger

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    with caplog.at_level(logging.INFO):
        logger = make_wandb_logger(tmp_path, "p", None, None, {})
    try:
        said = [r.getMessage() for r in caplog.records if "W&B" in r.getMessage()]
        assert len(said) == 1 and "no API key found, logging offline" in said[0], said
        assert logger.experiment.settings.mode in ("offline", "dryrun")
    finally:
        logger.experiment.finish()


# ---------------------------------------------------------------------------------------------
# Untrusted files already handled well, kept that way


def test_code_running_pickle_is_never_executed(tmp_path, capsys) -> None:
    """A 'checkpoint' whose unpickling would run code: refused, and the code never runs."""

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model:\n  name: mlp\ndata:\n  name: mnist\n")
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(pickle.dumps(Evil()))
    before = snapshot(run)
    code = train.main(["--resume", "last", "--run-dir", str(run)])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and "not a readable checkpoint" in line, line
    assert not marker.exists()
    assert_unchanged(before, run)


def test_export_config_that_is_not_json_is_one_sentence(image_export, tmp_path,
                                                        capsys) -> None:
    export = _edited_export(image_export, tmp_path, lambda c: None)
    (export / "config.json").write_text("{not json")
    code, _, err = call(predict.main, "classify", "--export", export, "x.png", capsys=capsys)
    line = one_error_line(err)
    assert code == 1 and "is not valid JSON" in line, line


def test_download_timeout_that_is_not_a_number_is_one_sentence(tmp_path, monkeypatch,
                                                                capsys) -> None:
    monkeypatch.setenv("D2L_DOWNLOAD_TIMEOUT", "abc")
    typo = tmp_path / "dta"
    code = train.main(["--model", "mlp", "--data", "mnist", "--data-dir", str(typo),
                       "--run-dir", str(tmp_path / "run")])
    line = one_error_line(capsys.readouterr().err)
    assert code == 1 and "$D2L_DOWNLOAD_TIMEOUT must be a number of seconds, got 'abc'" in line
    assert not typo.exists() and not (tmp_path / "run").exists()
