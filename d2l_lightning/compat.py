"""Everything that keeps files of earlier versions loading, in one place (and nothing else).

Each loading edge calls one function here: exports (:func:`upgrade_state_dict`, via
``models.load_exported``), checkpoints (:func:`upgrade_hparams`, :func:`upgrade_state_dict`),
run configs (:func:`upgrade_config`, via ``training.config.load_config_file``) and pickles of
our classes saved under the checkout's old top-level names (:func:`legacy_pickle`).

Written files are always in today's form. What here is dated may go after that date: by then a
run folder or export of the older form should have been re-exported or re-run.
"""

from __future__ import annotations

import pickle
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: until when the mappings below are kept (a year after the last of them was introduced)
KEEP_UNTIL = "2027-12-31"

#: the checkout's folders before they became subpackages of ``d2l_lightning`` (2026-12)
LEGACY_PACKAGES = ("models", "datamodules", "lit_models", "callbacks", "training")

#: hyper-parameters of older checkpoints: old name -> today's name (``None``: dropped).
#: ``compile`` became a ``run`` setting and ``gradient_clip_val`` a Trainer argument.
RENAMED_HPARAMS: dict[str, str | None] = {"src_len": "num_steps", "max_seq_len": "max_len",
                                          "compile": None, "gradient_clip_val": None}

#: config keys that moved to another section: (old section, key) -> today's section
MOVED_KEYS: dict[tuple[str, str], str] = {
    ("optim", "label_smoothing"): "task",  # a loss setting (2026-12)
    ("optim", "gradient_clip_val"): "trainer",  # lightning.Trainer's own argument (2026-12)
    ("trainer", "compile"): "run",  # the run's own settings, not Trainer arguments (2026-12)
    ("trainer", "matmul_precision"): "run",
    ("trainer", "dist_timeout"): "run",
    ("trainer", "progress_bar"): "run",
    ("trainer", "progress_every"): "run",
}
#: the run section's logger settings before loggers became Trainer arguments (2026-12)
OLD_LOGGER_KEYS = {"wandb_project": "project", "wandb_name": "name", "wandb_tags": "tags"}
#: flat ``config.yaml`` files of train.py before the sections existed: key -> section
FLAT_KEYS: dict[str, str] = {
    **{k: "model" for k in ("recipe", "num_hiddens", "num_layers", "dropout")},
    **{k: "data" for k in ("data_dir", "batch_size", "val_size", "num_steps", "level",
                           "sampler", "max_examples", "max_len")},
    **{k: "task" for k in ("resize", "beam_size", "length_penalty", "label_smoothing",
                           "channels_last")},
    **{k: "optim" for k in ("optimizer", "lr", "weight_decay", "momentum", "scheduler")},
    **{k: "trainer" for k in ("max_epochs", "max_steps", "accumulate_grad_batches", "accelerator",
                              "devices", "strategy", "num_nodes", "precision", "deterministic",
                              "limit_train_batches", "limit_val_batches", "limit_test_batches",
                              "fast_dev_run", "gradient_clip_val")},
    **{k: "run" for k in ("run_dir", "seed", "logger", "wandb_project", "wandb_name",
                          "wandb_tags", "ckpt_every_n_steps", "compile", "progress_bar")},
}


class CompatError(ValueError):
    """A file of an earlier version that cannot be read as today's (the message says why)."""


def upgrade_config(data: dict[str, Any]) -> dict[str, Any]:
    """A run config of any earlier train.py in today's sections (today's come back as they are).

    Raises:
        CompatError: a flat config with a key this version does not know.
    """
    if isinstance(data.get("model"), str):  # flat, before the sections existed
        data = _from_flat(data)
    out = {s: dict(v) if isinstance(v, dict) else v for s, v in data.items()}
    for (old, key), new in MOVED_KEYS.items():
        section = out.get(old)
        if isinstance(section, dict) and key in section:
            out.setdefault(new, {})
            if isinstance(out[new], dict):
                out[new].setdefault(key, section.pop(key))
    run, trainer = out.get("run"), out.setdefault("trainer", {})
    if isinstance(run, dict) and isinstance(trainer, dict) and (
            "logger" in run or OLD_LOGGER_KEYS.keys() & run.keys()):
        loggers = {"csv": {}}
        name = run.pop("logger", None)
        if isinstance(name, str) and name != "csv":
            loggers[name] = {}
        wandb = {new: run.pop(old) for old, new in OLD_LOGGER_KEYS.items() if old in run}
        if "wandb" in loggers:  # a W&B setting of a run that did not log to W&B meant nothing
            loggers["wandb"] = wandb
        trainer.setdefault("logger", loggers)
    if out.get("trainer") == {}:
        out.pop("trainer")
    return out


def _from_flat(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        if value is None:  # an unset flag: the recipe or the constructor decides, as then
            continue
        if key in ("model", "data"):
            out.setdefault(key, {})["name"] = value
        elif key in ("model_kwargs", "data_kwargs"):
            out.setdefault(key.split("_")[0], {}).update(value or {})
        elif key == "no_test":
            out.setdefault("run", {})["test"] = not value
        elif key in ("task", "section", "list", "resume", "model_arg", "data_arg"):
            continue  # derived from the model, or a command rather than a setting
        elif key in FLAT_KEYS:
            out.setdefault(FLAT_KEYS[key], {})[key] = value
        else:
            raise CompatError(f"unknown key '{key}' (a flat config of an earlier train.py)")
    return out


def upgrade_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's hyper-parameters under today's names (see :data:`RENAMED_HPARAMS`)."""
    out = dict(hparams)
    for old, new in RENAMED_HPARAMS.items():
        if old in out:
            value = out.pop(old)
            if new is not None:
                out[new] = value
    return out


def upgrade_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the blocks of ``vit``/``row_transformer`` weights saved before the shared toolbox.

    Those blocks used ``nn.MultiheadAttention`` (one packed ``in_proj_weight`` for q, k, v and an
    ``out_proj``) and named their norms ``ln1``/``ln2`` and the ViT MLP ``mlp``; this returns the
    same weights under ``TransformerEncoderBlock``'s names (``W_q``/``W_k``/``W_v``/``W_o``,
    ``norm1``/``norm2``, ``ffn``). Other state dicts come back unchanged.
    """
    old_blocks = {k[: -len("attention.in_proj_weight")] for k in state
                  if k.endswith("attention.in_proj_weight")}
    if not old_blocks:
        return state
    out = {}
    for key, value in state.items():
        block = next((b for b in old_blocks if key.startswith(b)), None)
        if block is None:
            out[key] = value
            continue
        rest = key[len(block):]
        if rest.startswith("attention.in_proj_"):
            kind = rest.rsplit("_", 1)[1]  # weight or bias
            for name, part in zip(("W_q", "W_k", "W_v"), value.chunk(3, dim=0)):
                out[f"{block}attention.{name}.{kind}"] = part
            continue
        for before, after in (("attention.out_proj.", "attention.W_o."), ("ln1.", "norm1."),
                              ("ln2.", "norm2."), ("mlp.", "ffn.")):
            if rest.startswith(before):
                rest = after + rest[len(before):]
                break
        out[block + rest] = value
    return out


def has_packed_attention(state: dict[str, Any]) -> bool:
    """Whether a state dict holds the old packed attention blocks.

    Their weights load (:func:`upgrade_state_dict`), their optimizer state cannot continue.
    """
    return any(k.endswith("in_proj_weight") for k in state)


def modern_module_name(module: str) -> str:
    """``models.lenet`` (a checkout's old top-level name) -> ``d2l_lightning.models.lenet``."""
    head = module.split(".", 1)[0]
    return f"d2l_lightning.{module}" if head in LEGACY_PACKAGES else module


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(modern_module_name(module), name)


#: a ``pickle_module`` for ``torch.load`` that reads pickles of our classes saved under the old
#: names, e.g. ``torch.load(path, pickle_module=legacy_pickle, weights_only=False)`` for a
#: ``torch.save(model)`` of a LeNet made before the package existed (``models.lenet.LeNet``)
legacy_pickle = types.ModuleType(f"{__name__}.legacy_pickle")
legacy_pickle.__dict__.update({k: v for k, v in vars(pickle).items() if not k.startswith("__")})
legacy_pickle.Unpickler = _Unpickler
legacy_pickle.load = lambda f, **kw: _Unpickler(f, **kw).load()
