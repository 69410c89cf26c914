"""The fault table (docs/reliability.md), part 3: export configs, export.py, the plot command.

Every row asserts the exit status, that the error is one line on stderr without a traceback,
and that every file that existed before is byte-identical after (see tests/test_faults.py).
One tiny run is trained once for the module; each case edits a copy of its export, its
checkpoint folder or its ``metrics.csv``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import call, make_idx_dataset, write_idx
from d2l_lightning.cli import export, predict, train
from d2l_lightning.models import build_model, save_export
from d2l_lightning.training import plot
from faults_helpers import TINY, assert_unchanged, one_error_line, snapshot


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A finished mlp run on a tiny MNIST: ``run/export``, ``run/checkpoints``, a PNG."""
    from torchvision.io import write_png

    root = tmp_path_factory.mktemp("fexport")
    make_idx_dataset(root / "data" / "mnist", n_train=48, n_test=12)
    assert train.main([*TINY, "--data-dir", str(root / "data"), "--run-dir",
                       str(root / "run"), "--limit-train-batches", "2", "--no-test"]) == 0
    write_png(torch.full((1, 40, 30), 128, dtype=torch.uint8), str(root / "shoe.png"))
    return root


def _edited(export_dir: Path, tmp_path: Path, edit) -> Path:
    """A copy of ``export_dir`` whose config.json is ``edit(config)`` (or the text it returns)."""
    out = tmp_path / export_dir.name
    shutil.copytree(export_dir, out)
    cfg = json.loads((out / "config.json").read_text())
    text = edit(cfg)
    (out / "config.json").write_text(text if isinstance(text, str) else json.dumps(cfg))
    return out


def _pre(**values):
    return lambda c: c["preprocess"].update(values)


@pytest.mark.parametrize("edit, needle", [
    (_pre(image_size=100000), "'preprocess.image_size' must be a whole number from 1 to 4096"),
    (_pre(resize=100000), "'preprocess.resize' must be a whole number from 1 to 4096"),
    (_pre(resize=20), "describes 1-channel 20x20 inputs, which the model does not take"),
    (lambda c: c.update(class_names=["shoe", "shirt"]),
     "'class_names' holds 2 names, but the 'mlp' model has 10 outputs"),
    (_pre(mean="abc"), "'preprocess.mean' must be a list of finite numbers, got 'abc'"),
    (_pre(std=[0]), "'preprocess.std' must be a list of positive numbers, got [0]"),
    (_pre(std=[-0.3]), "'preprocess.std' must be a list of positive numbers"),
    (_pre(std=[0.3, 0.3, 0.3]), "'preprocess.std' holds 3 values, but the model takes 1-channel"),
    (_pre(channels=3), "'preprocess.mean' holds 1 value, but the model takes 3-channel"),
    (_pre(in_channels=7), "'preprocess.in_channels' must be 1 or 3"),
    (_pre(center_crop=0), "'preprocess.center_crop' must be a fraction in (0, 1]"),
    (lambda c: c.update(task="seq2seq"), "'task' is 'seq2seq', but a 'mlp' model does "
     "image_classification"),
    (lambda c: c.update(format_version=99), "'format_version' 99 is not one this version"),
    (lambda c: '{"arch": "mlp", "model_kwargs": {}, "x": ' + "[" * 10**5 + "]" * 10**5 + "}",
     "is nested deeper than 32 levels"),
    (lambda c: " " * (64 * 2**20 + 1), "more than an export's config ever needs (67,108,864)"),
], ids=["image-size-huge", "resize-huge", "resize-the-model-does-not-take", "too-few-classes",
        "mean-text", "std-zero", "std-negative", "std-per-channel", "channels-without-values",
        "in-channels-7", "center-crop-0", "task-of-another-model", "format-version-newer",
        "nested-100000-deep", "larger-than-64-MiB"])
def test_export_config_fields_are_checked_against_the_model(edit, needle, tiny_run, tmp_path,
                                                            capsys) -> None:
    exported = _edited(tiny_run / "run" / "export", tmp_path, edit)
    before = snapshot(exported, tiny_run / "shoe.png")
    t0 = time.monotonic()
    code, out, err = call(predict.main, "classify", "--export", exported,
                          tiny_run / "shoe.png", capsys=capsys)
    line = one_error_line(err)
    assert code == 1 and needle in line and "re-export" in line, line
    assert str(exported / "config.json") in line and out == ""
    assert time.monotonic() - t0 < 20  # 100000 x 100000 floats would be 40 GB first
    assert_unchanged(before, exported, tiny_run / "shoe.png")


def test_predict_eval_checks_the_export_before_reading_data(tiny_run, tmp_path,
                                                            capsys) -> None:
    exported = _edited(tiny_run / "run" / "export", tmp_path, _pre(std=[0]))
    before = snapshot(exported)
    code, _, err = call(predict.main, "eval", "--export", exported, "--data-dir",
                        tmp_path / "no-data-here", capsys=capsys)
    line = one_error_line(err)
    assert code == 1 and "'preprocess.std' must be a list of positive numbers" in line, line
    assert_unchanged(before, exported)
    assert not (tmp_path / "no-data-here").exists()


@pytest.fixture(scope="module")
def text_exports(tmp_path_factory) -> dict[str, Path]:
    """Untrained text exports, as their task modules write them: a GRU language model, a
    Transformer translator, a tiny BERT."""
    root = tmp_path_factory.mktemp("ftext")
    words = ["<unk>", "<pad>", "<bos>", "<eos>", "go", ".", "va", "!"]
    save_export(build_model("gru", vocab_size=len(words), num_hiddens=8), {
        "arch": "gru", "task": "language_modeling", "model_kwargs": {
            "vocab_size": len(words), "num_hiddens": 8}, "vocab": words,
        "text": {"level": "word", "preprocess": "none", "prefix": "go"}}, root / "lm")
    kw = {"src_vocab_size": len(words), "tgt_vocab_size": len(words), "num_hiddens": 8,
          "ffn_num_hiddens": 16, "num_heads": 2, "num_layers": 1}
    save_export(build_model("transformer_mt", **kw), {
        "arch": "transformer_mt", "task": "seq2seq", "model_kwargs": kw, "src_vocab": words,
        "tgt_vocab": words, "num_steps": 9, "max_decode_len": 9, "special_tokens": {
            "unk": "<unk>", "pad": "<pad>", "bos": "<bos>", "eos": "<eos>"},
        "preprocess": "d2l_fra_eng", "beam_size": 2, "length_penalty": 0.0}, root / "mt")
    bert = ["<unk>", "<pad>", "<mask>", "<cls>", "<sep>", "the", "time", "machine", "."]
    save_export(build_model("bert_tiny", vocab_size=len(bert), max_len=16, num_hiddens=8,
                            ffn_num_hiddens=16, num_heads=2, num_layers=1), {
        "arch": "bert_tiny", "task": "masked_lm", "model_kwargs": {
            "vocab_size": len(bert), "max_len": 16, "num_hiddens": 8, "ffn_num_hiddens": 16,
            "num_heads": 2, "num_layers": 1}, "vocab": bert, "max_len": 16,
        "special_tokens": ["<pad>", "<mask>", "<cls>", "<sep>"], "lowercase": True},
        root / "bert")
    return {"lm": root / "lm", "mt": root / "mt", "bert": root / "bert"}


@pytest.mark.parametrize("which, edit, needle", [
    ("lm", lambda c: c.update(vocab=c["vocab"][:-2]),
     "'vocab' holds 6 tokens, but the model's embedding has 8 (model_kwargs.vocab_size)"),
    ("lm", lambda c: c.update(vocab=[*c["vocab"][:-1], "go"]), "'vocab' holds a token twice"),
    ("lm", lambda c: c["text"].update(level="byte"), "'text' must be a mapping whose 'level'"),
    ("lm", lambda c: c["text"].update(preprocess="rot13"), "'text.preprocess' must be one of"),
    ("mt", lambda c: c.update(tgt_vocab=[*c["tgt_vocab"], "oui"]),
     "'tgt_vocab' holds 9 tokens, but the model's embedding has 8"),
    ("mt", lambda c: c.update(src_vocab=[t.replace("<eos>", "<e>") for t in c["src_vocab"]]),
     "'special_tokens' names '<eos>', which 'src_vocab' does not hold"),
    ("mt", lambda c: c.update(max_decode_len=5000),
     "'max_decode_len' must be a whole number from 1 to 1000 (the longest sequence"),
    ("mt", lambda c: c.update(num_steps="9"), "'num_steps' must be a whole number"),
    ("mt", lambda c: c.update(beam_size=10**9), "'beam_size' must be a whole number from 1"),
    ("mt", lambda c: c.update(length_penalty="x"), "'length_penalty' must be a finite number"),
    ("mt", lambda c: c["model_kwargs"].update(max_len=10**9),
     "8,000,000,000 values of tables that are built rather than stored"),
    ("bert", lambda c: c.update(max_len=100), "'max_len' must be a whole number from 1 to 16"),
    ("bert", lambda c: c.update(vocab=[t.replace("<mask>", "<m>") for t in c["vocab"]]),
     "'special_tokens' names '<mask>', which 'vocab' does not hold"),
    ("bert", lambda c: c.update(lowercase="yes"), "'lowercase' must be true or false"),
], ids=["lm-vocab-smaller-than-embedding", "lm-vocab-duplicate", "lm-text-level",
        "lm-text-preprocess", "mt-vocab-larger-than-embedding", "mt-special-token-missing",
        "mt-decode-beyond-position-table", "mt-num-steps-text", "mt-beam-huge",
        "mt-length-penalty-text", "mt-position-table-huge", "bert-max-len-beyond-table",
        "bert-without-mask-token", "bert-lowercase-text"])
def test_text_export_fields_are_checked_against_the_model(which, edit, needle, text_exports,
                                                          tmp_path, capsys) -> None:
    exported = _edited(text_exports[which], tmp_path, edit)
    before = snapshot(exported)
    argv = {"lm": ["generate", "--num-tokens", "2"], "mt": ["translate", "go ."],
            "bert": ["fill-mask", "the <mask> ."]}[which]
    code, out, err = call(predict.main, argv[0], "--export", exported, *argv[1:],
                          capsys=capsys)
    line = one_error_line(err)
    assert code == 1 and needle in line and out == "", line
    assert_unchanged(before, exported)


def test_classify_fits_idx_images_of_another_size_in_small_batches(tiny_run, tmp_path,
                                                                   monkeypatch,
                                                                   capsys) -> None:
    """32 x 32 IDX images for a 28 x 28 model are fitted (not a shape error); images of many
    values go through in smaller batches than --batch-size, with the same results."""
    images = np.random.default_rng(0).integers(0, 255, size=(3, 32, 32))
    idx = write_idx(tmp_path / "big-images-idx3-ubyte", images)
    exported = tiny_run / "run" / "export"
    code, out, err = call(predict.main, "classify", "--export", exported, idx, capsys=capsys)
    assert code == 0 and err == "" and out.count("\n") == 3, err
    monkeypatch.setattr(predict, "MAX_BATCH_VALUES", 28 * 28)  # one image per batch
    code, again, err = call(predict.main, "classify", "--export", exported, idx,
                            capsys=capsys)
    assert code == 0 and again == out, err


@pytest.mark.parametrize("write, needle", [
    (lambda p: torch.save(build_model("mlp"), p), "holds Python objects that only a full "
     "unpickling would rebuild (d2l_lightning.models.mlp.MLP, as a torch.save(model) file"),
    (lambda p: torch.save({"state_dict": {}, "hyper_parameters": {}, "path": Path("/x")}, p),
     "(pathlib.PosixPath, as a torch.save(model) file does), and export.py reads checkpoints "
     "with weights_only=True"),
    (lambda p: p.write_bytes(b""), "is not a checkpoint torch can read (EOFError)"),
    (lambda p: torch.save([1, 2], p), "is not a checkpoint of train.py (it lacks"),
    (lambda p: torch.save({"state_dict": {}, "hyper_parameters": {"arch": "nope"}}, p),
     "was written by a model this version does not know ('nope')"),
], ids=["torch-save-model", "checkpoint-with-an-object", "empty-file", "a-list",
        "unknown-model"])
def test_export_command_refuses_a_checkpoint_it_cannot_read(write, needle, tiny_run, tmp_path,
                                                           capsys) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_run / "run" / "config.yaml", run)
    ckpt = run / "checkpoints" / "model.ckpt"
    write(ckpt)
    before = snapshot(run)
    code, out, err = call(export.main, ckpt, capsys=capsys)
    line = one_error_line(err)
    assert code == 1 and needle in line and str(ckpt) in line and out == "", line
    assert_unchanged(before, run)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml"]


def test_export_command_names_weights_that_do_not_match(tiny_run, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run / "run" / "checkpoints", run / "checkpoints")
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    saved["state_dict"].popitem()
    torch.save(saved, run / "checkpoints" / "last.ckpt")
    before = snapshot(run)
    code, _, err = call(export.main, run / "checkpoints" / "last.ckpt", capsys=capsys)
    line = one_error_line(err)
    assert code == 1 and "its weights do not match the 'mlp' model" in line, line
    assert "Missing key(s)" in line
    assert_unchanged(before, run)
    assert not (run / "export-last").exists()


def _csv_lines(text: str, edit) -> str:
    lines = text.splitlines()
    edit(lines)
    return "\n".join(lines) + "\n"


def _cell(column: str, value: str, row: int = 1):
    def edit(lines: list[str]) -> None:
        header = lines[0].split(",")
        cells = lines[row].split(",")
        cells[header.index(column)] = value
        lines[row] = ",".join(cells)
    return edit


@pytest.mark.parametrize("make, needle", [
    (lambda t: "\x00\x01 garbage\nnot, a\nmetrics file\n", "has no 'step' column"),
    (lambda t: b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "is not a text file (not UTF-8)"),
    (lambda t: t.splitlines()[0] + "\n", "holds a header line but no metric row yet"),
    (lambda t: "", "is empty (not even a header line)"),
    (lambda t: _csv_lines(t, _cell("train/loss", "abc")),
     "line 2: train/loss is 'abc', not a number; fix or delete that line"),
    (lambda t: _csv_lines(t, _cell("step", "inf")), "line 2: step is 'inf', not a whole number"),
    (lambda t: t.replace("step,", "stp,", 1), "has no 'step' column in its header line"),
    (lambda t: _csv_lines(t, lambda ls: ls.__setitem__(1, ls[1] + ",1,2")),
     "line 2: more values than the header line has columns"),
], ids=["garbage", "binary", "header-only", "empty", "non-numeric-value", "infinite-step",
        "missing-step-column", "more-values-than-columns"])
def test_plot_of_a_malformed_metrics_csv_is_one_sentence(make, needle, tiny_run, tmp_path,
                                                         capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_run / "run" / "config.yaml", run)
    content = make((tiny_run / "run" / "metrics.csv").read_text())
    (run / "metrics.csv").write_bytes(content if isinstance(content, bytes) else
                                      content.encode())
    before = snapshot(run)
    code, out, err = call(plot.main, run, "--out", tmp_path / "curves.png", capsys=capsys)
    line = one_error_line(err)
    assert code == 1 and needle in line and str(run / "metrics.csv") in line, line
    assert_unchanged(before, run)
    assert not (tmp_path / "curves.png").exists() and out == ""


def test_ctrl_c_in_predict_and_export_is_one_line(tiny_run, text_exports, tmp_path,
                                                  monkeypatch, capsys) -> None:
    """Was: a KeyboardInterrupt traceback from predict.py (e.g. a long generation) and
    export.py."""
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    from d2l_lightning.models import generate

    monkeypatch.setattr(generate, "generate", interrupt)  # mid-generation
    code, _, err = call(predict.main, "generate", "--export", text_exports["lm"], "--prefix", "go",
                        capsys=capsys)
    assert code == 130 and "stopped by SIGINT (Ctrl-C)" in one_error_line(err)
    run = tmp_path / "run"
    shutil.copytree(tiny_run / "run" / "checkpoints", run / "checkpoints")
    before = snapshot(run)
    monkeypatch.setattr(export, "export_checkpoint", interrupt)
    code, _, err = call(export.main, run / "checkpoints" / "last.ckpt", capsys=capsys)
    assert code == 130 and "no file in" in one_error_line(err)
    assert_unchanged(before, run)
