"""Unit tests of models/export.py (1 of 2): the files an export writes, and every check on
reading it. Tiny models are built from the registry (no training); each refusal is checked as
its whole sentence, each limit at its boundary (test_export_fields.py: the config's fields)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from export_helpers import MT, SOFTMAX, _edit, _refusal, _save
from safetensors.torch import save_file

from d2l_lightning.models import build_model
from d2l_lightning.models import export as ex


def test_limits_are_the_documented_numbers() -> None:
    assert (ex.FORMAT_VERSION, ex.MAX_CONFIG_BYTES, ex.MAX_UNSAVED, ex.MAX_DEPTH,
            ex.MAX_TOKENS) == (1, 67_108_864, 16_777_216, 32, 10_000)
    assert (ex.CONFIG_NAME, ex.WEIGHTS_NAME, ex.UNK) == ("config.json", "model.safetensors",
                                                         "<unk>")


def test_save_writes_two_files_readable_by_the_default_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        out = _save(tmp_path / "a" / "export", task="image_classification")
    finally:
        os.umask(old)
    assert out == tmp_path / "a" / "export"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    full = {"format_version": 1, "arch": "softmax_regression", "model_kwargs": SOFTMAX,
            "task": "image_classification"}
    assert (out / "config.json").read_text() == json.dumps(full, indent=2)
    for name in ("config.json", "model.safetensors"):
        assert (out / name).stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("umask, mode", [(0o077, 0o600), (0o022, 0o644), (0o002, 0o664)])
def test_umask_file_mode_is_0666_less_the_umask_which_it_keeps(umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        assert ex.umask_file_mode() == mode
        assert os.umask(umask) == umask
    finally:
        os.umask(old)


def test_round_trip_gives_the_same_weights_in_eval_mode(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("softmax_regression", **SOFTMAX)
    ex.save_export(model, {"arch": "softmax_regression", "model_kwargs": SOFTMAX}, tmp_path)
    assert _refusal(ex.load_exported, tmp_path, "meta") == (
        f"cannot read {tmp_path / 'model.safetensors'}: device meta is invalid")
    loaded, cfg = ex.load_exported(tmp_path)
    assert cfg == {"format_version": 1, "arch": "softmax_regression", "model_kwargs": SOFTMAX}
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_load_puts_the_model_on_the_map_location(tmp_path: Path) -> None:
    loaded, _ = ex.load_exported(_save(tmp_path), map_location="cuda")
    assert {p.device.type for p in loaded.parameters()} == {"cuda"}


@pytest.mark.parametrize("missing", ["arch", "model_kwargs"])
def test_save_needs_arch_and_model_kwargs(missing: str, tmp_path: Path) -> None:
    cfg = {"arch": "softmax_regression", "model_kwargs": SOFTMAX}
    del cfg[missing]
    model = build_model("softmax_regression", **SOFTMAX)
    assert _refusal(ex.save_export, model, cfg, tmp_path / "x") == \
        f"export config needs '{missing}'"
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("bad, detail", [
    (["net.1.weight"], "net.1.weight"),
    (["net.1.weight", "net.1.bias"], "net.1.weight and 1 more")])
def test_save_refuses_nan_or_inf_weights(bad: list[str], detail: str, tmp_path: Path) -> None:
    model = build_model("softmax_regression", **SOFTMAX)
    with torch.no_grad():
        for i, key in enumerate(bad):
            model.get_parameter(key).view(-1)[-1] = (float("nan"), float("inf"))[i]
    assert _refusal(ex.save_export, model, {"arch": "softmax_regression",
                                            "model_kwargs": SOFTMAX}, tmp_path / "x") == \
        f"refusing to export weights that hold NaN or inf ({detail})"
    assert not (tmp_path / "x").exists()


def test_integer_buffers_are_exported_as_they_are(tmp_path: Path) -> None:
    kw = {"num_classes": 3, "in_channels": 1, "image_size": 28}
    out = _save(tmp_path, "lenet_bn", kw)  # batch norms' num_batches_tracked: int64
    loaded, _ = ex.load_exported(out)
    assert loaded.state_dict()["net.1.num_batches_tracked"].dtype == torch.int64


def test_read_refuses_a_folder_that_does_not_exist(tmp_path: Path) -> None:
    assert _refusal(ex.read_export_config, tmp_path / "no") == \
        f"export folder '{tmp_path / 'no'}' does not exist"


@pytest.mark.parametrize("remove", ["config.json", "model.safetensors"])
def test_read_refuses_a_folder_without_either_file(remove: str, tmp_path: Path) -> None:
    (_save(tmp_path) / remove).unlink()
    assert _refusal(ex.read_export_config, tmp_path) == (
        f"'{tmp_path}' is not an export folder: it needs config.json and model.safetensors "
        "(written by train.py into RUN_DIR/export/)")


def test_read_refuses_a_config_over_the_byte_limit(tmp_path: Path, monkeypatch) -> None:
    size = (_save(tmp_path) / "config.json").stat().st_size
    monkeypatch.setattr(ex, "MAX_CONFIG_BYTES", size)
    assert ex.read_export_config(tmp_path)["arch"] == "softmax_regression"
    monkeypatch.setattr(ex, "MAX_CONFIG_BYTES", size - 1)
    assert _refusal(ex.read_export_config, tmp_path) == (
        f"{tmp_path / 'config.json'} holds {size:,} bytes, more than an export's config ever "
        f"needs ({size - 1:,}); re-export the model with export.py")


def test_read_refuses_text_that_is_not_json(tmp_path: Path) -> None:
    (_save(tmp_path) / "config.json").write_text("{arch")
    assert _refusal(ex.read_export_config, tmp_path).startswith(
        f"{tmp_path / 'config.json'} is not valid JSON (Expecting property name")


def _nest(levels: int) -> Any:
    obj: Any = 0
    for _ in range(levels):
        obj = [obj]
    return obj


@pytest.mark.parametrize("text", [json.dumps({"arch": "softmax_regression", "model_kwargs": {},
                                              "x": _nest(32)}),
                                  "[" * 100_000 + "]" * 100_000])
def test_read_refuses_configs_nested_deeper_than_32(text: str, tmp_path: Path) -> None:
    (_save(tmp_path) / "config.json").write_text(text)
    assert _refusal(ex.read_export_config, tmp_path) == (
        f"{tmp_path / 'config.json'} is nested deeper than 32 levels, which no export is; "
        "re-export the model with export.py")


def test_read_takes_a_config_nested_32_levels(tmp_path: Path) -> None:
    _edit(_save(tmp_path), x=_nest(31))  # the config's mapping is level 1
    assert ex.read_export_config(tmp_path)["x"] == _nest(31)


@pytest.mark.parametrize("obj, depth", [(0, 0), ("a", 0), ({}, 1), ([[1]], 2),
                                        ({"a": [{}], "b": 1}, 3), ([_nest(3), []], 4),
                                        (_nest(40), 33)])
def test_depth_counts_nested_lists_and_mappings(obj: Any, depth: int) -> None:
    assert ex._depth(obj) == depth  # counting stops one level past MAX_DEPTH


@pytest.mark.parametrize("cfg", [[], {"model_kwargs": {}}, {"arch": "mlp"}])
def test_read_needs_a_mapping_with_arch_and_model_kwargs(cfg: Any, tmp_path: Path) -> None:
    (_save(tmp_path) / "config.json").write_text(json.dumps(cfg))
    assert _refusal(ex.read_export_config, tmp_path) == \
        f"{tmp_path / 'config.json'} lacks 'arch' or 'model_kwargs'"


def test_read_needs_arch_to_be_a_name(tmp_path: Path) -> None:
    _edit(_save(tmp_path), arch=["x" * 70])
    assert _refusal(ex.read_export_config, tmp_path) == (
        f"{tmp_path / 'config.json'}: 'arch' must be a model name, got "
        f"{json.dumps(['x' * 70])[:57]}...")


@pytest.mark.parametrize("version, shown", [(0, "0"), (2, "2"), (True, "true"), ("1", "'1'"),
                                            (1.0, "1.0")])
def test_read_refuses_format_versions_it_does_not_know(version: Any, shown: str,
                                                       tmp_path: Path) -> None:
    _edit(_save(tmp_path), format_version=version)
    assert _refusal(ex.read_export_config, tmp_path) == (
        f"{tmp_path / 'config.json'}: 'format_version' {shown} is not one this version of "
        "d2l_lightning reads (1 to 1); re-export the model with this version's export.py")


def test_read_takes_a_config_without_format_version(tmp_path: Path) -> None:
    cfg = {"arch": "softmax_regression", "model_kwargs": SOFTMAX}
    (_save(tmp_path) / "config.json").write_text(json.dumps(cfg))
    assert ex.read_export_config(tmp_path) == cfg


@pytest.mark.parametrize("value, shown", [("ab", "'ab'"), (None, "null"), ([1, 2], "[1, 2]"),
                                          ("x" * 58, repr("x" * 58)),
                                          ("x" * 59, "'" + "x" * 56 + "...")])
def test_show_quotes_strings_writes_json_and_cuts_at_60(value: Any, shown: str) -> None:
    assert ex._show(value) == shown


def test_check_refuses_an_unknown_arch(tmp_path: Path) -> None:
    _edit(_save(tmp_path), arch="nope")
    assert _refusal(ex.check_export, tmp_path).startswith(
        f"{tmp_path / 'config.json'}: unknown model 'nope'; choose from: ")


def test_check_needs_model_kwargs_to_be_a_mapping(tmp_path: Path) -> None:
    _edit(_save(tmp_path), model_kwargs=[1])
    assert _refusal(ex.check_export, tmp_path) == \
        f"{tmp_path / 'config.json'}: 'model_kwargs' must be a mapping"


def test_check_refuses_weights_it_cannot_read(tmp_path: Path) -> None:
    (_save(tmp_path) / "model.safetensors").write_bytes(b"\x08" + b"\0" * 7 + b"{}")
    assert _refusal(ex.check_export, tmp_path).startswith(
        f"cannot read {tmp_path / 'model.safetensors'}: ")


def test_check_refuses_kwargs_the_model_does_not_take(tmp_path: Path) -> None:
    _edit(_save(tmp_path), model_kwargs={**SOFTMAX, "depth": 3})
    assert _refusal(ex.check_export, tmp_path) == (
        f"{tmp_path / 'config.json'}: its model_kwargs do not build a 'softmax_regression' "
        "model (softmax_regression() got an unexpected keyword argument 'depth')")


def test_check_names_the_error_of_a_builder_without_a_message(tmp_path: Path,
                                                              monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise ValueError

    out = _save(tmp_path)
    monkeypatch.setattr(ex, "build_model", refuse)
    assert _refusal(ex.check_export, out) == (
        f"{tmp_path / 'config.json'}: its model_kwargs do not build a 'softmax_regression' "
        "model (ValueError)")


def test_check_refuses_a_config_that_makes_another_number_of_weights(tmp_path: Path) -> None:
    _edit(_save(tmp_path), model_kwargs={**SOFTMAX, "num_classes": 4})
    assert _refusal(ex.check_export, tmp_path) == (
        f"the weights in {tmp_path / 'model.safetensors'} do not match the "
        "'softmax_regression' model described by its config (the config makes 68 values, "
        "the file holds 51)")


def test_check_returns_the_config_and_the_model_on_meta(tmp_path: Path) -> None:
    cfg, model = ex.check_export(_save(tmp_path))
    assert cfg["model_kwargs"] == SOFTMAX
    assert {p.device.type for p in model.parameters()} == {"meta"}


def test_built_tables_may_reach_the_larger_of_the_weights_and_the_limit(
        tmp_path: Path, monkeypatch) -> None:
    out = _save(tmp_path, "transformer_mt", MT)  # 8,000 built values, 1,558 stored
    monkeypatch.setattr(ex, "MAX_UNSAVED", 8_000)
    ex.check_export(out)
    monkeypatch.setattr(ex, "MAX_UNSAVED", 7_999)
    assert _refusal(ex.check_export, out) == (
        f"{tmp_path / 'config.json'}: its model_kwargs make a 'transformer_mt' model with "
        "8,000 values of tables that are built rather than stored (such as a max_len position "
        "table), more than its 1,558 weights; re-export the model with export.py")
    monkeypatch.setattr(ex, "MAX_UNSAVED", 1)
    _edit(out, model_kwargs={**MT, "max_len": 194})  # 1,552 built values, fewer than 1,558
    ex.check_export(out)


def test_load_refuses_weights_of_the_right_count_but_other_names(tmp_path: Path) -> None:
    out = _save(tmp_path)
    save_file({"w": torch.zeros(48), "b": torch.zeros(3)}, str(out / "model.safetensors"))
    assert _refusal(ex.load_exported, out) == (
        f"the weights in {out / 'model.safetensors'} do not match the 'softmax_regression' "
        "model described by its config (Missing key(s) in state_dict: \"net.1.weight\", "
        "\"net.1.bias\". Unexpected key(s) in state_dict: \"b\", \"w\".)")


def test_load_names_the_first_two_lines_of_the_mismatch(tmp_path: Path) -> None:
    out = _save(tmp_path)  # missing, unexpected and a wrong shape: three lines, two named
    save_file({"net.1.weight": torch.zeros(16, 3), "w": torch.zeros(3)},
              str(out / "model.safetensors"))
    assert _refusal(ex.load_exported, out) == (
        f"the weights in {out / 'model.safetensors'} do not match the 'softmax_regression' "
        "model described by its config (Missing key(s) in state_dict: \"net.1.bias\". "
        "Unexpected key(s) in state_dict: \"w\".)")


def test_atomic_write_writes_beside_the_target_then_renames(tmp_path: Path) -> None:
    seen = []

    def write(tmp: str) -> None:
        seen.append(Path(tmp))
        Path(tmp).write_text("new")

    target = tmp_path / "f.txt"
    ex.atomic_write(target, write)
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["f.txt"]
    assert seen[0].parent == tmp_path and seen[0].name.startswith(".f.txt.")


def test_a_failed_atomic_write_leaves_the_target_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_text("old")

    def write(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ex.atomic_write(target, write)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]


def test_a_write_that_removed_its_temporary_file_raises_its_own_error(tmp_path: Path) -> None:
    def write(tmp: str) -> None:
        Path(tmp).unlink()
        raise OSError("disk full")

    with pytest.raises(OSError, match="^disk full$"):
        ex.atomic_write(tmp_path / "f.txt", write)
    assert os.listdir(tmp_path) == []
