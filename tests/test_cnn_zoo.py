"""The modern CNN zoo (d2l ch. 8) and the attention classifiers (d2l §11.7-11.8).

Every new model must memorise a small fixed batch; the attention classifiers must attend within
an image (over a token sequence longer than one), never across the images of a batch.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from d2l_lightning.models import build_model, get_spec, load_exported, model_names
from d2l_lightning.models.alexnet import alexnet_feature_side
from d2l_lightning.models.attention import MultiHeadAttention

CNN_ZOO = ["alexnet", "vgg11", "vgg11_small", "nin", "googlenet", "resnet18", "resnet34",
           "densenet"]
ATTENTION = ["row_transformer", "vit"]
NEW_MODELS = CNN_ZOO + ATTENTION

# name -> (images, Adam lr, max steps, builder overrides). AlexNet and VGG get 256-wide dense
# layers here (their conv stacks are the book's) to keep the default suite fast; the book's
# 4096-wide heads are overfit in the slow test below. NiN is checked separately (see there).
OVERFIT = {
    "alexnet": (16, 3e-4, 40, {"num_hiddens": 256}),
    "vgg11": (16, 1e-4, 40, {"num_hiddens": 256}),
    "vgg11_small": (16, 3e-4, 50, {"num_hiddens": 256}),
    "googlenet": (16, 3e-4, 60, {}),
    "resnet18": (16, 1e-3, 30, {}),
    "resnet34": (16, 1e-3, 30, {}),
    "densenet": (16, 1e-3, 30, {}),
    "row_transformer": (16, 1e-3, 60, {}),
    "vit": (16, 1e-3, 60, {}),
}


def smoke_size(name: str) -> int:
    spec = get_spec(name)
    return spec.smoke_size or spec.recipe("d2l").resize or 28


def fixed_batch(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images with fixed random labels: a random smooth template per class plus noise.

    Pure white noise is nearly indistinguishable after the deep pooling stacks of NiN and
    GoogLeNet at initialisation; per-class templates keep the task about fitting, not luck.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    templates = F.interpolate(torch.randn(10, 1, 6, 6, generator=g), size=(size, size),
                              mode="bilinear", align_corners=False)
    x = 2 * templates[y] + 0.5 * torch.randn(n, 1, size, size, generator=g)
    return x, y


def train_mode_without_dropout(model: nn.Module) -> nn.Module:
    """Batch statistics for normalisation, but deterministic: dropout switched off."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    return model


def overfit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float,
            max_steps: int) -> tuple[float, int]:
    """Adam on one batch until every label is predicted; returns (accuracy, steps)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    acc, steps = 0.0, 0
    while acc < 1.0 and steps < max_steps:
        train_mode_without_dropout(model)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        with torch.no_grad():
            acc = (model(x).argmax(dim=1) == y).float().mean().item()
    return acc, steps


def test_every_new_model_is_registered_and_covered() -> None:
    names = model_names("image_classification")
    assert set(NEW_MODELS) <= set(names)
    assert set(OVERFIT) | {"nin"} == set(NEW_MODELS)
    for name in CNN_ZOO:
        assert get_spec(name).data == "fashion_mnist"
    for name in ATTENTION:
        assert get_spec(name).data == "mnist"


@pytest.mark.parametrize("name", list(OVERFIT))
def test_overfits_a_small_fixed_batch(name: str) -> None:
    n, lr, max_steps, overrides = OVERFIT[name]
    torch.manual_seed(0)
    size = smoke_size(name)
    model = build_model(name, num_classes=10, in_channels=1, image_size=size, **overrides)
    x, y = fixed_batch(n, size)
    acc, steps = overfit(model, x, y, lr, max_steps)
    assert acc == 1.0, f"{name} reached train accuracy {acc:.3f} after {steps} steps"


def test_nin_learns_but_its_relu_logits_limit_memorisation() -> None:
    """The book's NiN ends in ReLU -> global average pooling, so its logits are >= 0.

    A class whose last ReLU is off for every image gets no gradient and can never win the argmax;
    at initialisation (Xavier weights, default biases) about half the classes are off for every
    input, so random labels are not reliably memorised in a test-sized budget. We check instead
    that the loss falls fast and that the logits are non-negative, as in the book.
    """
    torch.manual_seed(0)
    model = build_model("nin", num_classes=10, in_channels=1, image_size=smoke_size("nin"))
    x, y = fixed_batch(8, smoke_size("nin"))
    with torch.no_grad():
        first = F.cross_entropy(model.eval()(x), y).item()
    acc, _ = overfit(model, x, y, lr=1e-3, max_steps=40)
    with torch.no_grad():
        out = train_mode_without_dropout(model)(x)
    assert F.cross_entropy(out, y).item() < 0.75 * first
    assert acc >= 0.25  # twice chance on 8 images
    assert (out >= 0).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["alexnet", "vgg11_small", "vgg11"])
def test_book_width_dense_heads_overfit(name: str) -> None:
    torch.manual_seed(0)
    size = smoke_size(name)
    model = build_model(name, num_classes=10, in_channels=1, image_size=size)
    x, y = fixed_batch(16, size)
    acc, steps = overfit(model, x, y, lr=1e-4, max_steps=60)
    assert acc == 1.0, f"{name} reached train accuracy {acc:.3f} after {steps} steps"


# --- shapes at the recipe resolution, on the meta device (no memory, no compute) -------------


@pytest.mark.parametrize("name", NEW_MODELS)
def test_recipe_resolution_gives_logits(name: str) -> None:
    size = get_spec(name).recipe("d2l").resize or 28
    with torch.device("meta"):
        model = build_model(name, num_classes=10, in_channels=1, image_size=size)
        out = model.eval()(torch.empty(3, 1, size, size))
    assert out.shape == (3, 10)


def test_book_parameter_counts_at_224() -> None:
    """The computed flatten sizes reproduce the book's layers (6400 and 25088 inputs)."""
    assert alexnet_feature_side(224) == 5
    with torch.device("meta"):
        alex = build_model("alexnet", image_size=224)
        vgg = build_model("vgg11", image_size=224)
        small = build_model("vgg11_small", image_size=224)
    assert alex.classifier[1].in_features == 256 * 5 * 5
    assert vgg.classifier[1].in_features == 512 * 7 * 7
    assert small.classifier[1].in_features == 128 * 7 * 7
    assert sum(p.numel() for p in alex.parameters()) == 46_764_746
    assert sum(p.numel() for p in vgg.parameters()) == 128_806_154


@pytest.mark.parametrize("name,too_small", [("alexnet", 64), ("nin", 66), ("vgg11", 31)])
def test_too_small_images_fail_clearly(name: str, too_small: int) -> None:
    with pytest.raises(ValueError, match="at least"):
        build_model(name, image_size=too_small)


def test_resnet18_at_96_pixels_gives_two_by_ten() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10, in_channels=1, image_size=96)
    x = torch.randn(2, 1, 96, 96)
    assert model.train()(x).shape == (2, 10)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 10)


def test_resnet18_modern_recipe() -> None:
    r = get_spec("resnet18").recipe("modern")
    assert r.optimizer == "sgd" and r.momentum == 0.9 and r.scheduler == "cosine"
    assert r.weight_decay > 0 and r.label_smoothing > 0 and r.resize == 96


# --- attention classifiers: within an image, over a real sequence ----------------------------


def attention_inputs(model: nn.Module, x: torch.Tensor) -> list[torch.Size]:
    """Shapes of the query fed to every ``MultiHeadAttention`` during one forward pass."""
    shapes: list[torch.Size] = []
    hooks = [m.register_forward_pre_hook(lambda _m, args, kwargs: shapes.append(args[0].shape),
                                         with_kwargs=True)
             for m in model.modules() if isinstance(m, MultiHeadAttention)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return shapes


@pytest.mark.parametrize("name", ATTENTION)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_attention_runs_over_tokens_of_one_image(name: str, mode: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, image_size=28)
    model.train(mode == "train")
    shapes = attention_inputs(model, torch.randn(5, 1, 28, 28))
    tokens = {"row_transformer": 28, "vit": 1 + (28 // 4) ** 2}[name]
    assert shapes, f"{name} has no MultiHeadAttention"
    for shape in shapes:  # batch-first (B, T, D): batch 5, a sequence of T > 1 tokens
        assert shape[:2] == (5, tokens)
        assert tokens > 1


@pytest.mark.parametrize("name", ATTENTION)
def test_output_of_one_image_ignores_the_rest_of_the_batch(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, image_size=28).eval()
    x = torch.randn(6, 1, 28, 28)
    other = x.clone()
    other[1:] = torch.randn(5, 1, 28, 28) * 3
    perm = torch.randperm(6)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(model(other)[0], out[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(x[:1])[0], out[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(x[perm]), out[perm], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ATTENTION)
def test_tokens_mix_within_an_image(name: str) -> None:
    """Changing the last row/patch changes the *first* token's representation: attention."""
    torch.manual_seed(0)
    model = build_model(name, image_size=28).eval()
    x = torch.randn(2, 1, 28, 28)
    changed = x.clone()
    changed[:, :, -4:, -4:] += 3.0  # last row (row Transformer) / last 4x4 patch (ViT)
    first = {"row_transformer": 0, "vit": 1}[name]  # vit: index 0 is <cls>, 1 the first patch
    with torch.no_grad():
        a, b = model.encode(x), model.encode(changed)
    assert a.shape[1] > 1
    assert not torch.allclose(a[:, first], b[:, first], atol=1e-4)
    untouched = x.clone()
    untouched[1] += 3.0  # a change to image 1 leaves image 0's tokens alone
    with torch.no_grad():
        torch.testing.assert_close(model.encode(untouched)[0], a[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, use_bias", [("row_transformer", False), ("vit", False),
                                            ("vit", True)])
def test_exports_and_checkpoints_from_before_the_shared_blocks_still_load(
        name, use_bias, tmp_path) -> None:
    """An export / checkpoint written by the old nn.MultiheadAttention blocks gives the same
    logits with today's blocks (weights mapped by ``upgrade_state_dict``)."""
    import legacy_attention_classifiers as legacy

    from d2l_lightning.lit_models import ImageClassificationTask, load_checkpoint
    from d2l_lightning.models import save_export

    torch.manual_seed(0)
    small = {"num_hiddens": 16, "num_heads": 2, "num_blks": 2}
    if name == "vit":
        kwargs = {**small, "patch_size": 7, "mlp_num_hiddens": 32, "use_bias": use_bias}
        old_block = lambda: legacy.ViTBlock(16, 32, 2, 0.1, use_bias)  # noqa: E731
    else:
        kwargs = {**small, "ffn_num_hiddens": 32}
        old_block = lambda: legacy.TransformerEncoderBlock(16, 32, 2, 0.1)  # noqa: E731
    old = build_model(name, num_classes=10, in_channels=1, image_size=28, **kwargs)
    old.blks = nn.Sequential(old_block(), old_block())  # the blocks of before, old names
    old.eval()
    assert any(k.endswith("attention.in_proj_weight") for k in old.state_dict())
    config = {"arch": name, "task": "image_classification",
              "model_kwargs": {"num_classes": 10, "in_channels": 1, "image_size": 28, **kwargs}}
    save_export(old, config, tmp_path / "export")
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        expected = old(x)
        new, _ = load_exported(tmp_path / "export")
        torch.testing.assert_close(new(x), expected, atol=1e-5, rtol=1e-5)
    module = ImageClassificationTask(name, model_kwargs=kwargs)
    torch.save({"hyper_parameters": dict(module.hparams),
                "state_dict": {f"model.{k}": v for k, v in old.state_dict().items()}},
               tmp_path / "old.ckpt")
    with torch.no_grad():
        restored = load_checkpoint(tmp_path / "old.ckpt").model.eval()
        torch.testing.assert_close(restored(x), expected, atol=1e-5, rtol=1e-5)
