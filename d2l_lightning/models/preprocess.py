"""Batch preprocessing shared by training (on the device) and plain-PyTorch inference."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: the largest image side an export's ``preprocess`` may ask for (``image_size``, ``resize``):
#: a 4096 x 4096 RGB image is 200 MB as floats; the d2l models take 28 to 224
MAX_IMAGE_SIDE = 4096


def preprocess_images(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    resize: int | None = None,
    channels_last: bool = False,
    channels: int | None = None,
    center_crop: float | None = None,
    random_crop: float | None = None,
    flip: bool = True,
) -> torch.Tensor:
    """Turn a uint8 image batch into the normalised float input a model expects.

    Args:
        images: ``(B, H, W)`` or ``(B, C, H, W)`` uint8 (or float in [0, 1]) tensor.
        mean: per-channel mean of the [0, 1]-scaled training images.
        std: per-channel standard deviation of the same.
        resize: output side length (bilinear, as torchvision's ``Resize``); ``None`` keeps size.
        channels_last: return a channels-last tensor (faster convolutions on GPU).
        channels: channels the model takes; a grey-scale batch is repeated to 3 (a pretrained
            RGB model on grey-scale data), in the batch, never on disk.
        center_crop: evaluation view: the central ``center_crop`` fraction of each side,
            resized back to the input size (torchvision's ``Resize`` then ``CenterCrop``).
        random_crop: training view (d2l §14.1): a random crop of ``random_crop`` to 1 of the
            area, aspect ratio 3/4 to 4/3, and a random horizontal flip, resized back to the
            input size (torchvision's ``RandomResizedCrop`` + ``RandomHorizontalFlip``); drawn
            from the global generator on the batch's device. Train and evaluation views have
            the same size.
        flip: with ``random_crop``, also flip half the images horizontally.

    Returns:
        A ``(B, C, resize, resize)`` float32 tensor on the input's device.
    """
    if images.dim() == 3:
        images = images.unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)
    x = images.float()
    if images.dtype == torch.uint8:
        x = x.mul_(1.0 / 255.0)
    if random_crop is not None:
        x = _crop(x, *_random_boxes(len(x), random_crop, x.device, flip))
    elif center_crop is not None:
        ones = torch.ones(len(x), device=x.device)
        x = _crop(x, ones * center_crop, ones * center_crop, ones * 0, ones * 0, ones)
    if resize is not None and tuple(x.shape[-2:]) != (resize, resize):
        x = F.interpolate(x, size=(resize, resize), mode="bilinear", align_corners=False,
                          antialias=resize < x.shape[-1])
    if channels is not None and x.shape[1] == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1).contiguous()  # (B, 1, H, W) -> (B, 3, H, W)
    c = x.shape[1]
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
    x = x.sub_(m).div_(s)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _random_boxes(n: int, min_scale: float, device: torch.device,
                  flip: bool = True) -> tuple[torch.Tensor, ...]:
    """Widths, heights, centres (fractions of the image, centres in [-1, 1]) and flips."""
    area = torch.empty(n, device=device).uniform_(min_scale, 1.0)
    log_ratio = torch.empty(n, device=device).uniform_(math.log(3 / 4), math.log(4 / 3))
    ratio = log_ratio.exp()
    w = (area * ratio).sqrt().clamp(max=1.0)
    h = (area / ratio).sqrt().clamp(max=1.0)
    cx = (torch.rand(n, device=device) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, device=device) * 2 - 1) * (1 - h)
    sign = torch.where(torch.rand(n, device=device) < 0.5, -1.0, 1.0)
    return w, h, cx, cy, sign if flip else torch.ones_like(sign)


def _crop(x: torch.Tensor, w: torch.Tensor, h: torch.Tensor, cx: torch.Tensor,
          cy: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Sample each image's box (bilinear) back to the input size with one ``grid_sample``."""
    theta = torch.zeros(len(x), 2, 3, device=x.device, dtype=x.dtype)  # (B, 2, 3) affine maps
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


#: ITU-R 601 luma weights, to turn an RGB image into the grayscale a gray model was trained on
_LUMA = (0.299, 0.587, 0.114)


def fit_image(image: Any, size: int, channels: int) -> torch.Tensor:
    """One image of any size as the uint8 ``(channels, size, size)`` the training data had.

    A non-square image keeps its central square (its shorter side scaled to ``size``), as the
    image-folder cache does; it is never stretched.

    Args:
        image: uint8 tensor or array, ``(H, W)`` grayscale, ``(C, H, W)`` as torchvision
            decodes, or ``(H, W, C)`` as PIL / numpy give (C: 1, 3, or 4 with alpha, dropped).
        size: side length of the training images (an export's ``preprocess.image_size``).
        channels: 1 (grayscale: RGB is converted by luma) or 3 (RGB: gray is repeated).

    Raises:
        ValueError: not a 2-D or 3-D image with 1, 3 or 4 channels.
    """
    x = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    if x.dim() == 2:
        x = x[None]
    elif x.dim() == 3 and x.shape[0] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
        x = x.permute(2, 0, 1)  # (H, W, C) -> (C, H, W)
    if x.dim() != 3 or x.shape[0] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W), (C, H, W) or (H, W, C) image with 1, 3 or 4 "
                         f"channels, got shape {tuple(x.shape)}")
    x = x[:3].float()  # drop alpha
    if x.shape[0] == 3 and channels == 1:
        x = (x * torch.tensor(_LUMA).view(3, 1, 1)).sum(0, keepdim=True)
    elif x.shape[0] == 1 and channels == 3:
        x = x.expand(3, -1, -1)
    h, w = x.shape[-2:]
    if (h, w) != (size, size):  # shorter side to the training size, then the centre
        scale = size / min(h, w)  # (as an image-folder cache was made; a square just resizes)
        shape = (max(size, round(h * scale)), max(size, round(w * scale)))
        x = F.interpolate(x[None], size=shape, mode="bilinear", antialias=True,
                          align_corners=False)[0]
        top, left = (shape[0] - size) // 2, (shape[1] - size) // 2
        x = x[:, top:top + size, left:left + size]  # (C, size, size)
    return x.round().clamp(0, 255).to(torch.uint8)


def prepare_images(images: Any, preprocess: dict[str, Any]) -> torch.Tensor:
    """Images of any size, grayscale or RGB, as the float batch an exported classifier takes.

    Args:
        images: one image or a list of images, each as :func:`fit_image` takes it.
        preprocess: an export's ``config["preprocess"]`` (``image_size``, ``in_channels``,
            ``mean``, ``std``, ``resize``).
    """
    if not isinstance(images, (list, tuple)):
        images = [images]
    batch = torch.stack([fit_image(im, preprocess["image_size"], preprocess["in_channels"])
                         for im in images])
    return preprocess_images(batch, preprocess["mean"], preprocess["std"],
                             preprocess.get("resize"), channels=preprocess.get("channels"),
                             center_crop=preprocess.get("center_crop"))


def check_preprocess(pre: Any, model: nn.Module) -> int | None:
    """Check an export's ``preprocess`` against its image model; returns the model's outputs.

    Every field is checked before an image is touched: sides are whole numbers up to
    :data:`MAX_IMAGE_SIDE`, ``mean`` and ``std`` finite (``std`` positive) with one value per
    channel the model takes, and the model (on the ``meta`` device: nothing is allocated) takes
    a batch of that shape.

    Args:
        pre: ``config["preprocess"]``.
        model: the exported model, on the ``meta`` device.

    Returns:
        The number of classes the model outputs, or ``None`` when ``pre`` lacks the sizes.

    Raises:
        ValueError: one clause naming the field, e.g. ``'preprocess.std' must be ...``.
    """
    if not isinstance(pre, dict):
        raise ValueError("'preprocess' must be a mapping")
    for key, low in (("image_size", 1), ("resize", 1), ("in_channels", 1), ("channels", 1)):
        value = pre.get(key)
        if value is not None and not (_whole(value) and low <= value <= MAX_IMAGE_SIDE):
            raise ValueError(f"'preprocess.{key}' must be a whole number from {low} to "
                             f"{MAX_IMAGE_SIDE}, got {_short(value)}")
    data, channels = pre.get("in_channels"), pre.get("channels")
    if data is not None and data not in (1, 3):
        raise ValueError(f"'preprocess.in_channels' must be 1 or 3, got {data}")
    if channels not in (None, data) and (data, channels) != (1, 3):
        raise ValueError(f"'preprocess.channels' {channels!r} cannot be made of "
                         f"{data!r}-channel images")
    c = channels if channels is not None else data
    for key in ("mean", "std"):
        values = pre.get(key)
        if values is None:
            continue
        if not isinstance(values, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                and (key == "mean" or v > 0) for v in values):
            what = "positive numbers" if key == "std" else "finite numbers"
            raise ValueError(f"'preprocess.{key}' must be a list of {what}, got "
                             f"{_short(values)}")
        if c is not None and len(values) != c:
            raise ValueError(f"'preprocess.{key}' holds {len(values)} value"
                             f"{'' if len(values) == 1 else 's'}, but the model takes "
                             f"{c}-channel images (one value per channel)")
    crop = pre.get("center_crop")
    if crop is not None and not (isinstance(crop, (int, float)) and not isinstance(crop, bool)
                                 and 0 < crop <= 1):
        raise ValueError(f"'preprocess.center_crop' must be a fraction in (0, 1], got "
                         f"{_short(crop)}")
    side = pre.get("resize") or pre.get("image_size")
    if c is None or side is None:
        return None
    try:
        with torch.no_grad():
            out = model.eval()(torch.empty(1, c, side, side, device="meta"))
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ValueError(f"'preprocess' describes {c}-channel {side}x{side} inputs, which the "
                         f"model does not take ({first})") from None
    if out.dim() != 2:
        raise ValueError(f"'preprocess' describes {c}-channel {side}x{side} inputs, for which "
                         f"the model outputs shape {tuple(out.shape)}, not (batch, classes)")
    return int(out.shape[1])


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: Any) -> str:
    """``value`` for a message, at most 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
