"""Batch preprocessing shared by training (on the device) and plain-PyTorch inference."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def preprocess_images(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    resize: int | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """Turn a uint8 image batch into the normalised float input a model expects.

    Args:
        images: ``(B, H, W)`` or ``(B, C, H, W)`` uint8 (or float in [0, 1]) tensor.
        mean: per-channel mean of the [0, 1]-scaled training images.
        std: per-channel standard deviation of the same.
        resize: output side length (bilinear, as torchvision's ``Resize``); ``None`` keeps size.
        channels_last: return a channels-last tensor (faster convolutions on GPU).

    Returns:
        A ``(B, C, resize, resize)`` float32 tensor on the input's device.
    """
    if images.dim() == 3:
        images = images.unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)
    x = images.float()
    if images.dtype == torch.uint8:
        x = x.mul_(1.0 / 255.0)
    if resize is not None and tuple(x.shape[-2:]) != (resize, resize):
        x = F.interpolate(x, size=(resize, resize), mode="bilinear", align_corners=False,
                          antialias=resize < x.shape[-1])
    c = x.shape[1]
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
    x = x.sub_(m).div_(s)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
