"""TensorBoard and W&B runs are complete: final metrics, figures, text, the model artifact."""

from __future__ import annotations

import csv
import glob
import warnings
from pathlib import Path

import pytest
from test_language_modeling import BOOK

from conftest import make_idx_dataset, read_results, run_cli
from d2l_lightning.cli import train


def events(run: Path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    ea.Reload()
    return ea


def hparams_metrics(ea) -> list[str]:
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = ea.PluginTagToContent("hparams")["_hparams_/experiment"]
    data = plugin_data_pb2.HParamsPluginData.FromString(content)
    return sorted(m.name.tag for m in data.experiment.metric_infos)


def fit(data_root: Path, run: Path, *args: str) -> int:
    return train.main(["--data-dir", str(data_root), "--run-dir", str(run), "--max-epochs", "2",
                       "--no-progress-bar", *args])


def test_tensorboard_hparams_hold_the_final_metrics_and_images(data_root, tmp_path) -> None:
    run = tmp_path / "run"
    assert fit(data_root, run, "--model", "mlp", "--data", "mnist", "--logger",
               "tensorboard", "--batch-size", "32") == 0
    ea = events(run)
    assert set(ea.Tags()["images"]) == {"curves", "confusion_matrix", "predictions"}
    assert "hp_metric" not in ea.Tags()["scalars"]
    res = read_results(run)
    assert hparams_metrics(ea) == sorted(k for k, v in res.items()
                                         if k.startswith(("val/", "test/"))
                                         and isinstance(v, float))
    last = ea.Scalars("test/acc")[-1]
    assert last.value == pytest.approx(res["test/acc"]) and last.step == res["global_step"]
    with open(run / "metrics.csv", newline="") as f:
        val_steps = [int(r["step"]) for r in csv.DictReader(f) if r["val/acc"]]
    # each epoch's value, then the final one at the last step (not at step 0)
    assert [s.step for s in ea.Scalars("val/acc")] == [*val_steps, res["global_step"]]


def test_tensorboard_language_model_gets_its_samples_as_text(tmp_path) -> None:
    root = tmp_path / "data"
    (root / "timemachine").mkdir(parents=True)
    (root / "timemachine" / "timemachine.txt").write_text(BOOK * 6, encoding="utf-8")
    run = tmp_path / "run"
    assert fit(root, run, "--model", "gru", "--data", "time_machine", "--num-hiddens", "8",
               "--logger", "tensorboard", "--max-epochs", "1", "--no-test") == 0
    ea = events(run)
    assert "samples/text_summary" in ea.Tags()["tensors"]
    text = ea.Tensors("samples/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert text.strip().splitlines()[-1].strip() == (
        (run / "samples.txt").read_text().strip().splitlines()[-1])
    assert "curves" in ea.Tags()["images"]


def test_wandb_offline_run_has_chart_figures_summary_and_model_artifact(data_root,
                                                                        tmp_path) -> None:
    pytest.importorskip("wandb")
    from wandb_reader import read_run

    run = tmp_path / "run"
    proc = run_cli("train.py", "--model", "mlp", "--data", "mnist", "--data-dir", str(data_root),
                   "--max-epochs", "2", "--logger", "wandb", "--run-dir", str(run),
                   env={"WANDB_MODE": "offline"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (file,) = glob.glob(str(run / "wandb" / "offline-run-*" / "run-*.wandb"))
    logged = read_run(Path(file))
    models = [a for a in logged["artifacts"] if a["type"] == "model"]
    assert [a["files"] for a in models] == [["config.json", "model.safetensors"]]
    assert "_wandb/visualize/test/confusion_matrix_chart" in logged["config"]
    keys = set().union(*logged["history"])
    assert {"figures/curves/path", "figures/confusion_matrix/path",
            "figures/predictions/path"} <= keys
    res = read_results(run)
    for k in ("val/acc", "val/loss", "test/acc", "test/f1"):
        assert logged["summary"][k] == pytest.approx(res[k], abs=1e-6), k


def test_a_media_failure_warns_once_and_the_run_goes_on(tmp_path, monkeypatch) -> None:
    import d2l_lightning.callbacks.media as media

    def broken(path):
        raise OSError("disk full")

    monkeypatch.setattr(media, "_pixels", broken)
    root = tmp_path / "data"
    make_idx_dataset(root / "mnist", n_train=60, n_test=20)
    run = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert fit(root, run, "--model", "mlp", "--data", "mnist", "--logger",
                   "tensorboard") == 0
    said = [str(w.message) for w in caught if "final metrics and media" in str(w.message)]
    assert said == ["TensorBoardLogger: could not write the final metrics and media "
                    "(OSError: disk full); the run folder is complete"]
    assert (run / "results.json").is_file() and (run / "export" / "config.json").is_file()
