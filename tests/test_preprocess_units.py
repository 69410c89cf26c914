"""Unit tests of models/preprocess.py: the batches a model sees, and the checks of an export's
``preprocess`` field. Every number is computed by hand from tiny tensors."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from d2l_lightning.models import build_model
from d2l_lightning.models import preprocess as pp


def test_limits_are_the_documented_numbers() -> None:
    assert pp.MAX_IMAGE_SIDE == 4096
    assert pp._LUMA == (0.299, 0.587, 0.114)


def test_uint8_pixels_are_scaled_to_one_then_normalised() -> None:
    images = torch.tensor([[[0, 51], [255, 102]]], dtype=torch.uint8)  # (B, H, W)
    x = pp.preprocess_images(images, mean=[0.2], std=[0.5])
    expected = (torch.tensor([[0, 0.2], [1.0, 0.4]]) - 0.2) / 0.5
    assert x.shape == (1, 1, 2, 2) and x.dtype == torch.float32
    torch.testing.assert_close(x[0, 0], expected)
    assert images[0, 1, 0] == 255  # the input is left as it was


def test_float_pixels_are_taken_as_already_scaled() -> None:
    x = pp.preprocess_images(torch.full((1, 3, 2, 2), 0.5), mean=[0.1, 0.2, 0.3],
                             std=[0.5, 0.5, 2.0])
    assert x[0, :, 0, 0].tolist() == pytest.approx([0.8, 0.6, 0.1])


def test_a_batch_of_its_own_size_is_not_resampled() -> None:
    images = torch.randint(0, 256, (2, 1, 5, 5), dtype=torch.uint8)
    x = pp.preprocess_images(images, [0.0], [1.0], resize=5)
    torch.testing.assert_close(x, images.float() / 255)


@pytest.mark.parametrize("side, size", [(8, 4), (4, 8)])
def test_resize_is_bilinear_and_antialiased_only_when_shrinking(side: int, size: int) -> None:
    images = torch.randint(0, 256, (2, 1, side, side), dtype=torch.uint8)
    x = pp.preprocess_images(images, [0.0], [1.0], resize=size)
    ref = F.interpolate(images.float() / 255, size=(size, size), mode="bilinear",
                        align_corners=False, antialias=size < side)
    assert x.shape == (2, 1, size, size)
    torch.testing.assert_close(x, ref)


def test_a_wide_batch_is_antialiased_by_its_width() -> None:
    images = torch.randint(0, 256, (1, 1, 4, 8), dtype=torch.uint8)
    ref = F.interpolate(images.float() / 255, size=(6, 6), mode="bilinear",
                        align_corners=False, antialias=True)
    torch.testing.assert_close(pp.preprocess_images(images, [0.0], [1.0], resize=6), ref)


def test_gray_images_are_repeated_for_a_three_channel_model() -> None:
    images = torch.randint(0, 256, (2, 1, 3, 3), dtype=torch.uint8)
    x = pp.preprocess_images(images, [0.0, 0.5, 0.0], [1.0, 1.0, 2.0], channels=3)
    assert x.shape == (2, 3, 3, 3) and x.is_contiguous()
    g = images[:, 0].float() / 255
    torch.testing.assert_close(x, torch.stack([g, g - 0.5, g / 2], 1))
    same = pp.preprocess_images(images, [0.0], [1.0], channels=1)
    assert same.shape == (2, 1, 3, 3)


def test_channels_last_is_asked_for() -> None:
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    x = pp.preprocess_images(images, [0.0] * 3, [1.0] * 3, channels_last=True)
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    assert pp.preprocess_images(images, [0.0] * 3, [1.0] * 3).is_contiguous()


def _ramp(n: int = 1, side: int = 4) -> torch.Tensor:
    """Float images whose pixel (r, c) is c (a horizontal ramp)."""
    return torch.arange(side).float().expand(n, 1, side, side).clone()


def test_center_crop_samples_the_central_fraction_back_to_full_size() -> None:
    x = pp.preprocess_images(_ramp(), [0.0], [1.0], center_crop=0.5)
    # output centres at -0.75..0.75 of the half-width box: pixels 0.75, 1.25, 1.75, 2.25
    torch.testing.assert_close(x[0, 0], torch.tensor([0.75, 1.25, 1.75, 2.25]).expand(4, 4))
    torch.testing.assert_close(pp.preprocess_images(_ramp(), [0.0], [1.0], center_crop=1.0),
                               _ramp())
    down = pp.preprocess_images(_ramp().transpose(-1, -2), [0.0], [1.0], center_crop=0.5)
    torch.testing.assert_close(down[0, 0], torch.tensor([0.75, 1.25, 1.75, 2.25])[:, None]
                               .expand(4, 4))


def test_crop_moves_scales_and_flips_each_box() -> None:
    one = torch.ones(2)
    x = pp._crop(_ramp(2), one, one, 0 * one, 0 * one, torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(x, torch.stack([_ramp()[0], _ramp()[0].flip(-1)]))
    right = pp._crop(_ramp(), 0.5 * one[:1], one[:1], 0.5 * one[:1], 0 * one[:1], one[:1])
    torch.testing.assert_close(right[0, 0], torch.tensor([1.75, 2.25, 2.75, 3.0]).expand(4, 4))
    down = pp._crop(_ramp().transpose(-1, -2), one[:1], 0.5 * one[:1], 0 * one[:1],
                    0.5 * one[:1], one[:1])
    torch.testing.assert_close(down[0, 0], torch.tensor([1.75, 2.25, 2.75, 3.0])[:, None]
                               .expand(4, 4))


@pytest.mark.parametrize("min_scale", [0.08, 0.5])
def test_random_boxes_follow_random_resized_crop(min_scale: float) -> None:
    torch.manual_seed(0)
    n = 20_000
    w, h, cx, cy, sign = pp._random_boxes(n, min_scale, torch.device("cpu"))
    assert w.max() <= 1 and h.max() <= 1
    free = (w < 1) & (h < 1)
    area, ratio = (w * h)[free], (w / h)[free]
    assert min_scale - 1e-6 <= area.min() <= min_scale + 0.01 and 0.97 <= area.max() <= 1
    assert (w * h).mean().item() <= (1 + min_scale) / 2
    assert 3 / 4 - 1e-5 <= ratio.min() <= 0.76 and 1.32 <= ratio.max() <= 4 / 3 + 1e-5
    for c, side in ((cx, w), (cy, h)):
        assert (c.abs() <= 1 - side + 1e-6).all()
        assert c.mean().item() == pytest.approx(0, abs=0.01)
        assert (c.abs() / (1 - side).clamp(min=1e-6))[free].mean().item() == \
            pytest.approx(0.5, abs=0.02)
    assert set(sign.tolist()) == {-1.0, 1.0}
    assert (sign < 0).float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert pp._random_boxes(8, min_scale, torch.device("cpu"), flip=False)[4].tolist() == [1.0] * 8


def test_random_crop_is_drawn_and_flips_unless_asked_not_to() -> None:
    images = _ramp(64, 8)
    torch.manual_seed(1)
    x = pp.preprocess_images(images, [0.0], [1.0], random_crop=0.99)
    slope = x[:, 0, 4, -1] - x[:, 0, 4, 0]  # a ramp keeps its direction unless flipped
    assert (slope < 0).any() and (slope > 0).any() and x.shape == (64, 1, 8, 8)
    torch.manual_seed(1)
    kept = pp.preprocess_images(images, [0.0], [1.0], random_crop=0.99, flip=False)
    assert ((kept[:, 0, 4, -1] - kept[:, 0, 4, 0]) > 0).all()
    assert not torch.equal(kept, images)


@pytest.mark.parametrize("make", [
    lambda a: a[:, :, 0], lambda a: a[:, :, :1], lambda a: torch.from_numpy(a).permute(2, 0, 1),
    lambda a: torch.from_numpy(a[:, :, 0])])
def test_fit_image_reads_gray_images_in_every_layout(make) -> None:
    a = np.arange(25, dtype=np.uint8).reshape(5, 5, 1)
    out = pp.fit_image(make(a), 5, 1)
    assert out.dtype == torch.uint8 and out.tolist() == [a[:, :, 0].tolist()]


def test_fit_image_turns_rgb_to_gray_by_luma_and_drops_alpha() -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., :3], rgba[..., 3] = (100, 200, 50), 7  # 29.9 + 117.4 + 5.7 = 153
    assert pp.fit_image(rgba, 2, 1).tolist() == [[[153, 153], [153, 153]]]
    chw = torch.tensor([10, 20, 30], dtype=torch.uint8).view(3, 1, 1).expand(3, 2, 2)
    assert pp.fit_image(chw, 2, 3)[:, 0, 0].tolist() == [10, 20, 30]


def test_fit_image_repeats_gray_for_rgb() -> None:
    gray = torch.tensor([[1, 2], [3, 4]], dtype=torch.uint8)
    assert pp.fit_image(gray, 2, 3).tolist() == [gray.tolist()] * 3


@pytest.mark.parametrize("shape, crop", [((2, 4), (slice(None), slice(1, 3))),
                                         ((4, 2), (slice(1, 3), slice(None)))])
def test_fit_image_keeps_the_central_square(shape: tuple[int, int], crop) -> None:
    image = torch.arange(8, dtype=torch.uint8).view(shape) * 30
    assert pp.fit_image(image, 2, 1)[0].tolist() == image[crop].tolist()


def test_fit_image_scales_the_shorter_side_to_the_size() -> None:
    image = torch.zeros(4, 8, dtype=torch.uint8)
    image[:, 4:] = 200
    out = pp.fit_image(image, 2, 1)[0]  # 4x8 -> 2x4 (antialiased), centre columns 1, 2
    small = F.interpolate(image[None, None].float(), size=(2, 4), mode="bilinear",
                          antialias=True, align_corners=False)[0, 0, :, 1:3]
    assert out.tolist() == small.round().to(torch.uint8).tolist() == [[25, 175], [25, 175]]


def test_fit_image_rounds_and_clamps_to_uint8() -> None:
    image = torch.tensor([[-3.0, 2.5], [2.6, 300.0]])
    assert pp.fit_image(image, 2, 1).tolist() == [[[0, 2], [3, 255]]]


@pytest.mark.parametrize("shape", [(2,), (5, 6, 2), (2, 5, 5, 1), (2, 3, 5)])
def test_fit_image_refuses_what_is_not_an_image(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError) as e:
        pp.fit_image(np.zeros(shape, dtype=np.uint8), 4, 1)
    assert str(e.value) == ("expected an (H, W), (C, H, W) or (H, W, C) image with 1, 3 or 4 "
                            f"channels, got shape {shape}")


def test_prepare_images_fits_then_normalises_one_image_or_a_list() -> None:
    pre = {"image_size": 2, "in_channels": 1, "mean": [0.5], "std": [0.5]}
    image = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    x = pp.prepare_images(image, pre)
    assert x.tolist() == [[[[-1.0, 1.0], [1.0, -1.0]]]]
    assert pp.prepare_images([image, image.T.copy()], pre).shape == (2, 1, 2, 2)
    assert pp.prepare_images((image,), {**pre, "resize": 4, "channels": 3, "mean": [0.5] * 3,
                                        "std": [0.5] * 3}).shape == (1, 3, 4, 4)
    wide = np.tile(np.arange(4, dtype=np.uint8) * 80, (4, 1))
    crop = pp.prepare_images(wide, {"image_size": 4, "in_channels": 1, "mean": [0.0],
                                    "std": [1.0 / 255], "center_crop": 0.5})
    torch.testing.assert_close(crop[0, 0, 0], torch.tensor([60.0, 100.0, 140.0, 180.0]))


@pytest.fixture(scope="module")
def meta_model() -> nn.Module:
    with torch.device("meta"):
        return build_model("softmax_regression", num_classes=3, in_channels=3, image_size=4)


def _why(pre: Any, model: nn.Module) -> str:
    with pytest.raises(ValueError) as e:
        pp.check_preprocess(pre, model)
    return str(e.value)


@pytest.mark.parametrize("pre, why", [
    ([], "'preprocess' must be a mapping"),
    *[({key: bad}, f"'preprocess.{key}' must be a whole number from 1 to 4096, got {shown}")
      for key in ("image_size", "resize", "in_channels", "channels")
      for bad, shown in ((0, "0"), (4097, "4097"), (True, "True"), (2.0, "2.0"))],
    ({"in_channels": 2}, "'preprocess.in_channels' must be 1 or 3, got 2"),
    ({"in_channels": 3, "channels": 1}, "'preprocess.channels' 1 cannot be made of 3-channel "
     "images"),
    ({"in_channels": 1, "channels": 2}, "'preprocess.channels' 2 cannot be made of 1-channel "
     "images"),
    ({"mean": [0.0, math.nan, 0.0]}, "'preprocess.mean' must be a list of finite numbers, got "
     "[0.0, nan, 0.0]"),
    ({"mean": (0.0,) * 3}, "'preprocess.mean' must be a list of finite numbers, got "
     "(0.0, 0.0, 0.0)"),
    ({"mean": [0, False, 0]}, "'preprocess.mean' must be a list of finite numbers, got "
     "[0, False, 0]"),
    ({"std": [1, 0, 1]}, "'preprocess.std' must be a list of positive numbers, got [1, 0, 1]"),
    ({"std": [0.0] * 20}, "'preprocess.std' must be a list of positive numbers, got "
     f"{repr([0.0] * 20)[:57]}..."),
    ({"in_channels": 3, "mean": [0.5]}, "'preprocess.mean' holds 1 value, but the model takes "
     "3-channel images (one value per channel)"),
    ({"in_channels": 1, "channels": 3, "std": [1, 1]}, "'preprocess.std' holds 2 values, but "
     "the model takes 3-channel images (one value per channel)"),
    ({"center_crop": 0}, "'preprocess.center_crop' must be a fraction in (0, 1], got 0"),
    ({"center_crop": 1.01}, "'preprocess.center_crop' must be a fraction in (0, 1], got 1.01"),
    ({"center_crop": True}, "'preprocess.center_crop' must be a fraction in (0, 1], got True"),
    ({"in_channels": 1, "image_size": 4}, "'preprocess' describes 1-channel 4x4 inputs, which "
     "the model does not take (a and b must have same reduction dim, but got [1, 16] X "
     "[48, 3].)"),
])
def test_check_preprocess_names_the_field(pre: Any, why: str, meta_model: nn.Module) -> None:
    assert _why(pre, meta_model) == why


@pytest.mark.parametrize("pre, outputs", [
    ({}, None), ({"in_channels": 3}, None), ({"image_size": 4}, None),
    ({"in_channels": 3, "image_size": 4, "mean": [0, -1.5, 0], "std": [1, 2, 0.1],
      "center_crop": 1}, 3),
    ({"in_channels": 1, "channels": 3, "image_size": 9, "resize": 4, "center_crop": 0.875}, 3),
    ({"in_channels": 3, "channels": 3, "image_size": 4096, "resize": None}, None),
])
def test_check_preprocess_returns_the_models_outputs(pre: dict, outputs: int | None,
                                                     meta_model: nn.Module) -> None:
    if pre.get("image_size") == 4096:  # the limit is taken; the model then refuses the size
        assert "4096x4096 inputs" in _why(pre, meta_model)
        return
    assert pp.check_preprocess(pre, meta_model) == outputs


def test_check_preprocess_wants_batch_by_classes_outputs() -> None:
    with torch.device("meta"):
        model = nn.Sequential(nn.Flatten(0), nn.Linear(3, 2))  # (1, 3, 1, 1) -> (2,)
    assert _why({"in_channels": 3, "image_size": 1}, model) == (
        "'preprocess' describes 3-channel 1x1 inputs, for which the model outputs shape (2,), "
        "not (batch, classes)")


def test_check_preprocess_runs_the_model_in_eval_mode(meta_model: nn.Module) -> None:
    meta_model.train()
    pp.check_preprocess({"in_channels": 3, "image_size": 4}, meta_model)
    assert not meta_model.training


@pytest.mark.parametrize("value, shown", [("ab", "'ab'"), ("x" * 58, repr("x" * 58)),
                                          ("x" * 59, "'" + "x" * 56 + "...")])
def test_short_cuts_at_60(value: str, shown: str) -> None:
    assert pp._short(value) == shown
