"""``lightning.Trainer``'s keyword arguments, as a table that ``--help`` reads without Lightning.

The ``trainer`` section of a run config is exactly these arguments. The table below is generated
from the installed Lightning by ``python -m d2l_lightning.training.trainer_args --write``;
``tests/test_help.py`` regenerates it and fails when Lightning's signature has changed. Values
are checked against Lightning's own type hints when a config is resolved (which imports
Lightning anyway); this table only lists the names, defaults and help lines.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

#: the Lightning version the table was generated from
LIGHTNING_VERSION = "2.6.6"
#: name -> (type hint as text, Lightning's default, the first sentence of Lightning's doc)
TRAINER_ARGS: dict[str, tuple[str, Any, str]] = {
    # BEGIN GENERATED
    'accelerator': (
        'Union[str, Accelerator]',
        'auto',
        'Supports passing different accelerator types ("cpu", "gpu", "tpu", "hpu", "mps",'
        ' "auto") as well as custom accelerator instances'),
    'strategy': (
        'Union[str, Strategy]',
        'auto',
        'Supports different training strategies with aliases as well custom strategies'),
    'devices': (
        'Union[list[int], str, int]',
        'auto',
        'The devices to use'),
    'num_nodes': (
        'int',
        1,
        'Number of GPU nodes for distributed training'),
    'precision': (
        "Union[Literal[64, 32, 16], Literal['transformer-engine', 'transformer-engine-"
        "float16', '16-true', '16-mixed', 'bf16-true', 'bf16-mixed', '32-true', "
        "'64-true'], Literal['64', '32', '16', 'bf16'], None]",
        None,
        "Double precision (64, '64' or '64-true'), full precision (32, '32' or "
        "'32-true'), 16bit mixed precision (16, '16', '16-mixed') or bfloat16 mixed "
        "precision ('bf16', 'bf16-mixed')"),
    'logger': (
        'Union[Logger, Iterable[Logger], bool, None]',
        None,
        'Logger (or iterable collection of loggers) for experiment tracking'),
    'callbacks': (
        'Union[list[Callback], Callback, None]',
        None,
        'Add a callback or list of callbacks'),
    'fast_dev_run': (
        'Union[int, bool]',
        False,
        'Runs n if set to n (int) else 1 if set to True batch(es) of train, val and test '
        'to find any bugs (ie: a sort of unit test)'),
    'max_epochs': (
        'Optional[int]',
        None,
        'Stop training once this number of epochs is reached'),
    'min_epochs': (
        'Optional[int]',
        None,
        'Force training for at least these many epochs'),
    'max_steps': (
        'int',
        -1,
        'Stop training after this number of steps'),
    'min_steps': (
        'Optional[int]',
        None,
        'Force training for at least these number of steps'),
    'max_time': (
        'Union[str, datetime.timedelta, dict[str, int], None]',
        None,
        'Stop training after this amount of time has passed'),
    'limit_train_batches': (
        'Union[int, float, None]',
        None,
        'How much of training dataset to check (float = fraction, int = num_batches)'),
    'limit_val_batches': (
        'Union[int, float, None]',
        None,
        'How much of validation dataset to check (float = fraction, int = num_batches)'),
    'limit_test_batches': (
        'Union[int, float, None]',
        None,
        'How much of test dataset to check (float = fraction, int = num_batches)'),
    'limit_predict_batches': (
        'Union[int, float, None]',
        None,
        'How much of prediction dataset to check (float = fraction, int = num_batches)'),
    'overfit_batches': (
        'Union[int, float]',
        0.0,
        'Overfit a fraction of training/validation data (float) or a set number of '
        'batches (int)'),
    'val_check_interval': (
        'Union[int, float, str, datetime.timedelta, dict[str, int], None]',
        None,
        'How often to check the validation set'),
    'check_val_every_n_epoch': (
        'Optional[int]',
        1,
        'Perform a validation loop after every `N` training epochs'),
    'num_sanity_val_steps': (
        'Optional[int]',
        None,
        'Sanity check runs n validation batches before starting the training routine'),
    'log_every_n_steps': (
        'Optional[int]',
        None,
        'How often to log within steps'),
    'enable_checkpointing': (
        'Optional[bool]',
        None,
        'If True, enable checkpointing'),
    'enable_progress_bar': (
        'Optional[bool]',
        None,
        'Whether to enable to progress bar by default'),
    'enable_model_summary': (
        'Optional[bool]',
        None,
        'Whether to enable model summarization by default'),
    'accumulate_grad_batches': (
        'int',
        1,
        'Accumulates gradients over k batches before stepping the optimizer'),
    'gradient_clip_val': (
        'Union[int, float, None]',
        None,
        'The value at which to clip gradients'),
    'gradient_clip_algorithm': (
        'Optional[str]',
        None,
        'The gradient clipping algorithm to use'),
    'deterministic': (
        "Union[bool, Literal['warn'], None]",
        None,
        'If True, sets whether PyTorch operations must use deterministic algorithms'),
    'benchmark': (
        'Optional[bool]',
        None,
        'The value (True or False) to set torch.backends.cudnn.benchmark to'),
    'inference_mode': (
        'bool',
        True,
        'Whether to use :func:`torch.inference_mode` or :func:`torch.no_grad` during '
        'evaluation (validate/test/predict)'),
    'use_distributed_sampler': (
        'bool',
        True,
        "Whether to wrap the DataLoader's sampler with "
        ':class:`torch.utils.data.DistributedSampler`'),
    'profiler': (
        'Union[Profiler, str, None]',
        None,
        'To profile individual steps during training and assist in identifying '
        'bottlenecks'),
    'detect_anomaly': (
        'bool',
        False,
        'Enable anomaly detection for the autograd engine'),
    'barebones': (
        'bool',
        False,
        'Whether to run in "barebones mode", where all features that may impact raw speed'
        ' are disabled'),
    'plugins': (
        'Union[Precision, ClusterEnvironment, CheckpointIO, LayerSync, '
        'list[Union[Precision, ClusterEnvironment, CheckpointIO, LayerSync]], None]',
        None,
        'Plugins allow modification of core behavior like ddp and amp, and enable custom '
        'lightning plugins'),
    'sync_batchnorm': (
        'bool',
        False,
        'Synchronize batch norm layers between process groups/whole world'),
    'reload_dataloaders_every_n_epochs': (
        'int',
        0,
        'Set to a positive integer to reload dataloaders every n epochs'),
    'default_root_dir': (
        'Union[str, Path, None]',
        None,
        'Default path for logs and weights when no logger/ckpt_callback passed'),
    'enable_autolog_hparams': (
        'bool',
        True,
        'Whether to log hyperparameters at the start of a run'),
    'model_registry': (
        'Optional[str]',
        None,
        'The name of the model being uploaded to Model hub'),
    # END GENERATED
}


def _type_text(hint: Any) -> str:
    """A hint as short text: ``Union[str, Accelerator]`` (classes by their own name)."""
    import re
    import typing

    text = str(hint) if typing.get_origin(hint) or not isinstance(hint, type) else hint.__name__
    text = re.sub(r"<class '([\w.]+)'>", r"\1", text).replace("typing.", "")
    text = re.sub(r"\b(?:[a-z_]\w*\.)+([A-Z]\w*)", r"\1", text)  # module paths
    return text.replace("NoneType", "None")


def _first_sentence(doc: str, name: str) -> str:
    import re

    found = re.search(rf"^    {name}: (.*?)(?:\n\s*\n|\Z)", doc, re.M | re.S)
    if not found:
        return ""
    text = " ".join(found.group(1).split())
    text = re.sub(r"\s*Default: ``[^`]*``\.?", "", text)
    first = re.split(r"(?<=[a-z)`'])\. ", text, maxsplit=1)[0].rstrip(".")
    return first.replace("``", "")


def generate() -> dict[str, tuple[str, Any, str]]:
    """The table from the installed Lightning's ``Trainer.__init__``."""
    import inspect
    import typing

    import lightning as L

    hints = typing.get_type_hints(L.Trainer.__init__)
    doc = inspect.getdoc(L.Trainer.__init__) or ""
    out = {}
    for name, p in inspect.signature(L.Trainer.__init__).parameters.items():
        if name == "self":
            continue
        out[name] = (_type_text(hints.get(name, Any)), p.default, _first_sentence(doc, name))
    return out


def _literal(text: str, indent: int) -> str:
    """``text`` as string literals of at most 90 characters, one per line."""
    import textwrap

    pad = " " * indent
    parts = textwrap.wrap(text, 88 - indent, drop_whitespace=False) or [""]
    return "\n".join(pad + repr(part) for part in parts)


def _render(table: dict[str, tuple[str, Any, str]]) -> str:
    lines = []
    for name, (hint, default, text) in table.items():
        lines.append(f"    {name!r}: (\n{_literal(hint, 8)},\n        {default!r},\n"
                     f"{_literal(text, 8)}),")
    return "\n".join(lines)


def write() -> Path:
    """Regenerate the table in this file from the installed Lightning."""
    import lightning as L

    path = Path(__file__)
    text = path.read_text(encoding="utf-8")
    head, _, rest = text.partition("    # BEGIN GENERATED\n")
    _, _, tail = rest.partition("    # END GENERATED\n")
    head = head.replace(f'LIGHTNING_VERSION = "{LIGHTNING_VERSION}"',
                        f'LIGHTNING_VERSION = "{L.__version__}"')
    body = _render(generate())
    path.write_text(f"{head}    # BEGIN GENERATED\n{body}\n    # END GENERATED\n{tail}",
                    encoding="utf-8")
    return path


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m d2l_lightning.training.trainer_args --write")
    print(f"wrote {write()}")
