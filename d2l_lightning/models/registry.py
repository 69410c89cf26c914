"""Model registry: name -> builder, task family, default data, d2l recipes and book section.

Every architecture registers itself with :func:`register`; ``train.py --list`` prints the table,
``train.py`` fills unset flags from the chosen recipe, and :func:`models.load_exported` rebuilds a
module from the registry name stored in an export's ``config.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn


@dataclass(frozen=True)
class Recipe:
    """A training recipe: the hyper-parameters a book section (or our improved variant) uses.

    ``model_kwargs`` change the architecture itself (e.g. ReLU instead of sigmoid);
    ``data_kwargs`` are DataModule arguments (e.g. ``num_steps``, ``level`` for text);
    ``resize`` is the input side length the model is trained at (``None``: native size);
    ``data`` is the dataset a recipe was made for (picked with the recipe unless the config
    names another; ``None``: the model's default dataset).
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
    plateau_factor: float = 0.1
    plateau_patience: int = 2
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str | None = None


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
    cannot_train: str | None = None

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
    cannot_train: str | None = None,
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
        cannot_train: why ``train.py`` does not train this model on its own (a part of another
            model, or an encoder that is no language model); ``None`` for trainable models.
    """

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice")
        if "d2l" not in recipes:
            raise ValueError(f"model '{name}' needs a 'd2l' recipe")
        _REGISTRY[name] = ModelSpec(name, builder, task, data, section, dict(recipes), smoke_size,
                                    cannot_train)
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


#: constructor arguments that are sizes or counts of every model taking them: at least 1 (a
#: list, e.g. MLP widths, in each element); ``embed_size`` is not one (0: one-hot inputs)
POSITIVE_SIZES = frozenset({
    "num_hiddens", "num_layers", "num_heads", "ffn_num_hiddens", "mlp_num_hiddens", "num_blks",
    "patch_size", "growth_rate", "num_channels", "ratio", "num_inputs", "num_classes",
    "in_channels", "image_size", "max_len", "vocab_size", "src_vocab_size", "tgt_vocab_size",
    "d_state", "expand", "d_conv"})


def check_sizes(kwargs: dict[str, Any]) -> None:
    """Refuse a size or count of :data:`POSITIVE_SIZES` below 1 (a traceback deep inside).

    Raises:
        ValueError: one sentence naming the argument.
    """
    for key, value in kwargs.items():
        if key not in POSITIVE_SIZES:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, int) and not isinstance(v, bool) and v < 1 for v in values):
            raise ValueError(f"constructor argument {key} must be at least 1, got {value!r}")


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model with constructor keyword arguments.

    Raises:
        KeyError: an unknown model.
        ValueError: a size of :data:`POSITIVE_SIZES` below 1, or options the model refuses.
    """
    spec = get_spec(name)
    check_sizes(kwargs)
    return spec.builder(**kwargs)


def recipe_summary(recipe: Recipe) -> str:
    """A recipe's values in one line, e.g. ``adamw lr=0.002 wd=0.01 cosine bs=128 ep=10``."""
    r = recipe
    parts = [f"{r.optimizer} lr={r.lr:g}"]
    parts += [f"momentum={r.momentum:g}"] if r.momentum else []
    parts += [f"wd={r.weight_decay:g}"] if r.weight_decay else []
    parts += [r.scheduler] if r.scheduler != "none" else []
    if r.scheduler == "plateau" and (r.plateau_factor, r.plateau_patience) != (0.1, 2):
        parts[-1] += f"(x{r.plateau_factor:g},patience={r.plateau_patience})"
    parts += [f"clip={r.gradient_clip_val:g}"] if r.gradient_clip_val is not None else []
    parts += [f"smoothing={r.label_smoothing:g}"] if r.label_smoothing else []
    parts += [f"bs={r.batch_size} ep={r.max_epochs}"]
    parts += [f"{r.resize}px"] if r.resize else []
    parts += [f"data={r.data}"] if r.data else []
    for k, v in {**r.model_kwargs, **r.data_kwargs}.items():
        parts.append(f"{k}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}")
    return " ".join(parts)


def source_file(spec: ModelSpec) -> str:
    """Where the model is defined, as ``d2l_lightning/models/lenet.py:108``."""
    import inspect
    from pathlib import Path

    fn = inspect.unwrap(spec.builder)
    path = Path(inspect.getsourcefile(fn) or "?")
    root = Path(__file__).resolve().parents[2]  # the folder holding d2l_lightning/
    if path.resolve().is_relative_to(root):
        path = path.resolve().relative_to(root)
    return f"{path.as_posix()}:{inspect.getsourcelines(fn)[1]}"


def format_table() -> str:
    """The registry as a text table, one row per recipe (``train.py --list``)."""
    header = ("model", "task", "data", "section", "file", "recipe", "values")
    rows = [header]
    for spec in sorted(_REGISTRY.values(), key=_section_key):
        task = spec.task + (" (not trained)" if spec.cannot_train else "")
        first = (spec.name, task, spec.data, spec.section, source_file(spec))
        for i, (name, recipe) in enumerate(spec.recipes.items()):
            rows.append((*(first if i == 0 else [""] * 5), name, recipe_summary(recipe)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _section_key(spec: ModelSpec) -> tuple:
    """Order by book section (``"3.4"`` before ``"10.1"``), then name."""
    nums = tuple(int(p) if p.isdigit() else 0 for p in spec.section.split("."))
    return nums, spec.name
