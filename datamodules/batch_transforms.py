"""Augmentations applied to a whole batch on its device, with different random parameters per image.

All functions take images ``(B, C, H, W)`` as uint8 or as float in the 0-255 range (``normalize`` is the
step that standardises them), and a CPU ``torch.Generator``; with ``generator=None`` they draw from the
global torch RNG, so reseeding it makes them reproducible. Random parameters are drawn on the CPU and
moved to the images' device, so results do not depend on the device.

torchvision's ``transforms.v2`` draws one set of parameters per call, i.e. one crop for the whole batch;
the per-image crops here are therefore written by hand (marked below), on top of torchvision ops.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torchvision.ops import roi_align

__all__ = [
    "center_crop",
    "normalize",
    "random_crop",
    "random_horizontal_flip",
    "random_resized_crop",
    "resize",
    "resized_crop",
    "sample_resized_crop_boxes",
]


def random_crop(
    images: Tensor,
    size: int = 32,
    padding: int = 4,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Zero-pad by ``padding`` and take a random ``size`` square per image (``RandomCrop(size, padding)``).

    Hand-written: gathers a different window for every image with one advanced-indexing call.
    """
    batch, _, height, width = images.shape
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    max_top, max_left = height + 2 * padding - size, width + 2 * padding - size
    if max_top < 0 or max_left < 0:
        raise ValueError(f"crop size {size} is larger than the padded image {height}x{width}+{padding}")
    top = torch.randint(0, max_top + 1, (batch,), generator=generator).to(images.device)
    left = torch.randint(0, max_left + 1, (batch,), generator=generator).to(images.device)
    offsets = torch.arange(size, device=images.device)
    rows = (top[:, None] + offsets)[:, :, None]  # (B, size, 1)
    cols = (left[:, None] + offsets)[:, None, :]  # (B, 1, size)
    sample = torch.arange(batch, device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[sample, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_horizontal_flip(
    images: Tensor,
    p: float = 0.5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Mirror each image left-right independently with probability ``p``."""
    flip = (torch.rand(images.shape[0], generator=generator) < p).to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def sample_resized_crop_boxes(
    batch: int = 1,
    height: int = 224,
    width: int = 224,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
    generator: torch.Generator | None = None,
    attempts: int = 10,
) -> Tensor:
    """Draw one ``RandomResizedCrop`` box per image, as float ``(B, 4)`` ``(x1, y1, x2, y2)`` pixels.

    Hand-written vectorisation of ``torchvision.transforms.RandomResizedCrop.get_params``: ``attempts``
    (area, aspect ratio) draws per image, the first that fits is used, else the central fallback crop.
    """
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio, dtype=torch.float64))
    target_area = area * torch.empty(batch, attempts, dtype=torch.float64).uniform_(
        scale[0], scale[1], generator=generator
    )
    aspect = torch.exp(
        torch.empty(batch, attempts, dtype=torch.float64).uniform_(
            float(log_ratio[0]), float(log_ratio[1]), generator=generator
        )
    )
    w = torch.round(torch.sqrt(target_area * aspect))
    h = torch.round(torch.sqrt(target_area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.argmax(fits.to(torch.int64), dim=1, keepdim=True)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    found = fits.any(dim=1)

    in_ratio = width / height
    if in_ratio < min(ratio):
        fallback_w, fallback_h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fallback_w, fallback_h = round(height * max(ratio)), height
    else:
        fallback_w, fallback_h = width, height
    w = torch.where(found, w, torch.full_like(w, fallback_w))
    h = torch.where(found, h, torch.full_like(h, fallback_h))

    u = torch.rand(batch, 2, dtype=torch.float64, generator=generator)
    top = torch.floor(u[:, 0] * (height - h + 1))
    left = torch.floor(u[:, 1] * (width - w + 1))
    top = torch.where(found, top, torch.floor((height - h) / 2))
    left = torch.where(found, left, torch.floor((width - w) / 2))
    return torch.stack([left, top, left + w, top + h], dim=1).float()


def resized_crop(images: Tensor, boxes: Tensor, size: int = 224) -> Tensor:
    """Crop box ``i`` from image ``i`` and resize it to ``size`` x ``size``, for all images in one call.

    Uses ``torchvision.ops.roi_align`` with ``aligned=True`` (pixel centres at +0.5, as in
    ``interpolate(..., align_corners=False)``): bilinear sampling, averaged over ``ceil(box/size)``
    points per output pixel when shrinking, which acts as an antialiasing filter.

    Args:
        images: ``(B, C, H, W)`` images.
        boxes: float ``(B, 4)`` boxes ``(x1, y1, x2, y2)`` in pixels (the full image is ``(0, 0, W, H)``).
        size: output side.

    Returns:
        float32 ``(B, C, size, size)``.
    """
    images = images.float()
    index = torch.arange(images.shape[0], dtype=torch.float32)[:, None]
    rois = torch.cat([index, boxes.float().cpu()], dim=1).to(images.device)
    return roi_align(
        images, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True
    )


def random_resized_crop(
    images: Tensor,
    size: int = 224,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
    generator: torch.Generator | None = None,
) -> Tensor:
    """``RandomResizedCrop(size, scale, ratio)`` with a different box per image; returns float32."""
    batch, _, height, width = images.shape
    boxes = sample_resized_crop_boxes(batch, height, width, scale, ratio, generator)
    return resized_crop(images, boxes, size)


def resize(images: Tensor, size: int = 224) -> Tensor:
    """Bilinear, antialiased resize of a batch to ``size`` x ``size``; returns float32."""
    images = images.float()
    if images.shape[-2:] == (size, size):
        return images
    return TF.resize(images, [size, size], antialias=True)


def center_crop(images: Tensor, size: int = 224) -> Tensor:
    """Central ``size`` x ``size`` crop of a batch."""
    if images.shape[-2:] == (size, size):
        return images
    return TF.center_crop(images, [size, size])


def normalize(
    images: Tensor,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
) -> Tensor:
    """Map 0-255 images (uint8 or float) to float32 ``(x / 255 - mean) / std`` per channel."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1) * 255.0
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1) * 255.0
    return (images.float() - mean_t) / std_t
