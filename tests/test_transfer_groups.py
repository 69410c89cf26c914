"""Unit properties of ``models/transfer.py`` (d2l §14.2), in-process and fast: per-prefix
learning rates, the head choice, a read source's immutability and the ImageNet statistics."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from transfer_helpers import HEAD, TOP, tiny

from d2l_lightning.models.transfer import TransferError, freeze, head_choice, param_groups

# ------------------------------------------------------------------ learning-rate groups


def groups_by_name(model: nn.Module, lr: float, lr_mult: Any) -> list[tuple]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [(g["lr"], g["lr_mult"], [names[id(p)] for p in g["params"]])
            for g in param_groups(model, lr, lr_mult)]


@pytest.mark.parametrize("lr_mult", [None, {}])
def test_transfer_without_lr_mult_one_group_holds_the_trainable_parameters(lr_mult) -> None:
    model = tiny()
    freeze(model, ["features"])
    assert groups_by_name(model, 0.5, lr_mult) == [
        (0.5, 1.0, ["features2.weight", "features2.bias", f"{HEAD}.weight", f"{HEAD}.bias"])]


@pytest.mark.parametrize("lr_mult, expected", [
    ({"backbone": 0.1, "features": 0.0}, [
        (0.0, 0.0, ["features.weight", "features.bias"]),
        (0.05, 0.1, ["features2.weight", "features2.bias"]),
        (0.5, 1.0, [f"{HEAD}.weight", f"{HEAD}.bias"])]),
    ({"head": 2.0, "classifier": 3.0}, [  # an explicit module outranks 'head'
        (0.5, 1.0, ["features.weight", "features.bias", "features2.weight", "features2.bias"]),
        (1.5, 3.0, [f"{HEAD}.weight", f"{HEAD}.bias"])]),
    ({"features": 0.2, "features.weight": 0.4, "features2": 0.2}, [  # the longest prefix
        (0.2, 0.4, ["features.weight"]),
        (0.1, 0.2, ["features.bias", "features2.weight", "features2.bias"]),
        (0.5, 1.0, [f"{HEAD}.weight", f"{HEAD}.bias"])]),
    ({"head": 4}, [
        (0.5, 1.0, ["features.weight", "features.bias", "features2.weight", "features2.bias"]),
        (2.0, 4.0, [f"{HEAD}.weight", f"{HEAD}.bias"])]),
])
def test_transfer_each_parameter_gets_lr_times_the_factor_of_its_longest_prefix(
        lr_mult, expected) -> None:
    got = groups_by_name(tiny(), 0.5, lr_mult)
    assert [(pytest.approx(lr, abs=1e-12), f, n) for lr, f, n in expected] == got
    assert all(type(f) is float for _, f, _ in got)


@pytest.mark.parametrize("order", [["backbone", "0"], ["0", "backbone"]])
def test_transfer_a_one_letter_module_outranks_backbone(order) -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 3))
    factors = {"backbone": 0.1, "0": 0.5}
    assert groups_by_name(model, 1.0, {k: factors[k] for k in order}) == [
        (0.5, 0.5, ["0.weight", "0.bias"]), (1.0, 1.0, ["2.weight", "2.bias"])]


def test_transfer_frozen_parameters_are_in_no_group_and_the_others_in_exactly_one() -> None:
    model = tiny()
    freeze(model, ["features"])
    groups = param_groups(model, 0.5, {"backbone": 0.1, "features": 0.0})
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == 4
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    assert [g["lr_mult"] for g in groups] == [0.1, 1.0]


@pytest.mark.parametrize("lr_mult, message", [
    ({"features": -0.1}, "--lr-mult features=-0.1: the factor must be >= 0"),
    ({"features3": 0.1}, f"--lr-mult prefix 'features3' matches no parameter of Sequential "
                         f"(use 'backbone', 'head' or a module name: {TOP})"),
])
def test_transfer_bad_lr_mult_is_refused(lr_mult, message) -> None:
    with pytest.raises(TransferError) as e:
        param_groups(tiny(), 0.5, lr_mult)
    assert str(e.value) == message


# ------------------------------------------------------------------ the head choice


NO_NAMES = ("records no class names, so the classes cannot be compared; --task-arg "
            "new_head=false keeps the source's head")


@pytest.mark.parametrize("src, dst, new_head, expected", [
    (None, ["a", "b"], None, (True, f"the source {NO_NAMES}")),
    (["a", "b"], [], None, (True, f"this data {NO_NAMES}")),
    (["a", "b"], ["a", "b", "c"], None, (True, "the source has 2 classes, this data 3")),
    (("a", "b"), ["a", "b"], None, (False, "the same 2 classes in the same order")),
    (["a", "b"], ["b", "a"], None,
     (True, "the same classes in another order: class 0 is 'a' there, 'b' here")),
    (["a", "b", "c"], ["a", "b", "d"], None,
     (True, "other classes: class 2 is 'c' there, 'd' here")),
    (["a", "b"], ["a", "b"], True, (True, "new_head=true")),
    (["a", "b"], ["a", "c"], True, (True, "new_head=true")),
    (["a", "b"], ["a", "b"], False, (False, "new_head=false")),
    (None, ["a", "b"], False, (False, "new_head=false")),
    (["a", "b", "c"], ["a", "b", "d"], False,
     (False, "new_head=false, although other classes: class 2 is 'c' there, 'd' here")),
    (["a"], ["a", "b"], False, (False, "new_head=false, although the source has 1 classes, "
                                       "this data 2")),
])
def test_transfer_head_is_kept_only_for_the_same_labels_in_order(src, dst, new_head,
                                                                 expected) -> None:
    assert head_choice(src, dst, new_head) == expected


def test_transfer_a_read_source_cannot_be_changed() -> None:
    import dataclasses

    from d2l_lightning.models.transfer import Source

    source = Source({}, "mlp", ["a"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        source.arch = "lenet"  # type: ignore[misc]


# ------------------------------------------------------------------ ImageNet statistics


def test_transfer_torchvision_source_normalises_with_imagenet_statistics() -> None:
    """Grey 0 and 255 become ``(0 - mean) / std`` and ``(1 - mean) / std`` per RGB channel."""
    from d2l_lightning.lit_models import ImageClassificationTask

    module = ImageClassificationTask("mlp", num_classes=2, in_channels=1, image_size=4,
                                     init_from="torchvision:resnet18",
                                     model_kwargs={"num_hiddens": 4})
    assert module.norm == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    pre = module.export_config()["preprocess"]
    assert pre["mean"] == [0.485, 0.456, 0.406] and pre["std"] == [0.229, 0.224, 0.225]
    grey = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 1, 4, 4)
    x, _ = module.on_after_batch_transfer((grey, torch.zeros(2)), 0)
    assert x.shape == (2, 3, 4, 4)
    torch.testing.assert_close(x[:, :, 0, 0], torch.tensor([
        [-2.1179039, -2.0357143, -1.8044444], [2.2489083, 2.4285714, 2.6400000]]),
        rtol=0, atol=1e-6)
