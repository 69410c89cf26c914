"""``train.py --list [MODEL]`` and ``--list-configs``: models, recipes and shipped configs."""

from __future__ import annotations

import inspect

from .config import CONFIGS, ConfigError, Layer, dump_config, resolve, shipped_configs


def list_models() -> str:
    """Every model, one row per recipe with its values, and the file that defines the model."""
    from d2l_lightning.models import format_table

    return (format_table() + "\n\n`train.py --list MODEL` shows a model's options and each "
            "recipe resolved into the config sections.")


def describe_model(name: str) -> str:
    """One model: where it is defined, its options, and each recipe as the config it gives."""
    from d2l_lightning.models import get_spec
    from d2l_lightning.models.registry import recipe_summary, source_file

    try:
        spec = get_spec(name)
    except KeyError as e:
        raise ConfigError(f"--list: {e.args[0]}") from None
    lines = [f"{spec.name}: {spec.task}, d2l §{spec.section}, default data {spec.data}",
             f"defined in {source_file(spec)}",
             f"builder: {spec.builder.__name__}{inspect.signature(spec.builder)}", ""]
    for recipe in spec.recipes:
        layer = Layer("--list")
        layer.set("model", "name", name)
        layer.set("model", "recipe", recipe)
        try:
            cfg = resolve([layer])
        except ConfigError as e:  # a model train.py cannot train: its recipes only
            lines += [f"recipe '{recipe}': {recipe_summary(spec.recipe(recipe))}", f"  ({e})", ""]
            continue
        cfg.pop("run")
        cfg["trainer"] = {"max_epochs": cfg["trainer"]["max_epochs"]}
        lines += [f"recipe '{recipe}' (python train.py --model {name} --recipe {recipe}):",
                  dump_config(cfg)]
    return "\n".join(lines).rstrip()


def list_configs() -> str:
    """The shipped configs and sweeps, each with the title on its first line."""
    names = shipped_configs()
    width = max(map(len, names))
    lines = []
    for name in names:
        first = (CONFIGS / f"{name}.yaml").read_text(encoding="utf-8").partition("\n")[0]
        lines.append(f"{name.ljust(width)}  {first.removeprefix('#').strip()}".rstrip())
    return "\n".join([*lines, "", "python train.py --config NAME (a run), --sweep "
                       "sweeps/NAME (a sweep); files under " + str(CONFIGS)])
