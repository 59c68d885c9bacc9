"""Training and evaluation transforms: per-sample ``transforms.v2`` pipelines and their batch versions.

Streaming datasets use the per-sample pipelines (on decoded uint8 tensors). In-memory datasets keep
uint8 images and apply the batch versions on the device, per image random, built from
:mod:`datamodules.batch_transforms`.

CIFAR at a size other than 32 (e.g. 224 for ImageNet-pretrained backbones): training crops with
4-pixel padding and flips at the native 32 px, then resizes bilinearly. Up to interpolation this equals
resizing first and cropping with ``4 * size / 32`` padding, and it is the cheaper order.

ImageNet-style data: training uses ``RandomResizedCrop(size)`` + flip; evaluation resizes the shorter
side to ``int(size / 0.875)`` and centre-crops ``size`` (the 0.875 crop ratio of the reference recipes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.transforms import v2

from datamodules import batch_transforms as bt

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CIFAR_NATIVE_SIZE",
    "CIFAR_TRANSFORMS",
    "IMAGENET_TRANSFORMS",
    "TransformFamily",
    "cifar_eval_batch",
    "cifar_eval_transform",
    "cifar_train_batch",
    "cifar_train_transform",
    "eval_resize_size",
    "imagenet_eval_batch",
    "imagenet_eval_transform",
    "imagenet_train_batch",
    "imagenet_train_transform",
]

CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
CIFAR_NATIVE_SIZE: int = 32
CROP_RATIO: float = 0.875


def eval_resize_size(image_size: int = 224) -> int:
    """Shorter-side size before the evaluation centre crop: ``int(image_size / 0.875)``."""
    return int(image_size / CROP_RATIO)


def _finish(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
        v2.ToPureTensor(),
    ]


def _cifar_transform(image_size: int, mean: Sequence[float], std: Sequence[float],
                     augment: list[v2.Transform]) -> v2.Compose:
    """Decode to a 32 px tensor image, apply ``augment``, resize to ``image_size`` if different, normalise."""
    steps: list[v2.Transform] = [
        v2.ToImage(),
        v2.Resize(CIFAR_NATIVE_SIZE, antialias=True),
        v2.CenterCrop(CIFAR_NATIVE_SIZE),
        *augment,
    ]
    if image_size != CIFAR_NATIVE_SIZE:
        steps.append(v2.Resize((image_size, image_size), antialias=True))
    return v2.Compose(steps + _finish(mean, std))


def cifar_train_transform(
    image_size: int = 32,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
) -> v2.Compose:
    """Random crop (padding 4) + flip at 32 px, resize to ``image_size`` if different, normalise."""
    augment = [v2.RandomCrop(CIFAR_NATIVE_SIZE, padding=4), v2.RandomHorizontalFlip()]
    return _cifar_transform(image_size, mean, std, augment)


def cifar_eval_transform(
    image_size: int = 32,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
) -> v2.Compose:
    """Resize to ``image_size`` square (no-op at 32 px), normalise."""
    return _cifar_transform(image_size, mean, std, [])


def imagenet_train_transform(
    image_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """``RandomResizedCrop(image_size)`` + flip, normalise."""
    steps = [v2.ToImage(), v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
    return v2.Compose(steps + _finish(mean, std))


def imagenet_eval_transform(
    image_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Resize the shorter side to ``int(image_size / 0.875)``, centre-crop ``image_size``, normalise."""
    steps = [v2.ToImage(), v2.Resize(eval_resize_size(image_size), antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose(steps + _finish(mean, std))


def cifar_train_batch(
    images: Tensor,
    image_size: int = 32,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Batch version of :func:`cifar_train_transform` for uint8 32 px images."""
    images = bt.random_crop(images, CIFAR_NATIVE_SIZE, padding=4, generator=generator)
    images = bt.random_horizontal_flip(images, generator=generator)
    return bt.normalize(bt.resize(images, image_size), mean, std)


def cifar_eval_batch(
    images: Tensor,
    image_size: int = 32,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
) -> Tensor:
    """Batch version of :func:`cifar_eval_transform`."""
    return bt.normalize(bt.resize(images, image_size), mean, std)


def imagenet_train_batch(
    images: Tensor,
    image_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Batch ``RandomResizedCrop`` + flip + normalise of stored square images.

    In memory the training images are stored as squares (shorter side resized to
    ``int(image_size / 0.875)``, centre-cropped), so the random crops are drawn from that centre square
    rather than from the full, possibly wider, original: a small approximation of the streaming pipeline
    in exchange for fixed-size tensors.
    """
    images = bt.random_resized_crop(images, image_size, generator=generator)
    images = bt.random_horizontal_flip(images, generator=generator)
    return bt.normalize(images, mean, std)


def imagenet_eval_batch(
    images: Tensor,
    image_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Tensor:
    """Batch version of :func:`imagenet_eval_transform` for stored square images.

    Evaluation images stored already resized and centre-cropped pass through unchanged; images stored at
    the training size (``int(image_size / 0.875)`` squares, e.g. a validation set held out of train) are
    centre-cropped, which is exactly the evaluation pipeline because centre crops compose.
    """
    if images.shape[-1] > image_size:
        images = bt.center_crop(images, image_size)
    return bt.normalize(bt.resize(images, image_size), mean, std)


@dataclass(frozen=True)
class TransformFamily:
    """The four transforms of one kind of dataset, each called with ``image_size, mean, std`` (a batch
    transform with the uint8 batch first): per sample for the streaming path and per batch for the
    in-memory one, for training and for evaluation."""

    train: Callable[..., v2.Compose]
    eval: Callable[..., v2.Compose]
    train_batch: Callable[..., Tensor]
    eval_batch: Callable[..., Tensor]


#: CIFAR's: crops and flips at the native 32 px, then a resize to the model's size.
CIFAR_TRANSFORMS = TransformFamily(cifar_train_transform, cifar_eval_transform, cifar_train_batch, cifar_eval_batch)
#: ImageNet-style data's: ``RandomResizedCrop`` + flip; resize and centre crop for evaluation.
IMAGENET_TRANSFORMS = TransformFamily(imagenet_train_transform, imagenet_eval_transform, imagenet_train_batch,
                                      imagenet_eval_batch)
