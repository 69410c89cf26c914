"""Run folders, in-process: the fields read from a checkpoint, config comparisons, making a new
run's folder (its lock, refusals, set-aside starts) and which partial files a start removes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from run_helpers import (  # noqa: F401 (fixtures)
    CONFIG,
    FAKE_PID,
    RESUMABLE_VALUES,
    cli,
    hold_lock,
    is_locked,
    listing,
    save_ckpt,
    single_process,
    write_run,
)

from d2l_lightning.training.cluster import RUN_DIR_ENV
from d2l_lightning.training.config import ConfigError, Layer, dump_config
from d2l_lightning.training.lock import LOCK_NAME
from d2l_lightning.training.runs import (
    RunFolder,
    check_arch,
    make_run_dir,
    plan_resume,
    read_checkpoint,
    remove_partial_files,
    same_config,
)

# ---------------------------------------------------------------- checkpoints and comparisons


class NotPlainData:
    """A pickled object: loading it would run code, so a checkpoint holding it is refused."""


def test_read_checkpoint_returns_arch_step_old_blocks_and_epoch(tmp_path) -> None:
    assert read_checkpoint(save_ckpt(tmp_path / "a.ckpt", "gru", 57, 4), "x") == (
        "gru", 57, False, 4)
    old = save_ckpt(tmp_path / "b.ckpt", "bert", 9, 0,
                    {"model.blks.1.attention.in_proj_weight": torch.zeros(1)})
    assert read_checkpoint(old, "x") == ("bert", 9, True, 0)
    assert read_checkpoint(save_ckpt(tmp_path / "c.ckpt", epoch=None), "x") == (
        "mlp", 30, False, 0)  # a checkpoint without an epoch: epoch 0


def test_a_checkpoint_written_on_a_gpu_is_read_on_any_machine(tmp_path, monkeypatch) -> None:
    """Its tensors are tagged ``cuda:0``; without CUDA they still load (to the CPU)."""
    import torch.serialization

    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        path = save_ckpt(tmp_path / "gpu.ckpt", "lenet", 12, 1)
    assert read_checkpoint(path, "--ckpt") == ("lenet", 12, False, 1)


@pytest.mark.parametrize("content, error", [
    ({"global_step": 3, "state_dict": {}}, "KeyError"),  # no hyper-parameters: not train.py's
    ({"hyper_parameters": {"arch": "mlp"}, "global_step": "x", "state_dict": {}}, "ValueError"),
    ({"hyper_parameters": {"arch": "mlp"}, "global_step": 3, "state_dict": {},
      "extra": NotPlainData()}, "UnpicklingError"),
])
def test_a_file_that_is_no_checkpoint_of_train_py_is_named_in_one_sentence(tmp_path, content,
                                                                          error) -> None:
    path = tmp_path / "x.ckpt"
    torch.save(content, path)
    with pytest.raises(ConfigError) as e:
        read_checkpoint(path, "--ckpt")
    assert str(e.value) == f"--ckpt: {path} is not a readable checkpoint of train.py ({error})"
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_a_file_that_is_not_a_torch_file_is_named_in_one_sentence(tmp_path) -> None:
    path = tmp_path / "x.ckpt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError) as e:
        read_checkpoint(path, "--resume")
    assert re.fullmatch(rf"--resume: {re.escape(str(path))} is not a readable checkpoint of "
                        r"train\.py \(\w+Error\)", str(e.value)), str(e.value)


def test_check_arch_compares_the_checkpoints_model_with_the_configs(tmp_path) -> None:
    config = tmp_path / "config.yaml"
    other_settings = Layer("config", {"model": {"name": "mlp", "num_hiddens": 99}})
    check_arch("mlp", tmp_path / "a.ckpt", [other_settings, Layer("record")], config, "--ckpt")
    with pytest.raises(ConfigError) as e:
        check_arch("lenet", tmp_path / "a.ckpt", [other_settings], config, "--ckpt")
    assert str(e.value) == (f"--ckpt: {tmp_path / 'a.ckpt'} was written by a 'lenet' run, but "
                            f"{config} describes a 'mlp' run")
    with pytest.raises(ConfigError) as e:
        check_arch("mlp", tmp_path / "a.ckpt", [Layer("config", {"data": {}})], config, "w")
    assert str(e.value).endswith(f"{config} describes a 'None' run")


def test_same_config_is_true_only_for_the_same_values(tmp_path) -> None:
    cfg = {"model": {"name": "mlp", "num_hiddens": (64, 32)},
           "data": {"data_dir": Path("/d"), "batch_size": 16}}
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg, "header"), encoding="utf-8")
    assert same_config(path, cfg)  # a tuple and a path as YAML writes them
    assert not same_config(path, {**cfg, "data": {**cfg["data"], "batch_size": 32}})
    assert not same_config(path, {**cfg, "run": {"seed": 0}})
    assert not same_config(tmp_path / "none.yaml", cfg)


@pytest.mark.parametrize("content", [b"model: [unclosed\n", b"model: {name: caf\xe9}\n"],
                         ids=["yaml-error", "not-utf8"])
def test_same_config_of_an_unreadable_file_is_false(tmp_path, content) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    assert same_config(path, {"model": {"name": "café"}}) is False


# ----------------------------------------------------------------------- making the run folder


def test_a_new_folder_is_made_with_its_parents_and_locked(tmp_path, capsys) -> None:
    folder = RunFolder(tmp_path / "a" / "b" / "run", config_written=False)
    assert make_run_dir(folder) == tmp_path / "a" / "b" / "run"
    assert folder.lock is not None and is_locked(folder.path)
    assert (folder.path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    assert os.environ[RUN_DIR_ENV] == str(folder.path)
    assert capsys.readouterr().out == ""
    folder.release()
    assert not is_locked(folder.path)


def test_a_folder_another_process_creates_is_left_to_it(tmp_path) -> None:
    folder = RunFolder(tmp_path / "run", True, create=False)
    assert make_run_dir(folder) == tmp_path / "run"
    assert not folder.path.exists() and folder.lock is None
    assert RUN_DIR_ENV not in os.environ


def test_a_folder_held_by_another_process_is_refused(tmp_path, hold_lock) -> None:  # noqa: F811 (fixture)
    (tmp_path / "run").mkdir()
    hold_lock(tmp_path / "run")
    folder = RunFolder(tmp_path / "run", config_written=False)
    with pytest.raises(ConfigError, match=f"in use by process {FAKE_PID}"):
        make_run_dir(folder)
    assert folder.lock is None and RUN_DIR_ENV not in os.environ


@pytest.mark.parametrize("written, files, refused", [
    (False, ["config.yaml"], True),  # a run started meanwhile, before its checkpoint
    (False, ["results.json"], True),
    (True, ["config.yaml", "checkpoints/last.ckpt"], True),
    (True, ["config.yaml"], False),  # the same config, reused
    (False, ["notes.txt"], False),
], ids=["config", "results", "checkpoint", "reused", "other-files"])
def test_a_folder_that_got_a_run_meanwhile_is_refused_and_unlocked(tmp_path, written, files,
                                                                   refused) -> None:
    for name in files:
        (tmp_path / "run" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "run" / name).write_text("x")
    folder = RunFolder(tmp_path / "run", config_written=written)
    if not refused:
        make_run_dir(folder)
        assert folder.lock is not None and listing(folder.path) == sorted([*files, LOCK_NAME])
        return
    with pytest.raises(ConfigError) as e:
        make_run_dir(folder)
    assert str(e.value) == (f"{folder.path} changed while this command was starting (another "
                            "process wrote a run into it); choose another --run-dir")
    assert folder.lock is None and not is_locked(folder.path)
    assert RUN_DIR_ENV not in os.environ


def test_a_failed_start_is_set_aside_after_its_partial_files_are_removed(tmp_path,
                                                                         capsys) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("x")
    (run / "metrics.csv").write_text("x")
    (run / ".metrics.csv.4242.tmp").write_text("x")
    folder = RunFolder(run, config_written=False, set_aside=True)
    assert make_run_dir(folder) == run
    assert listing(run) == [LOCK_NAME, "attempt-1", "attempt-1/checkpoints",
                            "attempt-1/config.yaml", "attempt-1/metrics.csv"]
    assert capsys.readouterr().out == (
        f"removed 1 partial file(s) that a stopped process left in {run}: "
        ".metrics.csv.4242.tmp\n"
        f"{run} held a run that stopped before its first checkpoint; its files are kept in "
        f"{run / 'attempt-1'}\n")


def test_a_resume_starts_once_the_run_is_as_planned(tmp_path, capsys) -> None:
    run = write_run(tmp_path / "run")
    (run / "checkpoints" / ".last.ckpt.k3x9_q2a").write_text("x")
    (run / "export").mkdir()
    (run / "export" / ".model.safetensors.abcd1234").write_text("x")
    plan = plan_resume("last", cli({("run", "run_dir"): str(run)}), [])
    folder = RunFolder(run, config_written=True)
    assert make_run_dir(folder, plan) == run and folder.lock is not None
    assert capsys.readouterr().out == (
        f"removed 2 partial file(s) that a stopped process left in {run}: "
        ".last.ckpt.k3x9_q2a, .model.safetensors.abcd1234\n")
    folder.release()
    (run / "config.resume.yaml").write_text("{}\n")  # another resume since the plan
    folder = RunFolder(run, config_written=True)
    with pytest.raises(ConfigError, match="changed while this command was starting"):
        make_run_dir(folder, plan)
    assert folder.lock is None and not is_locked(run)


# ----------------------------------------------------------------------------- partial files

PARTIAL = [".last.ckpt.k3x9_q2a", ".results.json.abcd1234", ".metrics.csv.4242.tmp",
           ".model.safetensors.0a1b2c3d", ".config.json.________", ".summary.csv.7.tmp",
           ".config.yaml.zzzzzzzz", ".best-03-120.ckpt.a1b2c3d4", ".w.pt.00000000"]
USERS = ["last.ckpt", "results.json", ".notes", "my.ckpt.backup", ".last.ckpt",
         ".last.ckpt.abc1234", ".last.ckpt.abcd12345", ".config.yaml.ORIGINAL",
         ".results.json.Backup01", ".metrics.csv.tmp", ".metrics.csv.42a.tmp",
         ".metrics.csv.4242.tmp.x", "x.last.ckpt.abcd1234", ".last.txt.abcd1234",
         ".results.json.abcd-234", "..json.abcd1234"]


@pytest.mark.parametrize("sub", [".", "checkpoints", "export"])
def test_only_temporary_files_of_atomic_writes_are_removed(tmp_path, sub) -> None:
    where = tmp_path / sub
    where.mkdir(exist_ok=True)
    for name in [*PARTIAL, *USERS]:
        (where / name).write_text("x")
    (where / ".last.ckpt.dddddddd").mkdir()  # a folder is never removed, whatever its name
    assert remove_partial_files(tmp_path) == [where / n for n in sorted(PARTIAL)]
    assert sorted(p.name for p in where.iterdir() if p.is_file()) == sorted(USERS)
    assert (where / ".last.ckpt.dddddddd").is_dir()


def test_partial_files_only_in_the_folder_checkpoints_and_export(tmp_path) -> None:
    for sub in ("export", "attempt-1", "attempt-1/checkpoints", "notes", "export/inner"):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
        (tmp_path / sub / ".last.ckpt.abcd1234").write_text("x")
    (tmp_path / "checkpoints").write_text("a file named like the folder")
    assert remove_partial_files(tmp_path) == [tmp_path / "export" / ".last.ckpt.abcd1234"]
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob(".last.ckpt.*")) == [
        "attempt-1/.last.ckpt.abcd1234", "attempt-1/checkpoints/.last.ckpt.abcd1234",
        "export/inner/.last.ckpt.abcd1234", "notes/.last.ckpt.abcd1234"]
    assert remove_partial_files(tmp_path / "missing") == []
