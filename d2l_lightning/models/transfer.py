"""Transfer learning (d2l §14.2, fine-tuning): initial weights, freezing, per-group learning rates.

Lightning-free. Initial weights come from one of three sources, all loaded without unpickling
code (safetensors, or ``torch.load(weights_only=True)``):

* a run's ``export/`` folder (``config.json`` + ``model.safetensors``);
* a Lightning checkpoint of ``train.py`` (``*.ckpt``);
* torchvision ImageNet weights, ``torchvision:NAME`` (or a bare ``NAME`` that is no path), read
  from the torch hub cache. Only the ResNets map onto this project's modules (see
  :data:`TORCHVISION_UNMAPPED` for why the others cannot).

The *head* of a model is its last ``nn.Linear`` or ``nn.Conv2d`` module (the classifier); it is
the only part whose shape may differ from the source (a new head when the classes differ).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: torchvision architecture -> (this project's model, file name in the torch hub cache)
TORCHVISION_WEIGHTS = {
    "resnet18": ("resnet18", "resnet18-f37072fd.pth"),
    "resnet34": ("resnet34", "resnet34-b627a593.pth"),
}
#: torchvision architectures whose weights cannot be mapped onto the d2l modules, and why
TORCHVISION_UNMAPPED = {
    "alexnet": "d2l's AlexNet (§8.1) has 96/256/384/384/256 channels, torchvision's "
               "64/192/384/256/256",
    "vgg11": "not mapped yet: d2l's VGG-11 (§8.2) has torchvision's convolutions but sizes its "
             "dense layers from image_size",
    "googlenet": "torchvision's GoogLeNet has batch-normalised convolutions and a 3x3 branch "
                 "where d2l's (§8.4) has 5x5",
    "densenet": "d2l's DenseNet (§8.7) is a small 4x4-layer network, not DenseNet-121",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKBONE, HEAD = "backbone", "head"


class TransferError(ValueError):
    """An initial-weight source, freeze prefix or learning-rate factor this model cannot take."""


def torchvision_name(source: str | None) -> str | None:
    """The torchvision architecture named by ``source`` (``torchvision:NAME`` or a bare NAME)."""
    if not source:
        return None
    name = source.removeprefix("torchvision:")
    if source.startswith("torchvision:") or (not Path(source).exists() and name in
                                             {*TORCHVISION_WEIGHTS, *TORCHVISION_UNMAPPED}):
        return name
    return None


def head_prefix(model: nn.Module) -> str:
    """Name of the classifier: the last ``nn.Linear`` or ``nn.Conv2d`` module of ``model``."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            last = name
    if last is None:
        raise TransferError(f"{type(model).__name__} has no linear or convolutional head")
    return last


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def matches(name: str, prefix: str, head: str) -> bool:
    """Whether parameter ``name`` falls under ``prefix`` (``backbone``: all but the head)."""
    if prefix == BACKBONE:
        return not _under(name, head)
    if prefix == HEAD:
        return _under(name, head)
    return _under(name, prefix)


def _top_modules(model: nn.Module) -> str:
    names = [n for n, _ in model.named_modules() if n and n.count(".") <= 1]
    return ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")


def freeze(model: nn.Module, prefixes: Sequence[str]) -> list[str]:
    """Set ``requires_grad=False`` under each prefix; return the frozen parameter names.

    Raises:
        TransferError: a prefix that matches no parameter, or prefixes that leave no parameter
            to train (the optimizer would get none).
    """
    head = head_prefix(model)
    frozen = []
    for prefix in prefixes:
        hit = [n for n, p in model.named_parameters() if matches(n, prefix, head)]
        if not hit:
            raise TransferError(f"--freeze prefix '{prefix}' matches no parameter of "
                                f"{type(model).__name__} (use '{BACKBONE}', '{HEAD}' or a "
                                f"module name: {_top_modules(model)})")
        frozen += hit
    named = dict(model.named_parameters())
    if named and set(frozen) == named.keys():
        raise TransferError(f"--freeze {' '.join(prefixes)} freezes every parameter of "
                            f"{type(model).__name__}, which leaves nothing to train; leave at "
                            f"least one module unfrozen (e.g. --freeze {BACKBONE} trains the "
                            "head)")
    for name in frozen:
        named[name].requires_grad_(False)
    return sorted(set(frozen))


def frozen_norm_layers(model: nn.Module) -> list[nn.Module]:
    """Batch-norm layers whose parameters are all frozen (kept in eval mode while training)."""
    out = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                out.append(module)
    return out


def param_groups(model: nn.Module, lr: float,
                 lr_mult: Mapping[str, float] | None) -> list[dict[str, Any]]:
    """Trainable parameters grouped by learning rate: ``lr * factor`` of the longest prefix.

    ``backbone`` and ``head`` rank below explicit module prefixes; parameters under no prefix
    keep ``lr``. Frozen parameters are left out.

    Raises:
        TransferError: a prefix that matches no parameter, or a negative factor.
    """
    lr_mult = dict(lr_mult or {})
    named = list(model.named_parameters())
    if not lr_mult:
        return [{"params": [p for _, p in named if p.requires_grad], "lr": lr, "lr_mult": 1.0}]
    head = head_prefix(model)
    for prefix, factor in lr_mult.items():
        if factor < 0:
            raise TransferError(f"--lr-mult {prefix}={factor}: the factor must be >= 0")
        if not any(matches(n, prefix, head) for n, _ in named):
            raise TransferError(f"--lr-mult prefix '{prefix}' matches no parameter of "
                                f"{type(model).__name__} (use '{BACKBONE}', '{HEAD}' or a "
                                f"module name: {_top_modules(model)})")

    def rank(prefix: str) -> int:
        return 0 if prefix in (BACKBONE, HEAD) else len(prefix) + 1

    groups: dict[float, list[nn.Parameter]] = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        hits = [k for k in lr_mult if matches(name, k, head)]
        factor = lr_mult[max(hits, key=rank)] if hits else 1.0
        groups.setdefault(float(factor), []).append(p)
    return [{"params": ps, "lr": lr * f, "lr_mult": f} for f, ps in groups.items()]


def parameter_summary(model: nn.Module) -> str:
    """``N trainable, M frozen parameters`` (+ the frozen batch-norm layers kept in eval)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    bn = len(frozen_norm_layers(model))
    return (f"{trainable:,} trainable, {frozen:,} frozen parameters"
            + (f"; {bn} frozen batch-norm layers stay in eval mode" if bn else ""))


@dataclass(frozen=True)
class Source:
    """What an ``--init-from`` source holds: weights, architecture, class names (if recorded)."""

    state: dict[str, torch.Tensor]
    arch: str
    class_names: list[str] | None = None


def read_source(source: str, task: str) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict of an export folder, checkpoint or torchvision name, and its arch."""
    read = load_source(source, task)
    return read.state, read.arch


def load_source(source: str, task: str) -> Source:
    """Read an export folder, checkpoint or torchvision name (see :class:`Source`).

    The class names come from an export's ``config.json`` or a checkpoint's hyper-parameters;
    torchvision's ImageNet weights record none here.

    Raises:
        TransferError: a missing or unreadable source, another task family, or torchvision
            weights that are not cached (one sentence naming the file to place).
    """
    tv = torchvision_name(source)
    if tv is not None:
        return Source(read_torchvision(tv), TORCHVISION_WEIGHTS[tv][0])
    path = Path(source)
    if path.is_dir():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from .export import WEIGHTS_NAME, ExportError, read_export_config

        try:
            cfg = read_export_config(path)
            state = load_file(str(path / WEIGHTS_NAME))
        except (ExportError, SafetensorError, OSError) as e:
            raise TransferError(f"--init-from {source}: {e}") from None
        _check_task(source, cfg.get("task"), task)
        from d2l_lightning.compat import (
            upgrade_state_dict,  # exports of the old blocks, as load_exported
        )

        return Source(upgrade_state_dict(state), cfg["arch"],
                      recorded_names(cfg.get("class_names")))
    if path.is_file():
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle.UnpicklingError, RuntimeError, EOFError...
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TransferError(f"--init-from {source} is not a checkpoint that loads with "
                                f"weights_only=True ({first})") from None
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
            raise TransferError(f"--init-from {source} is not a train.py checkpoint (no "
                                "'state_dict')")
        hparams = ckpt.get("hyper_parameters") or {}
        arch = str(hparams.get("arch", "?"))
        from .registry import get_spec

        try:
            src_task = get_spec(arch).task
        except KeyError:
            src_task = "?"
        _check_task(source, src_task, task)
        from d2l_lightning.compat import upgrade_state_dict

        state = {k[len("model."):]: v for k, v in upgrade_state_dict(ckpt["state_dict"]).items()
                 if k.startswith("model.")}
        return Source(state, arch, recorded_names(hparams.get("class_names")))
    raise TransferError(f"--init-from {source} is neither an export folder, a checkpoint file "
                        f"nor a torchvision name ({', '.join(TORCHVISION_WEIGHTS)})")


def _check_task(source: str, got: Any, want: str) -> None:
    if got != want:
        raise TransferError(f"--init-from {source} holds a '{got}' model, which cannot "
                            f"initialise a '{want}' model")


def torchvision_cache_file(name: str) -> Path:
    """Where torchvision keeps the ImageNet weights of ``name`` (``$TORCH_HOME/hub/...``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_WEIGHTS[name][1]


def read_torchvision(name: str) -> dict[str, torch.Tensor]:
    """The ImageNet weights of ``name`` from the hub cache, mapped to our keys."""
    if name in TORCHVISION_UNMAPPED:
        raise TransferError(f"torchvision weights '{name}' cannot initialise this project's "
                            f"model: {TORCHVISION_UNMAPPED[name]}")
    if name not in TORCHVISION_WEIGHTS:
        raise TransferError(f"unknown torchvision weights '{name}' (mapped: "
                            f"{', '.join(TORCHVISION_WEIGHTS)})")
    path = torchvision_cache_file(name)
    if not path.is_file():
        file = TORCHVISION_WEIGHTS[name][1]
        raise TransferError(f"torchvision weights '{name}' are not cached and cannot be "
                            f"downloaded offline: place {file} (from https://download.pytorch"
                            f".org/models/{file}) in {path.parent}/")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return map_torchvision_resnet(state)


def map_torchvision_resnet(tv: Mapping[str, torch.Tensor],
                           eps: float = 1e-5) -> dict[str, torch.Tensor]:
    """Map torchvision ResNet keys -> :class:`models.resnet.ResNet` keys (exact in eval mode).

    ``conv1/bn1`` -> the stem ``net.0.{0,1}``; ``layerI.J`` -> ``net.b{I+1}.J`` (``conv1``,
    ``bn1``, ``conv2``, ``bn2``); ``fc`` -> ``net.last.2``. torchvision's convolutions have no
    bias (ours get zeros), and its ``downsample`` (1x1 conv + BN) is folded into our biased
    ``conv3``: ``w * g / sqrt(v + eps)``, ``b - m * g / sqrt(v + eps)``.
    """
    out: dict[str, torch.Tensor] = {}

    def conv(src: str, dst: str) -> None:
        w = tv[f"{src}.weight"]
        out[f"{dst}.weight"] = w
        out[f"{dst}.bias"] = torch.zeros(w.shape[0], dtype=w.dtype)

    def bn(src: str, dst: str) -> None:
        for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            if f"{src}.{k}" in tv:
                out[f"{dst}.{k}"] = tv[f"{src}.{k}"]
        if f"{src}.running_mean" in tv and f"{src}.num_batches_tracked" not in tv:
            # files saved before torch 0.4.1 (torchvision's ResNet-18/34 weights) lack it;
            # torch's own BatchNorm loader counts such a layer's batches from 0 as well
            out[f"{dst}.num_batches_tracked"] = torch.tensor(0)

    conv("conv1", "net.0.0")
    bn("bn1", "net.0.1")
    blocks = sorted({tuple(k.split(".")[:2]) for k in tv if k.startswith("layer")})
    for layer, j in blocks:
        src, dst = f"{layer}.{j}", f"net.b{int(layer[5:]) + 1}.{j}"
        for k in (1, 2):
            conv(f"{src}.conv{k}", f"{dst}.conv{k}")
            bn(f"{src}.bn{k}", f"{dst}.bn{k}")
        if f"{src}.downsample.0.weight" in tv:
            w = tv[f"{src}.downsample.0.weight"]
            g, b = tv[f"{src}.downsample.1.weight"], tv[f"{src}.downsample.1.bias"]
            m, v = tv[f"{src}.downsample.1.running_mean"], tv[f"{src}.downsample.1.running_var"]
            scale = g / torch.sqrt(v + eps)
            out[f"{dst}.conv3.weight"] = w * scale[:, None, None, None]  # per output channel
            out[f"{dst}.conv3.bias"] = b - m * scale
    out["net.last.2.weight"], out["net.last.2.bias"] = tv["fc.weight"], tv["fc.bias"]
    return out


def apply_initial_weights(model: nn.Module, state: Mapping[str, torch.Tensor], source: str,
                          new_head: bool | None = None) -> dict[str, list[str]]:
    """Load ``state`` into ``model``; the head is new when its shape differs (or ``new_head``).

    Returns:
        ``{"loaded": [...], "new": [...]}`` tensor names.

    Raises:
        TransferError: a non-head tensor missing, extra, or of another shape.
    """
    head = head_prefix(model)
    own = model.state_dict()
    in_head = {k for k in own if _under(k.rsplit(".", 1)[0], head)}
    head_differs = any(k not in state or state[k].shape != own[k].shape for k in in_head)
    replace_head = head_differs if new_head is None else new_head
    loaded, new = {}, []
    for key, value in own.items():
        if key in in_head and replace_head:
            new.append(key)
            continue
        if key not in state:
            raise TransferError(f"--init-from {source} has no tensor '{key}' of this model "
                                "(another architecture?)")
        if state[key].shape != value.shape:
            what = "the head" if key in in_head else "not the head"
            raise TransferError(f"--init-from {source}: '{key}' has shape "
                                f"{tuple(state[key].shape)} there but {tuple(value.shape)} "
                                f"here, and it is {what} ('{head}')")
        loaded[key] = state[key]
    extra = sorted(k for k in state if k not in own and not _under(k.rsplit(".", 1)[0], head))
    if extra:
        raise TransferError(f"--init-from {source} holds {len(extra)} tensors this model lacks, "
                            f"e.g. '{extra[0]}' (another architecture?)")
    model.load_state_dict({**own, **loaded})
    return {"loaded": sorted(loaded), "new": new}


def recorded_names(value: Any) -> list[str] | None:
    """Class names as a source records them; ``None`` when it records none.

    An export of a model without names lists ``0, 1, ...`` (the integers, not names).
    """
    if not isinstance(value, (list, tuple)) or not value:
        return None
    if all(type(v) is int for v in value) and list(value) == list(range(len(value))):
        return None
    return [str(v) for v in value]


def head_choice(source_names: Sequence[str] | None, target_names: Sequence[str] | None,
                new_head: bool | None = None) -> tuple[bool, str]:
    """Whether the head is replaced, and why (for the ``init from`` line).

    Each row of a head scores one class: it is kept only for the same labels in the same
    order. Labels that cannot be compared (none recorded) get a new head too; ``new_head``
    True / False decides instead, whatever the labels.
    """
    src = list(source_names) if source_names else None
    dst = list(target_names) if target_names else None
    if src is None or dst is None:
        differ, why = None, (f"{'the source' if src is None else 'this data'} records no "
                             "class names, so the classes cannot be compared; --task-arg "
                             "new_head=false keeps the source's head")
    elif len(src) != len(dst):
        differ = why = f"the source has {len(src)} classes, this data {len(dst)}"
    elif src == dst:
        differ, why = None, f"the same {len(src)} classes in the same order"
    else:
        i = next(i for i, (a, b) in enumerate(zip(src, dst)) if a != b)
        what = "the same classes in another order" if sorted(src) == sorted(dst) else (
            "other classes")
        differ = why = f"{what}: class {i} is '{src[i]}' there, '{dst[i]}' here"
    if new_head is None:
        return not (src is not None and src == dst), why
    said = f"new_head={str(new_head).lower()}"
    if not new_head and differ:
        said += f", although {differ}"
    return new_head, said


def describe_init(report: Mapping[str, list[str]], source: str, why: str = "") -> str:
    """One line: how many tensors came from ``source``, which are new, and why (the head)."""
    new = report["new"]
    return (f"init from {source}: loaded {len(report['loaded'])} tensors; "
            + (f"new (head): {', '.join(new)}" + (f" ({why})" if why else "") if new
               else f"head loaded too ({why or 'same shape'})"))

