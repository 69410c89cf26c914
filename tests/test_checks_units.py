"""training.checks as units: one config section against its schema or its constructor, and the
values no run can use (tests/test_config.py checks the same through train.py)."""

from __future__ import annotations

from dataclasses import MISSING
from typing import Any

import pytest

from d2l_lightning.training.checks import (
    CONSTRUCTOR_RULES,
    Consumer,
    check_constructor_section,
    check_fixed_section,
    check_values,
)
from d2l_lightning.training.errors import ConfigError
from d2l_lightning.training.schema import COUNT, Key

# --- the fixed sections (optim, trainer, run) ----------------------------------------------------

KEYS = {"lr": Key("lr", float, 0.1, check=COUNT), "steps": Key("steps", int, MISSING),
        "name": Key("name", "str", "sgd")}


def fixed(values: dict[str, Any], hints: dict[str, Any] | None = None,
          sources: dict[tuple[str, str], str] | None = None,
          optional: set[tuple[str, str]] | None = None,
          homes: dict[str, set[str]] | None = None) -> dict[str, Any]:
    return check_fixed_section("optim", values, KEYS, hints or {}, sources or {},
                               optional or set(), homes or {})


def refusal(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as e:
        call(*args, **kwargs)
    return str(e.value)


def test_a_fixed_section_fills_its_defaults_in_schema_order() -> None:
    out = fixed({"steps": 3})
    assert out == {"lr": 0.1, "steps": 3, "name": "sgd"}
    assert list(out) == ["lr", "steps", "name"]  # the schema's order, not the file's
    assert list(fixed({"name": "adam", "steps": 2, "lr": 2})) == ["lr", "steps", "name"]


def test_a_key_without_a_default_stays_unset() -> None:
    assert fixed({}) == {"lr": 0.1, "name": "sgd"}


def test_a_fixed_value_is_conformed_to_its_hint() -> None:
    out = fixed({"lr": "2e0", "steps": 4})
    assert out["lr"] == 2.0 and type(out["lr"]) is float
    assert out["steps"] == 4 and type(out["steps"]) is int


def test_a_text_hint_passes_the_value_unchanged() -> None:
    """A Trainer argument's hint is text until Lightning's own hints are given."""
    assert fixed({"name": ["any", 3]})["name"] == ["any", 3]


def test_the_given_hints_override_the_keys_own() -> None:
    assert fixed({"steps": "1e1"}, hints={"steps": float})["steps"] == 10.0
    assert fixed({"name": "adam"}, hints={"name": str})["name"] == "adam"
    said = refusal(fixed, {"name": 3}, hints={"name": str}, sources={("optim", "name"): "f.yaml"})
    assert said == "f.yaml: optim.name: expected str, got 3"


@pytest.mark.parametrize("values, source, said", [
    ({"lr": "fast"}, "--lr", "--lr: optim.lr: expected float, got 'fast'"),
    ({"steps": 2.5}, "c.yaml", "c.yaml: optim.steps: expected int, got 2.5"),
    ({"lr": 0.5}, "--lr", "--lr: optim.lr must be at least 1, got 0.5"),
])
def test_a_fixed_value_of_the_wrong_type_or_range_is_one_sentence(values, source, said) -> None:
    key = next(iter(values))
    assert refusal(fixed, values, sources={("optim", key): source}) == said


def test_a_refusal_without_a_source_names_the_default() -> None:
    assert refusal(fixed, {"lr": 0}) == "default: optim.lr must be at least 1, got 0.0"


def test_an_optional_key_of_another_section_is_dropped() -> None:
    """A default of the recipe that this section does not take."""
    assert fixed({"momentum": 0.9, "lr": 1}, optional={("optim", "momentum")}) == {
        "lr": 1.0, "name": "sgd"}  # and the keys after it are read
    said = refusal(fixed, {"momentum": 0.9}, optional={("task", "momentum")},
                   sources={("optim", "momentum"): "--momentum"})
    assert said == "--momentum: section 'optim' takes no 'momentum' (its options: lr, steps, name)"


@pytest.mark.parametrize("homes, said", [
    ({}, "section 'optim' takes no 'seed' (its options: lr, steps, name)"),
    ({"seed": {"run"}}, "'seed' belongs in section 'run', not 'optim'"),
    ({"seed": {"run", "optim"}}, "'seed' belongs in section 'run', not 'optim'"),
    ({"seed": {"run", "data"}}, "section 'optim' takes no 'seed' (its options: lr, steps, name)"),
    ({"seed": {"optim"}}, "section 'optim' takes no 'seed' (its options: lr, steps, name)"),
])
def test_an_unknown_key_names_its_one_other_home_or_the_options(homes, said) -> None:
    sources = {("optim", "seed"): "s.yaml"}
    assert refusal(fixed, {"seed": 1}, sources=sources, homes=homes) == f"s.yaml: {said}"


# --- the constructor sections (model, data, task) ------------------------------------------------

def build(self, name: str, width: int = 4, rate: float = 1, sizes: tuple[int, ...] = (2, 3),
          n_in: int = 1, seed: int = 0, act: int = "relu", *args: Any,  # type: ignore
          **kwargs: Any) -> None:
    """A constructor: ``n_in`` comes from the data, ``seed`` is not a key."""


def no_kwargs(self, width: int = 4) -> None:
    """A constructor without ``**kwargs``."""


def untyped(self, width=4, depth=(1, 2)) -> None:  # noqa: ANN001
    """A constructor without type hints."""


MODEL = Consumer("model 'm'", build, reserved=("name", "recipe"), excluded=("self", "seed"),
                 from_data=("n_in",))


def section(values: dict[str, Any], consumer: Consumer = MODEL,
            sources: dict[tuple[str, str], str] | None = None,
            optional: set[tuple[str, str]] | None = None,
            homes: dict[str, set[str]] | None = None) -> dict[str, Any]:
    return check_constructor_section("model", values, consumer, sources or {}, optional or set(),
                                     homes or {})


def test_a_constructor_section_lists_reserved_then_parameters_then_extras() -> None:
    out = section({"extra": 1, "rate": 2, "name": "m", "width": 8, "recipe": "r"})
    assert list(out) == ["name", "recipe", "width", "rate", "sizes", "act", "extra"]
    assert out == {"name": "m", "recipe": "r", "width": 8, "rate": 2.0, "sizes": [2, 3],
                   "act": "relu", "extra": 1}


def test_a_reserved_key_is_kept_as_given_and_an_absent_one_is_not_added() -> None:
    out = section({"name": 5})  # 'name' picks the consumer: not checked against 'name: str'
    assert out["name"] == 5 and "recipe" not in out


def test_the_constructors_defaults_are_filled_as_yaml_would_read_them() -> None:
    out = section({})
    assert out["sizes"] == [2, 3] and type(out["sizes"]) is list  # a tuple default, as a list
    assert out["rate"] == 1.0 and type(out["rate"]) is float  # an int default of a float
    assert out["act"] == "relu"  # a default that does not fit its hint is kept as it is
    assert "n_in" not in out and "seed" not in out and "self" not in out
    assert "args" not in out and "kwargs" not in out


def test_a_parameter_without_a_default_stays_unset() -> None:
    assert "name" not in section({})  # both a reserved key and a parameter without a default
    assert check_constructor_section("model", {}, Consumer("m", lambda self, a, b=2: None),
                                     {}, set(), {}) == {"b": 2}


def test_a_constructor_value_is_conformed_to_its_hint() -> None:
    out = section({"rate": "5e-1", "width": 3, "sizes": (7,)})
    assert out["rate"] == 0.5 and out["width"] == 3 and out["sizes"] == [7]


def test_a_constructor_without_hints_takes_any_value() -> None:
    out = check_constructor_section("model", {"width": "wide"}, Consumer("u", untyped), {}, set(),
                                    {})
    assert out == {"width": "wide", "depth": (1, 2)}  # no hint: the default unchanged too


@pytest.mark.parametrize("values, said", [
    ({"width": "8"}, "--width: model.width: expected int, got '8'"),
    ({"width": 2.5}, "--width: model.width: expected int, got 2.5"),
    ({"width": True}, "--width: model.width: expected int, got True"),
])
def test_a_constructor_value_of_the_wrong_type_is_one_sentence(values, said) -> None:
    assert refusal(section, values, sources={("model", "width"): "--width"}) == said


def test_a_key_the_data_provides_is_refused_whatever_the_kwargs() -> None:
    said = refusal(section, {"n_in": 3}, sources={("model", "n_in"): "--model-arg"})
    assert said == "--model-arg: model.n_in comes from the data and cannot be set"


def test_an_excluded_parameter_is_no_key_of_a_constructor_without_kwargs() -> None:
    consumer = Consumer("data 'd'", build, excluded=("self", "seed"), extra=False)
    said = refusal(section, {"seed": 3}, consumer, homes={"seed": {"run"}})
    assert said == "default: 'seed' belongs in section 'run', not 'model'"


def test_kwargs_take_unknown_keys_only_where_the_consumer_allows_it() -> None:
    assert section({"depth": 3})["depth"] == 3
    task = Consumer("the t task", build, excluded=("self", "seed"), extra=False)
    said = refusal(section, {"depth": 3}, task)
    assert said == ("default: the t task takes no 'depth' (its options: name, width, rate, "
                    "sizes, n_in, act)")


def test_a_constructor_without_kwargs_refuses_unknown_keys_even_when_extra() -> None:
    consumer = Consumer("model 'k'", no_kwargs)
    said = refusal(section, {"depth": 3}, consumer, sources={("model", "depth"): "x.yaml"})
    assert said == "x.yaml: model 'k' takes no 'depth' (its options: width)"
    consumer = Consumer("model 'k'", no_kwargs, excluded=("self", "width"))
    assert refusal(section, {"depth": 3}, consumer).endswith("(its options: none)")


def test_an_optional_key_is_dropped_before_it_reaches_the_kwargs() -> None:
    out = section({"depth": 3, "n_in": 2, "width": 7},
                  optional={("model", "depth"), ("model", "n_in")})
    assert "depth" not in out and "n_in" not in out and out["width"] == 7
    assert section({"depth": 3}, optional={("data", "depth")})["depth"] == 3


# --- values no run can use -----------------------------------------------------------------------

def values_refusal(cfg: dict[str, dict[str, Any]]) -> str:
    """The refusal of ``cfg``, each key's source labelled ``--KEY``."""
    return refusal(check_values, cfg, {(s, k): f"--{k}" for s in cfg for k in cfg[s]})


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "image_folder"])
@pytest.mark.parametrize("val_size", [0, 0.5])
def test_image_data_validate_on_at_least_one_example(name, val_size) -> None:
    assert values_refusal({"data": {"name": name, "val_size": val_size}}) == (
        f"--val_size: data.val_size must be at least 1 (validation examples), got {val_size}; "
        "leave it unset for the default, 1/12 of the training set")
    check_values({"data": {"name": name, "val_size": 1}}, {})
    check_values({"data": {"name": name, "val_size": None}}, {})


def test_other_data_may_validate_on_none() -> None:
    check_values({"data": {"name": "time_machine", "val_size": 0}}, {})
    check_values({"data": {"name": "time_machine", "val_size": 0.5}}, {})


def test_an_empty_config_has_nothing_to_refuse() -> None:
    check_values({}, {})


# the smallest value each rule refuses and the smallest it takes
EDGES = {"at least 1": (0, 1), "0 or more": (-1, 0), "in [0, 1)": (1, 0.99)}


@pytest.mark.parametrize("section, key", [k for k, c in CONSTRUCTOR_RULES.items()
                                          if c.must in EDGES], ids="{}".format)
def test_each_shared_constructor_argument_is_checked_at_its_edge(section, key) -> None:
    bad, good = EDGES[CONSTRUCTOR_RULES[section, key].must]
    assert values_refusal({section: {key: bad}}) == (
        f"--{key}: {section}.{key} must be {CONSTRUCTOR_RULES[section, key].must}, got {bad}")
    check_values({section: {key: good}}, {})
    check_values({section: {key: None}}, {})


def test_the_shared_rules_name_the_arguments_and_their_ranges() -> None:
    rules = {f"{s}.{k}": c.must for (s, k), c in CONSTRUCTOR_RULES.items()}
    assert rules == {
        "data.batch_size": "at least 1", "data.val_size": "0 or more",
        "data.num_steps": "at least 1", "data.max_examples": "at least 1",
        "data.max_len": "at least 1", "data.on_device": "auto, true or false",
        "model.num_hiddens": "at least 1", "model.num_layers": "at least 1",
        "model.dropout": "in [0, 1)", "task.beam_size": "at least 1",
        "task.label_smoothing": "in [0, 1)", "task.resize": "at least 1"}


@pytest.mark.parametrize("value", ["auto", True, False])
def test_on_device_takes_auto_or_a_bool(value) -> None:
    check_values({"data": {"on_device": value}}, {})


def test_on_device_refuses_other_text() -> None:
    assert values_refusal({"data": {"on_device": "yes"}}) == (
        "--on_device: data.on_device must be auto, true or false, got 'yes'")


@pytest.mark.parametrize("val_size", [1, 10])
def test_the_book_setting_refuses_a_validation_size(val_size) -> None:
    assert values_refusal({"data": {"setting": "book", "val_size": val_size}}) == (
        f"--val_size: the book data setting validates on the test set; val_size {val_size} "
        "does not apply to it")


def test_the_book_setting_takes_no_or_a_zero_validation_size() -> None:
    check_values({"data": {"setting": "book", "val_size": None}}, {})
    check_values({"data": {"setting": "book", "val_size": 0}}, {})
    check_values({"data": {"setting": "modern", "val_size": 10}}, {})


@pytest.mark.parametrize("trainer", [{"max_epochs": -1}, {"max_epochs": -1, "max_steps": -1}])
def test_unbounded_epochs_need_a_step_limit(trainer) -> None:
    assert values_refusal({"trainer": trainer}) == (
        "--max_epochs: trainer.max_epochs -1 (no limit) needs --max-steps N")


@pytest.mark.parametrize("trainer", [{"max_epochs": -1, "max_steps": 5},
                                     {"max_epochs": -1, "max_steps": None},
                                     {"max_epochs": 3, "max_steps": -1}, {"max_epochs": None}])
def test_a_bounded_run_is_accepted(trainer) -> None:
    check_values({"trainer": trainer}, {})


@pytest.mark.parametrize("bar", [True, False])
def test_progress_lines_contradict_a_trainer_without_a_bar(bar) -> None:
    said = values_refusal({"trainer": {"enable_progress_bar": False}, "run": {"progress_bar": bar}})
    assert said == ("--progress_bar: run.progress_bar chooses between the bar and plain lines, "
                    "which trainer.enable_progress_bar false turns off; give one of them")


@pytest.mark.parametrize("enable, bar", [(False, None), (True, False), (None, True)])
def test_a_trainer_bar_setting_without_a_contradiction_is_accepted(enable, bar) -> None:
    check_values({"trainer": {"enable_progress_bar": enable}, "run": {"progress_bar": bar}}, {})


def test_a_trainer_without_a_bar_needs_no_run_section() -> None:
    check_values({"trainer": {"enable_progress_bar": False}}, {})
