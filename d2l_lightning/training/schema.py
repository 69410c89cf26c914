"""The fixed sections of a run config, ``optim``, ``trainer`` and ``run``, each declared once.

Lightning-free and torch-free (``--help`` builds its flags from here). A setting is one
dataclass field holding its type, default, help line, flag and check; :mod:`.flags` makes the
command line from the fields, :mod:`.config` checks config files against them and fills their
defaults, and the consumers take them as declared:

- ``optim`` (:class:`Optim`): the task module's optimizer and schedule; ``TaskModule`` builds
  an :class:`Optim` from its keyword arguments, so a Python user of a task module gets the same
  checks as a config file.
- ``trainer``: exactly ``lightning.Trainer``'s keyword arguments (the generated table of
  :mod:`.trainer_args`, with the defaults and flags of :data:`TRAINER` where ours differ).
  ``logger`` and ``callbacks`` are mappings of a name to its arguments (see :mod:`.objects`).
- ``run`` (:class:`Run`): what :func:`d2l_lightning.training.fit` itself does around the
  Trainer: the run folder, the seed, checkpoints, the console, compilation.

The ``model``, ``data`` and ``task`` sections are read from the constructors they feed (see
:mod:`.config`).
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Literal

from .trainer_args import TRAINER_ARGS
from .types import conform, type_name

#: seconds a process waits for the others in a collective (torch's NCCL default; Lightning's
#: is 1800): a dead or frozen node then stops the run instead of hanging the rest
DIST_TIMEOUT = 600


@dataclass(frozen=True)
class Check:
    """A value rule: ``test(value)`` is true for a valid value, which ``must`` describes."""

    test: Callable[[Any], bool]
    must: str

    def problem(self, value: Any) -> str | None:
        """``None`` when ``value`` passes, else what it must be (lists: every item)."""
        values = value if isinstance(value, (list, tuple)) else [value]
        ok = all(v is None or isinstance(v, bool) or self.test(v) for v in values)
        return None if ok else f"must be {self.must}, got {value!r}"


def at_least(low: float, must: str | None = None) -> Check:
    """A finite number of at least ``low``."""
    return Check(lambda v: isinstance(v, (int, float)) and math.isfinite(v) and v >= low,
                 must or f"a finite number of at least {low:g}")


def above(low: float, must: str | None = None) -> Check:
    """A finite number above ``low``."""
    return Check(lambda v: isinstance(v, (int, float)) and math.isfinite(v) and v > low,
                 must or f"a finite number above {low:g}")


def _factors_ok(v: Any) -> bool:
    """``lr_mult``: a mapping of prefixes to finite factors of at least 0."""
    return isinstance(v, dict) and all(
        isinstance(f, (int, float)) and not isinstance(f, bool) and math.isfinite(f) and f >= 0
        for f in v.values())


#: the largest seed (numpy's, which Lightning's ``seed_everything`` seeds): 2**32 - 1
MAX_SEED = 2**32 - 1
#: in [0, 1): a probability that cannot be 1 (dropout, label smoothing, SGD momentum)
FRACTION = Check(lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "in [0, 1)")
COUNT = at_least(1, "at least 1")
COUNT0 = at_least(0, "0 or more")


def setting(default: Any = MISSING, help: str = "", *, flag: str | None = None,
            check: Check | None = None, from_recipe: bool = False,
            **flag_options: Any) -> Any:
    """A config key: a dataclass field whose metadata holds everything else about it.

    Args:
        default: the value when nothing sets it.
        help: the ``--help`` line (the default is appended once).
        flag: the command-line flag, e.g. ``--lr`` (``None``: ``--SECTION.KEY=VALUE`` only).
        check: the value rule beyond the type.
        from_recipe: the model's recipe sets it (the help says so instead of the default).
        **flag_options: argparse options of the flag (``type``, ``nargs``, ``metavar``...).
    """
    meta = {"help": help, "flag": flag, "check": check, "from_recipe": from_recipe,
            "flag_options": flag_options}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Key:
    """One setting of a section, as the flags and the checks see it.

    Attributes:
        name: the key, e.g. ``lr``.
        hint: its type (a typing object), or text for a Trainer argument (checked against
            Lightning's own hints when a config is resolved).
        default: the value when unset (``MISSING``: none; the recipe or data decide).
        help: the help line.
        flag: the shorthand flag, if any.
        check: the value rule beyond the type.
        from_recipe: the model's recipe sets it.
        flag_options: argparse options of the flag.
    """

    name: str
    hint: Any
    default: Any = MISSING
    help: str = ""
    flag: str | None = None
    check: Check | None = None
    from_recipe: bool = False
    flag_options: dict[str, Any] = field(default_factory=dict)

    @property
    def choices(self) -> tuple[Any, ...] | None:
        """The values of a ``Literal`` hint (also those inside ``Optional``)."""
        if isinstance(self.hint, str):
            return None
        args = [self.hint]
        if typing.get_origin(self.hint) is typing.Union:
            args = [a for a in typing.get_args(self.hint) if a is not type(None)]
        if len(args) == 1 and typing.get_origin(args[0]) is Literal:
            return typing.get_args(args[0])
        return None


def keys_of(section: type) -> dict[str, Key]:
    """The :class:`Key` of each field of a section dataclass."""
    hints = typing.get_type_hints(section)
    out = {}
    for f in fields(section):
        meta = f.metadata
        out[f.name] = Key(f.name, hints[f.name], f.default, meta.get("help", ""),
                          meta.get("flag"), meta.get("check"), meta.get("from_recipe", False),
                          dict(meta.get("flag_options", {})))
    return out


def validate(obj: Any) -> None:
    """Check a section dataclass's values against their types and rules.

    Raises:
        ValueError: ``KEY must be ..., got VALUE`` for the first value that does not fit.
    """
    for name, key in keys_of(type(obj)).items():
        value = getattr(obj, name)
        try:
            conform(value, key.hint)
        except TypeError:
            raise ValueError(f"{name} must be of type {type_name(key.hint)}, got {value!r}")\
                from None
        said = key.check.problem(value) if key.check else None
        if said:
            raise ValueError(f"{name} {said}")


@dataclass(frozen=True)
class Optim:
    """``optim``: the optimizer, its learning-rate schedule and per-prefix learning rates."""

    optimizer: Literal["sgd", "adam", "adamw"] = setting(
        "sgd", "the optimizer's algorithm", flag="--optimizer", from_recipe=True)
    lr: float = setting(0.1, "learning rate (the peak rate of onecycle)", flag="--lr",
                        check=at_least(0, "a finite number, 0 or more"), from_recipe=True)
    weight_decay: float = setting(0.0, "L2 penalty (decoupled for adamw)", flag="--weight-decay",
                                  check=at_least(0, "a finite number, 0 or more"),
                                  from_recipe=True)
    momentum: float = setting(0.0, "SGD momentum (ignored by adam and adamw)", flag="--momentum",
                              check=FRACTION, from_recipe=True)
    scheduler: Literal["none", "step", "cosine", "onecycle", "plateau"] = setting(
        "none", "learning-rate schedule: step (x0.1 every third of the epochs), cosine or "
        "onecycle (over all steps), plateau (x plateau_factor after plateau_patience + 1 epochs "
        "without improvement of the monitored metric)", flag="--scheduler", from_recipe=True)
    plateau_factor: float = setting(
        0.1, "the plateau schedule's factor (pytorch/examples word_language_model: 0.25)",
        check=Check(lambda v: isinstance(v, (int, float)) and 0 < v < 1, "in (0, 1)"),
        from_recipe=True)
    plateau_patience: int = setting(2, "epochs without improvement that plateau tolerates",
                                    check=COUNT0, from_recipe=True)
    lr_mult: dict[str, float] | None = setting(
        None, "learning-rate factor per module-name prefix, e.g. backbone=0.1 ('backbone': all "
        "but the head, 'head': the classifier; d2l §14.2); frozen parameters get none",
        flag="--lr-mult", check=Check(_factors_ok, "PREFIX=FACTOR pairs whose factors are finite "
                                      "numbers, 0 or more"), from_recipe=True)

    def __post_init__(self) -> None:
        """Check every value (one ``ValueError`` sentence)."""
        validate(self)


@dataclass(frozen=True)
class Run:
    """``run``: what a fit does around the Trainer: folder, seed, checkpoints, console."""

    run_dir: str | None = setting(None, "run folder (default: runs/MODEL-DATA-TIMESTAMP)",
                                  flag="--run-dir")
    seed: int = setting(0, "seed of the weights, the split and the shuffling", flag="--seed",
                        check=Check(lambda v: isinstance(v, int) and 0 <= v <= MAX_SEED,
                                    f"in [0, {MAX_SEED}] (2**32 - 1)"))
    test: bool = setting(True, "evaluate the test split after fit", flag="--test")
    ckpt_every_n_steps: int = setting(
        0, "also refresh last.ckpt every N training steps (0: each epoch)",
        flag="--ckpt-every-n-steps", check=COUNT0)
    diverged_after: int = setting(
        50, "warn when the training loss stays above 10x its first value for N steps (0: off)",
        flag="--diverged-after", check=COUNT0, metavar="N")
    compile: bool = setting(False, "torch.compile the model (state-dict keys stay the same; "
                            "default: off)",
                            flag="--compile")
    matmul_precision: Literal["highest", "high", "medium"] = setting(
        "highest", "float32 matrix products: highest (exact float32), high (TF32 tensor cores "
        "on NVIDIA GPUs), medium (bfloat16); torch.set_float32_matmul_precision",
        flag="--matmul-precision")
    dist_timeout: int = setting(
        DIST_TIMEOUT, "seconds a process waits for the others (the process group's timeout): a "
        "dead or frozen node makes the rest exit with an error after it instead of hanging",
        flag="--dist-timeout", check=Check(lambda v: isinstance(v, int) and 1 <= v <= 10**9,
                                           "a number of seconds, at least 1 and at most "
                                           "1000000000"),
        metavar="SECONDS")
    progress_bar: bool | None = setting(
        None, "show the progress bar (default: when stderr is a terminal; else plain lines)",
        flag="--progress-bar")
    progress_every: int = setting(
        0, "without the bar, a progress line every N steps within an epoch as well as after "
        "each epoch (0: every 30 s)", flag="--progress-every", check=COUNT0, metavar="N")


def _limit(value: str) -> int | float:
    """``--limit-*-batches``: an int is a batch count, a float a fraction."""
    return float(value) if "." in value or "e" in value.lower() else int(value)


def _devices(value: str) -> int | str:
    """``--devices``: a count, ``auto``, or a list of indices such as ``0,1``."""
    return int(value) if value.lstrip("-").isdigit() else value


def _devices_ok(v: Any) -> bool:
    if isinstance(v, int):
        return v >= 1 or v == -1
    if isinstance(v, str):
        parts = [p.strip() for p in v.split(",")]
        return v == "auto" or v.strip() == "-1" or all(p.isdigit() for p in parts if p) \
            and any(parts)
    return isinstance(v, list) and all(isinstance(i, int) and i >= 0 for i in v)


def _limit_check(low: float) -> Check:
    return Check(lambda v: low <= v <= (1.0 if isinstance(v, float) else math.inf),
                 "a batch count or a fraction in [0, 1]"
                 + (" above 0 (training needs a batch)" if low > 0 else ""))


#: where our ``trainer`` section differs from ``lightning.Trainer``: defaults, flags and checks
TRAINER: dict[str, dict[str, Any]] = {
    "max_epochs": dict(flag="--max-epochs", from_recipe=True, help="epochs", type=int,
                       check=Check(lambda v: v == -1 or v >= 1,
                                   "at least 1 (or -1 with --max-steps)")),
    "max_steps": dict(flag="--max-steps", help="stop after N optimizer steps (-1: off)", type=int,
                      check=Check(lambda v: v == -1 or v >= 1, "at least 1 (or -1: off)")),
    "accumulate_grad_batches": dict(flag="--accumulate-grad-batches", check=COUNT, type=int,
                                    help="batches per optimizer step"),
    "gradient_clip_val": dict(flag="--gradient-clip-val", from_recipe=True, type=float,
                              check=above(0, "a finite number above 0"),
                              help="clip the gradient norm to this value (None: no clipping)"),
    "accelerator": dict(flag="--accelerator", help="auto, cpu, gpu, mps..."),
    "devices": dict(flag="--devices", check=Check(_devices_ok, "a count of at least 1, -1 "
                    "(all), 'auto', or device indices such as 0,1"),
                    help="count (on the CPU: processes), -1 (every GPU), GPU indices such as "
                    "0,1, or auto", type=_devices),
    "strategy": dict(flag="--strategy", help="distributed strategy: auto, ddp, ddp_spawn, "
                     "fsdp or any other Lightning strategy name"),
    "num_nodes": dict(flag="--num-nodes", check=COUNT, help="machines", type=int),
    "precision": dict(flag="--precision", default="32-true", help="numeric precision: 32-true, "
                      "16-mixed, bf16-mixed, bf16-true, 64-true (default: 32-true)"),
    "deterministic": dict(flag="--deterministic", action="store_true",
                          help="deterministic algorithms only (default: off)"),
    "fast_dev_run": dict(flag="--fast-dev-run", check=COUNT0, type=int, nargs="?", const=1,
                         metavar="N", help="smoke test: N batches (flag alone: 1) of each split, "
                         "no checkpoints, metrics or plots; config.yaml, results.json and "
                         "export/ are written (default: off)"),
    "log_every_n_steps": dict(default=10),
    "enable_model_summary": dict(default=False,
                                 help="Lightning's model table (the run prints a one-line "
                                 "summary either way)"),
    "enable_autolog_hparams": dict(default=False,
                                   help="Lightning's logging of the task module's arguments "
                                   "(the run logs its whole config to every logger instead)"),
    "logger": dict(default={"csv": {}}, flag="--logger", nargs="+", metavar="NAME",
                   action="names",
                   help="loggers: csv (metrics.csv, always written), tensorboard, wandb, or any "
                   "lightning.pytorch.loggers class; arguments as --trainer.logger.NAME.KEY=V "
                   "(default: csv)"),
    "callbacks": dict(default={}, help="callbacks by class name (lightning.pytorch.callbacks, "
                      "or a dotted path) with their arguments, added to the run's own"),
}
for _split, _low in (("train", 1e-300), ("val", 0), ("test", 0)):
    TRAINER[f"limit_{_split}_batches"] = dict(
        flag=f"--limit-{_split}-batches", type=_limit, check=_limit_check(_low),
        help="batches (int) or fraction (float) per epoch (default: all)" if _split == "train"
        else f"as --limit-train-batches, {'validation' if _split == 'val' else 'test'} "
        "(default: all)")


def trainer_keys() -> dict[str, Key]:
    """The ``trainer`` section: every ``lightning.Trainer`` argument, with our differences."""
    out = {}
    for name, (hint, default, text) in TRAINER_ARGS.items():
        ours = dict(TRAINER.get(name, {}))
        options = {k: ours.pop(k) for k in ("type", "nargs", "const", "metavar", "action")
                   if k in ours}
        out[name] = Key(name, hint, ours.pop("default", default), ours.pop("help", text),
                        ours.pop("flag", None), ours.pop("check", None),
                        ours.pop("from_recipe", False), options)
    return out


#: the fixed sections' keys (``trainer`` hints are text here; see :func:`trainer_keys`)
FIXED: dict[str, dict[str, Key]] = {"optim": keys_of(Optim), "trainer": trainer_keys(),
                                    "run": keys_of(Run)}
OPTIMIZERS: tuple[str, ...] = FIXED["optim"]["optimizer"].choices
SCHEDULERS: tuple[str, ...] = FIXED["optim"]["scheduler"].choices
