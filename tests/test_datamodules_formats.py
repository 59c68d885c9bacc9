"""Every on-disk format and archive type loads with the right counts, classes and labels; bad inputs fail."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from datamodules import (
    CIFAR10DataModule,
    DatasetError,
    ImageFolderDataModule,
    ImageNetDataModule,
    ImagenetteDataModule,
    ImagewoofDataModule,
)
from datamodules import cifar as cifar_module
from datamodules import imagenette as imagenette_module
from datamodules.datasets import InMemoryImageDataset
from tests.helpers import fake_data


def _labels_from_pixels(dataset: InMemoryImageDataset) -> list[int]:
    return [fake_data.label_from_red(img[0].float().mean().item()) for img in dataset.images]


def _check_labels(dm: ImageFolderDataModule) -> None:
    for dataset in (dm.train_dataset, dm.val_dataset, dm.test_dataset):
        assert isinstance(dataset, InMemoryImageDataset)
        assert dataset.labels.dtype == torch.int64
        assert _labels_from_pixels(dataset) == dataset.labels.tolist()


def _setup(dm: ImageFolderDataModule) -> ImageFolderDataModule:
    dm.prepare_data()
    dm.setup()
    return dm


@pytest.mark.parametrize("nest", [None, "cifar10"])
@pytest.mark.parametrize("suffix", [".jpg", ".png", ".JPEG"])
def test_cifar_image_folder(tmp_path: Path, nest: str | None, suffix: str) -> None:
    fake_data.make_image_folder(tmp_path / "d", {"train": 4, "test": 2}, suffix=suffix, nest=nest)
    dm = _setup(CIFAR10DataModule(root=str(tmp_path / "d"), cache_dir=str(tmp_path / "c")))
    assert dm.classes == ["airplane", "automobile", "bird"] and dm.num_classes == 3
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (12, 6, 6)
    assert dm.train_dataset.images.shape == (12, 3, 32, 32)
    assert dm.train_dataset.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    _check_labels(dm)


@pytest.mark.parametrize("as_batches_folder", [False, True])
def test_cifar_pickled_batches(tmp_path: Path, as_batches_folder: bool) -> None:
    folder = fake_data.make_cifar_batches(tmp_path / "d", per_batch=6, n_test=8)
    root = folder if as_batches_folder else tmp_path / "d"
    dm = _setup(CIFAR10DataModule(root=str(root), cache_dir=str(tmp_path / "c"), check_counts=False))
    assert dm.classes == list(fake_data.CIFAR_CLASSES) and dm.num_classes == 10
    assert (len(dm.train_dataset), len(dm.test_dataset)) == (30, 8)
    assert dm.train_dataset.labels.tolist() == [(6 + i) % 10 for i in range(30)]
    _check_labels(dm)
    assert not (tmp_path / "c").exists()  # decoded already: no tensor cache needed


@pytest.mark.parametrize("kind", ["folder", "batches"])
@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tgz"])
def test_cifar_archives(tmp_path: Path, kind: str, suffix: str) -> None:
    if kind == "folder":
        source = fake_data.make_image_folder(tmp_path / "src" / "cifar10", {"train": 3, "test": 1})
        counts = (9, 3)
    else:
        source = fake_data.make_cifar_batches(tmp_path / "src", per_batch=2, n_test=4)
        counts = (10, 4)
    packed = fake_data.make_archive(source, tmp_path / "shelf" / f"cifar{suffix}")
    dm = _setup(CIFAR10DataModule(root=str(packed), cache_dir=str(tmp_path / "c"), check_counts=False))
    assert (len(dm.train_dataset), len(dm.test_dataset)) == counts
    assert dm.classes[:3] == ["airplane", "automobile", "bird"]
    assert sorted(p.name for p in (tmp_path / "shelf").iterdir()) == [packed.name]
    _check_labels(dm)


def test_cifar_download_plumbing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fake_download(url: str, download_root: str, **kwargs: object) -> None:
        calls.append(url)
        fake_data.make_cifar_batches(Path(download_root), per_batch=2, n_test=3)

    monkeypatch.setattr(cifar_module, "download_and_extract_archive", fake_download)
    root = tmp_path / "downloads"
    dm = _setup(CIFAR10DataModule(root=str(root), download=True, cache_dir=str(tmp_path / "c"), check_counts=False))
    assert calls == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    assert len(dm.train_dataset) == 10 and (root / "cifar-10-batches-py" / "test_batch").is_file()
    _setup(CIFAR10DataModule(root=str(root), download=True, cache_dir=str(tmp_path / "c"), check_counts=False))
    assert len(calls) == 1  # present: not downloaded again


@pytest.mark.parametrize("archive_suffix", [None, ".tgz", ".tar"])
def test_imagenette_layout(tmp_path: Path, archive_suffix: str | None) -> None:
    source = fake_data.make_imagenette_folder(tmp_path / "src", n_train=5, n_val=2)
    root = (
        source.parent
        if archive_suffix is None
        else fake_data.make_archive(source, tmp_path / f"i{archive_suffix}")
    )
    dm = _setup(ImagenetteDataModule(root=str(root), image_size=32, cache_dir=str(tmp_path / "c")))
    assert dm.classes == list(fake_data.IMAGENETTE_WNIDS) and dm.num_classes == 3
    assert dm.class_names == ["tench", "English springer", "cassette player"]
    assert (len(dm.train_dataset), len(dm.val_dataset)) == (15, 6)
    assert dm.train_dataset.images.shape[-2:] == (36, 36)  # stored at int(32 / 0.875)
    assert dm.val_dataset.images.shape[-2:] == (32, 32)  # stored resized + centre-cropped
    _check_labels(dm)


def test_imagewoof_names_and_download_plumbing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fake_download(url: str, download_root: str, **kwargs: object) -> None:
        calls.append(url)
        fake_data.make_imagenette_folder(
            Path(download_root), wnids=("n02086240", "n02115641"), nest="imagewoof2-160"
        )

    monkeypatch.setattr(imagenette_module, "download_and_extract_archive", fake_download)
    dm = _setup(ImagewoofDataModule(root=str(tmp_path / "w"), download=True, cache_dir=str(tmp_path / "c")))
    assert calls == ["https://s3.amazonaws.com/fast-ai-imageclas/imagewoof2-160.tgz"]
    assert dm.class_names == ["Shih-Tzu", "dingo"] and len(dm.train_dataset) == 10
    _setup(ImagewoofDataModule(root=str(tmp_path / "w"), download=True, cache_dir=str(tmp_path / "c")))
    assert len(calls) == 1


def test_imagenet_streams_only(tmp_path: Path) -> None:
    fake_data.make_image_folder(tmp_path / "inet", {"train": 2, "val": 1}, classes=fake_data.IMAGENETTE_WNIDS)
    dm = _setup(ImageNetDataModule(root=str(tmp_path / "inet"), image_size=32, num_workers=0))
    assert dm.num_classes == 3 and len(dm.train_dataset) == 6 and len(dm.val_dataset) == 3
    images, labels = next(iter(dm.val_dataloader()))
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.float32 and labels.tolist() == [0, 1, 2]
    with pytest.raises(DatasetError, match="in_memory=True is not supported"):
        ImageNetDataModule(root=str(tmp_path / "inet"), in_memory=True)
    with pytest.raises(DatasetError, match="cannot download"):
        ImageNetDataModule(root=str(tmp_path / "inet"), download=True)


def test_imagenet_flat_val_folder(tmp_path: Path) -> None:
    fake_data.make_image_folder(tmp_path / "inet", {"train": 2}, classes=fake_data.IMAGENETTE_WNIDS)
    fake_data.write_image(tmp_path / "inet" / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(DatasetError, match="one folder per class") as info:
        _setup(ImageNetDataModule(root=str(tmp_path / "inet")))
    assert str(tmp_path / "inet" / "val") in str(info.value)


def test_generic_image_folder_and_odd_image_modes(tmp_path: Path) -> None:
    base = fake_data.make_image_folder(tmp_path / "d", {"train": 2, "val": 1}, height=20, width=30)
    Image.new("L", (30, 20), color=90).save(base / "train" / "bird" / "grey.png")
    Image.new("RGBA", (20, 30), color=(10, 20, 30, 40)).save(base / "val" / "bird" / "alpha.png")
    dm = _setup(ImageFolderDataModule(root=str(base), image_size=16, cache_dir=str(tmp_path / "c")))
    assert dm.classes == ["airplane", "automobile", "bird"] and len(dm.train_dataset) == 7
    assert dm.train_dataset.images.shape == (7, 3, 18, 18) and dm.val_dataset.images.shape == (4, 3, 16, 16)
    grey = dm.train_dataset.images[-1]
    assert torch.equal(grey[0], grey[1]) and int(grey[0, 0, 0]) == 90


def test_nominal_class_count() -> None:
    assert CIFAR10DataModule.nominal_num_classes == 10
    assert ImageNetDataModule.nominal_num_classes == 1000


def test_num_classes_is_read_from_disk_before_setup(tmp_path: Path) -> None:
    dm = CIFAR10DataModule(root=str(fake_data.make_image_folder(tmp_path / "three")), num_workers=0)
    assert dm.num_classes == 3  # what the CLI links to the model's num_classes


# ------------------------------------------------------------------------------- bad inputs


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist") as info:
        _setup(CIFAR10DataModule(root=str(tmp_path / "missing.tar.gz")))
    assert str(tmp_path / "missing.tar.gz") in str(info.value)


def test_wrong_layout_names_expected_splits(tmp_path: Path) -> None:
    fake_data.make_image_folder(tmp_path / "d", {"train": 2})
    with pytest.raises(DatasetError, match="expected") as info:
        _setup(CIFAR10DataModule(root=str(tmp_path / "d")))
    message = str(info.value)
    assert str(tmp_path / "d") in message and "test/" in message and "cifar-10-batches-py" in message


def test_wrong_layout_inside_archive_names_the_archive(tmp_path: Path) -> None:
    source = fake_data.make_image_folder(tmp_path / "src" / "woof", {"train": 2, "test": 1})
    packed = fake_data.make_archive(source, tmp_path / "woof.tar.gz")
    with pytest.raises(DatasetError, match="val/") as info:
        _setup(ImagewoofDataModule(root=str(packed), cache_dir=str(tmp_path / "c")))
    assert str(packed) in str(info.value)


def test_empty_class_folder(tmp_path: Path) -> None:
    fake_data.make_image_folder(tmp_path / "d")
    empty = fake_data.make_empty_class(tmp_path / "d", "train", "zebra")
    with pytest.raises(DatasetError, match="holds no images") as info:
        _setup(CIFAR10DataModule(root=str(tmp_path / "d"), cache_dir=str(tmp_path / "c")))
    assert str(empty) in str(info.value)


def test_split_class_mismatch(tmp_path: Path) -> None:
    fake_data.make_image_folder(tmp_path / "d")
    fake_data.write_image(tmp_path / "d" / "test" / "zebra" / "0.jpg")
    with pytest.raises(DatasetError, match="zebra") as info:
        _setup(CIFAR10DataModule(root=str(tmp_path / "d"), cache_dir=str(tmp_path / "c")))
    assert str(tmp_path / "d" / "test") in str(info.value)


@pytest.mark.parametrize("in_memory", [True, False])
def test_corrupt_image_is_named(tmp_path: Path, in_memory: bool) -> None:
    dataset = fake_data.make_image_folder(tmp_path / "d", {"train": 3, "test": 1})
    bad = fake_data.corrupt_image(dataset / "test" / "bird" / "0000.jpg")
    dm = CIFAR10DataModule(
        root=str(dataset), in_memory=in_memory, num_workers=0, cache_dir=str(tmp_path / "c")
    )
    with pytest.raises(DatasetError, match="cannot decode") as info:
        dm.setup("test")
        for _ in dm.test_dataloader():
            pass
    assert str(bad) in str(info.value)


def test_truncated_archive(tmp_path: Path) -> None:
    source = fake_data.make_image_folder(tmp_path / "src" / "cifar10", {"train": 20, "test": 5})
    packed = fake_data.truncate(fake_data.make_archive(source, tmp_path / "cifar.tar.gz"), keep=0.6)
    with pytest.raises(DatasetError, match="truncated or corrupt") as info:
        _setup(CIFAR10DataModule(root=str(packed), cache_dir=str(tmp_path / "c")))
    assert str(packed) in str(info.value)


def test_corrupt_pickled_batch(tmp_path: Path) -> None:
    folder = fake_data.make_cifar_batches(tmp_path / "d")
    fake_data.truncate(folder / "data_batch_3", keep=0.3)
    with pytest.raises(DatasetError, match="cifar-10-batches-py") as info:
        _setup(CIFAR10DataModule(root=str(tmp_path / "d")))
    assert "download=True" in str(info.value)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        CIFAR10DataModule(val_fraction=1.5)
    with pytest.raises(ValueError, match="train_subset"):
        CIFAR10DataModule(train_subset=0)
    with pytest.raises(ValueError, match="positive"):
        CIFAR10DataModule(batch_size=0)
