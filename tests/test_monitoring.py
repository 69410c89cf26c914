"""TrainingMonitor's arithmetic with a stand-in trainer: when divergence is declared (the step,
the factor, a dip that resets the count, once), which steps an accelerator checks, the sample
count across ranks, and the clock that pauses for validation (tests/test_faults.py trains)."""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import pytest
import torch

from d2l_lightning.callbacks import monitoring
from d2l_lightning.callbacks.monitoring import NonFiniteLossError, TrainingMonitor


def feed(monitor: TrainingMonitor, losses: list[float], device: str = "cpu") -> list[int]:
    """Give ``losses`` as steps 0, 1, ...; return the steps (1-based) after which it warned."""
    module = SimpleNamespace(device=torch.device(device))
    warned = []
    for step, value in enumerate(losses):
        trainer = SimpleNamespace(global_step=step, current_epoch=0, checkpoint_callbacks=[])
        before = monitor._warned
        monitor.on_before_backward(trainer, module, torch.tensor(value))
        if monitor._warned and not before:
            warned.append(step + 1)
    return warned


@pytest.fixture
def warnings(monkeypatch) -> list[str]:
    said: list[str] = []
    monkeypatch.setattr(monitoring, "_warn", said.append)
    return said


def test_divergence_is_declared_after_exactly_n_steps_above_the_factor(warnings) -> None:
    monitor = TrainingMonitor(diverged_after=3, diverge_factor=10.0)
    # first loss 2: the bar is 20; 20 itself is not above it
    assert feed(monitor, [2.0, 21.0, 21.0, 20.0, 25.0, 30.0, 40.0, 50.0, 60.0]) == [7]
    assert len(warnings) == 1  # once, though the loss stays high
    assert warnings[0] == ("warning: the training loss (40 at step 7) has stayed above 10x "
                           "its first value (2) for 3 steps: the run has likely diverged; "
                           "try a lower --lr")


def test_a_negative_first_loss_sets_the_bar_by_its_size_and_zero_never_warns(warnings) -> None:
    assert feed(TrainingMonitor(diverged_after=2, diverge_factor=2.0),
                [-1.0, 1.5, 2.5, 2.5]) == [4]
    assert feed(TrainingMonitor(diverged_after=0), [1.0] + [1e6] * 60) == []
    assert feed(TrainingMonitor(diverged_after=50), [1.0] + [1e6] * 49) == []
    assert feed(TrainingMonitor(diverged_after=50), [1.0] + [1e6] * 50) == [51]


def test_an_accelerator_checks_step_one_and_every_nth_the_cpu_every_step() -> None:
    nan = [float("nan")]
    for device, step, stops in [("cpu", 4, True), ("meta", 0, True), ("meta", 4, True),
                                ("meta", 3, False), ("meta", 5, False), ("meta", 9, True)]:
        monitor = TrainingMonitor(check_every_n_steps=5)
        trainer = SimpleNamespace(global_step=step, current_epoch=2, checkpoint_callbacks=[])
        module = SimpleNamespace(device=torch.device(device))
        if stops:
            with pytest.raises(NonFiniteLossError,
                               match=rf"became nan in step {step + 1} \(epoch 2\)"):
                monitor.on_before_backward(trainer, module, torch.tensor(nan[0]))
        else:
            monitor.on_before_backward(trainer, module, torch.tensor(nan[0]))
    assert TrainingMonitor(check_every_n_steps=0).check_every_n_steps == 1


def test_samples_count_every_rank_and_the_clock_pauses_for_validation(monkeypatch) -> None:
    now = [100.0]
    monkeypatch.setattr(monitoring.time, "perf_counter", lambda: now[0])
    monitor = TrainingMonitor()
    module = SimpleNamespace(device=torch.device("cpu"))
    trainer = SimpleNamespace(world_size=2, training=True, sanity_checking=False,
                              global_step=3, current_epoch=1, callback_metrics={})
    assert monitor.samples_per_sec == 0.0
    monitor.on_train_epoch_start(trainer, module)
    monitor.on_train_batch_end(trainer, module, None, (torch.zeros(4, 3), torch.zeros(4, 5)), 0)
    assert monitor.samples == 40  # 4 x 5 target elements on each of 2 ranks
    now[0] += 2.0
    monitor.on_validation_start(trainer, module)
    now[0] += 50.0  # validation: not training time
    monitor.on_validation_end(trainer, module)
    now[0] += 2.0
    assert monitor.samples_per_sec == 10.0  # in progress: 40 samples in 4 s
    monitor.on_train_epoch_end(trainer, module)
    now[0] += 7.0
    assert monitor.elapsed == 4.0 and monitor.samples_per_sec == 10.0
    monitor.on_train_end(trainer, module)
    assert {k: float(v) for k, v in trainer.callback_metrics.items()} == {
        "run/train_samples_per_sec": 10.0, "run/train_time_sec": 4.0, "run/global_step": 3.0,
        "run/epochs": 1.0}


def test_the_sanity_check_does_not_start_the_clock(monkeypatch) -> None:
    now = [0.0]
    monkeypatch.setattr(monitoring.time, "perf_counter", lambda: now[0])
    monitor = TrainingMonitor()
    module = SimpleNamespace(device=torch.device("cpu"))
    sanity = SimpleNamespace(training=True, sanity_checking=True)
    monitor.on_validation_start(sanity, module)
    monitor.on_validation_end(sanity, module)
    now[0] += 5.0
    assert monitor.elapsed == 0.0 and monitor._t0 is None


def test_a_checkpoint_is_refused_for_one_non_finite_weight_and_names_the_last_good_one(
        tmp_path) -> None:
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    torch.save({"global_step": 12}, ckpts / "old.ckpt")
    torch.save({"global_step": 40}, ckpts / "new.ckpt")
    os.utime(ckpts / "old.ckpt", (1_000, 1_000))  # the newest by time, not by name
    trainer = SimpleNamespace(global_step=41, current_epoch=3,
                              checkpoint_callbacks=[SimpleNamespace(dirpath=str(ckpts))])
    ok = {"state_dict": {"a": torch.ones(2), "b": torch.zeros(2, dtype=torch.long)}}
    TrainingMonitor().on_save_checkpoint(trainer, None, ok)
    for bad in (math.nan, -math.inf):
        state = {"state_dict": {"a": torch.ones(2), "b": torch.tensor([0.0, bad])}}
        with pytest.raises(NonFiniteLossError) as e:
            TrainingMonitor().on_save_checkpoint(trainer, None, state)
        assert str(e.value).startswith("the weights became NaN or inf in step 41 (epoch 3)")
        assert f"the last good checkpoint is {ckpts / 'new.ckpt'} (step 40)" in str(e.value)


def test_the_default_guards_warn_after_50_steps_above_10x_and_check_every_10th_step(
        warnings) -> None:
    assert feed(TrainingMonitor(), [1.0] + [10.5] * 50) == [51]
    assert feed(TrainingMonitor(), [1.0] + [9.9] * 60) == []
    checked = []
    for step in range(25):
        trainer = SimpleNamespace(global_step=step, current_epoch=0, checkpoint_callbacks=[])
        try:
            TrainingMonitor().on_before_backward(trainer, SimpleNamespace(
                device=torch.device("meta")), torch.tensor(float("nan")))
        except NonFiniteLossError:
            checked.append(step)
    assert checked == [0, 9, 19]


def test_samples_add_up_over_batches() -> None:
    monitor = TrainingMonitor()
    trainer = SimpleNamespace(world_size=1)
    for n in (3, 5):
        monitor.on_train_batch_end(trainer, None, None, (torch.zeros(n), torch.zeros(n)), 0)
    assert monitor.samples == 8


def test_the_newest_checkpoint_of_every_checkpoint_callback_is_named(tmp_path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for folder, step, mtime in ((first, 30, 2_000), (second, 20, 1_000)):
        folder.mkdir()
        torch.save({"global_step": step}, folder / "x.ckpt")
        os.utime(folder / "x.ckpt", (mtime, mtime))
    callbacks = [SimpleNamespace(dirpath=str(first)), SimpleNamespace(dirpath=None),
                 SimpleNamespace(dirpath=str(second)), object()]  # not every callback has one
    trainer = SimpleNamespace(checkpoint_callbacks=callbacks)
    assert monitoring.last_good_checkpoint(trainer) == (
        f"the last good checkpoint is {first / 'x.ckpt'} (step 30)")


def test_a_checkpoint_that_needs_unpickling_is_named_without_its_step(tmp_path) -> None:
    """The step is read with weights_only=True: a pickled object is never run for a message."""
    torch.save({"global_step": 5, "obj": SimpleNamespace(a=1)}, tmp_path / "x.ckpt")
    trainer = SimpleNamespace(checkpoint_callbacks=[SimpleNamespace(dirpath=str(tmp_path))])
    assert monitoring.last_good_checkpoint(trainer) == (
        f"the last checkpoint is {tmp_path / 'x.ckpt'}")


def test_a_checkpoint_without_weights_or_with_other_values_is_saved() -> None:
    trainer = SimpleNamespace(global_step=1, current_epoch=0, checkpoint_callbacks=[])
    TrainingMonitor().on_save_checkpoint(trainer, None, {})
    TrainingMonitor().on_save_checkpoint(trainer, None, {"state_dict": {
        "w": torch.ones(2), "count": 3, "name": "x"}})
    with pytest.raises(NonFiniteLossError) as e:
        TrainingMonitor().on_save_checkpoint(trainer, None, {"state_dict": {
            "w": torch.tensor([math.nan])}})
    assert str(e.value) == ("the weights became NaN or inf in step 1 (epoch 0) and were not "
                            "saved; no checkpoint was written; try a lower --lr or "
                            "--gradient-clip-val")


def test_the_clock_and_the_samples_go_into_a_checkpoint_and_come_back(monkeypatch) -> None:
    monitor = TrainingMonitor()
    monitor.elapsed, monitor.samples = 12.5, 300
    assert monitor.state_dict() == {"elapsed": 12.5, "samples": 300}  # the clock stopped
    monkeypatch.setattr(monitoring.time, "perf_counter", lambda: 104.0)
    monitor._t0 = 100.0  # running for 4 s when the checkpoint is taken
    state = monitor.state_dict()
    assert state == {"elapsed": 16.5, "samples": 300}
    resumed = TrainingMonitor()
    resumed.load_state_dict(state)
    assert (resumed.elapsed, resumed.samples) == (16.5, 300)


def test_a_checkpoint_without_the_monitors_totals_starts_them_at_zero() -> None:
    resumed = TrainingMonitor()
    resumed.elapsed, resumed.samples = 7.0, 9
    resumed.load_state_dict({})  # a checkpoint written before the totals were kept
    assert (resumed.elapsed, resumed.samples) == (0.0, 0)
    assert type(resumed.elapsed) is float and type(resumed.samples) is int
