"""Export to, and load from, plain PyTorch: ``config.json`` + ``model.safetensors``.

An export folder holds the weights of the pure ``models/`` module (no Lightning prefixes) and
everything needed to rebuild and feed it: registry name, constructor arguments, preprocessing and
class names. Loading needs torch and safetensors only.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from d2l_lightning.compat import upgrade_state_dict

from .registry import build_model, get_spec

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1
#: the largest ``config.json`` read (a word-level vocabulary of a million tokens fits)
MAX_CONFIG_BYTES = 64 * 2**20
#: the most values of tables a model builds rather than stores, beyond its weights' count
MAX_UNSAVED = 2**24
#: the deepest nesting read (exports nest 4 levels: run_config.data.<key>.<list>)
MAX_DEPTH = 32


class ExportError(Exception):
    """An export folder is missing, incomplete, or does not match its config."""


def save_export(model: nn.Module, config: dict[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write ``model``'s weights and ``config`` to ``out_dir`` (each file atomically).

    Args:
        model: the pure ``models/`` module.
        config: must hold ``arch`` and ``model_kwargs``; anything else (``task``,
            ``preprocess``, ``class_names``...) is carried along for inference.
        out_dir: export folder, created if needed.
    """
    from safetensors.torch import save_file

    for key in ("arch", "model_kwargs"):
        if key not in config:
            raise ExportError(f"export config needs '{key}'")
    # safetensors refuses shared storage (tied weights): store clones, contiguous.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ExportError(f"refusing to export weights that hold NaN or inf ({bad[0]}"
                          + (f" and {len(bad) - 1} more" if len(bad) > 1 else "") + ")")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    full = {"format_version": FORMAT_VERSION, **config}
    atomic_write(out / WEIGHTS_NAME, lambda p: save_file(state, str(p)))
    atomic_write(out / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(full, indent=2)))
    return out


def read_export_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read an export's ``config.json`` and check its form (not yet against its model).

    Raises:
        ExportError: no export folder, a config that is too large or too deeply nested, not
            JSON, or without a string ``arch``, a mapping ``model_kwargs`` and a
            ``format_version`` this code reads.
    """
    folder = Path(path)
    cfg_path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise ExportError(f"export folder '{folder}' does not exist")
    if not cfg_path.is_file() or not (folder / WEIGHTS_NAME).is_file():
        raise ExportError(
            f"'{folder}' is not an export folder: it needs {CONFIG_NAME} and {WEIGHTS_NAME} "
            "(written by train.py into RUN_DIR/export/)"
        )
    if cfg_path.stat().st_size > MAX_CONFIG_BYTES:
        raise ExportError(f"{cfg_path} holds {cfg_path.stat().st_size:,} bytes, more than an "
                          f"export's config ever needs ({MAX_CONFIG_BYTES:,}); re-export the "
                          "model with export.py")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except ValueError as e:  # not JSON, not UTF-8, an integer of more than 4,300 digits
        raise ExportError(f"{cfg_path} is not valid JSON ({e})") from None
    except RecursionError:
        cfg = None  # nested deeper than the parser's stack: refused below
    if cfg is None or _depth(cfg) > MAX_DEPTH:
        raise ExportError(f"{cfg_path} is nested deeper than {MAX_DEPTH} levels, which no "
                          "export is; re-export the model with export.py")
    if not isinstance(cfg, dict) or "arch" not in cfg or "model_kwargs" not in cfg:
        raise ExportError(f"{cfg_path} lacks 'arch' or 'model_kwargs'")
    if not isinstance(cfg["arch"], str):
        raise ExportError(f"{cfg_path}: 'arch' must be a model name, got {_show(cfg['arch'])}")
    version = cfg.get("format_version", FORMAT_VERSION)
    if not _is_int(version) or not 1 <= version <= FORMAT_VERSION:
        raise ExportError(f"{cfg_path}: 'format_version' {_show(version)} is not one this "
                          f"version of d2l_lightning reads (1 to {FORMAT_VERSION}); re-export the "
                          "model with this version's export.py")
    return cfg


def check_export(path: str | os.PathLike) -> tuple[dict[str, Any], nn.Module]:
    """Read ``config.json`` and check every field against the model it describes.

    Nothing is allocated: the model is built on the ``meta`` device (see
    :func:`check_against_weights`) and the fields are checked against it
    (:func:`check_fields`).

    Returns:
        ``(config, model on the meta device)``.

    Raises:
        ExportError: one sentence naming the first field that does not fit.
    """
    cfg = read_export_config(path)
    try:
        get_spec(cfg["arch"])
    except KeyError as e:
        raise ExportError(f"{Path(path) / CONFIG_NAME}: {e.args[0]}") from None
    meta = check_against_weights(cfg, path)
    check_fields(cfg, Path(path) / CONFIG_NAME, meta)
    return cfg, meta


def load_exported(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild an exported model with torch alone.

    Args:
        path: export folder (``RUN_DIR/export``).
        map_location: device for the weights.

    Returns:
        ``(model, config)``: the module in eval mode and the export's config dict.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cfg, _ = check_export(path)  # every field, before any memory is allocated for the model
    model = build_model(cfg["arch"], **cfg["model_kwargs"])
    try:
        state = load_file(str(Path(path) / WEIGHTS_NAME), device=str(map_location))
    except (SafetensorError, OSError) as e:
        raise ExportError(f"cannot read {Path(path) / WEIGHTS_NAME}: {e}") from None
    try:
        model.load_state_dict(upgrade_state_dict(state), strict=True)  # older exports too
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3])
        raise ExportError(
            f"the weights in {Path(path) / WEIGHTS_NAME} do not match the '{cfg['arch']}' "
            f"model described by its config ({detail})"
        ) from None
    return model.to(map_location).eval(), cfg


def _depth(obj: Any) -> int:
    """How deeply ``obj`` (parsed JSON) nests lists and mappings, counted without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if level <= MAX_DEPTH:
                stack += [(v, level + 1) for v in (item.values() if isinstance(item, dict)
                                                   else item)]
    return deepest


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _show(value: Any) -> str:
    """``value`` for a message, at most 60 characters."""
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def umask_file_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask (0644 under umask 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def check_against_weights(cfg: dict[str, Any], path: str | os.PathLike) -> nn.Module:
    """Refuse a ``config.json`` that does not describe its ``model.safetensors``.

    The model is built on the ``meta`` device (no memory) and its size is compared with the
    tensor shapes declared in the safetensors header, so an untrusted config with a huge size
    is refused before anything is allocated.

    Returns:
        The model, on the ``meta`` device.

    Raises:
        ExportError: constructor arguments the model refuses, or a parameter count that
            differs from the file's.
    """
    from safetensors import SafetensorError, safe_open

    folder = Path(path)
    kwargs = cfg["model_kwargs"]
    if not isinstance(kwargs, dict):
        raise ExportError(f"{folder / CONFIG_NAME}: 'model_kwargs' must be a mapping")
    try:
        with safe_open(str(folder / WEIGHTS_NAME), framework="pt") as f:
            declared = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
    except (SafetensorError, OSError) as e:
        raise ExportError(f"cannot read {folder / WEIGHTS_NAME}: {e}") from None
    try:
        with torch.device("meta"):
            model = build_model(cfg["arch"], **kwargs)
    except (TypeError, ValueError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(f"{folder / CONFIG_NAME}: its model_kwargs do not build a "
                          f"'{cfg['arch']}' model ({first})") from None
    expected = sum(t.numel() for t in model.state_dict().values())
    if expected != declared:
        raise ExportError(f"the weights in {folder / WEIGHTS_NAME} do not match the "
                          f"'{cfg['arch']}' model described by its config (the config makes "
                          f"{expected:,} values, the file holds {declared:,})")
    unsaved = sum(t.numel() for t in [*model.parameters(), *model.buffers()]) - expected
    if unsaved > max(declared, MAX_UNSAVED):  # tables built, not stored: a position table
        raise ExportError(f"{folder / CONFIG_NAME}: its model_kwargs make a '{cfg['arch']}' "
                          f"model with {unsaved:,} values of tables that are built rather than "
                          f"stored (such as a max_len position table), more than its "
                          f"{declared:,} weights; re-export the model with export.py")
    return model


#: the longest sequence a ``config.json`` may ask for (``num_steps``, ``max_decode_len``,
#: ``max_len``) where its model has no position table that is shorter
MAX_TOKENS = 10_000
#: index 0 of every vocabulary (``datamodules.text.UNK``; models/ does not import datamodules)
UNK = "<unk>"
#: each task's vocabularies and the constructor argument that sizes their embedding
VOCABS = {"seq2seq": {"src_vocab": "src_vocab_size", "tgt_vocab": "tgt_vocab_size"},
          "masked_lm": {"vocab": "vocab_size"}, "text_encoding": {"vocab": "vocab_size"},
          "language_modeling": {"vocab": "vocab_size"}}


def check_fields(cfg: dict[str, Any], where: Path, model: nn.Module) -> None:
    """Refuse a field of ``config.json`` that does not fit the model it describes.

    Each field ``save_export`` writes for the model's task is checked when present (what a
    command needs, ``predict.py`` asks for): preprocessing and class names against the model's
    input and output (a forward pass on the ``meta`` device), vocabularies against its
    embeddings, lengths against its position table, numbers against their ranges.

    Args:
        cfg: the config, as :func:`read_export_config` returns it.
        where: the ``config.json``, for messages.
        model: the model on the ``meta`` device (:func:`check_against_weights`).

    Raises:
        ExportError: one sentence naming the field.
    """
    spec = get_spec(cfg["arch"])

    def fail(field: str, why: str) -> None:
        raise ExportError(f"{where}: '{field}' {why}; re-export the model with export.py")

    task = cfg.get("task", spec.task)
    if task != spec.task:
        fail("task", f"is {_show(task)}, but a '{spec.name}' model does {spec.task}")
    if not isinstance(cfg.get("run_config", {}), dict):
        fail("run_config", "must be a mapping (the run's resolved config)")
    kwargs = {**_defaults(spec.builder), **cfg["model_kwargs"]}
    if task == "image_classification":
        from .preprocess import check_preprocess

        outputs = kwargs.get("num_classes")
        if "preprocess" in cfg:
            try:
                outputs = check_preprocess(cfg["preprocess"], model)
            except ValueError as e:
                raise ExportError(f"{where}: {e}; re-export the model with export.py") from None
        names = cfg.get("class_names", [])
        if not isinstance(names, list) or not all(
                isinstance(n, (str, int)) and not isinstance(n, bool) for n in names):
            fail("class_names", "must be a list of names (strings or numbers)")
        if "class_names" in cfg and _is_int(outputs) and len(names) != outputs:
            fail("class_names", f"holds {len(names)} names, but the '{spec.name}' model has "
                 f"{outputs} outputs")
    vocabs = {}
    for field, size_arg in VOCABS.get(task, {}).items():
        if field in cfg:
            vocabs[field] = _check_vocab(cfg[field], kwargs.get(size_arg), size_arg, fail, field)
    if "special_tokens" in cfg and task in VOCABS:
        special = cfg["special_tokens"]
        tokens = list(special.values()) if isinstance(special, dict) else special
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            fail("special_tokens", "must be a list or mapping of tokens")
        for field, vocab in vocabs.items():
            missing = [t for t in tokens if t not in vocab]
            if missing:
                fail("special_tokens", f"names {missing[0]!r}, which '{field}' does not hold")
    longest = min([MAX_TOKENS, *_position_tables(model)])
    for field in {"seq2seq": ("num_steps", "max_decode_len"), "masked_lm": ("max_len",),
                  "text_encoding": ("max_len",)}.get(task, ()):
        if field in cfg and not (_is_int(cfg[field]) and 1 <= cfg[field] <= longest):
            fail(field, f"must be a whole number from 1 to {longest} (the longest sequence the "
                 f"model takes), got {_show(cfg[field])}")
    _check_settings(cfg, task, len(vocabs.get("tgt_vocab", ())) or None, fail)


def _check_settings(cfg: dict[str, Any], task: str, tgt_size: int | None,
                    fail: Callable[[str, str], None]) -> None:
    """The decoding and text settings of a text task's ``config.json``."""
    if task == "seq2seq":
        beam = cfg.get("beam_size", 1)
        if not _is_int(beam) or beam < 1 or (tgt_size is not None and beam > tgt_size):
            fail("beam_size", f"must be a whole number from 1 to the target vocabulary's size, "
                 f"got {_show(beam)}")
        alpha = cfg.get("length_penalty", 0.0)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(
                alpha):
            fail("length_penalty", f"must be a finite number, got {_show(alpha)}")
        if not isinstance(cfg.get("preprocess", ""), str):
            fail("preprocess", "must name the text preprocessing")
    if task in ("masked_lm", "text_encoding"):
        if not isinstance(cfg.get("lowercase", True), bool):
            fail("lowercase", f"must be true or false, got {_show(cfg['lowercase'])}")
        if not isinstance(cfg.get("pretrained_arch", ""), str):
            fail("pretrained_arch", "must be a model name")
    if task == "language_modeling" and "text" in cfg:
        text = cfg["text"]
        if not isinstance(text, dict) or text.get("level") not in ("char", "word"):
            fail("text", "must be a mapping whose 'level' is 'char' or 'word'")
        for key in ("preprocess", "prefix"):
            if not isinstance(text.get(key), str):
                fail(f"text.{key}", f"must be a string, got {_show(text.get(key))}")


def _check_vocab(tokens: Any, size: Any, size_arg: str, fail: Callable[[str, str], None],
                 field: str) -> set[str]:
    """A vocabulary: distinct strings, ``<unk>`` first, one per row of the model's embedding."""
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        fail(field, "must be a list of tokens (strings)")
    if not tokens or tokens[0] != UNK:
        fail(field, f"must start with {UNK}")
    distinct = set(tokens)
    if len(distinct) != len(tokens):
        fail(field, "holds a token twice")
    if _is_int(size) and len(tokens) != size:
        fail(field, f"holds {len(tokens):,} tokens, but the model's embedding has {size:,} "
             f"(model_kwargs.{size_arg})")
    return distinct


def _position_tables(model: nn.Module) -> list[int]:
    """The lengths of the model's position tables (the longest sequences it takes)."""
    out = []
    for m in model.modules():
        table = getattr(m, "P", None)  # a sinusoidal PositionalEncoding's buffer (1, L, H)
        if isinstance(table, torch.Tensor) and table.dim() == 3:
            out.append(table.shape[1])
        if _is_int(getattr(m, "max_len", None)):  # learned positions (BERT, GPT)
            out.append(m.max_len)
    return out


def _defaults(builder: Callable[..., Any]) -> dict[str, Any]:
    """The keyword defaults of a model builder."""
    import inspect

    return {name: p.default for name, p in inspect.signature(builder).parameters.items()
            if p.default is not inspect.Parameter.empty}


def atomic_write(target: Path, write: Callable[[str], Any]) -> None:
    """``write(tmp)`` a temporary file in ``target``'s folder, then rename it over ``target``.

    A failed write leaves ``target`` as it was and no temporary file behind (exports, and the
    checkpoints of :class:`callbacks.faults.AtomicCheckpointIO`).

    ``mkstemp`` creates the file mode 600; it gets the mode a plainly written file would have,
    so a lab-mate can read an export as they can read the checkpoints.
    """
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, umask_file_mode())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
