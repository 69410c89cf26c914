"""Fused optimizer steps (issue 16): SGD / Adam / AdamW take ``fused=True`` where torch can."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from d2l_lightning.lit_models import task_module
from d2l_lightning.lit_models.base import build_optimizer, can_fuse


def _module(optimizer: str, **kw):
    return task_module("image_classification")(arch="lenet", optimizer=optimizer, lr=0.1,
                                                momentum=0.9 if optimizer == "sgd" else 0.0,
                                                **kw)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_configure_optimizers_fuses_the_step_on_cpu_parameters(optimizer) -> None:
    opt = _module(optimizer).configure_optimizers()
    assert opt.defaults["fused"] is True


def test_only_floating_parameters_on_cpu_or_cuda_are_fused() -> None:
    w = nn.Parameter(torch.zeros(3))
    assert can_fuse([{"params": [w]}])
    assert not can_fuse([{"params": []}])  # nothing to train (e.g. all frozen)
    assert not can_fuse([{"params": [w, torch.zeros(2, device="meta")]}])
    assert not can_fuse([{"params": [torch.zeros(2, dtype=torch.long)]}])


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_a_fused_step_equals_the_default_step_and_takes_its_state(optimizer) -> None:
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(5, 4)), nn.Parameter(torch.randn(4))]
    copies = [nn.Parameter(p.detach().clone()) for p in params]
    plain = build_optimizer(params, optimizer, 0.1, 0.01, 0.9)
    fused = build_optimizer(copies, optimizer, 0.1, 0.01, 0.9, fused=True)
    for step in range(3):
        grads = [torch.randn_like(p) for p in params]
        for p, c, g in zip(params, copies, grads):
            p.grad, c.grad = g, g.clone()
        plain.step()
        if step == 0:  # a checkpoint of the unfused optimizer resumes in the fused one
            fused.load_state_dict(copy.deepcopy(plain.state_dict()))  # as from a file
            with torch.no_grad():
                for c, p in zip(copies, params):
                    c.copy_(p)
        else:
            fused.step()
    for p, c in zip(params, copies):
        torch.testing.assert_close(c, p, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_configure_optimizers_fuses_on_cuda() -> None:
    module = _module("adamw").cuda()
    assert module.configure_optimizers().defaults["fused"] is True
