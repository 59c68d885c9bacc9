"""The real dataset archives in ../shared/data load completely, with the expected counts and classes.

The datamodules are built once per session (session-scoped fixtures) on the session's shared cache, so
the archives are extracted and their images decoded only once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from datamodules import (
    CIFAR10DataModule,
    ImageFolderDataModule,
    ImagenetteDataModule,
    ImagewoofDataModule,
    memory,
)

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGENETTE_WNIDS = (
    "n01440764 n02102040 n02979186 n03000684 n03028079 n03394916 n03417042 n03425413 n03445777 n03888257"
).split()


def _ready(dm: ImageFolderDataModule) -> ImageFolderDataModule:
    dm.prepare_data()
    dm.setup()
    return dm


@pytest.fixture(scope="session")
def real_cifar(real_data_dir: Path) -> CIFAR10DataModule:
    return _ready(CIFAR10DataModule(root=str(real_data_dir / "cifar10-jpg.tar.gz"), batch_size=256))


@pytest.fixture(scope="session")
def real_imagenette(real_data_dir: Path) -> ImagenetteDataModule:
    return _ready(ImagenetteDataModule(root=str(real_data_dir / "imagenette-128.tar.gz")))


@pytest.fixture(scope="session")
def real_imagewoof(real_data_dir: Path) -> ImagewoofDataModule:
    return _ready(ImagewoofDataModule(root=str(real_data_dir / "imagewoof-128.tar.gz")))


def test_cifar10_archive(real_cifar: CIFAR10DataModule) -> None:
    dm = real_cifar
    assert dm.classes == CIFAR_CLASSES and dm.num_classes == 10
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (50_000, 10_000, 10_000)
    assert torch.bincount(dm.train_dataset.labels).tolist() == [5000] * 10
    assert torch.bincount(dm.test_dataset.labels).tolist() == [1000] * 10
    assert dm.train_dataset.images.shape == (50_000, 3, 32, 32)
    images, labels = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert images.shape == (256, 3, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert abs(images.mean().item()) < 0.5 and 0.5 < images.std().item() < 1.5  # normalised


def test_cifar10_second_use_hits_the_cache(
    real_cifar: CIFAR10DataModule, real_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[str] = []
    monkeypatch.setattr(memory, "read_image", lambda path: decoded.append(path))
    dm = _ready(CIFAR10DataModule(root=str(real_data_dir / "cifar10-jpg.tar.gz"), train_subset=500))
    assert decoded == [] and len(dm.train_dataset) == 500
    assert torch.bincount(dm.train_dataset.labels).tolist() == [50] * 10
    assert torch.equal(dm.test_dataset.images, real_cifar.test_dataset.images)


def test_imagenette_archive(real_imagenette: ImagenetteDataModule) -> None:
    dm = real_imagenette
    assert dm.classes == IMAGENETTE_WNIDS and dm.class_names[0] == "tench"
    assert (len(dm.train_dataset), len(dm.val_dataset)) == (9_469, 3_925)
    assert dm.train_dataset.images.shape[1:] == (3, 146, 146)
    assert dm.val_dataset.images.shape[1:] == (3, 128, 128)
    images = dm.transform_batch(dm.train_dataset.images[:64], train=True)
    assert images.shape == (64, 3, 128, 128) and images.dtype == torch.float32


def test_imagewoof_archive(real_imagewoof: ImagewoofDataModule) -> None:
    dm = real_imagewoof
    assert dm.num_classes == 10 and dm.classes == sorted(dm.classes) and dm.classes[0] == "n02086240"
    assert (len(dm.train_dataset), len(dm.val_dataset)) == (9_025, 3_929)
    assert "golden retriever" in dm.class_names
