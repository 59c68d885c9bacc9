"""CIFAR-10 from torchvision's ``cifar-10-batches-py`` pickles or from an image-folder layout."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor
from torchvision.datasets import CIFAR10

from datamodules import transforms as T
from datamodules.base import ImageFolderDataModule
from datamodules.errors import DatasetError
from datamodules.folder import Split, has_split_dirs

__all__ = ["CIFAR10DataModule"]


class _CIFAR10Batches(CIFAR10):
    """torchvision's CIFAR-10 reader, checking the batch files by presence instead of MD5 sums.

    The checksums still guard the download (``tgz_md5``); skipping them when reading lets batches
    rewritten in the same format load, and reading errors are reported as :class:`DatasetError`.
    """

    train_list: ClassVar[list[list[Any]]] = [[name, None] for name, _ in CIFAR10.train_list]
    test_list: ClassVar[list[list[Any]]] = [[name, None] for name, _ in CIFAR10.test_list]
    meta: ClassVar[dict[str, Any]] = {**CIFAR10.meta, "md5": None}


def _holds_batches(folder: Path) -> bool:
    """Whether ``folder`` is, or directly contains, a ``cifar-10-batches-py`` folder."""
    base = CIFAR10.base_folder
    return (folder / base / "data_batch_1").is_file() or (
        folder.name == base and (folder / "data_batch_1").is_file()
    )


def _read_batches(folder: Path, train: bool = True) -> Split:
    """Read one split of the pickled batches in (or at) ``folder`` into a decoded :class:`Split`."""
    root = folder.parent if folder.name == CIFAR10.base_folder else folder
    location = root / CIFAR10.base_folder
    try:
        dataset = _CIFAR10Batches(str(root), train=train)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError, RuntimeError) as err:
        raise DatasetError(
            f"cannot read the CIFAR-10 batches in {location}: {err!r}; it needs data_batch_1..5, test_batch "
            f"and batches.meta in torchvision's format, download them again with download=True"
        ) from err
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    labels = torch.as_tensor(dataset.targets, dtype=torch.int64)
    return Split(classes=list(dataset.classes), labels=labels, images=images, location=str(location))


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
    supports_download: ClassVar[bool] = True
    mean: ClassVar[tuple[float, float, float]] = T.CIFAR10_MEAN
    std: ClassVar[tuple[float, float, float]] = T.CIFAR10_STD

    def __init__(
        self,
        root: str = "../shared/data/cifar10-jpg.tar.gz",
        image_size: int = 32,
        **kwargs: Any,
    ) -> None:
        # Only the defaults differ; every other argument is ImageFolderDataModule's (the CLI
        # follows **kwargs into the parent's signature).
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
        _CIFAR10Batches(str(root), train=True, download=True)

    def stored_size(self, source: str = "train") -> tuple[int, int]:
        return T.CIFAR_NATIVE_SIZE, T.CIFAR_NATIVE_SIZE

    def train_transform(self) -> Any:
        return T.cifar_train_transform(self.hparams.image_size, self.mean, self.std)

    def eval_transform(self) -> Any:
        return T.cifar_eval_transform(self.hparams.image_size, self.mean, self.std)

    def train_batch_transform(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return T.cifar_train_batch(images, self.hparams.image_size, self.mean, self.std, generator)

    def eval_batch_transform(self, images: Tensor) -> Tensor:
        return T.cifar_eval_batch(images, self.hparams.image_size, self.mean, self.std)
