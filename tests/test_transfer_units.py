"""Unit properties of ``models/transfer.py`` (d2l §14.2, fine-tuning), in-process and fast:
the torchvision ResNet key mapping, initial weights and head replacement, freezing and frozen
batch-norm layers (learning-rate groups, the head choice, statistics: test_transfer_groups.py)."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from transfer_helpers import HEAD, TOP, Recording, tiny, trainable

from d2l_lightning.models.transfer import (
    TransferError,
    apply_initial_weights,
    freeze,
    frozen_norm_layers,
    head_prefix,
    map_torchvision_resnet,
    matches,
)

DOWNSAMPLED = ("layer2.0", "layer3.0", "layer4.0")
# ------------------------------------------------------------------ torchvision key mapping


@pytest.fixture(scope="module")
def tv_state() -> dict[str, torch.Tensor]:
    """torchvision's ResNet-18 (7 classes) with non-trivial batch-norm statistics."""
    tv_models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    tv = tv_models.resnet18(weights=None, num_classes=7)
    for m in tv.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(1e-5, 2e-5)  # as small as eps: eps counts
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
            m.num_batches_tracked.fill_(3)
    return tv.state_dict()


@pytest.fixture(scope="module")
def ours_shapes() -> dict[str, torch.Size]:
    from d2l_lightning.models import build_model

    return {k: v.shape for k, v in build_model("resnet18", num_classes=7,
                                              in_channels=3).state_dict().items()}


def ours_name(tv_key: str) -> str:
    """Our name of a torchvision tensor that is copied as it is (the rule, written out)."""
    if tv_key.startswith("fc."):
        return "net.last.2." + tv_key[3:]
    stem = {"conv1": "net.0.0", "bn1": "net.0.1"}
    module, _, leaf = tv_key.partition(".")
    if module in stem:
        return f"{stem[module]}.{leaf}"
    m = re.fullmatch(r"layer(\d)\.(\d)\.(conv[12]|bn[12])\.(\w+)", tv_key)
    assert m, tv_key
    return f"net.b{int(m[1]) + 1}.{m[2]}.{m[3]}.{m[4]}"


def test_transfer_torchvision_keys_map_one_to_one_onto_our_resnet18(tv_state,
                                                                    ours_shapes) -> None:
    """Every key of our ResNet-18 is made once with its shape; every torchvision tensor but
    the downsample's num_batches_tracked is read; plain tensors are copied as they are."""
    source = Recording(tv_state)
    out = map_torchvision_resnet(source)
    assert len(tv_state) == 122 and len(out) == len(ours_shapes) == 127
    assert set(out) == set(ours_shapes)
    assert {k: v.shape for k, v in out.items()} == ours_shapes
    assert sorted(set(tv_state) - source.read) == [
        f"{b}.downsample.1.num_batches_tracked" for b in DOWNSAMPLED]
    copied = [k for k in tv_state if ".downsample." not in k]
    assert len(copied) == 104
    for key in copied:
        assert out[ours_name(key)] is tv_state[key], key


def test_transfer_a_torchvision_file_without_batch_counts_loads(tv_state) -> None:
    """Files saved before torch 0.4.1 have no ``num_batches_tracked``: the 20 batch-norm
    layers of our ResNet-18 then start counting from 0, and the weights still load."""
    from d2l_lightning.models import build_model

    old = {k: v for k, v in tv_state.items() if not k.endswith("num_batches_tracked")}
    assert len(tv_state) - len(old) == 20
    out = map_torchvision_resnet(old)
    counts = {k: int(v) for k, v in out.items() if k.endswith("num_batches_tracked")}
    assert len(counts) == 17 and set(counts.values()) == {0}  # 3 downsample BNs are folded
    model = build_model("resnet18", num_classes=7, in_channels=3)
    assert not model.load_state_dict(out, strict=True).missing_keys


def test_transfer_torchvision_convolutions_get_zero_biases(tv_state) -> None:
    """torchvision's convolutions have no bias; ours (stem, conv1/conv2 of 8 blocks) get 0."""
    out = map_torchvision_resnet(tv_state)
    biases = ["net.0.0.bias"] + [f"net.b{i}.{j}.conv{k}.bias" for i in range(2, 6)
                                 for j in range(2) for k in (1, 2)]
    assert len(biases) == 17
    for key in biases:
        weight = out[key.replace(".bias", ".weight")]
        assert out[key].dtype == torch.float32 and out[key].shape == (weight.shape[0],), key
        assert torch.equal(out[key], torch.zeros(weight.shape[0])), key
    double = map_torchvision_resnet({k: v.double() if v.is_floating_point() else v
                                     for k, v in tv_state.items()})
    assert {double[k].dtype for k in biases} == {torch.float64}  # the source's dtype


@pytest.mark.parametrize("block", DOWNSAMPLED)
def test_transfer_downsample_batch_norm_folds_into_conv3(tv_state, block) -> None:
    """conv3 = BN(1x1 conv) in eval mode: ``w * g / sqrt(v + 1e-5)``, ``b - m * g / sqrt(...)``.
    """
    out = map_torchvision_resnet(tv_state)
    ours = f"net.b{int(block[5]) + 1}.0.conv3"
    w = tv_state[f"{block}.downsample.0.weight"].double()
    g, b, m, v = (tv_state[f"{block}.downsample.1.{k}"].double()
                  for k in ("weight", "bias", "running_mean", "running_var"))
    scale = g / torch.sqrt(v + 1e-5)
    torch.testing.assert_close(out[f"{ours}.weight"].double(), w * scale.view(-1, 1, 1, 1),
                               rtol=1e-6, atol=0)
    torch.testing.assert_close(out[f"{ours}.bias"].double(), b - m * scale, rtol=1e-6, atol=1e-7)
    bn = nn.BatchNorm2d(len(g)).double().eval()  # torchvision's two modules, in float64
    bn.load_state_dict({k: tv_state[f"{block}.downsample.1.{k}"] for k in bn.state_dict()})
    x = torch.randn(1, w.shape[1], 4, 4, dtype=torch.float64)
    with torch.no_grad():
        want = bn(nn.functional.conv2d(x, w))
        got = nn.functional.conv2d(x, out[f"{ours}.weight"].double(),
                                   out[f"{ours}.bias"].double())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------ initial weights, the head


def test_transfer_same_shapes_load_every_tensor_bit_exactly() -> None:
    src, dst = tiny(seed=1), tiny(seed=2)
    report = apply_initial_weights(dst, src.state_dict(), "src")
    assert report == {"loaded": sorted(src.state_dict()), "new": []}
    assert len(report["loaded"]) == 9
    for key, value in dst.state_dict().items():
        assert torch.equal(value, src.state_dict()[key]), key


@pytest.mark.parametrize("src_classes, new_head, replaced", [
    (5, None, True), (3, None, False), (3, True, True), (3, False, False), (None, None, True),
], ids=["other-classes", "same-classes", "new_head=true", "new_head=false",
        "source-without-head"])
def test_transfer_head_is_new_exactly_when_it_differs_or_is_asked(
        src_classes, new_head, replaced) -> None:
    """A new head keeps this model's initial tensors; every other tensor is the source's."""
    src, dst = tiny(src_classes or 3, seed=1), tiny(3, seed=2)
    state = src.state_dict()
    if src_classes is None:
        state = {k: v for k, v in state.items() if not k.startswith(HEAD + ".")}
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    report = apply_initial_weights(dst, state, "src", new_head)
    new = [f"{HEAD}.weight", f"{HEAD}.bias"] if replaced else []
    assert report == {"new": new, "loaded": sorted(k for k in before if k not in new)}
    for key, value in dst.state_dict().items():
        assert torch.equal(value, before[key] if key in new else state[key]), key


@pytest.mark.parametrize("change, message", [
    ("head", "--init-from src: 'classifier.1.weight' has shape (5, 2) there but (3, 2) here, "
             "and it is the head ('classifier.1')"),
    ("conv", "--init-from src: 'features.weight' has shape (2, 3, 3, 3) there but (2, 1, 3, 3) "
             "here, and it is not the head ('classifier.1')"),
    ("missing", "--init-from src has no tensor 'features2.running_mean' of this model (another "
                "architecture?)"),
    ("extra", "--init-from src holds 3 tensors this model lacks, e.g. 'aa.bias' (another "
              "architecture?)"),
])
def test_transfer_tensors_that_do_not_fit_are_refused_and_nothing_loads(change,
                                                                         message) -> None:
    state = tiny(5 if change == "head" else 3, seed=1).state_dict()
    if change == "conv":
        state["features.weight"] = torch.zeros(2, 3, 3, 3)
    if change == "missing":
        del state["features2.running_mean"]
    if change == "extra":  # a key named as the head module itself is not under the head
        state.update({"zz.weight": torch.zeros(1), "aa.bias": torch.zeros(1),
                      HEAD: torch.zeros(1)})
    dst = tiny(seed=2)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(TransferError) as e:
        apply_initial_weights(dst, state, "src", None if change != "head" else False)
    assert str(e.value) == message
    assert all(torch.equal(v, before[k]) for k, v in dst.state_dict().items())


def test_transfer_extra_tensors_under_the_head_are_ignored() -> None:
    """A source's head may hold tensors ours lacks (the head is new or checked anyway)."""
    state = tiny(5, seed=1).state_dict()
    state.update({f"{HEAD}.extra": torch.zeros(1), f"{HEAD}.sub.weight": torch.zeros(1)})
    report = apply_initial_weights(tiny(seed=2), state, "src")
    assert report["new"] == [f"{HEAD}.weight", f"{HEAD}.bias"] and len(report["loaded"]) == 7


@pytest.mark.parametrize("model, head", [
    (tiny(), HEAD),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 10, 1), nn.Flatten()), "2"),
    (nn.Sequential(nn.Linear(4, 4), nn.Conv2d(1, 2, 1)), "1"),
])
def test_transfer_head_is_the_last_linear_or_convolution(model, head) -> None:
    assert head_prefix(model) == head


def test_transfer_a_model_without_linear_or_convolution_has_no_head() -> None:
    with pytest.raises(TransferError) as e:
        head_prefix(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(2)))
    assert str(e.value) == "Sequential has no linear or convolutional head"


# ------------------------------------------------------------------ prefixes and freezing


@pytest.mark.parametrize("name, prefix, expected", [
    ("features.weight", "features", True),
    ("features2.weight", "features", False),  # a boundary between names, not a text prefix
    ("features", "features", True),
    ("features.sub.weight", "features", True),
    ("features.weight", "features.weight", True),
    ("features.weight", "features.w", False),
    ("classifier.1.weight", "backbone", False),
    ("classifier.10.weight", "backbone", True),
    ("features.weight", "backbone", True),
    ("classifier.1.weight", "head", True),
    ("classifier.1", "head", True),
    ("classifier.10.weight", "head", False),
    ("features.weight", "head", False),
    ("classifier.1.weight", "classifier", True),
])
def test_transfer_prefix_matches_whole_module_names(name, prefix, expected) -> None:
    assert matches(name, prefix, HEAD) is expected


@pytest.mark.parametrize("prefixes, frozen", [
    ([], []),
    (["features"], ["features.bias", "features.weight"]),
    (["features", "features2"], ["features.bias", "features.weight", "features2.bias",
                                 "features2.weight"]),
    (["backbone", "features"], ["features.bias", "features.weight", "features2.bias",
                                "features2.weight"]),
    (["head"], [f"{HEAD}.bias", f"{HEAD}.weight"]),
    (["classifier.1.bias"], [f"{HEAD}.bias"]),
])
def test_transfer_freeze_sets_requires_grad_false_exactly_under_the_prefixes(prefixes,
                                                                            frozen) -> None:
    model = tiny()
    assert freeze(model, prefixes) == frozen
    assert sorted(n for n, p in model.named_parameters() if not p.requires_grad) == frozen


@pytest.mark.parametrize("prefixes, message", [
    (["backbone", "head"], "--freeze backbone head freezes every parameter of Sequential, "
                           "which leaves nothing to train; leave at least one module unfrozen "
                           "(e.g. --freeze backbone trains the head)"),
    (["features", "features3"], f"--freeze prefix 'features3' matches no parameter of "
                                f"Sequential (use 'backbone', 'head' or a module name: {TOP})"),
])
def test_transfer_bad_freeze_is_refused_before_freezing_anything(prefixes, message) -> None:
    model = tiny()
    with pytest.raises(TransferError) as e:
        freeze(model, prefixes)
    assert str(e.value) == message
    assert len(trainable(model)) == 6


def test_transfer_frozen_batch_norm_layers_are_those_with_every_parameter_frozen() -> None:
    """Only a BN layer whose weight and bias are both frozen; not one without parameters."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(3), nn.BatchNorm1d(3), nn.BatchNorm1d(3),
                          nn.BatchNorm1d(3, affine=False), nn.Linear(3, 2))
    freeze(model, ["0", "1.weight"])
    assert frozen_norm_layers(model) == [model[0]]
    model.train()
    for m in frozen_norm_layers(model):  # what TaskModule.train does
        m.eval()
    before = [model[i].running_mean.clone() for i in range(4)]
    model(torch.randn(8, 3) + 5)
    moved = [not torch.equal(model[i].running_mean, before[i]) for i in range(4)]
    assert moved == [False, True, True, True]
