"""What a run prints (``callbacks/progress.py``): plain lines, the bar's readings, rates, ETA.

The callbacks are driven hook by hook on a clock the test sets and a stand-in Trainer holding
the attributes they read, with the values Lightning gives them in a fit; the epoch lines are
also checked on real, tiny Lightning fits.
"""

from __future__ import annotations

import io
import math
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from d2l_lightning.callbacks import progress
from d2l_lightning.callbacks.monitoring import TrainingMonitor
from d2l_lightning.callbacks.progress import (
    LineProgress,
    TerminalProgress,
    _duration,
    _number,
    _Readings,
    model_summary,
)


class Clock:
    """``time.monotonic`` as the test sets it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(progress, "time", c)  # the module's own clock only
    return c


def fake_trainer(**kw: Any) -> SimpleNamespace:
    """The Trainer attributes the progress callbacks read, as Lightning sets them in a fit."""
    base = dict(global_step=0, current_epoch=0, num_training_batches=14,
                accumulate_grad_batches=1, max_epochs=2, max_steps=-1, callbacks=[],
                callback_metrics={}, sanity_checking=False,
                state=SimpleNamespace(fn=TrainerFn.FITTING), training=True, loggers=[],
                progress_bar_metrics={})
    return SimpleNamespace(**{**base, **kw})


def task_module(task: str = "image_classification", loss_sum: float = 6.0,
                count: float = 4.0) -> SimpleNamespace:
    """A task module's training sums (loss sum, count, correct) and task family."""
    return SimpleNamespace(task=task, _train_sums=torch.tensor([loss_sum, count, 3.0],
                                                               dtype=torch.float64))


def monitor(rate: float) -> TrainingMonitor:
    """A ``TrainingMonitor`` that has counted ``rate`` samples a second over 4 s."""
    m = TrainingMonitor()
    m.elapsed, m.samples = 4.0, round(rate * 4)
    return m


# --- formatting ------------------------------------------------------------------------------

@pytest.mark.parametrize("seconds, shown", [
    (0, "0:00"), (59.9, "0:59"), (123, "2:03"), (3599, "59:59"), (3600, "1:00:00"),
    (3723, "1:02:03"), (90061, "25:01:01")])
def test_progress_duration_reads_as_clock_time(seconds: float, shown: str) -> None:
    assert _duration(seconds) == shown


@pytest.mark.parametrize("value, shown", [
    (0.51234, "0.5123"), (-0.5, "-0.5"), (9999.4, "9999"), (10000, "10000"),
    (12345.6, "12346"), (-12345.6, "-12346")])
def test_progress_number_keeps_four_digits_then_whole_numbers(value: float, shown: str) -> None:
    assert _number(value) == shown


def test_progress_model_summary_counts_parameters_and_bytes() -> None:
    half = nn.Sequential(nn.Linear(1000, 500), nn.BatchNorm1d(500)).half()
    # 500,500 + 1,000 parameters and 1,000 running stats at 2 bytes, num_batches_tracked 8
    assert model_summary(half, "tiny") == (
        "model tiny (Sequential): 501,500 parameters (501,500 trainable), 1.01 MB")
    half[0].requires_grad_(False)
    assert model_summary(half, "tiny") == (
        "model tiny (Sequential): 501,500 parameters "
        "(1,000 trainable, 500,500 frozen parameters), 1.01 MB")


def test_progress_model_summary_size_of_a_large_model_to_the_hundredth_of_a_mb() -> None:
    big = nn.Linear(50_000, 50_000, bias=False, device="meta")  # 10 GB of float32, no memory
    assert model_summary(big, "big") == (
        "model big (Linear): 2,500,000,000 parameters (2,500,000,000 trainable), 10000.00 MB")


# --- readings: loss, unit, ETA ----------------------------------------------------------------

def test_progress_train_loss_is_the_running_mean_of_the_task_sums() -> None:
    assert _Readings.train_loss(task_module(loss_sum=6.0, count=4.0)) == 1.5
    assert _Readings.train_loss(task_module(loss_sum=0.0, count=0.0)) is None  # epoch start
    assert _Readings.train_loss(L.LightningModule()) is None  # a module without the sums


@pytest.mark.parametrize("task, unit", [
    ("language_modeling", "tokens/s"), ("seq2seq", "tokens/s"),
    ("image_classification", "samples/s"), ("masked_lm", "samples/s"), (None, "samples/s")])
def test_progress_rate_unit_is_tokens_for_text_tasks(task: str | None, unit: str) -> None:
    module = L.LightningModule() if task is None else task_module(task)  # None: no ``task``
    assert _Readings.unit(module) == unit


ETA_CASES = {  # trainer settings, first step of this run, step now, seconds so far: ETA
    "two epochs": (dict(), 0, 10, 20.0, 36.0),
    "after a resume, from this run's steps": (dict(), 14, 21, 14.0, 14.0),
    "gradient accumulation": (dict(accumulate_grad_batches=4, max_epochs=3), 0, 6, 6.0, 6.0),
    "max_steps before the last epoch": (dict(max_epochs=10, max_steps=20), 0, 10, 10.0, 10.0),
    "max_steps after the last epoch": (dict(max_steps=100), 0, 14, 14.0, 14.0),
    "one epoch": (dict(max_epochs=1), 0, 7, 7.0, 7.0),
    "the first step": (dict(), 0, 1, 2.0, 54.0),
    "a one-step run": (dict(max_steps=1), 0, 1, 3.0, 0.0),
    "past the end after a resume": (dict(), 28, 30, 4.0, 0.0),
    "max_epochs -1: max_steps": (dict(max_epochs=-1, max_steps=30), 0, 10, 5.0, 10.0),
    "max_epochs None: max_steps": (dict(max_epochs=None, max_steps=30), 0, 10, 5.0, 10.0),
    "max_epochs -1, one step": (dict(max_epochs=-1, max_steps=1), 0, 1, 3.0, 0.0),
    "iterable data: max_steps": (dict(num_training_batches=math.inf, max_steps=40), 0, 10,
                                 10.0, 30.0),
    "iterable data, no max_steps": (dict(num_training_batches=math.inf), 0, 10, 10.0, None),
    "no step yet in this run": (dict(), 14, 14, 3.0, None),
}


@pytest.mark.parametrize("settings, first, step, elapsed, eta", ETA_CASES.values(),
                         ids=ETA_CASES.keys())
def test_progress_eta_from_the_time_per_step_of_this_run(
        clock: Clock, settings: dict, first: int, step: int, elapsed: float,
        eta: float | None) -> None:
    trainer = fake_trainer(global_step=first, **settings)  # 14 batches an epoch, 2 epochs
    readings = _Readings()
    readings.begin(trainer)
    trainer.global_step, clock.now = step, clock.now + elapsed
    assert readings.eta(trainer) == eta


def test_progress_readings_before_the_fit_starts_count_from_creation(clock: Clock) -> None:
    bar = LineProgress()
    clock.now += 5
    assert bar.line(fake_trainer(max_steps=10), task_module(), final=False) == (
        "epoch 1/2 step 0 | train/loss 1.5 | elapsed 0:05")


# --- LineProgress -----------------------------------------------------------------------------

def started(clock: Clock, bar: LineProgress, **settings: Any) -> SimpleNamespace:
    trainer = fake_trainer(**settings)
    bar.on_train_start(trainer, task_module())
    return trainer


def test_progress_epoch_line_shows_loss_val_metrics_rate_and_times(clock: Clock) -> None:
    out = io.StringIO()
    bar = LineProgress(stream=out)
    trainer = started(clock, bar, num_training_batches=600, max_epochs=10,
                      callbacks=[monitor(9870.0)])
    trainer.global_step, trainer.current_epoch, clock.now = 1200, 1, clock.now + 3723
    trainer.callback_metrics = {"val/loss": torch.tensor(0.4567), "train/acc": torch.tensor(0.9),
                                "val/acc": torch.tensor(0.8312)}
    bar.on_validation_end(trainer, task_module())
    # 4,800 steps left at 3,723 s / 1,200 steps: 14,892 s
    assert out.getvalue() == ("epoch 2/10 step 1200 | train/loss 1.5 | val/acc 0.8312 | "
                              "val/loss 0.4567 | 9,870 samples/s | elapsed 1:02:03 ETA 4:08:12\n")
    text = bar.line(trainer, task_module("seq2seq"), final=False)  # a step line
    assert text == ("epoch 2/10 step 1200 | train/loss 1.5 | 9,870 tokens/s | "
                    "elapsed 1:02:03 ETA 4:08:12")


@pytest.mark.parametrize("max_epochs, shown", [(10, "10"), (1, "1"), (-1, "?"), (None, "?")])
def test_progress_line_shows_the_epoch_count_or_a_question_mark(
        clock: Clock, max_epochs: int | None, shown: str) -> None:
    trainer = fake_trainer(max_epochs=max_epochs, max_steps=100, current_epoch=0, global_step=3)
    assert LineProgress().line(trainer, task_module(), final=False).startswith(
        f"epoch 1/{shown} step 3 | train/loss 1.5 | elapsed")


@pytest.mark.parametrize("sanity_checking, fn, lines", [
    (False, TrainerFn.FITTING, 1), (True, TrainerFn.FITTING, 0), (False, TrainerFn.VALIDATING, 0)])
def test_progress_epoch_line_after_a_fit_validation_only(
        clock: Clock, sanity_checking: bool, fn: TrainerFn, lines: int) -> None:
    out = io.StringIO()
    bar = LineProgress(stream=out)
    trainer = started(clock, bar, sanity_checking=sanity_checking, state=SimpleNamespace(fn=fn))
    bar.on_validation_end(trainer, task_module())
    assert out.getvalue().count("\n") == lines


def test_progress_epoch_line_of_an_unvalidated_epoch_reads_the_module(clock: Clock) -> None:
    """Without validation at its end, the epoch line still has the module's loss and unit."""
    out = io.StringIO()
    bar = LineProgress(stream=out)
    trainer = started(clock, bar, callbacks=[monitor(500.0)])
    trainer.global_step, clock.now = 4, clock.now + 2
    trainer.callback_metrics = {"val/acc": torch.tensor(0.5)}  # an earlier epoch's: not shown
    bar.on_train_epoch_end(trainer, task_module("language_modeling"))
    assert out.getvalue().split(" | elapsed")[0] == (
        "epoch 1/2 step 4 | train/loss 1.5 | 500 tokens/s")
    bar.on_train_epoch_end(trainer, task_module())  # the same step: no second line
    assert out.getvalue().count("\n") == 1


def test_progress_prints_to_its_stream_at_once_with_print_options(capsys) -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8")  # buffered like a log file
    bar = LineProgress(stream=stream)
    bar.print("loss", 0.5, sep="=", end=";\n")
    assert raw.getvalue() == b"loss=0.5;\n"  # flushed: a log being followed shows it
    bar.disable()
    bar.print("rank 1")
    bar.enable()
    bar.print("again")
    assert raw.getvalue() == b"loss=0.5;\nagain\n"
    assert capsys.readouterr().out == ""
    LineProgress().print("to stdout")
    assert capsys.readouterr().out == "to stdout\n"


def step_lines(bar: LineProgress, trainer: SimpleNamespace, clock: Clock,
               times: list[float], out: io.StringIO) -> list[str]:
    """Run one batch per time (step = batch + 1); the heads of the lines printed."""
    start = clock.now
    for idx, t in enumerate(times):
        clock.now, trainer.global_step = start + t, idx + 1
        bar.on_train_batch_end(trainer, task_module(), None, None, idx)
    return [ln.split(" |")[0] for ln in out.getvalue().splitlines()]


@pytest.mark.parametrize("batches, steps", [(11, [5, 10]), (10, [5]), (9, [5])])
def test_progress_line_every_n_steps_but_not_on_the_epoch_last_step(
        clock: Clock, batches: int, steps: list[int]) -> None:
    out = io.StringIO()
    bar = LineProgress(every_n_steps=5, stream=out)
    trainer = started(clock, bar, num_training_batches=batches)
    assert step_lines(bar, trainer, clock, [0.0] * batches, out) == [
        f"epoch 1/2 step {s}" for s in steps]  # the last step's line is the epoch line


def test_progress_line_every_30_seconds_by_default_counted_from_the_last_line(
        clock: Clock) -> None:
    out = io.StringIO()
    bar = LineProgress(stream=out)  # every_n_steps 0: by time, every 30 s
    trainer = started(clock, bar, num_training_batches=100)
    assert step_lines(bar, trainer, clock, [0.0, 29.9, 30.0, 31.0, 59.9], out) == [
        "epoch 1/2 step 3"]
    bar.on_validation_end(trainer, task_module())  # a validation line at 59.9 s, step 5
    assert step_lines(bar, trainer, clock, [0.0, 0.0, 0.0, 0.0, 0.0, 29.9, 30.0], out)[1:] == [
        "epoch 1/2 step 5", "epoch 1/2 step 7"]


def test_progress_disabled_bar_prints_no_step_line(clock: Clock) -> None:
    out = io.StringIO()
    bar = LineProgress(stream=out)
    trainer = started(clock, bar, num_training_batches=100)
    bar.disable()
    assert step_lines(bar, trainer, clock, [30.0, 60.0], out) == []
    bar.enable()
    assert step_lines(bar, trainer, clock, [0.0], out) == ["epoch 1/2 step 1"]


class _Val(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val/score", float(self.current_epoch + 1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("val, settings, heads", [
    ("each epoch", {}, ["epoch 1/3 step 2 | val/score 1", "epoch 2/3 step 4 | val/score 2",
                        "epoch 3/3 step 6 | val/score 3"]),
    ("every 2nd epoch", dict(check_val_every_n_epoch=2),
     ["epoch 1/3 step 2", "epoch 2/3 step 4 | val/score 2", "epoch 3/3 step 6"]),
    ("off", dict(limit_val_batches=0), ["epoch 1/3 step 2", "epoch 2/3 step 4",
                                        "epoch 3/3 step 6"]),
    ("empty", {}, ["epoch 1/3 step 2", "epoch 2/3 step 4", "epoch 3/3 step 6"])])
def test_progress_one_epoch_line_per_epoch_with_the_val_metrics_of_that_epoch(
        val: str, settings: dict, heads: list[str], tmp_path) -> None:
    out = io.StringIO()
    trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=tmp_path, callbacks=[LineProgress(stream=out)],
                        **settings)
    data = TensorDataset(torch.randn(8, 2))
    val_data = TensorDataset(torch.randn(0 if val == "empty" else 4, 2))
    trainer.fit(_Val(), DataLoader(data, batch_size=4), DataLoader(val_data, batch_size=4))
    assert [ln.split(" | elapsed")[0] for ln in out.getvalue().splitlines()] == heads


# --- the terminal bar -------------------------------------------------------------------------

class _RecordingBar(ProgressBar):
    """A Lightning bar that records what the mixin hands on to it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.calls.append(("start", pl_module))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.calls.append(("draw", trainer.global_step, pl_module, outputs, batch, batch_idx))

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict:
        self.calls.append(("metrics", pl_module))
        return super().get_metrics(trainer, pl_module)


class _Bar(TerminalProgress, _RecordingBar):
    pass


@pytest.mark.parametrize("task, unit", [("image_classification", "samples/s"),
                                        ("language_modeling", "tokens/s")])
def test_progress_bar_metrics_add_loss_and_rate_and_drop_the_version(
        clock: Clock, task: str, unit: str) -> None:
    bar, module = _Bar(), task_module(task, loss_sum=1.0, count=3.0)
    trainer = fake_trainer(callbacks=[monitor(9870.4)], loggers=[SimpleNamespace(version=3)],
                           progress_bar_metrics={"val/acc": 0.75})
    bar.on_train_start(trainer, module)
    assert bar.get_metrics(trainer, module) == {"train/loss": 0.3333, unit: 9870,
                                                "val/acc": 0.75}
    assert bar.calls == [("start", module), ("metrics", module)]


def test_progress_bar_reads_the_loss_every_half_second_while_training(clock: Clock) -> None:
    clock.now = 0.0  # the clock's zero is arbitrary: the first reading is at once regardless
    bar, module = _Bar(), task_module(loss_sum=1.0, count=2.0)
    trainer = fake_trainer()
    bar.on_train_start(trainer, module)

    def shown(t: float, loss_sum: float) -> float | None:
        clock.now, module._train_sums[0] = t, loss_sum
        return bar.get_metrics(trainer, module).get("train/loss")

    assert [shown(0.0, 1.0), shown(0.49, 2.0), shown(0.5, 3.0)] == [0.5, 0.5, 1.5]
    trainer.training = False  # validating: no look at the loss (it waits for the device)
    assert shown(5.0, 4.0) == 1.5


@pytest.mark.parametrize("settings, times, steps, drawn", [
    # at 0 and 0.1 s, and at the run's last step
    (dict(max_steps=4), [0.0, 0.05, 0.1, 0.15], [1, 2, 3, 4], [0, 2, 3]),
    (dict(max_steps=1, accumulate_grad_batches=4), [0.0, 0.02, 0.04, 0.06], [0, 0, 0, 1],
     [0, 3])])
def test_progress_bar_redraws_every_tenth_of_a_second_and_at_the_last_step(
        clock: Clock, settings: dict, times: list[float], steps: list[int],
        drawn: list[int]) -> None:
    clock.now = 0.0  # the clock's zero is arbitrary: the first step is drawn regardless
    bar, module = _Bar(), task_module()
    trainer = fake_trainer(**settings)
    for idx, (t, step) in enumerate(zip(times, steps)):
        clock.now, trainer.global_step = t, step
        bar.on_train_batch_end(trainer, module, {"loss": t}, ("batch", idx), idx)
    # each redraw is Lightning's own hook with the step's arguments
    assert bar.calls == [("draw", steps[i], module, {"loss": times[i]}, ("batch", i), i)
                         for i in drawn]


@pytest.mark.parametrize("rich, name", [(True, "RichTerminalProgress"),
                                        (False, "TQDMTerminalProgress")])
def test_progress_bar_is_rich_when_rich_is_installed(monkeypatch, rich: bool, name: str) -> None:
    pytest.importorskip("rich")
    from lightning.pytorch.utilities import imports

    monkeypatch.setattr(imports, "_RICH_AVAILABLE", rich)
    assert type(progress.terminal_progress_bar()).__name__ == name
