"""The fault table (docs/reliability.md), models and transfer: ``--init-from`` heads, freezing
every parameter, non-positive model sizes and ``--resize``.

Refusals assert the exit status 2, one stderr line without a traceback, no run folder, and
every file that existed before byte-identical after.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import call
from d2l_lightning.cli import train
from d2l_lightning.lit_models import ImageClassificationTask
from d2l_lightning.models import build_model, save_export
from faults_helpers import TINY, assert_unchanged, one_error_line, snapshot

FASHION = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "ankle boot"]
DIGITS = [str(i) for i in range(10)]
HEAD = "net.3"  # the MLP's classifier (its last nn.Linear)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Any]:
    """An MLP 'trained' on Fashion-MNIST as an export folder and as a checkpoint, plus an
    export that records no class names (``0, 1, ...``, as a model without names exports)."""
    root = tmp_path_factory.mktemp("sources")
    torch.manual_seed(0)
    model = build_model("mlp", num_hiddens=16)
    cfg = {"arch": "mlp", "task": "image_classification", "model_kwargs": {"num_hiddens": 16}}
    save_export(model, {**cfg, "class_names": FASHION}, root / "export")
    save_export(model, {**cfg, "class_names": list(range(10))}, root / "unnamed")
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"arch": "mlp", "class_names": FASHION}},
               root / "fashion.ckpt")
    return {"export": root / "export", "checkpoint": root / "fashion.ckpt",
            "unnamed": root / "unnamed", "weights": model.state_dict()}


@pytest.mark.parametrize("source", ["export", "checkpoint"])
@pytest.mark.parametrize("target, kept, says", [
    (FASHION, True, "head loaded too (the same 10 classes in the same order)"),
    (DIGITS, False, "other classes: class 0 is 't-shirt' there, '0' here"),
    (FASHION[1:] + FASHION[:1], False, "the same classes in another order: class 0 is "
                                       "'t-shirt' there, 'trouser' here"),
], ids=["same-labels", "same-count-other-names", "permuted-order"])
def test_init_from_keeps_the_head_only_for_the_same_labels_in_order(
        sources, source, target, kept, says) -> None:
    """A head is kept only for the source's labels in their order; else it is new (and the
    ``init from`` line says why); the rest is always loaded."""
    module = ImageClassificationTask("mlp", model_kwargs={"num_hiddens": 16},
                                     class_names=target, init_from=str(sources[source]))
    line = module.load_initial_weights()
    assert "\n" not in line and says in line, line
    assert ("new (head)" in line) != kept, line
    own = module.model.state_dict()
    for key, value in sources["weights"].items():
        assert torch.equal(own[key], value) == (kept or not key.startswith(HEAD + ".")), key


def test_init_from_a_source_without_class_names_gets_a_new_head(sources) -> None:
    module = ImageClassificationTask("mlp", model_kwargs={"num_hiddens": 16},
                                     class_names=DIGITS, init_from=str(sources["unnamed"]))
    line = module.load_initial_weights()
    assert "new (head)" in line and "the source records no class names" in line, line
    assert not torch.equal(module.model.state_dict()[f"{HEAD}.weight"],
                           sources["weights"][f"{HEAD}.weight"])
    keep = ImageClassificationTask("mlp", model_kwargs={"num_hiddens": 16}, class_names=DIGITS,
                                   init_from=str(sources["export"]), new_head=False)
    assert "head loaded too (new_head=false, although other classes" in (
        keep.load_initial_weights())
    assert torch.equal(keep.model.state_dict()[f"{HEAD}.weight"],
                       sources["weights"][f"{HEAD}.weight"])


def test_init_from_another_dataset_with_as_many_classes_says_the_head_is_new(
        sources, data_root, tmp_path, capsys) -> None:
    """The issue's case: a Fashion-MNIST export initialises an MNIST linear probe."""
    before = snapshot(data_root, sources["export"])
    code, out, err = call(train.main, *TINY, "--data-dir", data_root, "--run-dir",
                          tmp_path / "run", "--init-from", sources["export"], "--freeze",
                          "backbone", "--limit-train-batches", "1", "--no-test", capsys=capsys)
    assert code == 0 and "Traceback" not in err, err
    lines = [ln for ln in out.splitlines() if ln.startswith("init from")]
    assert len(lines) == 1, out
    assert "new (head): net.3.weight, net.3.bias (other classes: class 0 is 't-shirt'" in (
        lines[0])
    assert_unchanged(before, data_root, sources["export"])


@pytest.mark.parametrize("prefixes", [["backbone", "head"], ["net"]],
                         ids=["backbone-and-head", "the-whole-model"])
def test_freezing_every_parameter_is_refused(prefixes, data_root, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    before = snapshot(data_root)
    code, _, err = call(train.main, *TINY, "--data-dir", data_root, "--run-dir", run,
                        "--freeze", *prefixes, capsys=capsys)
    line = one_error_line(err)
    assert code == 2 and line.startswith("train.py: error: --freeze"), line
    assert "freezes every parameter of MLP, which leaves nothing to train" in line
    assert not run.exists()
    assert_unchanged(before, data_root)


@pytest.fixture(scope="module")
def text_root(tmp_path_factory) -> Path:
    """A data root with a tiny Time Machine."""
    from test_language_modeling import BOOK

    root = tmp_path_factory.mktemp("text")
    (root / "timemachine").mkdir()
    (root / "timemachine" / "timemachine.txt").write_text(BOOK * 6, encoding="utf-8")
    return root


MAMBA = ["--model", "mamba", "--data", "time_machine", "--num-hiddens", "16", "--max-epochs",
         "1", "--limit-train-batches", "2", "--limit-val-batches", "1", "--no-progress-bar"]


@pytest.mark.parametrize("flags, needle", [
    ([*MAMBA, "--model-arg", "d_state=0"], "constructor argument d_state must be at least 1"),
    ([*MAMBA, "--model-arg", "d_state=-2"], "constructor argument d_state must be at least 1"),
    ([*MAMBA, "--model-arg", "d_conv=0"], "constructor argument d_conv must be at least 1"),
    ([*MAMBA, "--model-arg", "expand=0"], "constructor argument expand must be at least 1"),
    ([*MAMBA, "--model-arg", "expand=-1"], "constructor argument expand must be at least 1"),
    ([*TINY, "--model", "vit", "--model-arg", "patch_size=0"], "patch_size must be at least 1"),
    ([*TINY, "--num-hiddens", "0"], "--num-hiddens: model.num_hiddens must be at least 1"),
], ids=["d_state-0", "d_state-negative", "d_conv-0", "expand-0", "expand-negative",
        "vit-patch_size-0", "num-hiddens-0"])
def test_non_positive_model_size_is_refused(flags, needle, data_root, text_root, tmp_path,
                                            capsys) -> None:
    root = text_root if "mamba" in flags else data_root
    run = tmp_path / "run"
    before = snapshot(root)
    code, _, err = call(train.main, *flags, "--data-dir", root, "--run-dir", run,
                        capsys=capsys)
    line = one_error_line(err)
    assert code == 2 and line.startswith("train.py: error:") and needle in line, line
    assert not run.exists()
    assert_unchanged(before, root)


@pytest.mark.parametrize("flags", [["--resize", "0"], ["--resize", "-3"],
                                   ["--task-arg", "resize=0"]],
                         ids=["resize-0", "resize-negative", "task-arg-resize-0"])
def test_non_positive_resize_is_refused(flags, data_root, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    before = snapshot(data_root)
    code, _, err = call(train.main, *TINY, "--data-dir", data_root, "--run-dir", run, *flags,
                        capsys=capsys)
    line = one_error_line(err)
    assert code == 2 and "task.resize must be at least 1" in line and flags[0] in line, line
    assert not run.exists()
    assert_unchanged(before, data_root)
