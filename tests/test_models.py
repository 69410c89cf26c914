"""Every registered model: shapes, finite outputs, gradients everywhere, no Lightning in models/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from d2l_lightning import models
from d2l_lightning.models import build_model, get_spec, model_names

IMAGE_MODELS = model_names("image_classification")


def image_kwargs(name: str) -> dict:
    spec = get_spec(name)
    recipe = spec.recipe("d2l")
    size = spec.smoke_size or recipe.resize or 28
    return {"num_classes": 10, "in_channels": 1, "image_size": size, **recipe.model_kwargs}


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_image_model_shape_finite_and_every_parameter_learns(name: str) -> None:
    torch.manual_seed(0)
    kw = image_kwargs(name)
    model = build_model(name, **kw).train()
    x = torch.randn(4, 1, kw["image_size"], kw["image_size"])
    logits = model(x)
    assert logits.shape == (4, 10)
    assert torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.arange(4)).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}.{pname} gets no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}.{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}.{pname} has an all-zero gradient"


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_image_model_does_not_apply_softmax(name: str) -> None:
    """Logits, not probabilities: rows must not sum to one (the seed notes' double softmax)."""
    torch.manual_seed(0)
    kw = image_kwargs(name)
    model = build_model(name, **kw).eval()
    with torch.no_grad():
        out = model(torch.randn(8, 1, kw["image_size"], kw["image_size"]) * 3)
    assert not torch.allclose(out.sum(-1), torch.ones(8), atol=1e-3)


@pytest.mark.parametrize("name", model_names())
def test_every_model_has_a_usable_d2l_recipe(name: str) -> None:
    spec = get_spec(name)
    r = spec.recipe("d2l")
    assert r.lr > 0 and r.batch_size > 0 and r.max_epochs > 0
    assert re.fullmatch(r"\d+(\.\d+)*", spec.section), spec.section
    for recipe in spec.recipes.values():  # every recipe's model options build
        if spec.task == "image_classification":
            build_model(name, **{**image_kwargs(name), **recipe.model_kwargs})


def test_models_package_never_imports_lightning() -> None:
    pattern = re.compile(r"^\s*(import|from)\s+(lightning|pytorch_lightning|torchmetrics)\b", re.M)
    root = Path(models.__file__).parent
    offenders = [p.name for p in root.rglob("*.py") if pattern.search(p.read_text())]
    assert not offenders, f"models/ must stay plain PyTorch: {offenders}"


def test_no_lazy_layers_anywhere() -> None:
    for name in IMAGE_MODELS:
        model = build_model(name, **image_kwargs(name))
        lazy = [m for m in model.modules() if isinstance(m, torch.nn.modules.lazy.LazyModuleMixin)]
        assert not lazy, f"{name} uses lazy layers"


def test_registry_rejects_unknown_names_with_the_valid_list() -> None:
    with pytest.raises(KeyError, match="lenet"):
        get_spec("lenet7")


def test_list_table_has_every_model() -> None:
    table = models.format_table()
    for name in model_names():
        assert name in table


def test_every_model_and_datamodule_declares_its_interface() -> None:
    """Decoding, generation and train.py read declared attributes, not getattr probes."""
    from d2l_lightning.datamodules.base import DataModule
    from d2l_lightning.datamodules.registry import DATAMODULES
    from d2l_lightning.lit_models import TASK_MODULES

    for name in model_names():
        spec = get_spec(name)
        if spec.task in ("language_modeling", "sequence_encoding"):
            model = build_model(name, vocab_size=12)
            for attr in ("recurrent", "bidirectional", "max_len"):
                assert hasattr(model, attr), (name, attr)
        elif spec.task == "seq2seq":
            model = build_model(name, src_vocab_size=12, tgt_vocab_size=12)
            for attr in ("has_attention", "keep_attention", "step_attention", "encode",
                         "decode_step"):
                assert hasattr(model, attr), (name, attr)
        assert (spec.task in TASK_MODULES) != bool(spec.cannot_train), name
    for tasks in DATAMODULES.values():
        for task, cls in tasks.items():
            assert issubclass(cls, DataModule) and task in TASK_MODULES, cls
