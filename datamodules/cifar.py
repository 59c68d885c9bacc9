"""CIFAR-10 from torchvision's ``cifar-10-batches-py`` pickles or from an image-folder layout."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import download_and_extract_archive

from datamodules import transforms as T
from datamodules.base import ImageFolderDataModule
from datamodules.errors import DatasetError
from datamodules.folder import Split, has_split_dirs
from datamodules.safe_pickle import UnsafePickleError, load_batch

__all__ = ["CIFAR10DataModule"]


#: Files of torchvision's ``cifar-10-batches-py`` folder.
TRAIN_BATCHES: tuple[str, ...] = tuple(name for name, _ in CIFAR10.train_list)
TEST_BATCHES: tuple[str, ...] = tuple(name for name, _ in CIFAR10.test_list)
META_FILE: str = CIFAR10.meta["filename"]
CIFAR_SIDE: int = 32


def _holds_batches(folder: Path) -> bool:
    """Whether ``folder`` is, or directly contains, a ``cifar-10-batches-py`` folder."""
    base = CIFAR10.base_folder
    return (folder / base / "data_batch_1").is_file() or (
        folder.name == base and (folder / "data_batch_1").is_file()
    )


def _batch_images(content: Any, num_classes: int) -> tuple[np.ndarray, list[int]]:
    """The (N, 3072) uint8 rows and N labels of one batch dict, checked."""
    if not isinstance(content, dict) or "data" not in content or not (
        "labels" in content or "fine_labels" in content
    ):
        raise ValueError("expected a dict with 'data' and 'labels'")
    data, labels = content["data"], list(content.get("labels", content.get("fine_labels", [])))
    side = CIFAR_SIDE * CIFAR_SIDE * 3
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != side:
        raise ValueError(f"'data' must be a uint8 array of shape (N, {side})")
    if len(labels) != data.shape[0] or not all(isinstance(y, int) and 0 <= y < num_classes for y in labels):
        raise ValueError(f"'labels' must hold {data.shape[0]} integers in [0, {num_classes})")
    return data, labels


def _read_batches(folder: Path, train: bool = True) -> Split:
    """Read one split of the pickled batches in (or at) ``folder`` into a decoded :class:`Split`.

    The files are unpickled by :func:`~datamodules.safe_pickle.load_batch`, which runs no code from them.
    """
    root = folder.parent if folder.name == CIFAR10.base_folder else folder
    location = root / CIFAR10.base_folder
    path = location / META_FILE
    try:
        meta = load_batch(path)
        classes = [str(name) for name in meta["label_names"]]
        rows, labels = [], []
        for name in TRAIN_BATCHES if train else TEST_BATCHES:
            path = location / name
            data, batch_labels = _batch_images(load_batch(path), len(classes))
            rows.append(data)
            labels += batch_labels
    except UnsafePickleError as err:
        raise DatasetError(
            f"refusing to read {path}: {err}, so it could run code when unpickled. The archive or folder "
            f"{location} is not a genuine CIFAR-10 download; do not use it (download=True fetches the "
            f"checksummed original)"
        ) from err
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as err:
        raise DatasetError(
            f"cannot read the CIFAR-10 batch {path}: {err!r}; {location} needs data_batch_1..5, test_batch "
            f"and batches.meta in torchvision's format, download them again with download=True"
        ) from err
    images = torch.from_numpy(np.concatenate(rows).reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE))
    return Split(classes=classes, labels=torch.as_tensor(labels, dtype=torch.int64), images=images,
                 location=str(location))


class CIFAR10DataModule(ImageFolderDataModule):
    """CIFAR-10 (10 classes, 32x32), at ``image_size`` 32 or upscaled (e.g. 224).

    ``root`` may be (a) a folder holding torchvision's ``cifar-10-batches-py`` (``download=True``
    downloads it there when missing), (b) an image folder ``train/<class>/*`` + ``test/<class>/*``,
    possibly one folder down, or (c) a ``.tar``/``.tar.gz``/``.tgz`` archive of either. The format is
    detected. Training: random crop with 4-pixel padding + horizontal flip at 32 px, then a bilinear
    resize to ``image_size``; evaluation: resize to ``image_size``. Normalised with the CIFAR-10 statistics.

    See :class:`~datamodules.base.ImageFolderDataModule` for the arguments.
    """

    eval_split_names: ClassVar[tuple[str, ...]] = ("test", "val")
    nominal_num_classes: ClassVar[int] = 10
    known_dataset: ClassVar[str | None] = "CIFAR-10"
    supports_download: ClassVar[bool] = True
    mean: ClassVar[tuple[float, float, float]] = T.CIFAR10_MEAN
    std: ClassVar[tuple[float, float, float]] = T.CIFAR10_STD
    transforms: ClassVar[T.TransformFamily] = T.CIFAR_TRANSFORMS

    def __init__(self, root: str = "../shared/data/cifar10-jpg.tar.gz", image_size: int = 32, **kwargs: Any) -> None:
        super().__init__(root=root, image_size=image_size, **kwargs)

    def has_layout(self, folder: Path) -> bool:
        return _holds_batches(folder) or has_split_dirs(folder, self.train_split_names, self.eval_split_names)

    def expected_layout(self) -> str:
        return f"{CIFAR10.base_folder}/ (torchvision's pickled batches) or {super().expected_layout()}"

    def load_splits(self, dataset_dir: Path) -> tuple[Split, Split]:
        if _holds_batches(dataset_dir):
            return _read_batches(dataset_dir, train=True), _read_batches(dataset_dir, train=False)
        return super().load_splits(dataset_dir)

    def download_dataset(self, root: Path) -> None:
        """Download torchvision's ``cifar-10-python.tar.gz`` (checked against its MD5) into ``root``."""
        download_and_extract_archive(CIFAR10.url, str(root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)

    def stored_size(self, source: str = "train") -> tuple[int, int]:
        return T.CIFAR_NATIVE_SIZE, T.CIFAR_NATIVE_SIZE
