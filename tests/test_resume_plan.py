"""Resume plans, in-process on tiny folders in the real formats: what a resume may change and
what it refuses, the schedules sized to a run, the record it writes, finding the run.

(The checkpoint fields, config comparisons, the new run folder and its partial files:
``test_run_folders.py``.)
"""

from __future__ import annotations

import os
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
from d2l_lightning.training.config import ConfigError, load_config_file
from d2l_lightning.training.runs import (
    RESUMABLE,
    ResumePlan,
    plan_resume,
)

# ------------------------------------------------------------------ what a resume may change


def test_the_resumable_keys_are_run_length_logging_and_where_the_data_is() -> None:
    assert {*RESUMABLE_VALUES, ("run", "run_dir")} == RESUMABLE


@pytest.mark.parametrize("key", list(RESUMABLE_VALUES), ids=".".join)
def test_a_resume_takes_each_resumable_key_as_its_only_change(tmp_path, key) -> None:
    run = write_run(tmp_path / "run")
    before = listing(run)
    plan = plan_resume("last", cli({key: RESUMABLE_VALUES[key], ("run", "run_dir"): str(run)}),
                       [])
    assert plan.changes.values == {key[0]: {key[1]: RESUMABLE_VALUES[key]}}  # run_dir dropped
    assert plan.changes.label == "command line"
    assert plan.changes.sources == {key: f"--{key[1].replace('_', '-')}",
                                    ("run", "run_dir"): "--run-dir"}
    assert listing(run) == before  # a plan writes nothing


def test_a_resume_with_only_the_run_folder_changes_nothing(tmp_path) -> None:
    run = write_run(tmp_path / "run")
    plan = plan_resume("last", cli({("run", "run_dir"): str(run)}), [])
    assert plan.changes.values == {}


@pytest.mark.parametrize("key, value", [
    (("model", "num_hiddens"), 32), (("model", "name"), "lenet"), (("data", "batch_size"), 8),
    (("data", "name"), "fashion_mnist"), (("task", "label_smoothing"), 0.1),
    (("optim", "lr"), 0.5), (("optim", "scheduler"), "cosine"),
    (("trainer", "precision"), "bf16-true"), (("trainer", "gradient_clip_val"), 1.0),
    (("trainer", "accumulate_grad_batches"), 2), (("run", "seed"), 1),
    (("run", "matmul_precision"), "high"),
], ids=lambda v: ".".join(v) if isinstance(v, tuple) else "")
@pytest.mark.parametrize("flags", [True, False], ids=["flag", "dotted"])
def test_a_resume_refuses_a_key_that_changes_the_run(tmp_path, key, value, flags) -> None:
    run = write_run(tmp_path / "run")
    before = listing(run)
    flag = f"--{key[1].replace('_', '-')}" if flags else f"--{key[0]}.{key[1]}"
    with pytest.raises(ConfigError) as e:
        plan_resume("last", cli({("run", "run_dir"): str(run), key: value}, flags), [])
    assert str(e.value) == (
        f"{flag} cannot be given with --resume, which continues a run exactly as configured "
        f"(it would change the run's {key[0]}); branch off instead with --config "
        f"RUN/config.yaml {flag} ...")
    assert listing(run) == before


def test_a_resume_refuses_a_config_file(tmp_path) -> None:
    run = write_run(tmp_path / "run")
    with pytest.raises(ConfigError) as e:
        plan_resume("last", cli({("run", "run_dir"): str(run)}), ["other.yaml"])
    assert str(e.value) == ("--config cannot be given with --resume: the run's own config.yaml "
                            "is used")


def plan_at(run: Path, changes: dict | None = None, step: int = 30, epoch: int = 2
            ) -> ResumePlan:
    return ResumePlan(run, run / "checkpoints" / "last.ckpt", [], cli(changes or {}),
                      run / "config.resume.yaml", step, epoch)


def resolved(scheduler: str = "none", **trainer) -> dict:
    return {"optim": {"scheduler": scheduler},
            "trainer": {"max_epochs": 3, "max_steps": -1, **trainer}}


@pytest.mark.parametrize("key, value, need", [
    ("max_epochs", 1, 3), ("max_epochs", 2, 3), ("max_steps", 0, 30), ("max_steps", 29, 30),
])
@pytest.mark.parametrize("given", [True, False], ids=["given", "from-config"])
def test_a_length_shorter_than_the_checkpoint_is_refused_naming_the_minimum(
        tmp_path, key, value, need, given) -> None:
    """The checkpoint was written in epoch 2 (0-based), at step 30: 3 epochs, 30 steps."""
    run = tmp_path / "run"
    plan = plan_at(run, {("trainer", key): value} if given else {})
    flag = f"--{key.replace('_', '-')}" if given else f"trainer.{key}"
    with pytest.raises(ConfigError) as e:
        plan.check(resolved(**{key: value}))
    assert str(e.value) == (
        f"{flag} {value} is shorter than what {run} has trained already (last.ckpt is at "
        f"epoch 3, step 30); give at least {need}, or branch off a shorter run with --config "
        f"{run / 'config.yaml'} --run-dir NEW")


@pytest.mark.parametrize("key, value", [
    ("max_epochs", 3), ("max_epochs", 4), ("max_epochs", -1), ("max_epochs", None),
    ("max_steps", 30), ("max_steps", 31), ("max_steps", -1), ("max_steps", None),
])
def test_a_length_at_least_the_checkpoints_or_unbounded_is_allowed(tmp_path, key,
                                                                   value) -> None:
    plan_at(tmp_path, {("trainer", key): value}).check(resolved(**{key: value}))


def test_a_checkpoint_of_the_first_epoch_allows_one_epoch(tmp_path) -> None:
    plan_at(tmp_path, {("trainer", "max_epochs"): 1}, step=14, epoch=0).check(
        resolved(max_epochs=1))
    with pytest.raises(ConfigError, match="give at least 1,"):
        plan_at(tmp_path, step=14, epoch=0).check(resolved(max_epochs=0))


#: the keys that size each schedule (a resumed scheduler keeps the size it was built with)
SIZED_BY = {"cosine": {"max_epochs", "max_steps", "limit_train_batches"},
            "onecycle": {"max_epochs", "max_steps", "limit_train_batches"},
            "step": {"max_epochs"}, "plateau": set(), "none": set()}


@pytest.mark.parametrize("scheduler", list(SIZED_BY))
@pytest.mark.parametrize("key, value", [
    ("max_epochs", 10), ("max_steps", 100), ("limit_train_batches", 0.5),
    ("limit_val_batches", 2), ("log_every_n_steps", 5),
])
def test_a_schedule_sized_to_the_run_refuses_a_change_of_its_length(tmp_path, scheduler, key,
                                                                    value) -> None:
    plan = plan_at(tmp_path, {("trainer", key): value})
    cfg = resolved(scheduler, **{key: value})
    if key not in SIZED_BY[scheduler]:
        plan.check(cfg)
        return
    with pytest.raises(ConfigError) as e:
        plan.check(cfg)
    assert str(e.value) == (
        f"--{key.replace('_', '-')} cannot change when resuming a run with the {scheduler} "
        f"schedule, which was sized to the run's original length; start a new run with "
        f"--config {tmp_path / 'config.yaml'} instead")


@pytest.mark.parametrize("scheduler", list(SIZED_BY))
@pytest.mark.parametrize("changes", [{}, {("data", "data_dir"): "/d"}, {("run", "test"): False}],
                         ids=["nothing", "data_dir", "test"])
def test_a_resume_that_leaves_the_trainer_alone_keeps_any_schedule(tmp_path, scheduler,
                                                                   changes) -> None:
    plan_at(tmp_path, changes).check(resolved(scheduler))


# --------------------------------------------------------------------- the plan and its record


def test_a_plan_holds_the_checkpoints_step_epoch_and_the_runs_layers(tmp_path) -> None:
    run = write_run(tmp_path / "run", records=2, step=42, epoch=3)
    plan = plan_resume("last", cli({("run", "run_dir"): str(run)}), [])
    assert (plan.run_dir, plan.ckpt) == (run, run / "checkpoints" / "last.ckpt")
    assert (plan.step, plan.epoch) == (42, 3)
    assert [layer.label for layer in plan.layers] == [
        f"config {run / 'config.yaml'}", f"config {run / 'config.resume.yaml'}",
        f"config {run / 'config.resume2.yaml'}"]
    assert [layer.values["trainer"]["max_epochs"] for layer in plan.layers] == [3, 4, 5]


@pytest.mark.parametrize("records, name", [(0, "config.resume.yaml"), (1, "config.resume2.yaml"),
                                           (2, "config.resume3.yaml")])
def test_each_resume_records_in_the_next_numbered_file(tmp_path, records, name) -> None:
    run = write_run(tmp_path / "run", records=records)
    plan = plan_resume("last", cli({("run", "run_dir"): str(run)}), [])
    assert plan.record == run / name


def test_the_record_holds_exactly_what_the_resume_changed(tmp_path) -> None:
    run = write_run(tmp_path / "run")
    plan = plan_resume("last", cli({("run", "run_dir"): str(run), ("trainer", "max_epochs"): 5,
                                    ("data", "data_dir"): "/d"}), [])
    plan.write_record("resumed from last.ckpt at step 30\nonly what this resume changed")
    assert (run / "config.resume.yaml").read_text(encoding="utf-8") == (
        "# resumed from last.ckpt at step 30\n# only what this resume changed\n"
        "data:\n  data_dir: /d\ntrainer:\n  max_epochs: 5\n")
    assert load_config_file(run / "config.resume.yaml").values == {
        "data": {"data_dir": "/d"}, "trainer": {"max_epochs": 5}}


def test_a_resume_that_changes_nothing_records_an_empty_file(tmp_path) -> None:
    run = write_run(tmp_path / "run", records=1)
    plan = plan_resume("last", cli({("run", "run_dir"): str(run)}), [])
    plan.write_record("resumed at step 30\nonly what this resume changed")
    assert (run / "config.resume2.yaml").read_text(encoding="utf-8") == (
        "# resumed at step 30\n# only what this resume changed\n{}\n")
    assert load_config_file(run / "config.resume2.yaml").values == {}
    assert plan_resume("last", cli({("run", "run_dir"): str(run)}), []).record == (
        run / "config.resume3.yaml")


def test_a_plan_is_refused_once_another_process_moved_the_run_on(tmp_path) -> None:
    run = write_run(tmp_path / "run")
    plan = plan_resume("last", cli({("run", "run_dir"): str(run)}), [])
    plan.check_unchanged()  # nothing moved
    message = (f"{run} changed while this command was starting (another process continued it "
               "to step {}); run the command again")
    save_ckpt(run / "checkpoints" / "last.ckpt", step=31)
    with pytest.raises(ConfigError) as e:
        plan.check_unchanged()
    assert str(e.value) == message.format(31)
    save_ckpt(run / "checkpoints" / "last.ckpt", step=30)
    (run / "config.resume.yaml").write_text("{}\n")  # another resume, at the same step
    with pytest.raises(ConfigError) as e:
        plan.check_unchanged()
    assert str(e.value) == message.format(30)


# ------------------------------------------------------------- finding the run and checkpoint


def test_a_named_checkpoint_belongs_to_the_run_above_its_folder(tmp_path, monkeypatch) -> None:
    run = write_run(tmp_path / "run", step=30)
    ckpt = save_ckpt(run / "checkpoints" / "mid.ckpt", step=12, epoch=1)
    plan = plan_resume(str(ckpt), cli({}), [])
    assert (plan.run_dir, plan.ckpt, plan.step, plan.epoch) == (run, ckpt, 12, 1)
    monkeypatch.chdir(tmp_path)  # the same folder spelt relatively
    assert plan_resume(str(ckpt), cli({("run", "run_dir"): "run"}), []).step == 12


def test_a_named_checkpoint_of_another_run_folder_is_refused(tmp_path) -> None:
    run = write_run(tmp_path / "run")
    other = tmp_path / "other"
    other.mkdir()
    ckpt = run / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError) as e:
        plan_resume(str(ckpt), cli({("run", "run_dir"): str(other)}), [])
    assert str(e.value) == (f"--resume: checkpoint {ckpt} belongs to the run {run}, not to "
                            f"--run-dir {other}")


def test_a_missing_checkpoint_file_is_refused(tmp_path) -> None:
    with pytest.raises(ConfigError) as e:
        plan_resume(str(tmp_path / "none.ckpt"), cli({}), [])
    assert str(e.value) == f"--resume: checkpoint {tmp_path / 'none.ckpt'} does not exist"


def test_a_ddp_child_resumes_the_folder_its_parent_chose(tmp_path, monkeypatch,
                                                         hold_lock) -> None:  # noqa: F811 (fixture)
    """The parent checked the folder (and holds its lock); the child takes it as given."""
    run = write_run(tmp_path / "run", step=30)
    other = write_run(tmp_path / "other", step=8)
    hold_lock(run)
    monkeypatch.setenv(RUN_DIR_ENV, str(run))
    plan = plan_resume("last", cli({("run", "run_dir"): str(other)}), [])
    assert (plan.run_dir, plan.step) == (run, 30)
    ckpt = other / "checkpoints" / "last.ckpt"
    plan = plan_resume(str(ckpt), cli({}), [])
    assert (plan.run_dir, plan.ckpt, plan.step) == (run, ckpt, 8)


def test_resume_last_without_a_folder_takes_the_newest_run(tmp_path, monkeypatch) -> None:
    old = write_run(tmp_path / "runs" / "old", step=5)
    new = write_run(tmp_path / "runs" / "new", step=7)
    os.utime(old / "checkpoints" / "last.ckpt", (1e9, 1e9))
    assert plan_resume("last", cli({}), [], tmp_path / "runs").run_dir == new
    monkeypatch.chdir(tmp_path)  # the default: runs/ here
    assert plan_resume("last", cli({}), []).run_dir == Path("runs") / "new"


def test_a_folder_another_process_writes_is_refused_before_anything_else(tmp_path,
                                                                         hold_lock) -> None:  # noqa: F811 (fixture)
    folder = tmp_path / "run"
    folder.mkdir()  # not even a run folder yet: the lock is checked first
    hold_lock(folder)
    with pytest.raises(ConfigError) as e:
        plan_resume("last", cli({("run", "run_dir"): str(folder)}), [])
    assert str(e.value).startswith(f"{folder} is in use by process {FAKE_PID}, which is writing "
                                   "this run;")


def test_a_follower_leaves_the_lock_to_rank_0(tmp_path, monkeypatch, hold_lock) -> None:  # noqa: F811 (fixture)
    run = write_run(tmp_path / "run")
    hold_lock(run)  # rank 0 holds it
    monkeypatch.setenv("NODE_RANK", "1")
    assert plan_resume("last", cli({("run", "run_dir"): str(run)}), []).run_dir == run


def test_a_folder_without_config_is_not_a_run(tmp_path) -> None:
    folder = tmp_path / "run"
    save_ckpt(folder / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError) as e:
        plan_resume("last", cli({("run", "run_dir"): str(folder)}), [])
    assert str(e.value) == (f"--resume: {folder} is not a run folder of train.py (it has no "
                            "config.yaml)")


def test_a_run_stopped_before_its_first_checkpoint_is_started_again(tmp_path) -> None:
    run = write_run(tmp_path / "run")
    (run / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(ConfigError) as e:
        plan_resume("last", cli({("run", "run_dir"): str(run)}), [])
    assert str(e.value) == (
        f"--resume: {run} has no checkpoint (the run stopped before its first one), so there "
        "is nothing to continue; start it again with the same command without --resume "
        f"(--run-dir {run} is reused)")
    save_ckpt(run / "checkpoints" / "best-00-14.ckpt")  # a checkpoint, but no last.ckpt
    with pytest.raises(ConfigError) as e:
        plan_resume("last", cli({("run", "run_dir"): str(run)}), [])
    assert str(e.value) == (f"--resume: {run} has no checkpoint to continue from "
                            f"({run / 'checkpoints' / 'last.ckpt'} does not exist)")


def test_a_checkpoint_of_the_old_attention_blocks_is_refused(tmp_path) -> None:
    run = write_run(tmp_path / "run", arch="gpt", model="gpt",
                    state={"model.blks.0.attention.in_proj_weight": torch.zeros(3, 1)})
    ckpt = run / "checkpoints" / "last.ckpt"
    for resume in ("last", str(ckpt)):
        with pytest.raises(ConfigError) as e:
            plan_resume(resume, cli({("run", "run_dir"): str(run)}), [])
        assert str(e.value) == (
            f"--resume: {ckpt} holds 'gpt' attention blocks of an earlier version, whose "
            "optimizer state cannot continue in today's blocks; its weights still load (export "
            "it with `python export.py CKPT`), or start a new run")


@pytest.mark.parametrize("how", ["last", "named"])
def test_a_checkpoint_of_another_model_is_refused(tmp_path, how) -> None:
    run = write_run(tmp_path / "run", arch="lenet")
    ckpt = run / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError) as e:
        plan_resume("last" if how == "last" else str(ckpt),
                    cli({("run", "run_dir"): str(run)}), [])
    assert str(e.value) == (f"--resume: {ckpt} was written by a 'lenet' run, but "
                            f"{run / 'config.yaml'} describes a 'mlp' run")


@pytest.mark.parametrize("how", ["last", "named", "moved-on"])
def test_a_run_whose_checkpoint_is_unreadable_is_named_as_a_resume(tmp_path, how) -> None:
    run = write_run(tmp_path / "run")
    ckpt = run / "checkpoints" / "last.ckpt"
    plan = plan_resume("last", cli({("run", "run_dir"): str(run)}), [])
    torch.save({"global_step": 31}, ckpt)  # no longer a checkpoint of train.py
    with pytest.raises(ConfigError) as e:
        if how == "moved-on":
            plan.check_unchanged()
        else:
            plan_resume("last" if how == "last" else str(ckpt),
                        cli({("run", "run_dir"): str(run)}), [])
    assert str(e.value) == f"--resume: {ckpt} is not a readable checkpoint of train.py (KeyError)"
