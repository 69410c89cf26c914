"""Files of earlier versions keep loading (``d2l_lightning/compat.py``, the one home for it)."""

from __future__ import annotations

import io
import pickle
import sys
import types

import pytest
import torch
import yaml

from d2l_lightning import compat
from d2l_lightning.models import build_model
from d2l_lightning.training.config import load_config_file, resolve


def test_a_run_config_of_the_previous_sections_resolves_as_it_ran(tmp_path) -> None:
    """Keys that moved in 2026-12: compile & co. to run, clipping to trainer, label smoothing
    to task, the run's logger and W&B settings to the trainer's loggers."""
    old = {"model": {"name": "lenet_bn", "recipe": "modern"},
           "optim": {"lr": 0.01, "label_smoothing": 0.1, "gradient_clip_val": 0.5},
           "trainer": {"max_epochs": 2, "compile": False, "matmul_precision": "high",
                       "dist_timeout": 60, "progress_bar": False, "progress_every": 5,
                       "precision": "32-true", "deterministic": False},
           "run": {"seed": 3, "logger": "wandb", "wandb_project": "p", "wandb_name": "n",
                   "wandb_tags": ["a"]}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(old))
    cfg = resolve([load_config_file(path)])
    assert cfg["task"]["label_smoothing"] == 0.1 and "label_smoothing" not in cfg["optim"]
    assert cfg["trainer"]["gradient_clip_val"] == 0.5
    assert (cfg["run"]["matmul_precision"], cfg["run"]["dist_timeout"],
            cfg["run"]["progress_bar"], cfg["run"]["progress_every"]) == ("high", 60, False, 5)
    wandb = cfg["trainer"]["logger"]["wandb"]
    assert (wandb["project"], wandb["name"], wandb["tags"]) == ("p", "n", ["a"])
    assert set(cfg["trainer"]["logger"]) == {"csv", "wandb"} and cfg["run"]["seed"] == 3


def test_w_and_b_settings_of_a_run_that_did_not_log_to_w_and_b_mean_nothing(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"run": {"logger": "csv", "wandb_project": "d2l"}}))
    assert resolve([load_config_file(path)])["trainer"]["logger"] == {"csv": {}}


def test_a_pickled_model_of_the_old_top_level_names_loads(monkeypatch) -> None:
    """``torch.save(model)`` made in a checkout before the package: ``models.lenet.LeNet``."""
    model = build_model("lenet")
    old = types.ModuleType("models.lenet")
    old.LeNet = type(model)
    monkeypatch.setitem(sys.modules, "models", types.ModuleType("models"))
    monkeypatch.setitem(sys.modules, "models.lenet", old)
    monkeypatch.setattr(type(model), "__module__", "models.lenet")
    buffer = io.BytesIO()
    torch.save(model, buffer)
    monkeypatch.undo()  # the old names are gone, as in a fresh process today
    assert b"models.lenet" in buffer.getvalue()
    buffer.seek(0)
    with pytest.raises((ModuleNotFoundError, AttributeError, pickle.UnpicklingError)):
        torch.load(buffer, weights_only=False)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False, pickle_module=compat.legacy_pickle)
    assert type(loaded).__module__ == "d2l_lightning.models.lenet"
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_the_mappings_say_until_when_they_are_kept() -> None:
    assert compat.KEEP_UNTIL >= "2027-12-31"
    assert compat.modern_module_name("models.lenet") == "d2l_lightning.models.lenet"
    assert compat.modern_module_name("torch.nn") == "torch.nn"
