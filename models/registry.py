"""Model registry: name -> builder, task family, default data, d2l recipes and book section.

Every architecture registers itself with :func:`register`; ``train.py --list`` prints the table,
``train.py`` fills unset flags from the chosen recipe, and :func:`models.load_exported` rebuilds a
module from the registry name stored in an export's ``config.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn


@dataclass(frozen=True)
class Recipe:
    """A training recipe: the hyper-parameters a book section (or our improved variant) uses.

    ``model_kwargs`` change the architecture itself (e.g. ReLU instead of sigmoid);
    ``data_kwargs`` are DataModule arguments (e.g. ``num_steps``, ``level`` for text);
    ``resize`` is the input side length the model is trained at (``None``: native size).
    """

    optimizer: str = "sgd"
    lr: float = 0.1
    batch_size: int = 256
    max_epochs: int = 10
    weight_decay: float = 0.0
    momentum: float = 0.0
    scheduler: str = "none"
    resize: int | None = None
    label_smoothing: float = 0.0
    gradient_clip_val: float | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, for configs and tables."""
        return asdict(self)


@dataclass(frozen=True)
class ModelSpec:
    """Everything the codebase knows about one registered architecture."""

    name: str
    builder: Callable[..., nn.Module]
    task: str
    data: str
    section: str
    recipes: dict[str, Recipe]
    smoke_size: int | None = None

    def recipe(self, name: str = "d2l") -> Recipe:
        """Return the named recipe, with a clear error listing the valid ones."""
        if name not in self.recipes:
            raise KeyError(
                f"model '{self.name}' has no recipe '{name}'; choose from: "
                + ", ".join(sorted(self.recipes))
            )
        return self.recipes[name]


_REGISTRY: dict[str, ModelSpec] = {}


def register(
    name: str,
    *,
    task: str,
    data: str,
    section: str,
    recipes: dict[str, Recipe],
    smoke_size: int | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers a model builder under ``name``.

    Args:
        name: CLI / registry name, e.g. ``"lenet"``.
        task: task family, e.g. ``"image_classification"``.
        data: default dataset name for ``train.py``.
        section: the d2l section (or paper) the architecture follows.
        recipes: named recipes; ``"d2l"`` is the book's and the default.
        smoke_size: input side the registry-parametrized tests use for image models (default:
            the recipe's ``resize``, else 28); keep it small so the suite stays fast.
    """

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice")
        if "d2l" not in recipes:
            raise ValueError(f"model '{name}' needs a 'd2l' recipe")
        _REGISTRY[name] = ModelSpec(name, builder, task, data, section, dict(recipes), smoke_size)
        return builder

    return wrap


def model_names(task: str | None = None) -> list[str]:
    """Registered names, optionally of one task family, in registration order."""
    return [n for n, s in _REGISTRY.items() if task is None or s.task == task]


def get_spec(name: str) -> ModelSpec:
    """Look up a registered model; unknown names raise ``KeyError`` listing the valid ones."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown model '{name}'; choose from: " + ", ".join(model_names()))
    return _REGISTRY[name]


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model with constructor keyword arguments."""
    return get_spec(name).builder(**kwargs)


def format_table() -> str:
    """The registry as a text table (``train.py --list``)."""
    header = ("model", "task", "data", "d2l recipe", "recipes", "section")
    rows = [header]
    for spec in sorted(_REGISTRY.values(), key=_section_key):
        r = spec.recipe("d2l")
        recipe = f"{r.optimizer} lr={r.lr:g} bs={r.batch_size} ep={r.max_epochs}"
        if r.resize:
            recipe += f" {r.resize}px"
        rows.append(
            (spec.name, spec.task, spec.data, recipe, ",".join(spec.recipes), spec.section)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _section_key(spec: ModelSpec) -> tuple:
    """Order by book section (``"3.4"`` before ``"10.1"``), then name."""
    nums = tuple(int(p) if p.isdigit() else 0 for p in spec.section.split("."))
    return nums, spec.name
