"""Per-batch hooks a callback inherits unchanged are not dispatched (``callbacks/dispatch.py``)."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.profilers import PassThroughProfiler

from conftest import run_cli
from d2l_lightning.callbacks import TrainingMonitor
from d2l_lightning.callbacks.dispatch import BATCH_HOOKS, skip_idle_batch_hooks
from d2l_lightning.training.command_line import config_from_argv
from d2l_lightning.training.run import build_data, build_module, build_trainer


class Recorder(PassThroughProfiler):
    """Lightning profiles each hook it dispatches as ``[Callback]NAME.HOOK``: keep the names."""

    def __init__(self) -> None:
        super().__init__()
        self.actions: list[str] = []

    def start(self, action_name: str) -> None:  # noqa: D102
        self.actions.append(action_name)


class Counting(Callback):
    def __init__(self) -> None:
        self.ends = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends += 1


class Idle(Callback):
    """Overrides no per-batch hook."""


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_idle_hooks_are_not_dispatched_and_overridden_ones_are(tmp_path) -> None:
    counting, idle, profiler = Counting(), Idle(), Recorder()
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[counting, idle], profiler=profiler,
                        default_root_dir=tmp_path)
    # Counting keeps on_train_batch_end; both lose the other 11 per-batch hooks
    assert skip_idle_batch_hooks(trainer.callbacks) == 2 * len(BATCH_HOOKS) - 1
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(12, 2)), 4)
    trainer.fit(Tiny(), train_dataloaders=data)
    assert counting.ends == 3
    dispatched = [a for a in profiler.actions if a.startswith("[Callback]")]
    assert dispatched.count("[Callback]Counting.on_train_batch_end") == 3
    assert not [a for a in dispatched if a.startswith("[Callback]Idle.on_train_batch")
                or a.endswith(("backward", "optimizer_step", "zero_grad"))]
    assert "[Callback]Idle.on_train_epoch_end" in dispatched  # other hooks are untouched


def test_train_py_trainer_dispatches_only_the_batch_hooks_its_callbacks_use(data_root,
                                                                            tmp_path) -> None:
    def live_hooks(*flags: str) -> list[tuple[str, str]]:
        cfg = config_from_argv(["--model", "mlp", "--data", "mnist", "--data-dir",
                                      str(data_root), "--run-dir", str(tmp_path / "run"),
                                      "--scheduler", "cosine", *flags])
        module = build_module(cfg, build_data(cfg).data_info())
        trainer = build_trainer(cfg, tmp_path / "run", module)
        monitor = next(cb for cb in trainer.callbacks if isinstance(cb, TrainingMonitor))
        assert monitor.on_after_backward is None and callable(monitor.on_before_backward)
        return sorted((type(cb).__name__, h) for cb in trainer.callbacks for h in BATCH_HOOKS
                      if getattr(cb, h) is not None)

    used = [("LearningRateMonitor", "on_train_batch_start"), ("LineProgress", "on_train_batch_end"),
            ("RunPlots", "on_test_batch_end"), ("TrainingMonitor", "on_before_backward"),
            ("TrainingMonitor", "on_train_batch_end")]
    assert live_hooks() == used  # the per-epoch best and last checkpoints are idle per batch
    # a checkpoint every N steps is not
    assert live_hooks("--ckpt-every-n-steps", "5") == sorted(
        [*used, ("StepCheckpoint", "on_train_batch_end")])


def test_lenet_throughput_bench_prints_the_three_way_split(data_root, tmp_path) -> None:
    out = tmp_path / "split.json"
    proc = run_cli("bench/lenet_throughput.py", "--data-dir", str(data_root), "--model",
                   "softmax_regression", "--batch-size", "16", "--steps", "3", "--rounds", "2",
                   "--clock", "cpu", "--json", str(out), check=True)
    result = json.loads(out.read_text())
    assert set(result["us_per_step"]) == {"plain", "bare", "ours"}
    assert all(len(v) == 2 and min(v) > 0 for v in result["us_per_step"].values())
    us = result["us_per_step"]
    diffs = [o - b for b, o in zip(us["bare"], us["ours"])]
    assert result["paired"]["ours - bare"]["diffs_us"] == pytest.approx(diffs)
    assert "ours - bare: median of per-round differences" in proc.stdout
    assert "| bare |" in proc.stdout and len(result["load_average"]) == 3  # start + 2 rounds
