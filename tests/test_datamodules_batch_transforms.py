"""Per-image batch augmentations of datamodules.batch_transforms and the composed pipelines."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from datamodules import batch_transforms as bt
from datamodules import transforms as T


def _distinct_images(batch: int = 8, size: int = 8) -> torch.Tensor:
    """Identical images whose every pixel value is unique, so any crop position is identifiable."""
    image = torch.arange(3 * size * size, dtype=torch.float32).reshape(3, size, size) + 1.0
    return image.expand(batch, -1, -1, -1).contiguous()


def test_random_crop_shape_dtype_and_windows() -> None:
    images = _distinct_images(16, 8)
    out = bt.random_crop(images, size=8, padding=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (16, 3, 8, 8) and out.dtype == images.dtype
    padded = F.pad(images[0], (2, 2, 2, 2))
    for crop in out:  # every output is some 8x8 window of the zero-padded image
        assert any(
            torch.equal(crop, padded[:, top : top + 8, left : left + 8])
            for top in range(5)
            for left in range(5)
        )


def test_random_crop_differs_per_sample_and_pads_with_zeros() -> None:
    images = _distinct_images(32, 8)
    out = bt.random_crop(images, size=8, padding=4, generator=torch.Generator().manual_seed(1))
    distinct = {tuple(crop.flatten().tolist()) for crop in out}
    assert len(distinct) > 10  # different windows, not one crop for the whole batch
    assert (out == 0).any()  # padding area is black


def test_random_crop_works_on_uint8() -> None:
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    out = bt.random_crop(images, 32, 4)
    assert out.dtype == torch.uint8 and out.shape == images.shape


def test_random_crop_rejects_too_large_size() -> None:
    with pytest.raises(ValueError, match="larger"):
        bt.random_crop(torch.zeros(1, 3, 4, 4), size=16, padding=1)


def test_horizontal_flip_really_flips() -> None:
    images = torch.rand(6, 3, 5, 7)
    assert torch.equal(bt.random_horizontal_flip(images, p=1.0), images.flip(-1))
    assert torch.equal(bt.random_horizontal_flip(images, p=0.0), images)
    mixed = bt.random_horizontal_flip(
        torch.rand(64, 3, 4, 4), p=0.5, generator=torch.Generator().manual_seed(3)
    )
    assert mixed.shape == (64, 3, 4, 4)


def test_horizontal_flip_is_per_sample() -> None:
    images = torch.rand(64, 3, 4, 4)
    out = bt.random_horizontal_flip(images, p=0.5, generator=torch.Generator().manual_seed(3))
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, images, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 10 < sum(flipped) < 54


def test_generator_determinism_and_global_rng() -> None:
    images = torch.rand(16, 3, 32, 32) * 255
    a = bt.random_resized_crop(images, 16, generator=torch.Generator().manual_seed(7))
    b = bt.random_resized_crop(images, 16, generator=torch.Generator().manual_seed(7))
    c = bt.random_resized_crop(images, 16, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(123)
    d = T.cifar_train_batch(images.to(torch.uint8))
    torch.manual_seed(123)
    e = T.cifar_train_batch(images.to(torch.uint8))
    f = T.cifar_train_batch(images.to(torch.uint8))
    assert torch.equal(d, e) and not torch.equal(d, f)


def test_resized_crop_boxes_follow_torchvision_rules() -> None:
    boxes = bt.sample_resized_crop_boxes(500, 40, 60, generator=torch.Generator().manual_seed(0))
    x1, y1, x2, y2 = boxes.unbind(1)
    w, h = x2 - x1, y2 - y1
    assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= 60).all() and (y2 <= 40).all()
    assert (w > 0).all() and (h > 0).all()
    assert torch.equal(boxes, boxes.round())  # integer pixel boxes as in torchvision
    area = w * h / (40 * 60)
    assert area.min() >= 0.07 and area.max() <= 1.0
    assert len({tuple(b.tolist()) for b in boxes}) > 400  # one box per image


def test_resized_crop_fallback_is_central() -> None:
    # a scale range no draw can satisfy forces torchvision's central fallback crop
    boxes = bt.sample_resized_crop_boxes(4, 10, 40, scale=(5.0, 6.0), ratio=(1.0, 1.0))
    assert torch.equal(boxes, torch.tensor([[15.0, 0.0, 25.0, 10.0]] * 4))


def test_roi_align_full_box_matches_plain_resize() -> None:
    images = torch.rand(3, 3, 16, 16) * 255
    full = torch.tensor([[0.0, 0.0, 16.0, 16.0]] * 3)
    up = bt.resized_crop(images, full, size=40)
    expected_up = F.interpolate(images, size=(40, 40), mode="bilinear", align_corners=False)
    torch.testing.assert_close(up, expected_up, atol=1e-3, rtol=0)
    down = bt.resized_crop(images, full, size=8)
    torch.testing.assert_close(down, F.avg_pool2d(images, 2), atol=1e-3, rtol=0)


def test_roi_align_crops_the_box() -> None:
    images = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    boxes = torch.tensor([[2.0, 1.0, 6.0, 5.0], [0.0, 4.0, 4.0, 8.0]])
    out = bt.resized_crop(images, boxes, size=4)
    torch.testing.assert_close(out[0, 0], images[0, 0, 1:5, 2:6])
    torch.testing.assert_close(out[1, 0], images[1, 0, 4:8, 0:4])


def test_random_resized_crop_shape_and_per_sample() -> None:
    images = _distinct_images(16, 32)
    out = bt.random_resized_crop(images.to(torch.uint8), 24, generator=torch.Generator().manual_seed(0))
    assert out.shape == (16, 3, 24, 24) and out.dtype == torch.float32
    assert len({tuple(o.flatten()[:50].tolist()) for o in out}) == 16


def test_resize_center_crop_normalize() -> None:
    images = torch.randint(0, 256, (2, 3, 20, 20), dtype=torch.uint8)
    assert bt.resize(images, 48).shape == (2, 3, 48, 48)
    assert bt.resize(images, 20).dtype == torch.float32
    assert torch.equal(bt.center_crop(images, 10), images[:, :, 5:15, 5:15])
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.6, 0.7)
    reference = v2.Normalize(mean, std)(v2.ToDtype(torch.float32, scale=True)(images))
    torch.testing.assert_close(bt.normalize(images, mean, std), reference)


@pytest.mark.parametrize("image_size", [32, 64])
def test_cifar_batch_pipelines(image_size: int) -> None:
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    train = T.cifar_train_batch(images, image_size)
    evaluation = T.cifar_eval_batch(images, image_size)
    assert train.shape == evaluation.shape == (5, 3, image_size, image_size)
    assert train.dtype == evaluation.dtype == torch.float32
    per_sample = torch.stack([T.cifar_eval_transform(image_size)(img) for img in images])
    torch.testing.assert_close(evaluation, per_sample, atol=0.05, rtol=0)


def test_imagenet_batch_pipelines() -> None:
    stored_train = torch.randint(0, 256, (4, 3, 36, 36), dtype=torch.uint8)
    assert T.imagenet_train_batch(stored_train, 32).shape == (4, 3, 32, 32)
    # a held-out image stored at the training size gets exactly the evaluation pipeline
    evaluation = T.imagenet_eval_batch(stored_train, 32)
    per_sample = torch.stack([T.imagenet_eval_transform(32)(img) for img in stored_train])
    torch.testing.assert_close(evaluation, per_sample, atol=1e-5, rtol=0)
    assert T.eval_resize_size(224) == 256 and T.eval_resize_size(128) == 146
