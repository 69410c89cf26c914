"""``train.py --list [MODEL]`` and ``--list-configs`` line by line (tests/test_config.py checks
that every model and recipe is listed)."""

from __future__ import annotations

import inspect

import yaml

from d2l_lightning.cli import train
from d2l_lightning.models import get_spec
from d2l_lightning.models.registry import recipe_summary, source_file
from d2l_lightning.training.config import CONFIGS, shipped_configs


def test_list_configs_aligns_each_name_with_its_title_and_ends_with_the_usage(capsys) -> None:
    assert train.main(["--list-configs"]) == 0
    lines = capsys.readouterr().out.rstrip("\n").split("\n")
    names = shipped_configs()
    width = max(map(len, names))
    assert len(lines) == len(names) + 2 and lines[len(names)] == ""
    for name, line in zip(names, lines):
        title = (CONFIGS / f"{name}.yaml").read_text(encoding="utf-8").split("\n")[0]
        assert line == f"{name:<{width}}  {title.lstrip('#').strip()}".rstrip()
    assert lines[-1] == ("python train.py --config NAME (a run), --sweep sweeps/NAME (a sweep); "
                         f"files under {CONFIGS}")


def test_list_model_shows_its_header_and_each_recipe_as_a_config(capsys) -> None:
    spec = get_spec("softmax_regression")
    assert train.main(["--list", "softmax_regression"]) == 0
    out = capsys.readouterr().out
    head = out.split("\n")[:4]
    assert head == [
        f"softmax_regression: image_classification, d2l §{spec.section}, default data "
        "fashion_mnist",
        f"defined in {source_file(spec)}",
        f"builder: softmax_regression{inspect.signature(spec.builder)}", ""]
    first = out.split("\n", 5)[4]
    assert first == ("recipe 'd2l' (python train.py --model softmax_regression --recipe d2l):")
    cfg = yaml.safe_load(out.split(first + "\n", 1)[1].split("\nrecipe ")[0])
    assert list(cfg) == ["model", "data", "task", "optim", "trainer"]  # no run section
    assert cfg["trainer"] == {"max_epochs": spec.recipe("d2l").max_epochs}
    assert cfg["model"]["recipe"] == "d2l" and not out.endswith("\n\n")


def test_a_model_train_py_cannot_train_lists_its_recipes_and_why(capsys) -> None:
    spec = get_spec("bi_lstm")
    assert train.main(["--list", "bi_lstm"]) == 0
    out = capsys.readouterr().out
    lines = out.split("\n")
    assert lines[0].startswith("bi_lstm: sequence_encoding, d2l §")
    assert out.endswith(")\n")  # the last recipe's reason ends the listing
    recipe = next(iter(spec.recipes))
    i = lines.index(f"recipe '{recipe}': {recipe_summary(spec.recipe(recipe))}")
    assert lines[i + 1].startswith("  (model 'bi_lstm' cannot train with train.py: ")
    assert lines[i + 1].endswith(")")


def test_list_of_an_unknown_model_is_one_sentence(capsys) -> None:
    assert train.main(["--list", "lenet9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("train.py: error: --list: ") and err.count("\n") == 1
    assert "lenet9" in err


def test_list_without_a_model_is_the_registry_table_and_a_pointer(capsys) -> None:
    from d2l_lightning.models import format_table

    assert train.main(["--list"]) == 0
    assert capsys.readouterr().out == (format_table() + "\n\n`train.py --list MODEL` shows a "
                                       "model's options and each recipe resolved into the "
                                       "config sections.\n")


def test_a_config_without_a_title_is_listed_without_trailing_spaces(tmp_path, monkeypatch,
                                                                   capsys) -> None:
    from d2l_lightning.training import listing

    (tmp_path / "a").mkdir()
    (tmp_path / "a/long-name.yaml").write_text("# A title\nmodel: {name: mlp}\n")
    (tmp_path / "a/x.yaml").write_text("\nmodel: {name: mlp}\n")  # no title line
    monkeypatch.setattr(listing, "CONFIGS", tmp_path)
    monkeypatch.setattr(listing, "shipped_configs", lambda: ["a/long-name", "a/x"])
    assert listing.list_configs().split("\n")[:2] == ["a/long-name  A title",
                                                      "a/x"]


def test_a_recipe_refused_names_the_listing_and_the_next_recipes_are_still_shown(
        monkeypatch) -> None:
    """A refused recipe is one reason line; the ones after it are listed as configs."""
    from d2l_lightning.training import config, listing

    def resolve(layers):  # mlp's first recipe holds a value no run can use
        if layers[0].values["model"]["recipe"] == "d2l":
            layers[0].set("optim", "lr", "fast")
        return config.resolve(layers)

    monkeypatch.setattr(listing, "resolve", resolve)
    lines = listing.describe_model("mlp").split("\n")
    i = lines.index(f"recipe 'd2l': {recipe_summary(get_spec('mlp').recipe('d2l'))}")
    assert lines[i + 1] == "  (--list: optim.lr: expected float, got 'fast')"
    assert "recipe 'modern' (python train.py --model mlp --recipe modern):" in lines[i + 2:]
