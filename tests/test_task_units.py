"""The task LightningModules' hooks called directly, with a stand-in trainer (issue 24), 1 of 2:
optimizers, logging, the training sums (their reset, their cross-rank reduction, their resume)
and the random-number state a checkpoint keeps; every value is compared with an independent
computation on a tiny model (test_task_steps.py: each task's steps)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from task_helpers import Calls, attach, classifier, regression
from torch import nn

from d2l_lightning.compat import upgrade_state_dict
from d2l_lightning.lit_models import ImageClassificationTask, TaskModule
from d2l_lightning.lit_models.base import build_optimizer

# ------------------------------------------------------------------ optimizers


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                       ("adamw", torch.optim.AdamW)])
@pytest.mark.parametrize("fused", [True, None])
def test_build_optimizer_passes_every_setting(name: str, cls: type, fused: bool | None) -> None:
    opt = build_optimizer([nn.Parameter(torch.zeros(2))], name, 0.3, weight_decay=0.02,
                          momentum=0.7, fused=fused)
    assert type(opt) is cls
    assert (opt.defaults["lr"], opt.defaults["weight_decay"], opt.defaults["fused"]) == (
        0.3, 0.02, fused)
    if name == "sgd":
        assert opt.defaults["momentum"] == 0.7


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_build_optimizer_defaults_are_no_decay_no_momentum_torch_default_kernel(name) -> None:
    opt = build_optimizer([nn.Parameter(torch.zeros(2))], name, 0.3)
    assert (opt.defaults["weight_decay"], opt.defaults["fused"]) == (0.0, None)  # adamw: not 0.01
    assert opt.defaults.get("momentum", 0.0) == 0.0


def test_unknown_optimizer_is_one_sentence_naming_the_choices() -> None:
    with pytest.raises(ValueError) as e:
        build_optimizer([nn.Parameter(torch.zeros(2))], "rmsprop", 0.1)
    assert str(e.value) == "unknown optimizer 'rmsprop'; choose from: sgd, adam, adamw"


# ------------------------------------------------------------------ logging, building


@pytest.mark.parametrize("batch_size, sent", [(21, 21.0), (None, None)])
def test_log_sends_the_batch_size_as_a_float(monkeypatch, batch_size, sent) -> None:
    calls = Calls()
    monkeypatch.setattr(L.LightningModule, "log", calls)
    regression().log("val/loss", 1.5, True, batch_size=batch_size, on_epoch=True)
    (args, kwargs), = calls
    assert args == ("val/loss", 1.5, True)  # (a Calls is no descriptor: no self)
    assert kwargs == {"batch_size": sent, "on_epoch": True}
    assert type(kwargs["batch_size"]) is type(sent)  # a float count is not truncated by DDP


@pytest.mark.parametrize("model_kwargs, clash", [({"num_inputs": 3}, "num_inputs"),
                                                 ({"num_classes": 2, "in_channels": 3,
                                                   "dropout": 0.1}, "in_channels, num_classes")])
def test_model_options_that_come_from_the_data_are_refused(model_kwargs, clash) -> None:
    with pytest.raises(ValueError) as e:
        regression()._build("mlp", {"num_classes": 3, "in_channels": 1, "num_inputs": 2},
                            model_kwargs)
    assert str(e.value) == f"model option(s) {clash} come from the data and cannot be set"


@pytest.mark.parametrize("model_kwargs, merged", [(None, {"num_classes": 3, "image_size": 6}),
                                                  ({"num_hiddens": 5}, {
                                                      "num_classes": 3, "image_size": 6,
                                                      "num_hiddens": 5})])
def test_build_merges_the_data_sizes_with_the_model_options(model_kwargs, merged) -> None:
    module = regression()
    module._build("mlp", {"num_classes": 3, "image_size": 6}, model_kwargs)
    assert module.builder_kwargs == merged
    sizes = [p.shape for p in module.model.parameters()]
    assert sizes[0][1] == 36 and sizes[-1] == (3,)  # 6 x 6 inputs, 3 classes
    if model_kwargs:
        assert sizes[0][0] == 5
    assert module.export_config() == {"arch": "linear_regression", "task": "regression",
                                      "model_kwargs": merged}


def test_train_keeps_frozen_batch_norm_in_eval_and_returns_the_module() -> None:
    module = ImageClassificationTask("lenet_bn", num_classes=3, freeze=["backbone"])
    bns = [m for m in module.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert module.eval().train() is module and module.training and module.model.training
    assert bns and not any(m.training for m in bns)
    assert module.train(False) is module and not any(m.training for m in module.modules())


def test_a_module_without_a_model_switches_modes() -> None:
    module = TaskModule()
    assert not module.eval().training and module.train().training


# ------------------------------------------------------------------ training sums


@pytest.mark.parametrize("make, size", [(regression, 2), (classifier, 3)])
def test_each_epoch_starts_with_zero_float64_sums_that_the_views_fill(make, size) -> None:
    module = make()
    assert module._train_sums.tolist() == [0.0] * size
    module._train_sums += 7
    module.on_train_epoch_start()
    sums = module._train_sums
    assert sums.tolist() == [0.0] * size and sums.dtype == torch.float64
    for i, view in enumerate(module._train_sum_views):
        view.add_(i + 1)
    assert sums.tolist() == list(range(1, size + 1))


def test_the_sums_live_on_the_modules_device() -> None:
    module = regression()
    attach(module)
    module._device = torch.device("meta")  # a device other than the default one
    module.on_train_epoch_start()
    assert module._train_sums.device.type == "meta"
    module._resume_sums = {"epoch": 0, "sums": torch.ones(2), "world_size": 1}
    module.on_train_start()
    assert module._train_sums.device.type == "meta"
    assert module._train_sum_views[0].device.type == "meta"


def test_sums_on_mps_are_float32(monkeypatch) -> None:
    """MPS has no float64: there the sums are float32 (torch.zeros' device dropped here)."""
    zeros = torch.zeros
    monkeypatch.setattr(torch, "zeros", lambda *a, device=None, **kw: zeros(*a, **kw))
    module = regression()
    module._device = torch.device("mps")
    module.on_train_epoch_start()
    assert module._train_sums.dtype == torch.float32


def test_reduced_sums_are_the_strategys_sum_of_a_copy() -> None:
    module = regression()
    module._train_sums += torch.tensor([6.0, 3.0], dtype=torch.float64)
    reduce = Calls(result=torch.tensor([10.0, 4.0]))
    attach(module, strategy=SimpleNamespace(reduce=reduce))
    assert module._reduced_train_sums().tolist() == [10.0, 4.0]
    (sent,), kwargs = reduce[0]
    assert kwargs == {"reduce_op": "sum"} and sent.tolist() == [6.0, 3.0]
    sent.add_(1)  # an in-place all-reduce must not change this rank's own sums
    assert module._train_sums.tolist() == [6.0, 3.0]


# ------------------------------------------------------------------ checkpoints and resume


def test_a_checkpoint_keeps_the_rng_state_and_the_epochs_sums() -> None:
    module = regression()
    module._train_sums += torch.tensor([6.0, 3.0], dtype=torch.float64)
    attach(module, current_epoch=4, world_size=2)
    checkpoint: dict[str, Any] = {}
    module.on_save_checkpoint(checkpoint)
    assert torch.equal(checkpoint["rng_states"]["torch"], torch.get_rng_state())
    assert set(checkpoint["rng_states"]) == {"torch"}  # no CUDA here
    saved = checkpoint["train_sums"]
    assert (saved["epoch"], saved["world_size"], saved["sums"].tolist()) == (4, 2, [6.0, 3.0])


def test_a_checkpoint_without_a_trainer_keeps_no_sums() -> None:
    checkpoint: dict[str, Any] = {}
    regression().on_save_checkpoint(checkpoint)
    assert set(checkpoint) == {"rng_states"}


@pytest.mark.parametrize("initialized", [True, False])
def test_a_checkpoint_keeps_the_cuda_rng_states_once_cuda_is_used(monkeypatch,
                                                                  initialized) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: initialized)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: ["cuda0"])
    checkpoint: dict[str, Any] = {}
    regression().on_save_checkpoint(checkpoint)
    assert checkpoint["rng_states"].get("cuda") == (["cuda0"] if initialized else None)


def test_loading_a_checkpoint_upgrades_its_weights_and_keeps_rng_and_sums() -> None:
    old = {"b.attention.in_proj_weight": torch.arange(12.0).reshape(6, 2)}
    checkpoint = {"state_dict": dict(old), "rng_states": {"torch": "rng"},
                  "train_sums": {"sums": "sums"}}
    module = regression()
    module.on_load_checkpoint(checkpoint)
    assert checkpoint["state_dict"].keys() == upgrade_state_dict(old).keys() == {
        f"b.attention.W_{q}.weight" for q in "qkv"}
    assert module._resume_rng == {"torch": "rng"} and module._resume_sums == {"sums": "sums"}
    bare = regression()
    bare.on_load_checkpoint({"state_dict": {}})
    assert "_resume_rng" not in vars(bare) and "_resume_sums" not in vars(bare)


def test_train_start_loads_the_loader_position() -> None:
    module, load = regression(), Calls()
    attach(module, fit_loop=SimpleNamespace(_load_combined_loader_states=load))
    module.on_train_start()
    assert load == [((), {})]
    attach(module)  # a Lightning without the private method: nothing to load
    module.on_train_start()


def test_train_start_restores_the_saved_rng_state_once() -> None:
    module = regression()
    attach(module)
    module._resume_rng = {"torch": torch.get_rng_state()}
    expected = torch.rand(3)
    torch.manual_seed(123)
    module.on_train_start()
    assert torch.equal(torch.rand(3), expected)
    torch.manual_seed(5)
    fresh = torch.rand(3)
    torch.manual_seed(5)
    module.on_train_start()  # a second fit of the same module: its own random numbers
    assert torch.equal(torch.rand(3), fresh)


@pytest.mark.parametrize("saved, available, restored", [
    ({"cuda": ["c0"]}, True, [["c0"]]), ({"cuda": ["c0"]}, False, []), ({}, True, [])])
def test_train_start_restores_the_cuda_rng_states_where_cuda_is(monkeypatch, saved, available,
                                                                restored) -> None:
    calls = Calls()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", calls)
    module = regression()
    attach(module)
    module._resume_rng = {"torch": torch.get_rng_state(), **saved}
    module.on_train_start()
    assert [args[0] for args, _ in calls] == restored


def test_a_mid_epoch_resume_continues_the_epochs_sums() -> None:
    module = regression()
    attach(module)
    saved = torch.tensor([6.0, 3.0])  # float32 in the file
    module._resume_sums = {"epoch": 0, "sums": saved, "world_size": 1}
    module.on_train_start()
    sums = module._train_sums
    assert sums.tolist() == [6.0, 3.0] and sums.dtype == torch.float64
    module._train_sum_views[1].add_(2)
    assert sums.tolist() == [6.0, 5.0] and saved.tolist() == [6.0, 3.0]
    module.on_train_epoch_start()
    module.on_train_start()  # restored once: a later fit starts from zero
    assert module._train_sums.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("saved_world, world, size", [(2, 2, 2), (2, 1, 2), (1, 2, 2),
                                                      (1, 1, 3)])
def test_sums_of_another_world_size_or_task_are_not_restored(saved_world, world, size) -> None:
    module = regression()
    attach(module, world_size=world)
    module._resume_sums = {"epoch": 0, "sums": torch.ones(size), "world_size": saved_world}
    module.on_train_start()
    assert module._train_sums.tolist() == [0.0, 0.0]
