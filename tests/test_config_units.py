"""``training/config.py`` as units: layers, config files, the recipe's layer, merging, dump.

In-process and fast (no training, no subprocess): tiny config files written here in the real
format, the functions called directly. ``tests/test_config_files.py`` holds the rest
(``resolve`` and ``dump_config``).
"""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from d2l_lightning.models import Recipe
from d2l_lightning.training import config
from d2l_lightning.training.config import (
    CONFIGS,
    SECTIONS,
    ConfigError,
    Layer,
    config_path,
    load_config_file,
    read_yaml,
    recipe_layer,
    shipped_configs,
)


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# --- Layer -------------------------------------------------------------------------------


def test_a_dotted_key_sets_a_nested_mapping_and_its_source() -> None:
    layer = Layer("config a.yaml")
    layer.set("trainer", "callbacks.EarlyStopping.patience", 2, "--callback")
    layer.set("trainer", "callbacks.EarlyStopping.mode", "min")
    layer.set("optim", "lr", 0.5)
    assert layer.values == {"trainer": {"callbacks": {"EarlyStopping": {"patience": 2,
                                                                        "mode": "min"}}},
                            "optim": {"lr": 0.5}}
    # only a key given a source has one; the others are named by the layer's label
    assert layer.sources == {("trainer", "callbacks.EarlyStopping.patience"): "--callback"}


def test_a_tuple_key_keeps_a_dotted_class_name_in_one_piece() -> None:
    layer = Layer("cli")
    layer.set("trainer", ("callbacks", "my_pkg.MyCallback", "every"), 3, "--callback")
    assert layer.values == {"trainer": {"callbacks": {"my_pkg.MyCallback": {"every": 3}}}}
    assert layer.sources == {("trainer", "callbacks.my_pkg.MyCallback.every"): "--callback"}


def test_a_nested_key_replaces_a_value_that_is_not_a_mapping() -> None:
    layer = Layer("cli", {"trainer": {"logger": "csv"}})
    layer.set("trainer", "logger.tensorboard.name", "t")
    assert layer.values == {"trainer": {"logger": {"tensorboard": {"name": "t"}}}}


def test_items_are_the_top_level_keys_of_every_section() -> None:
    layer = Layer("x", {"optim": {"lr": 1, "momentum": 2}, "run": {"seed": {"a": 3}}})
    assert list(layer.items()) == [("optim", "lr", 1), ("optim", "momentum", 2),
                                   ("run", "seed", {"a": 3})]


# --- shipped configs and config paths ----------------------------------------------------


def test_shipped_configs_are_the_yaml_files_by_relative_name_sorted(tmp_path,
                                                                   monkeypatch) -> None:
    for name in ("z.yaml", "b/c.yaml", "a/y.yaml", "a/x.yaml", "notes.txt", "a/readme.md"):
        write(tmp_path / name, "{}\n")
    monkeypatch.setattr(config, "CONFIGS", tmp_path)
    assert shipped_configs() == ["a/x", "a/y", "b/c", "z"]


def test_the_package_ships_its_configs_under_d2l_lightning_configs() -> None:
    assert Path(config.__file__).parents[1] / "configs" == CONFIGS
    names = shipped_configs()
    assert "fashion_mnist/lenet_bn-modern" in names and names == sorted(names)
    assert len(names) == len(list(CONFIGS.rglob("*.yaml"))) >= 30


@pytest.mark.parametrize("name", ["fashion_mnist/lenet_bn-modern",
                                  "fashion_mnist/lenet_bn-modern.yaml"])
def test_a_shipped_name_with_or_without_yaml_finds_its_file(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config_path(name) == CONFIGS / "fashion_mnist" / "lenet_bn-modern.yaml"


def test_a_file_at_the_path_wins_over_the_shipped_config_of_that_name(tmp_path,
                                                                     monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "fashion_mnist" / "lenet_bn-modern.yaml", "{}\n")
    assert config_path("fashion_mnist/lenet_bn-modern.yaml") == Path(
        "fashion_mnist/lenet_bn-modern.yaml")


@pytest.mark.parametrize("how", ["absolute", "dot-dot"])
def test_a_name_outside_the_shipped_folder_is_not_looked_up_there(how, tmp_path,
                                                                  monkeypatch) -> None:
    """An absolute path or one with ``..`` names a file, never a shipped config."""
    monkeypatch.chdir(tmp_path)
    if how == "absolute":  # tmp/c.yaml exists, but "tmp/c" is not a file
        write(tmp_path / "c.yaml", "{}\n")
        name = str(tmp_path / "c")
    else:  # CONFIGS / "../configs/..." exists
        name = "../configs/fashion_mnist/lenet_bn-modern"
        assert (CONFIGS / f"{name}.yaml").is_file()
    with pytest.raises(ConfigError) as e:
        config_path(name)
    assert str(e.value) == (f"config {name} is neither a file nor a shipped config (the "
                            "shipped ones: train.py --list-configs)")


def test_a_folder_is_refused_as_a_folder_under_the_callers_name(tmp_path) -> None:
    with pytest.raises(ConfigError) as e:
        config_path(tmp_path, "sweep")
    assert str(e.value) == f"sweep {tmp_path} is a folder, not a file"


# --- reading YAML ------------------------------------------------------------------------


def test_a_config_file_is_read_as_utf_8_whatever_the_locale(tmp_path, monkeypatch) -> None:
    """On a machine whose locale encoding is cp1252 (Windows), UTF-8 text still reads back."""
    path = write(tmp_path / "c.yaml", "model: {name: 'é→'}\n")
    read_text = Path.read_text

    def cp1252_locale(self, encoding=None, errors=None):
        return read_text(self, encoding=encoding or "cp1252", errors=errors)

    monkeypatch.setattr(Path, "read_text", cp1252_locale)
    assert read_yaml(path, "config file") == {"model": {"name": "é→"}}


@pytest.mark.parametrize("text, said", [
    ("a: {b: 1\n", "while parsing a flow mapping"),  # the first line of PyYAML's message
    (b"\xffa: 1\n", "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
])
def test_a_file_that_does_not_parse_is_one_sentence_with_the_first_line(text, said, tmp_path):
    path = write(tmp_path / "c.yaml", text)
    with pytest.raises(ConfigError) as e:
        read_yaml(path, "sweep file")
    assert str(e.value) == f"sweep file {path} does not parse as YAML ({said})"


def test_an_error_without_a_message_is_named_by_its_type(tmp_path, monkeypatch) -> None:
    from d2l_lightning.training import types as config_types

    def fails(text: str) -> Any:
        raise yaml.YAMLError()

    monkeypatch.setattr(config_types, "load_yaml", fails)
    path = write(tmp_path / "c.yaml", "a: 1\n")
    with pytest.raises(ConfigError) as e:
        read_yaml(path, "config file")
    assert str(e.value) == f"config file {path} does not parse as YAML (YAMLError)"


def test_a_key_given_twice_is_refused_with_its_lines(tmp_path) -> None:
    path = write(tmp_path / "c.yaml", "optim:\n  lr: 1\n  lr: 2\n")
    with pytest.raises(ConfigError) as e:
        read_yaml(path, "config file")
    assert str(e.value) == (f"config file {path}: key 'lr' is given twice (lines 2 and 3); "
                            "keep one of them")


# --- config files as layers --------------------------------------------------------------


def test_a_config_file_is_a_layer_named_after_its_path(tmp_path) -> None:
    path = write(tmp_path / "c.yaml", "model: {name: lenet, 7: x}\ndata:\nrun: {seed: 3}\n")
    layer = load_config_file(path)
    assert layer.label == f"config {path}"
    # an empty section is left out; keys are strings
    assert layer.values == {"model": {"name": "lenet", "7": "x"}, "run": {"seed": 3}}
    assert layer.sources == {} and layer.optional == set()


def test_an_empty_config_file_is_an_empty_layer(tmp_path) -> None:
    layer = load_config_file(write(tmp_path / "c.yaml", "# nothing\n"))
    assert layer.values == {}


def test_a_shipped_config_is_loaded_by_name() -> None:
    layer = load_config_file("fashion_mnist/lenet_bn-modern")
    path = CONFIGS / "fashion_mnist" / "lenet_bn-modern.yaml"
    assert layer.label == f"config {path}"
    assert layer.values == yaml.safe_load(path.read_text(encoding="utf-8"))


def test_a_config_file_of_the_previous_sections_is_read_in_todays(tmp_path) -> None:
    layer = load_config_file(write(tmp_path / "c.yaml",
                                   "optim: {lr: 0.1, label_smoothing: 0.2}\n"))
    assert layer.values == {"optim": {"lr": 0.1}, "task": {"label_smoothing": 0.2}}


@pytest.mark.parametrize("text, said", [
    ("- a\n", "config file {p} must hold a mapping of sections, not a list"),
    ("7\n", "config file {p} must hold a mapping of sections, not a int"),
    ("optimiser: {lr: 1}\n", "config {p}: unknown section 'optimiser' (sections: model, data, "
     "task, optim, trainer, run)"),
    ("model: [lenet]\n", "config {p}: section 'model' must be a mapping of keys, not a list"),
    ("run: 3\n", "config {p}: section 'run' must be a mapping of keys, not a int"),
    ("model: lenet\nfoo: 1\n", "config {p}: unknown key 'foo' (a flat config of an earlier "
     "train.py)"),
])
def test_a_config_file_that_is_not_sectioned_is_one_sentence(text, said, tmp_path) -> None:
    path = write(tmp_path / "c.yaml", text)
    with pytest.raises(ConfigError) as e:
        load_config_file(path)
    assert str(e.value) == said.format(p=path)


# --- the recipe's layer ------------------------------------------------------------------


def fake_spec(recipe: Recipe, name: str = "toy") -> Any:
    return types.SimpleNamespace(name=name, recipe={"r": recipe}.__getitem__)


def test_a_recipe_layer_puts_each_field_in_its_section() -> None:
    recipe = Recipe(optimizer="adamw", lr=0.002, batch_size=32, max_epochs=4, weight_decay=0.01,
                    momentum=0.9, scheduler="cosine", resize=64, label_smoothing=0.1,
                    gradient_clip_val=1.0, plateau_factor=0.5, plateau_patience=3,
                    model_kwargs={"activation": "relu"}, data_kwargs={"num_steps": 9},
                    data="mnist")
    layer = recipe_layer(fake_spec(recipe), "r")
    assert layer.label == "recipe 'r' of toy"
    assert layer.values == {
        "optim": {"optimizer": "adamw", "lr": 0.002, "weight_decay": 0.01, "momentum": 0.9,
                  "scheduler": "cosine", "plateau_factor": 0.5, "plateau_patience": 3},
        "data": {"batch_size": 32, "num_steps": 9},
        "trainer": {"max_epochs": 4, "gradient_clip_val": 1.0},
        "task": {"resize": 64, "label_smoothing": 0.1},
        "model": {"activation": "relu"},
    }
    assert layer.optional == set()  # every field changed from Recipe's default


def test_a_recipes_unchanged_defaults_are_optional() -> None:
    layer = recipe_layer(fake_spec(Recipe(lr=0.5, data_kwargs={"level": "word"})), "r")
    changed = {("optim", "lr")}
    defaults = {(config.RECIPE_SECTIONS[f.name], f.name) for f in dataclasses.fields(Recipe)
                if f.name in config.RECIPE_SECTIONS} - changed
    assert layer.optional == defaults and len(defaults) == 11
    assert layer.values["data"] == {"batch_size": 256, "level": "word"}
    assert "model" not in layer.values  # no model_kwargs


def test_an_unknown_recipe_is_the_specs_key_error() -> None:
    with pytest.raises(KeyError):
        recipe_layer(fake_spec(Recipe()), "nope")


# --- merging layers ----------------------------------------------------------------------


def merged(*layers: Layer) -> tuple[dict, dict, set]:
    return config._merge(layers)


def test_later_layers_win_and_mappings_merge_key_by_key() -> None:
    a = Layer("A", {"optim": {"lr": 1, "momentum": 0.5},
                    "trainer": {"callbacks": {"EarlyStopping": {"patience": 2, "mode": "max"},
                                              "Timer": {}}}})
    b = Layer("B", {"optim": {"lr": 2},
                    "trainer": {"callbacks": {"EarlyStopping": {"patience": 3, "x": {"y": 1}},
                                              "Timer": False}}})
    values, sources, _ = merged(a, b)
    assert values == {"model": {}, "data": {}, "task": {}, "optim": {"lr": 2, "momentum": 0.5},
                      "trainer": {"callbacks": {"EarlyStopping": {"patience": 3, "mode": "max",
                                                                  "x": {"y": 1}},
                                                "Timer": False}},
                      "run": {}}
    assert list(values) == list(SECTIONS)
    assert sources == {("optim", "lr"): "B", ("optim", "momentum"): "A",
                       ("trainer", "callbacks"): "B"}


def test_a_merge_never_writes_into_a_layer_or_a_default() -> None:
    """Nested mappings are copied: a later layer's argument stays out of the earlier layer."""
    a = Layer("A", {"trainer": {"callbacks": {"EarlyStopping": {"patience": 2}}}})
    b = Layer("B", {"trainer": {"callbacks": {"EarlyStopping": {"min_delta": 0.1}}}})
    c = Layer("C", {"trainer": {"callbacks": {"EarlyStopping": {"mode": "min"}}}})
    values, _, _ = merged(a, b)
    assert values["trainer"]["callbacks"] == {"EarlyStopping": {"patience": 2, "min_delta": 0.1}}
    assert a.values == {"trainer": {"callbacks": {"EarlyStopping": {"patience": 2}}}}
    values, _, _ = merged(Layer("D", {"trainer": {"callbacks": {}}}), a, c)
    assert a.values == {"trainer": {"callbacks": {"EarlyStopping": {"patience": 2}}}}
    values["trainer"]["callbacks"]["EarlyStopping"]["patience"] = 9
    assert a.values["trainer"]["callbacks"]["EarlyStopping"] == {"patience": 2}
    # a mapping argument merged into an existing entry is copied as deep as it goes
    deep = Layer("E", {"trainer": {"callbacks": {"Log": {"config": {"tags": {"a": 1}}}}}})
    more = Layer("F", {"trainer": {"callbacks": {"Log": {"config": {"tags": {"b": 2}}}}}})
    values, _, _ = merged(Layer("D", {"trainer": {"callbacks": {}}}), deep, more)
    assert values["trainer"]["callbacks"]["Log"] == {"config": {"tags": {"a": 1, "b": 2}}}
    assert deep.values["trainer"]["callbacks"]["Log"] == {"config": {"tags": {"a": 1}}}


def test_a_key_of_a_nested_source_keeps_its_own_label() -> None:
    a = Layer("A")
    a.set("trainer", "callbacks.EarlyStopping.patience", 2, "--callback EarlyStopping")
    a.set("optim", "lr", 0.1, "--lr")
    _, sources, _ = merged(a, Layer("B", {"run": {"seed": 1}}))
    assert sources == {("trainer", "callbacks"): "A", ("optim", "lr"): "--lr",
                       ("trainer", "callbacks.EarlyStopping.patience"): "--callback EarlyStopping",
                       ("run", "seed"): "B"}


def test_a_later_layer_setting_an_optional_key_makes_it_required() -> None:
    recipe = Layer("recipe", {"task": {"label_smoothing": 0.0, "resize": None}},
                   optional={("task", "label_smoothing"), ("task", "resize")})
    user = Layer("user", {"task": {"label_smoothing": 0.1}})
    assert merged(recipe, user)[2] == {("task", "resize")}
    assert merged(user, recipe)[2] == {("task", "label_smoothing"), ("task", "resize")}
