"""The whole Lightning surface from flags and config files: every Trainer argument, callbacks
and loggers by name, the resolved config as every logger's hyper-parameters, and a recipe's
own dataset."""

from __future__ import annotations

import csv
import glob
import json
from pathlib import Path

import pytest
import yaml

from conftest import make_idx_dataset, read_results
from d2l_lightning.cli import train
from d2l_lightning.training.command_line import config_from_argv

TINY = ["--model", "mlp", "--data", "mnist", "--batch-size", "20", "--num-hiddens", "16",
        "--no-progress-bar"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("surface")
    make_idx_dataset(root / "mnist", n_train=120, n_test=20)
    return root


def val_steps(run: Path) -> list[int]:
    with open(run / "metrics.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("val/loss")]


def test_val_check_interval_and_early_stopping_from_flags(root, tmp_path) -> None:
    run = tmp_path / "run"
    # 100 training images / 20 = 5 steps an epoch; validation every half epoch (steps 2 and
    # 5); a loss that does not fall by 100 is no improvement: patience 1 stops at the second
    assert train.main([*TINY, "--data-dir", str(root), "--run-dir", str(run), "--max-epochs",
                       "5", "--trainer.val_check_interval=0.5", "--callback", "EarlyStopping",
                       "monitor=val/loss", "patience=1", "min_delta=100"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())["trainer"]
    assert saved["val_check_interval"] == 0.5
    stop = saved["callbacks"]["EarlyStopping"]
    assert (stop["monitor"], stop["patience"], stop["min_delta"], stop["mode"]) == (
        "val/loss", 1, 100.0, "min")
    assert val_steps(run) == [2, 5] and read_results(run)["epochs"] == 1  # of 5


def test_the_same_settings_from_a_config_file_resolve_the_same(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("trainer:\n  val_check_interval: 0.5\n  callbacks:\n"
                    "    EarlyStopping: {monitor: val/loss, patience: 2}\n")
    from_file = config_from_argv(["--config", str(path)])
    from_flags = config_from_argv(["--trainer.val_check_interval=0.5", "--callback",
                                   "EarlyStopping", "monitor=val/loss", "patience=2"])
    assert from_file == from_flags
    # LightningCLI's list form is read the same way
    path.write_text("trainer:\n  val_check_interval: 0.5\n  callbacks:\n"
                    "    - class_path: EarlyStopping\n"
                    "      init_args: {monitor: val/loss, patience: 2}\n")
    assert config_from_argv(["--config", str(path)]) == from_flags


def test_a_callback_without_monitor_follows_the_task_metric_and_false_drops_it(tmp_path):
    cfg = config_from_argv(["--callback", "EarlyStopping"])  # LeNet: val/acc, maximised
    stop = cfg["trainer"]["callbacks"]["EarlyStopping"]
    assert (stop["monitor"], stop["mode"], stop["patience"]) == ("val/acc", "max", 3)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"trainer": cfg["trainer"]}))
    dropped = config_from_argv(["--config", str(path), "--trainer.callbacks.EarlyStopping=false"])
    assert dropped["trainer"]["callbacks"] == {}


def test_model_checkpoint_options_configure_the_best_checkpoint(root, tmp_path) -> None:
    run = tmp_path / "run"
    assert train.main([*TINY, "--data-dir", str(root), "--run-dir", str(run), "--max-epochs",
                       "3", "--callback", "ModelCheckpoint", "save_top_k=2",
                       "monitor=val/loss", "mode=min"]) == 0
    best = sorted(p.name for p in (run / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 2 and (run / "checkpoints" / "last.ckpt").is_file()


def hparams_of(run: Path) -> dict:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    ea = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0})
    ea.Reload()
    content = ea.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    out = {}
    for name, value in info.hparams.items():
        kind = value.WhichOneof("kind")
        out[name] = getattr(value, kind)
    return out


def test_three_loggers_get_the_whole_config_as_hyperparameters(root, tmp_path) -> None:
    pytest.importorskip("wandb")
    from wandb_reader import read_run

    run = tmp_path / "run"
    assert train.main([*TINY, "--data-dir", str(root), "--run-dir", str(run), "--max-epochs",
                       "1", "--seed", "3", "--logger", "csv", "tensorboard", "wandb"]) == 0
    assert (run / "metrics.csv").is_file()
    tb = hparams_of(run)
    assert (tb["data.batch_size"], tb["run.seed"], tb["trainer.max_epochs"]) == (20, 3, 1)
    assert tb["model.name"] == "mlp" and tb["meta.params"] > 0
    (file,) = glob.glob(str(run / "wandb" / "offline-run-*" / "run-*.wandb"))
    config = read_run(Path(file))["config"]
    assert config["data"]["batch_size"] == 20 and config["run"]["seed"] == 3
    assert config["trainer"]["max_epochs"] == 1 and config["meta"]["versions"]["torch"]
    meta = read_results(run)["meta"]
    assert meta["params"] == tb["meta.params"] and meta["trainable_params"] == meta["params"]


def test_a_recipe_made_for_one_dataset_picks_it_and_another_is_said(capsys) -> None:
    cfg = config_from_argv(["--model", "lstm", "--recipe", "wikitext"])
    assert cfg["data"]["name"] == "wikitext2"
    assert config_from_argv(["--model", "lstm"])["data"]["name"] == "time_machine"
    assert train.main(["--model", "lstm", "--recipe", "wikitext", "--data", "time_machine",
                       "--print-config"]) == 0
    out, err = capsys.readouterr()
    assert yaml.safe_load(out)["data"]["name"] == "time_machine"
    assert err.count("\n") == 1 and "recipe 'wikitext' of lstm is made for data 'wikitext2'" \
        in err and "--data says" in err


@pytest.mark.parametrize("argv, needle", [
    (["--callback", "EarlyStoping"], "'EarlyStoping' is not a callback class"),
    (["--callback", "EarlyStopping", "patience=two"], "EarlyStopping's 'patience' must be int"),
    (["--callback", "EarlyStopping", "pateince=2"], "EarlyStopping takes no 'pateince'"),
    (["--callback", "StochasticWeightAveraging"], "StochasticWeightAveraging needs 'swa_lrs'"),
    (["--callback", "ModelCheckpoint", "dirpath=/tmp/x"], "'dirpath' is set by the run"),
    (["--logger", "tensorbored"], "'tensorbored' is not a logger class"),
    (["--trainer.logger.csv=false"], "metrics.csv is always written"),
    (["--trainer.val_check_interval=[1]"], "trainer.val_check_interval: expected"),
    (["--trainer.detect_anomaly=maybe"], "trainer.detect_anomaly: expected bool"),
    (["--trainer.log_every_n_steps=1.5"], "trainer.log_every_n_steps: expected int or None"),
    (["--trainer.profiler=[1]"], "trainer.profiler: cannot read 1 as a class name"),
    (["--max-epochs", "3", "--trainer.max_epochs=5"],
     "--max-epochs and --trainer.max_epochs both set trainer.max_epochs"),
    (["--wandb-project", "a", "--trainer.logger.wandb.project=b"],
     "--wandb-project and --trainer.logger.wandb.project both set"),
    (["--callback", "EarlyStopping", "patience=2", "--callback", "EarlyStopping", "patience=3"],
     "both set trainer.callbacks.EarlyStopping.patience"),
    (["--accumulate-grad-batches", "2", "--callback", "GradientAccumulationScheduler",
      "scheduling={0: 4}"], "both set how many batches a step accumulates"),
    (["--trainer.enable_progress_bar=false", "--progress-bar"],
     "trainer.enable_progress_bar false turns off"),
    (["--config", "no/such-config"], "is neither a file nor a shipped config"),
])
def test_a_wrong_trainer_argument_callback_or_logger_is_one_sentence(argv, needle, root, tmp_path,
                                                                     monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = train.main([*TINY, "--data-dir", str(root), "--run-dir", str(tmp_path / "run"),
                       "--max-steps", "1", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not list(tmp_path.iterdir())  # nothing written


def test_any_lightning_callback_and_a_users_own_by_dotted_path(tmp_path, monkeypatch) -> None:
    (tmp_path / "my_callbacks.py").write_text(
        "from lightning.pytorch.callbacks import Callback\n\n"
        "class Counter(Callback):\n    def __init__(self, every: int = 1):\n"
        "        self.every = every\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = config_from_argv(["--callback", "my_callbacks.Counter", "every=3", "--callback",
                            "LearningRateFinder", "--callback", "Timer", "duration=00:01:00:00"])
    callbacks = cfg["trainer"]["callbacks"]
    assert callbacks["my_callbacks.Counter"] == {"every": 3}
    assert callbacks["LearningRateFinder"]["num_training_steps"] == 100
    assert callbacks["Timer"]["duration"] == "00:01:00:00"
    json.dumps(cfg)  # config.yaml can hold it


def test_the_learning_rate_finder_sets_the_rate_the_optimizer_uses(root, tmp_path) -> None:
    """Lightning's LearningRateFinder, named in the config, sets the rate the task module's
    optimizer trains with (not the recipe's), and the checkpoint's hyper-parameters record it."""
    import torch

    run = tmp_path / "run"
    assert train.main([*TINY, "--data-dir", str(root), "--run-dir", str(run), "--max-epochs",
                       "1", "--batch-size", "4", "--callback", "LearningRateFinder",
                       "num_training_steps=20"]) == 0
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    used = ckpt["optimizer_states"][0]["param_groups"][0]["lr"]
    assert used != 0.1 and used == ckpt["hyper_parameters"]["lr"]  # not the recipe's 0.1


@pytest.mark.parametrize("hint", [int | float | None, float | int | None])
def test_a_number_keeps_its_type_whatever_the_order_of_the_unions_arms(hint) -> None:
    """typing caches Union[int, float] and Union[float, int] as one object, so Trainer's hints
    come in either order depending on what a process imported first: a batch count of 20
    became 20.0 (and was refused as a fraction above 1) in an installed package."""
    from d2l_lightning.training.types import conform

    assert type(conform(20, hint)) is int and type(conform(0.5, hint)) is float
    assert conform(None, hint) is None
    with pytest.raises(TypeError):
        conform(True, hint)

