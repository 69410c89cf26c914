"""The flags of ``train.py``: each one sets one key of one config section.

A flag's ``dest`` is ``"section.key"`` and its default stays unset on the command line (so a
flag given wins over the recipe and config files, and a flag not given changes nothing); the
defaults of the ``trainer`` and ``run`` sections are kept on the action as ``config_default``.
"""

from __future__ import annotations

import argparse
from typing import Any

STRATEGIES = ("auto", "ddp", "ddp_spawn", "fsdp")
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "bf16-true", "64-true")
#: as ``lit_models.OPTIMIZERS`` / ``SCHEDULERS`` (a test checks), so that ``--help`` builds the
#: parser without importing torch or Lightning
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "step", "cosine", "onecycle", "plateau")
#: sections whose unset values come from the model's recipe, else its constructors' defaults
FROM_RECIPE = ("model", "data", "task", "optim")
#: seconds a process waits for the others in a collective (torch's NCCL default; Lightning's
#: is 1800): a dead or frozen node then stops the run instead of hanging the rest
DIST_TIMEOUT = 600


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not the whole usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _limit(value: str) -> int | float:
    """``--limit-*-batches``: an int is a batch count, a float a fraction."""
    return float(value) if "." in value or "e" in value.lower() else int(value)


def _devices(value: str) -> int | str:
    """``--devices``: a count, ``auto``, or a list of indices such as ``0,1``."""
    return int(value) if value.lstrip("-").isdigit() else value


def _key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with a YAML-typed value (``3``, ``0.5``, ``true``, ``word``)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    return key, yaml.safe_load(value)


def _on_device(value: str) -> bool | str:
    """``--on-device``: ``auto``, ``true`` or ``false``."""
    choice = {"auto": "auto", "true": True, "false": False}.get(value.lower())
    if choice is None:
        raise argparse.ArgumentTypeError(f"expected auto, true or false, got '{value}'")
    return choice


def _prefix_factor(text: str) -> tuple[str, float]:
    """``PREFIX=FACTOR`` of ``--lr-mult`` (``backbone=0.1``)."""
    prefix, sep, value = text.partition("=")
    try:
        if sep and prefix:
            return prefix, float(value)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected PREFIX=FACTOR, got '{text}'")


class _ToDict(argparse.Action):
    """Collect ``(key, value)`` pairs into a dict (the config's form of ``--lr-mult``)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, dict(values))


def build_parser() -> argparse.ArgumentParser:
    """The CLI. Each flag's ``dest`` is ``section.key``; flags that are not set stay absent.

    Each help line ends with the effective default once: the flag's own, or "(from the
    recipe)" for the sections a recipe fills (resolved per model by ``--list MODEL``).
    """
    p = _Parser(prog="train.py", description="Train any registered model with one Lightning "
                "Trainer. Unset values come from the model's recipe, else from the constructor "
                "that takes them (see --list MODEL).",
                epilog="Any config key can also be set as --SECTION.KEY=VALUE "
                "(e.g. --optim.lr=0.05, --model.activation=relu).")

    def section(name: str, title: str):
        group = p.add_argument_group(f"{name}: {title}")

        def add(flag: str, key: str | None = None, default: Any = None, **kw: Any):
            key = key or flag[2:].replace("-", "_")
            if "default:" in kw["help"] or "(from the recipe" in kw["help"]:
                pass  # the help text says it
            elif default is not None and kw.get("action") != "store_true":
                kw["help"] += f" (default: {default})"
            elif name in FROM_RECIPE and key != "*":
                kw["help"] += " (from the recipe)"
            if not {"action", "metavar", "choices"} & kw.keys() and key != "*":
                kw["metavar"] = key.upper()
            action = group.add_argument(flag, dest=f"{name}.{key}", default=argparse.SUPPRESS,
                                        **kw)
            action.config_default = default
            return action

        return add

    g = p.add_argument_group("commands")
    g.add_argument("--config", action="append", default=[], metavar="FILE.yaml",
                   help="config file (any subset of the six sections); several are applied "
                   "in order, and flags override them")
    g.add_argument("--print-config", action="store_true",
                   help="print the resolved config as YAML and exit (writes nothing)")
    g.add_argument("--list", nargs="?", const="", default=None, metavar="MODEL",
                   help="list models and every recipe's values; with MODEL, its options and "
                   "each recipe resolved")
    g.add_argument("--resume", metavar="PATH|last",
                   help="continue a run from its folder alone: 'last' (of --run-dir, else the "
                   "newest run) or a checkpoint path; only --max-epochs, --max-steps, "
                   "--limit-*-batches, --progress-bar, --progress-every, --data-dir, --logger, "
                   "--wandb-*, --ckpt-every-n-steps and --test may be given with it")
    g.add_argument("--sweep", metavar="SWEEP.yaml",
                   help="run a grid or random search, one run folder per trial (see README)")

    m = section("model", "the architecture")
    m("--model", key="name", metavar="NAME", help="registered model (see --list)",
      default="lenet")
    m("--recipe", metavar="NAME", help="named recipe of the model (d2l, modern...)",
      default="d2l")
    m("--num-hiddens", type=int, help="model width (hidden units, channels or d_model)")
    m("--num-layers", type=int, help="stacked layers (deep RNN, Transformer)")
    m("--dropout", type=float, help="dropout probability")
    m("--model-arg", key="*", type=_key_value, action="append", metavar="KEY=VALUE",
      help="any other constructor argument of the model")

    d = section("data", "the DataModule")
    d("--data", key="name", metavar="NAME", help="dataset (default: the model's own)")
    d("--data-dir", help="data root (default: $D2L_DATA_DIR, else ./data)")
    d("--batch-size", type=int, help="examples per batch")
    d("--val-size", type=int, help="validation examples (default: the DataModule's, e.g. 1/12 "
      "of train for images)")
    d("--num-steps", type=int, help="tokens per sequence (d2l num_steps)")
    d("--level", choices=("char", "word"), help="token level of The Time Machine")
    d("--sampler", choices=("random", "sequential"),
      help="language-model batches: random windows or sequential partitioning")
    d("--data-setting", key="setting", choices=("split", "book"),
      help="MNIST / Fashion-MNIST: split (default: a seeded validation split of the training "
      "set, normalised pixels) or book (d2l: train on all 60,000 images, validate on the test "
      "set, pixels in [0, 1] unnormalised)")
    d("--max-examples", type=int, help="use only the first N examples (fra-eng, BERT)")
    d("--max-len", type=int, help="longest input sequence (BERT)")
    d("--on-device", type=_on_device, metavar="auto|true|false",
      help="hold the splits (uint8 images, int64 tokens) on the training device and build "
      "batches there; auto: on for a CUDA device when they take at most a quarter of its free "
      "memory, off on the CPU (default: auto)")
    d("--data-arg", key="*", type=_key_value, action="append", metavar="KEY=VALUE",
      help="any other DataModule argument")

    t = section("task", "loss, metrics, decoding and preprocessing of the task family")
    t("--resize", type=int, help="side length the image model sees")
    t("--channels-last", action="store_true",
      help="channels-last convolutions (images; default: off, or the recipe's)")
    t("--beam-size", type=int, help="beam search width for evaluation (1: greedy)")
    t("--length-penalty", type=float, help="beam search length penalty alpha")
    t("--init-from", metavar="SOURCE",
      help="initial weights (d2l §14.2): an export folder, a train.py checkpoint, or "
      "torchvision:NAME (resnet18, resnet34) from the torch hub cache")
    t("--freeze", nargs="+", metavar="PREFIX",
      help="freeze parameters under these module-name prefixes ('backbone': all but the head)")
    t("--task-arg", key="*", type=_key_value, action="append", metavar="KEY=VALUE",
      help="any other argument of the task module")

    o = section("optim", "optimisation (every value from the recipe unless set)")
    o("--optimizer", choices=OPTIMIZERS, help="the optimizer's algorithm")
    o("--lr", type=float, help="learning rate (the peak rate of onecycle)")
    o("--scheduler", choices=SCHEDULERS, help="learning-rate schedule: step (x0.1 every third "
      "of the epochs), cosine or onecycle (over all steps), plateau (x0.1 after 3 epochs "
      "without improvement of the monitored metric; --optim.plateau_factor=F and "
      "--optim.plateau_patience=N change both)")
    o("--weight-decay", type=float, help="L2 penalty (decoupled for adamw)")
    o("--momentum", type=float, help="SGD momentum (ignored by adam and adamw)")
    o("--label-smoothing", type=float, help="cross-entropy label smoothing (classifiers, "
      "translation)")
    o("--gradient-clip-val", type=float, help="clip the gradient norm to this value "
      "(default: no clipping, or the recipe's)")
    o("--lr-mult", nargs="+", type=_prefix_factor, action=_ToDict, metavar="PREFIX=FACTOR",
      help="learning-rate factor per module-name prefix, e.g. backbone=0.1 ('head': the "
      "classifier)")

    tr = section("trainer", "lightning.Trainer")
    tr("--max-epochs", type=int, help="epochs (from the recipe)")
    tr("--max-steps", type=int, default=-1, help="stop after N optimizer steps (-1: off)")
    tr("--accumulate-grad-batches", type=int, default=1,
       help="batches per optimizer step")
    tr("--accelerator", default="auto", help="auto, cpu, gpu, mps...")
    tr("--devices", type=_devices, default="auto", help="count, list such as 0,1, or auto")
    tr("--strategy", choices=STRATEGIES, default="auto", help="distributed strategy")
    tr("--num-nodes", type=int, default=1, help="machines")
    tr("--dist-timeout", type=int, default=DIST_TIMEOUT, metavar="SECONDS",
       help="seconds a process waits for the others (the process group's timeout): a dead or "
       "frozen node makes the rest exit with an error after it instead of hanging")
    tr("--precision", choices=PRECISIONS, default="32-true", help="numeric precision")
    tr("--matmul-precision", choices=("highest", "high", "medium"), default="highest",
       help="float32 matrix products: highest (exact float32), high (TF32 tensor cores on "
       "NVIDIA GPUs), medium (bfloat16); torch.set_float32_matmul_precision (default: highest)")
    tr("--compile", action="store_true", default=False,
       help="torch.compile the model (default: off)")
    tr("--deterministic", action="store_true", default=False,
       help="deterministic algorithms only (default: off)")
    tr("--limit-train-batches", type=_limit,
       help="batches (int) or fraction (float) per epoch (default: all)")
    tr("--limit-val-batches", type=_limit, help="as --limit-train-batches, validation "
       "(default: all)")
    tr("--limit-test-batches", type=_limit, help="as --limit-train-batches, test (default: all)")
    tr("--fast-dev-run", type=int, nargs="?", const=1, default=0, metavar="N",
       help="smoke test: N batches (flag alone: 1) of each split, no checkpoints, metrics or "
       "plots; config.yaml, results.json and export/ are written (default: 0)")
    tr("--progress-bar", action=argparse.BooleanOptionalAction,
       help="show the progress bar (default: when stderr is a terminal)")
    tr("--progress-every", type=int, default=0, metavar="N",
       help="without the bar, a progress line every N steps within an epoch as well as after "
       "each epoch (0: every 30 s)")

    r = section("run", "run folder, seed, logging and checkpoints")
    r("--run-dir", help="run folder (default: runs/MODEL-DATA-TIMESTAMP)")
    r("--seed", type=int, default=0, help="seed of the weights, the split and the shuffling")
    r("--logger", choices=("csv", "tensorboard", "wandb"), default="csv",
      help="metrics.csv is always written; this adds TensorBoard or W&B")
    r("--wandb-project", default="d2l-lightning", help="W&B project")
    r("--wandb-name", help="W&B run name (default: W&B's random name)")
    r("--wandb-tags", nargs="*", default=[], help="W&B tags (default: none)")
    r("--ckpt-every-n-steps", type=int, default=0,
      help="also refresh last.ckpt every N training steps (0: each epoch)")
    r("--diverged-after", type=int, default=50, metavar="N",
      help="warn when the training loss stays above 10x its first value for N steps (0: off)")
    r("--test", action=argparse.BooleanOptionalAction, default=True,
      help="evaluate the test split after fit (default: --test)")
    return p


def flag_actions(parser: argparse.ArgumentParser) -> dict[tuple[str, str], argparse.Action]:
    """``(section, key) -> action`` for every flag that sets one config key."""
    out = {}
    for action in parser._actions:
        section, dot, key = action.dest.partition(".")
        if dot and key != "*":
            out[section, key] = action
    return out
