"""``training/config.py``: :func:`resolve` and :func:`dump_config`, in-process and fast.

What a run's config resolves to from a few layers (defaults, the recipe, the model's data),
the one-sentence refusals naming the source of a bad model, recipe or data, and the exact
YAML that ``config.yaml`` and ``--print-config`` write.
"""

from __future__ import annotations

import dataclasses
import logging
import types
from pathlib import Path

import pytest

from d2l_lightning.datamodules.registry import data_names
from d2l_lightning.lit_models import TASK_MODULES
from d2l_lightning.models import get_spec, model_names
from d2l_lightning.training import config
from d2l_lightning.training.config import SECTIONS, ConfigError, Layer, dump_config, resolve
from d2l_lightning.training.schema import FIXED


def cli(**values: object) -> Layer:
    """A command-line layer: ``section__key=value``, each key labelled by its flag."""
    layer = Layer("the command line")
    for name, value in values.items():
        section, key = name.split("__")
        layer.set(section, key, value, f"--{key.replace('_', '-')}")
    return layer


# --- resolve -----------------------------------------------------------------------------


def test_no_layers_resolve_to_lenet_d2l_on_its_data_with_every_default() -> None:
    cfg = resolve([])
    assert list(cfg) == list(SECTIONS)
    assert (cfg["model"]["name"], cfg["model"]["recipe"], cfg["data"]["name"]) == (
        "lenet", "d2l", "fashion_mnist")
    # the recipe's values (Recipe defaults: sgd, lr 0.1, 10 epochs) and lenet's batch size
    assert (cfg["optim"]["optimizer"], cfg["optim"]["lr"], cfg["trainer"]["max_epochs"],
            cfg["data"]["batch_size"]) == ("sgd", 0.1, 10, 128)
    # the schema's defaults of trainer and run
    assert cfg["run"] == {"run_dir": None, "seed": 0, "test": True, "ckpt_every_n_steps": 0,
                          "diverged_after": 50, "compile": False,
                          "matmul_precision": "highest", "dist_timeout": 600,
                          "progress_bar": None, "progress_every": 0}
    assert (cfg["trainer"]["precision"], cfg["trainer"]["logger"], cfg["trainer"]["callbacks"],
            cfg["trainer"]["log_every_n_steps"]) == ("32-true", {"csv": {}}, {}, 10)


def test_the_resolved_config_names_the_models_canonical_name_and_recipe() -> None:
    cfg = resolve([cli(model__name="lenet", model__recipe="modern")])
    assert (cfg["model"]["name"], cfg["model"]["recipe"]) == ("lenet", "modern")
    assert (cfg["optim"]["optimizer"], cfg["model"]["activation"]) == ("adamw", "relu")


def test_a_resolved_config_leaves_the_schema_defaults_as_they_were() -> None:
    cfg = resolve([])
    cfg["trainer"]["logger"]["csv"]["x"] = 1
    cfg["trainer"]["callbacks"]["Timer"] = {}
    assert FIXED["trainer"]["logger"].default == {"csv": {}}
    assert FIXED["trainer"]["callbacks"].default == {}
    assert resolve([])["trainer"]["logger"] == {"csv": {}}


def test_a_refused_logger_argument_does_not_change_the_next_config() -> None:
    bad = Layer("config a.yaml")
    bad.set("trainer", "logger.csv.flush_logs_every_n_steps", 5)
    with pytest.raises(ConfigError):
        resolve([bad])
    assert resolve([])["trainer"]["logger"] == {"csv": {}}


@pytest.mark.parametrize("layer, said", [
    (cli(model__name="lenet7"),
     "--name: unknown model 'lenet7'; choose from: " + ", ".join(model_names())),
    (Layer("config c.yaml", {"model": {"name": "lenet", "recipe": "fast"}}),
     "config c.yaml: model 'lenet' has no recipe 'fast'; choose from: d2l, d2l-0.17, modern"),
    (cli(data__name="cifar"), "--name: unknown data 'cifar'; choose from: "
     + ", ".join(data_names())),
    (cli(model__name="gru", data__name="mnist"),
     "--name: model 'gru' (language_modeling) cannot train on data 'mnist' "
     "(image_classification); valid data for it: " + ", ".join(data_names("language_modeling"))),
    (cli(data__name="wikitext2"),
     "--name: model 'lenet' (image_classification) cannot train on data 'wikitext2' "
     "(language_modeling, masked_lm); valid data for it: mnist, fashion_mnist, image_folder"),
])
def test_an_unknown_model_recipe_or_data_is_one_sentence_naming_its_source(layer, said) -> None:
    with pytest.raises(ConfigError) as e:
        resolve([layer])
    assert str(e.value) == said


def test_bad_data_picked_by_default_is_refused_naming_the_default(monkeypatch) -> None:
    lenet = dataclasses.replace(get_spec("lenet"), data="cifar")
    monkeypatch.setattr("d2l_lightning.models.get_spec", lambda name: lenet)
    with pytest.raises(ConfigError) as e:
        resolve([])
    assert str(e.value) == "default: unknown data 'cifar'; choose from: " + ", ".join(data_names())


def test_a_bad_schema_default_is_refused_naming_the_defaults_layer(monkeypatch) -> None:
    logger = FIXED["trainer"]["logger"]
    monkeypatch.setitem(FIXED["trainer"], "logger",
                        dataclasses.replace(logger, default={"csv": {"flush": 5}}))
    with pytest.raises(ConfigError) as e:
        resolve([])
    assert str(e.value) == ("defaults: trainer.logger.csv: the csv logger (metrics.csv) takes "
                            "no arguments")


OPTIONS = {
    "model": "model 'lenet' takes no 'zzz' (its options: activation, pool)",
    "data": "data 'fashion_mnist' takes no 'zzz' (its options: data_dir, batch_size, val_size, "
            "train_fraction, setting, on_device)",
    "task": "the image_classification task takes no 'zzz' (its options: resize, "
            "label_smoothing, channels_last, init_from, freeze, new_head)",
}


@pytest.mark.parametrize("section", ["model", "data", "task"])
@pytest.mark.parametrize("key", ["zzz", "self"])
def test_a_key_the_constructor_does_not_take_is_refused_naming_it_and_its_options(
        section: str, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        resolve([Layer("config c.yaml", {section: {key: 1}})])
    assert str(e.value) == "config c.yaml: " + OPTIONS[section].replace("'zzz'", f"'{key}'")


@pytest.mark.parametrize("section, key", [("task", "num_classes"), ("task", "mean"),
                                          ("model", "in_channels")])
def test_a_constructor_argument_the_data_provides_cannot_be_set(section: str, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        resolve([Layer("config c.yaml", {section: {key: 1}})])
    assert str(e.value) == f"config c.yaml: {section}.{key} comes from the data and cannot be set"


def test_a_model_train_py_cannot_train_is_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError) as e:
        resolve([cli(model__name="bi_lstm")])
    assert str(e.value) == ("model 'bi_lstm' cannot train with train.py: "
                            + get_spec("bi_lstm").cannot_train)


def test_a_task_without_a_module_is_refused_naming_the_tasks_that_train() -> None:
    spec = types.SimpleNamespace(name="toy", task="speech", cannot_train=None)
    with pytest.raises(ConfigError) as e:
        config._task_class(spec)
    assert str(e.value) == ("model 'toy' (speech) cannot train with train.py, which trains "
                            "image_classification, language_modeling, regression, seq2seq, "
                            "masked_lm models")
    assert config._task_class(get_spec("gru")) is TASK_MODULES["language_modeling"]


def test_the_recipes_data_is_picked_unless_the_config_names_other_data(caplog) -> None:
    assert resolve([cli(model__name="lstm", model__recipe="wikitext")])["data"]["name"] == \
        "wikitext2"
    notes: list[str] = []
    cfg = resolve([cli(model__name="lstm", model__recipe="wikitext",
                       data__name="time_machine")], notes)
    assert cfg["data"]["name"] == "time_machine"
    said = ("recipe 'wikitext' of lstm is made for data 'wikitext2'; training on "
            "'time_machine' as --name says")
    assert notes == [said]
    with caplog.at_level(logging.WARNING, logger="d2l_lightning"):
        resolve([cli(model__name="lstm", model__recipe="wikitext", data__name="time_machine")])
    assert [r.getMessage() for r in caplog.records] == [said]


def test_no_note_when_the_data_is_the_recipes_or_the_recipe_names_none() -> None:
    notes: list[str] = []
    resolve([cli(model__name="lstm", model__recipe="wikitext", data__name="wikitext2")], notes)
    resolve([cli(model__name="lstm", data__name="wikitext2")], notes)  # d2l: no data of its own
    assert notes == []


def test_a_key_in_the_wrong_section_is_refused_naming_its_home() -> None:
    with pytest.raises(ConfigError) as e:
        resolve([Layer("config c.yaml", {"trainer": {"seed": 2}})])
    assert str(e.value) == "config c.yaml: 'seed' belongs in section 'run', not 'trainer'"


# --- dump_config -------------------------------------------------------------------------


def test_the_dump_is_yaml_in_section_order_with_the_header_as_comments() -> None:
    cfg = {"run": {"seed": 1, "dir": Path("/runs/a")},
           "model": {"zeta": (1, 2), "alpha": [{"a": 1}, {"b": [1]}], "mixed": [1, [2]]},
           "elsewhere": {"x": 1}}
    assert dump_config(cfg, "train.py config of lenet\n\ncommand: x  ") == (
        "# train.py config of lenet\n"
        "#\n"
        "# command: x\n"
        "model:\n"
        "  zeta: [1, 2]\n"
        "  alpha:\n"
        "  - a: 1\n"
        "  - b: [1]\n"
        "  mixed:\n"
        "  - 1\n"
        "  - [2]\n"
        "run:\n"
        "  seed: 1\n"
        "  dir: /runs/a\n")


def test_the_dump_without_a_header_is_the_yaml_alone() -> None:
    assert dump_config({"optim": {"lr": 0.5}, "data": {}}) == "data: {}\noptim:\n  lr: 0.5\n"


def test_the_dump_folds_a_long_value_at_the_first_space_past_column_100() -> None:
    fits = "x" * 88 + " yyy z"  # "  note: " + 88 + " yyy": the space after yyy is column 100
    assert dump_config({"run": {"note": fits}}) == f"run:\n  note: {fits}\n"
    longer = "x" * 88 + " yyyy z"  # ... column 101: z goes to the next line
    assert dump_config({"run": {"note": longer}}) == f"run:\n  note: {longer[:-2]}\n    z\n"


# --- where each key lives, and what checks the trainer section ---------------------------


def test_each_key_names_the_sections_it_belongs_to() -> None:
    homes = config._homes()
    assert {k: homes[k] for k in ("lr", "plateau_factor", "seed", "batch_size",
                                  "label_smoothing", "logger", "log_every_n_steps", "name")} == {
        "lr": {"optim"}, "plateau_factor": {"optim"}, "seed": {"run"}, "batch_size": {"data"},
        "label_smoothing": {"task"}, "logger": {"trainer"}, "log_every_n_steps": {"trainer"},
        "name": {"model", "data"}}
    assert not [k for k in homes if "." in k]  # --wandb-project sets logger.wandb.project


def test_the_trainer_is_checked_by_lightnings_hints_except_its_objects() -> None:
    hints = config._trainer_hints()
    assert set(FIXED["trainer"]) - set(hints) == {"logger", "callbacks", "plugins", "profiler"}
    assert hints["max_epochs"] == int | None
