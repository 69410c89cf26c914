"""sweep.py's checks and draws as units: each refusal at its boundary (whole sentences), each
distribution's inference, every draw equal to the same seeded generator's, and the formatting of
the values shown (tests/test_sweep_loop.py: the plan, the trial loop and the summary)."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from d2l_lightning.training import sweep
from d2l_lightning.training.errors import ConfigError
from d2l_lightning.training.sweep import load_sweep, trials

LR = {"optim.lr": {"values": [0.1]}}


def load(tmp_path: Path, **body: Any) -> dict[str, Any]:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return load_sweep(path)


def refusal(tmp_path: Path, **body: Any) -> str:
    """The sentence of ``load_sweep``'s refusal, its path written ``s.yaml``."""
    with pytest.raises(ConfigError) as e:
        load(tmp_path, **body)
    return str(e.value).replace(str(tmp_path / "s.yaml"), "s.yaml")


def test_the_checked_spec_keeps_the_file_and_names_its_path(tmp_path) -> None:
    spec = load(tmp_path, method="grid", run_cap=3, parameters=LR, metric={"name": "val/x"})
    assert spec == {"method": "grid", "run_cap": 3, "parameters": LR,
                    "metric": {"name": "val/x"}, "path": tmp_path / "s.yaml"}


# --- run_cap and the size of a grid ----------------------------------------------------------

@pytest.mark.parametrize("cap", [1, 2, 10_000])
def test_a_run_cap_from_1_to_10000_is_accepted(cap, tmp_path) -> None:
    assert load(tmp_path, method="random", run_cap=cap, parameters=LR)["run_cap"] == cap


@pytest.mark.parametrize("cap", [0, -3, 2.0, "5", True])
def test_a_run_cap_that_is_not_a_whole_number_of_at_least_1_is_refused(cap, tmp_path) -> None:
    assert refusal(tmp_path, method="random", run_cap=cap, parameters=LR) == (
        f"sweep s.yaml has no trials: run_cap must be a whole number of at least 1, not {cap!r}")


def test_a_run_cap_above_10000_is_refused(tmp_path) -> None:
    assert refusal(tmp_path, method="random", run_cap=10_001, parameters=LR) == (
        "sweep s.yaml: run_cap must be at most 10000 (a local sweep runs its trials one after "
        "another), not 10001")


def grid_of(*sizes: int) -> dict[str, Any]:
    return {f"optim.k{i}": {"values": list(range(n))} for i, n in enumerate(sizes)}


@pytest.mark.parametrize("params", [
    grid_of(100, 100),  # 10,000 trials: the most
    {**grid_of(100, 100), "optim.c": {"value": 1, "values": list(range(7))}},  # value wins: 1
    {**grid_of(100, 100), "optim.r": {"min": 0.0, "max": 1.0}},  # no values: counts 1
])
def test_a_grid_of_at_most_10000_trials_is_accepted(params, tmp_path) -> None:
    assert load(tmp_path, method="grid", parameters=params)["parameters"] == params


def test_a_grid_of_more_than_10000_trials_is_refused_without_a_run_cap(tmp_path) -> None:
    assert refusal(tmp_path, method="grid", parameters=grid_of(100, 101)) == (
        "sweep s.yaml: the grid has 10100 trials, more than the 10000 a local sweep runs; give "
        "fewer values or a run_cap of at most 10000")
    assert load(tmp_path, method="grid", run_cap=10_000, parameters=grid_of(100, 101))
    assert load(tmp_path, method="random", run_cap=5, parameters=grid_of(100, 101))


# --- keys, parameter names, metric ------------------------------------------------------------

@pytest.mark.parametrize("key", ["optim", "optim.", "lr", "foo.lr", 5])
def test_a_parameter_not_written_section_dot_key_is_refused(key, tmp_path) -> None:
    assert refusal(tmp_path, method="grid", parameters={key: {"values": [1]}}) == (
        f"sweep s.yaml: parameter '{key}' must be written SECTION.KEY (sections: model, data, "
        "task, optim, trainer, run)")


@pytest.mark.parametrize("key", ["run.seed", "model.num_hiddens", "trainer.callbacks.E.patience",
                                 "task.x", "data.batch_size"])
def test_a_parameter_of_each_section_is_accepted(key, tmp_path) -> None:
    assert list(load(tmp_path, method="grid", parameters={key: {"values": [1]}})["parameters"]) \
        == [key]


@pytest.mark.parametrize("params, said", [
    ({}, "sweep s.yaml has no trials: 'parameters' is empty"),
    ([1], "sweep s.yaml has no trials: 'parameters' is empty"),
    ({"optim.lr": [0.1]}, "sweep s.yaml: parameter 'optim.lr' needs values, value or a "
                          "distribution"),
])
def test_parameters_that_are_not_a_mapping_of_mappings_are_refused(params, said,
                                                                   tmp_path) -> None:
    assert refusal(tmp_path, method="grid", parameters=params) == said


@pytest.mark.parametrize("method", [None, "bayes", "Grid"])
def test_a_method_other_than_grid_or_random_is_refused(method, tmp_path) -> None:
    assert refusal(tmp_path, method=method, parameters=LR) == (
        f"sweep s.yaml: method must be one of grid, random, not {method!r}")


@pytest.mark.parametrize("metric", [None, {"name": "val/acc"},
                                    {"name": "val/acc", "goal": "maximize"},
                                    {"name": "val/loss", "goal": "minimize"}])
def test_a_metric_with_a_name_and_a_known_goal_is_accepted(metric, tmp_path) -> None:
    assert load(tmp_path, method="grid", metric=metric, parameters=LR)["metric"] == metric


@pytest.mark.parametrize("metric", ["val/acc", {}, {"goal": "maximize"},
                                    {"name": "val/acc", "goal": "max"},
                                    {"name": "val/acc", "goal": None}])
def test_any_other_metric_is_refused(metric, tmp_path) -> None:
    assert refusal(tmp_path, method="grid", metric=metric, parameters=LR) == (
        "sweep s.yaml: metric must be a mapping with 'name' and a 'goal' of minimize or maximize")


# --- distributions ----------------------------------------------------------------------------

@pytest.mark.parametrize("p, dist", [
    ({"value": 3, "values": [1, 2]}, "constant"),
    ({"value": 3, "min": 5, "max": 1}, "constant"),
    ({"values": [1, 2]}, "categorical"),
    ({"values": [1, 2], "probabilities": [0.0, 1.0]}, "categorical"),
    ({"values": [1, 2], "distribution": "uniform"}, "uniform"),
    ({"min": 1, "max": 2}, "int_uniform"),
    ({"min": -5, "max": -4}, "int_uniform"),
    ({"min": 1, "max": 2.0}, "uniform"),
    ({"min": 1.0, "max": 2}, "uniform"),
    ({"min": 1, "max": 2, "distribution": "uniform"}, "uniform"),
    ({"min": 1e-9, "max": 2.0, "distribution": "log_uniform_values"}, "log_uniform_values"),
])
def test_each_parameter_has_its_distribution(p, dist) -> None:
    assert sweep._distribution(Path("s.yaml"), "optim.lr", p) == dist


@pytest.mark.parametrize("p, said", [
    ({"values": []}, "sweep s.yaml has no trials: 'optim.lr' has no values"),
    ({"values": 5}, "sweep s.yaml has no trials: 'optim.lr' has no values"),
    ({"values": "ab"}, "sweep s.yaml has no trials: 'optim.lr' has no values"),
    ({"min": 1}, "sweep s.yaml: parameter 'optim.lr' needs values, value, or min and max"),
    ({"max": 1}, "sweep s.yaml: parameter 'optim.lr' needs values, value, or min and max"),
    ({"min": 0, "max": 1, "distribution": "normal"},
     "sweep s.yaml: distribution 'normal' of 'optim.lr' is not supported locally (supported: "
     "constant, categorical, uniform, int_uniform, log_uniform_values)"),
    ({"min": 0, "max": 1, "distribution": "constant"},
     "sweep s.yaml: 'optim.lr' is constant, which takes a value, not min and max"),
    ({"min": 0, "max": 1, "distribution": "categorical"},
     "sweep s.yaml: 'optim.lr' is categorical, which takes values, not min and max"),
    ({"min": "a", "max": 1},
     "sweep s.yaml: 'optim.lr' needs a min and a max that are finite numbers for uniform, not "
     "'a' and 1"),
    ({"min": 0.0, "max": math.inf},
     "sweep s.yaml: 'optim.lr' needs a min and a max that are finite numbers for uniform, not "
     "0.0 and inf"),
    ({"min": True, "max": 3},
     "sweep s.yaml: 'optim.lr' needs a min and a max that are whole numbers for int_uniform, "
     "not True and 3"),
    ({"min": 0.5, "max": 2, "distribution": "int_uniform"},
     "sweep s.yaml: 'optim.lr' needs a min and a max that are whole numbers for int_uniform, "
     "not 0.5 and 2"),
    ({"min": 1, "max": 2.5, "distribution": "int_uniform"},
     "sweep s.yaml: 'optim.lr' needs a min and a max that are whole numbers for int_uniform, "
     "not 1 and 2.5"),
    ({"min": 1, "max": 1}, "sweep s.yaml: 'optim.lr' needs min < max"),
    ({"min": 0.2, "max": 0.1}, "sweep s.yaml: 'optim.lr' needs min < max"),
    ({"min": 0.0, "max": 1.0, "distribution": "log_uniform_values"},
     "sweep s.yaml: 'optim.lr' needs 0 < min < max for log_uniform_values"),
    ({"min": -1.0, "max": 1.0, "distribution": "log_uniform_values"},
     "sweep s.yaml: 'optim.lr' needs 0 < min < max for log_uniform_values"),
    ({"min": 0.5, "max": 0.5, "distribution": "log_uniform_values"},
     "sweep s.yaml: 'optim.lr' needs 0 < min < max for log_uniform_values"),
])
def test_a_parameter_that_cannot_be_drawn_is_refused(p, said, tmp_path) -> None:
    for method in ("grid", "random"):  # in the file's check, whatever the method
        assert refusal(tmp_path, method=method, run_cap=1, parameters={"optim.lr": p}) == said


@pytest.mark.parametrize("probs", [None, [0.5, 0.5], [0.0, 1.0], [1, 0], [0.3, 0.7000005]])
def test_probabilities_one_per_value_at_least_0_summing_to_1_are_accepted(probs,
                                                                          tmp_path) -> None:
    p = {"values": [16, 32], **({"probabilities": probs} if probs else {})}
    assert load(tmp_path, method="random", run_cap=1, parameters={"data.b": p})


@pytest.mark.parametrize("probs", [[0.5], [0.5, 0.5, 0.0], [-0.1, 1.1], [0.3, 0.6],
                                   [0.5, 0.50001], [True, False], [0.5, "0.5"],
                                   [math.nan, 1.0], "0.5 0.5", []])
def test_other_probabilities_are_refused(probs, tmp_path) -> None:
    said = refusal(tmp_path, method="random", run_cap=1,
                   parameters={"data.b": {"values": [16, 32], "probabilities": probs}})
    assert said == (f"sweep s.yaml: the probabilities of 'data.b' must be 2 numbers (one per "
                    f"value) of at least 0 that sum to 1, not {probs!r}")


@pytest.mark.parametrize("p, dist", [({"values": [1, 2], "distribution": "uniform"}, "uniform"),
                                     ({"values": [1, 2], "distribution": "constant"}, "constant")])
def test_random_values_are_refused_unless_categorical(p, dist, tmp_path) -> None:
    assert refusal(tmp_path, method="random", run_cap=1, parameters={"optim.lr": p}) == (
        f"sweep s.yaml: 'optim.lr' has values, which are drawn as categorical, not {dist} (that "
        "needs min and max instead)")
    explicit = {"values": [1, 2], "distribution": "categorical"}
    assert load(tmp_path, method="random", run_cap=1, parameters={"optim.lr": explicit})


# --- trials: the grid and the draws -----------------------------------------------------------

@pytest.mark.parametrize("cap, n", [(None, 6), (1, 1), (5, 5), (6, 6), (7, 6), (10_000, 6)])
def test_a_grid_runs_its_head_up_to_run_cap(cap, n, tmp_path) -> None:
    params = {"optim.lr": {"values": [1, 2]}, "optim.c": {"value": [9]},
              "model.h": {"values": [3, 4, 5]}}
    body = {"method": "grid", "parameters": params, **({"run_cap": cap} if cap else {})}
    got = trials(load(tmp_path, **body), seed=0)
    full = [{"optim.lr": a, "optim.c": [9], "model.h": h} for a in (1, 2) for h in (3, 4, 5)]
    assert got == full[:n]


@pytest.mark.parametrize("p", [{"min": 1, "max": 3}, {"min": 0.1, "max": 0.2},
                               {"values": [1, 2], "distribution": "constant", "min": 1}])
def test_a_grid_with_a_range_is_refused_when_its_trials_are_made(p, tmp_path) -> None:
    s = load(tmp_path, method="grid", parameters={"optim.a": {"value": 1}, "optim.lr": p})
    if "values" in p:  # values, whatever distribution they name, are a grid's choices
        assert trials(s, seed=0) == [{"optim.a": 1, "optim.lr": 1}, {"optim.a": 1, "optim.lr": 2}]
        return
    with pytest.raises(ConfigError) as e:
        trials(s, seed=0)
    assert str(e.value) == (f"sweep {tmp_path / 's.yaml'}: a grid needs values for 'optim.lr', "
                            "not a distribution")


def test_a_random_search_without_run_cap_is_refused_when_its_trials_are_made(tmp_path) -> None:
    with pytest.raises(ConfigError) as e:
        trials(load(tmp_path, method="random", parameters=LR), seed=0)
    assert str(e.value) == (f"sweep {tmp_path / 's.yaml'} has no trials: a random search needs "
                            "run_cap (the number of trials)")


@pytest.mark.parametrize("seed", [0, 5, 123])
def test_each_draw_is_the_seeded_generators_in_file_order(seed, tmp_path) -> None:
    """Every distribution's draw against the same calls on ``random.Random(seed)``."""
    params = {"optim.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 0.1},
              "optim.momentum": {"min": 0.5, "max": 0.9},
              "model.h": {"min": 8, "max": 11},
              "data.b": {"values": [16, 32, 64], "probabilities": [0.2, 0.0, 0.8]},
              "data.c": {"values": ["a", "b"]},
              "run.x": {"value": 7}}
    got = trials(load(tmp_path, method="random", run_cap=4, parameters=params), seed=seed)
    rng = random.Random(seed)
    want = [{"optim.lr": math.exp(rng.uniform(math.log(1e-4), math.log(0.1))),
             "optim.momentum": rng.uniform(0.5, 0.9),
             "model.h": rng.randint(8, 11),
             "data.b": rng.choices([16, 32, 64], weights=[0.2, 0.0, 0.8])[0],
             "data.c": rng.choices(["a", "b"])[0],
             "run.x": 7} for _ in range(4)]
    assert got == want


def test_a_zero_probability_is_never_drawn_and_int_draws_reach_both_ends(tmp_path) -> None:
    params = {"data.b": {"values": [16, 32, 64], "probabilities": [0.5, 0.0, 0.5]},
              "model.h": {"min": 1, "max": 2}}
    got = trials(load(tmp_path, method="random", run_cap=200, parameters=params), seed=1)
    assert {t["data.b"] for t in got} == {16, 64} and {t["model.h"] for t in got} == {1, 2}


# --- the values as shown ----------------------------------------------------------------------

@pytest.mark.parametrize("trial, shown", [
    ({"optim.lr": 0.000123456, "model.h": 8}, "optim.lr=0.0001235 model.h=8"),
    ({"a.b": 2.0, "a.c": "x y", "a.d": True}, "a.b=2 a.c=x y a.d=True"),
    ({"a.b": [1, 2]}, "a.b=[1, 2]"),
])
def test_trial_values_are_shown_to_4_digits(trial, shown) -> None:
    assert sweep._fmt(trial) == shown


@pytest.mark.parametrize("value, cell", [(None, "-"), (0.123456, "0.1235"), (3.0, "3"),
                                         (7, "7"), ("done", "done"), (True, "True")])
def test_summary_cells_show_numbers_to_4_digits_and_none_as_a_dash(value, cell) -> None:
    assert sweep._cell(value) == cell


@pytest.mark.parametrize("metric, expected", [
    ({"name": "val/x"}, ("val/x", "minimize")),
    ({"name": "val/x", "goal": "maximize"}, ("val/x", "maximize")),
    ({"name": "test/y", "goal": "minimize"}, ("test/y", "minimize")),
])
def test_the_sweeps_metric_and_goal_default_to_minimize(metric, expected) -> None:
    assert sweep._metric({"metric": metric}, {"model": {"name": "no-such-model"}}) == expected
