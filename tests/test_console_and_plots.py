"""What a person sees (issue 13): progress lines in logs, the bar's loss, plots, file modes."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import stat
from pathlib import Path

import pytest

from conftest import read_results, run_cli
from d2l_lightning.callbacks.progress import TerminalProgress
from d2l_lightning.cli import train
from d2l_lightning.models import load_exported
from d2l_lightning.training.command_line import config_from_argv
from d2l_lightning.training.console import quiet_warnings
from d2l_lightning.training.plot import main as plot_main
from d2l_lightning.training.plot import plot_run
from d2l_lightning.training.run import build_data, build_module, build_trainer

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def logged_run(data_root, tmp_path_factory) -> tuple[Path, str]:
    """A 2-epoch MLP run (14 steps an epoch, cosine schedule) with stdout captured."""
    run = tmp_path_factory.mktemp("see") / "run"
    old = os.umask(0o022)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            rc = train.main(["--model", "mlp", "--data", "mnist", "--data-dir", str(data_root),
                             "--run-dir", str(run), "--max-epochs", "2", "--batch-size", "16",
                             "--scheduler", "cosine", "--progress-every", "5"])
    finally:
        os.umask(old)
    assert rc == 0
    return run, out.getvalue()


def test_log_lines_without_a_terminal(logged_run) -> None:
    run, text = logged_run
    lines = text.splitlines()
    epoch_lines = [ln for ln in lines if ln.startswith("epoch ")]
    # steps 5 and 10 of each 14-step epoch, then the epoch line with the val metrics
    assert [ln.split(" |")[0] for ln in epoch_lines] == [
        "epoch 1/2 step 5", "epoch 1/2 step 10", "epoch 1/2 step 14",
        "epoch 2/2 step 19", "epoch 2/2 step 24", "epoch 2/2 step 28"]
    for ln in epoch_lines:
        assert re.search(r"train/loss \d", ln) and re.search(r"[\d,]+ samples/s", ln)
        assert re.search(r"elapsed \d+:\d\d ETA \d+:\d\d$", ln), ln
    assert sum("val/acc" in ln for ln in epoch_lines) == 2
    assert epoch_lines[-1].endswith("ETA 0:00")
    last_val = float(re.search(r"val/acc ([\d.]+)", epoch_lines[-1]).group(1))
    assert last_val == pytest.approx(read_results(run)["val/acc"], abs=1e-4)


def test_run_folder_and_model_summary_come_first(logged_run) -> None:
    run, text = logged_run
    lines = text.splitlines()
    assert lines.index(f"run folder: {run}") < next(
        i for i, ln in enumerate(lines) if ln.startswith("epoch "))
    model, _ = load_exported(run / "export")
    n = sum(p.numel() for p in model.parameters())
    mb = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 1e6
    assert f"model mlp (MLP): {n:,} parameters ({n:,} trainable), {mb:.2f} MB" in lines


def test_every_file_of_the_run_is_readable_by_others(logged_run) -> None:
    run, _ = logged_run
    files = [p for p in run.rglob("*") if p.is_file()]
    assert {"model.safetensors", "config.json", "last.ckpt", "curves.png"} <= {
        p.name for p in files}
    modes = {str(p.relative_to(run)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {"0o644"}, modes


def test_curves_and_confusion_matrix_are_drawn(logged_run, tmp_path) -> None:
    run, _ = logged_run
    for name in ("curves.png", "confusion_matrix.png"):
        data = (run / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name
    drawn = plot_run(run, tmp_path / "again.png", monitor="val/acc")
    assert drawn == {"loss": ["train", "val"], "acc": ["train", "val"],
                     "learning rate": ["SGD"]}
    assert plot_run(run, tmp_path / "no-lr.png", monitor="val/loss").keys() == {
        "loss", "learning rate"}


def test_plot_command_overlays_a_sweep_folder(logged_run, tmp_path) -> None:
    run, _ = logged_run
    for trial in ("trial-000", "trial-001", "trial-002"):
        (tmp_path / "sweep" / trial).mkdir(parents=True)
        shutil.copy(run / "metrics.csv", tmp_path / "sweep" / trial)
    out = tmp_path / "overlay.png"
    proc = run_cli("-m", "d2l_lightning.training.plot", str(tmp_path / "sweep"), "--metric",
                   "val/loss", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{out}: 3 run(s)"
    assert out.read_bytes().startswith(PNG)


def test_plot_command_refusals(logged_run, tmp_path, capsys) -> None:
    run, _ = logged_run
    (tmp_path / "empty").mkdir()
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "config.yaml").write_text("model: {}\n")
    cases = {"is not a run folder": [str(tmp_path / "empty")],
             "has no metrics yet": [str(tmp_path / "fresh")],
             "did not log val/bleu": [str(run), "--metric", "val/bleu"]}
    for sentence, argv in cases.items():
        assert plot_main([*argv, "--out", str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err
        assert sentence in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.png").exists()


def test_terminal_bar_shows_train_loss_and_throughput(data_root, tmp_path) -> None:
    quiet_warnings()  # as train.main does
    cfg = config_from_argv(["--model", "mlp", "--data", "mnist", "--data-dir",
                                  str(data_root), "--run-dir", str(tmp_path / "run"),
                                  "--progress-bar", "--max-epochs", "1", "--limit-train-batches",
                                  "3", "--limit-val-batches", "1", "--batch-size", "16"])
    dm = build_data(cfg)
    module = build_module(cfg, dm.data_info())
    trainer = build_trainer(cfg, tmp_path / "run", module)
    bar = trainer.progress_bar_callback
    assert isinstance(bar, TerminalProgress)
    trainer.fit(module, datamodule=dm)
    shown = bar.get_metrics(trainer, module)  # what the bar showed last during training
    assert isinstance(shown["train/loss"], float) and shown["samples/s"] > 0
    assert "val/acc" in shown


@pytest.mark.parametrize("bar_cls", ["tqdm", "rich"])
def test_terminal_bar_redraws_at_most_every_draw_seconds_and_at_the_last_step(
        bar_cls, data_root, tmp_path, monkeypatch) -> None:
    if bar_cls == "rich":
        pytest.importorskip("rich")  # Lightning's rich bar is optional; `.[dev]` installs rich
    import lightning as L
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    from d2l_lightning.callbacks.progress import RichTerminalProgress, TQDMTerminalProgress

    parent, cls = ((TQDMProgressBar, TQDMTerminalProgress) if bar_cls == "tqdm"
                   else (RichProgressBar, RichTerminalProgress))
    drawn: list[int] = []
    monkeypatch.setattr(parent, "on_train_batch_end",
                        lambda self, trainer, *a: drawn.append(trainer.global_step))
    cfg = config_from_argv(["--model", "softmax_regression", "--data", "mnist",
                                  "--data-dir", str(data_root), "--batch-size", "16",
                                  "--max-epochs", "2", "--limit-val-batches", "0"])
    dm = build_data(cfg)
    module = build_module(cfg, dm.data_info())
    for draw_seconds, expected in ((3600.0, [1, 14, 28]), (0.0, list(range(1, 29)))):
        bar = cls()
        bar.draw_seconds = draw_seconds
        drawn.clear()
        L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, callbacks=[bar],
                  enable_model_summary=False, limit_val_batches=0,
                  default_root_dir=tmp_path).fit(module, datamodule=dm)
        # 240 images - 10 % validation = 216 at batch 16: 14 steps an epoch
        assert drawn == expected, (draw_seconds, drawn)
    assert cls().refresh_rate == (10 if bar_cls == "rich" else 1)
