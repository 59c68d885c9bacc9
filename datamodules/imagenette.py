"""Imagenette and Imagewoof (fastai's 10-class ImageNet subsets) and ImageNet itself, as image folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from torchvision.datasets.utils import download_and_extract_archive

from datamodules.base import ImageFolderDataModule
from datamodules.errors import DatasetError
from datamodules.folder import Split, is_image_file

__all__ = ["ImageNetDataModule", "ImagenetteDataModule", "ImagewoofDataModule"]

FASTAI_URL: str = "https://s3.amazonaws.com/fast-ai-imageclas"

IMAGENETTE_NAMES: dict[str, str] = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888257": "parachute",
}

IMAGEWOOF_NAMES: dict[str, str] = {
    "n02086240": "Shih-Tzu",
    "n02087394": "Rhodesian ridgeback",
    "n02088364": "beagle",
    "n02089973": "English foxhound",
    "n02093754": "Border terrier",
    "n02096294": "Australian terrier",
    "n02099601": "golden retriever",
    "n02105641": "Old English sheepdog",
    "n02111889": "Samoyed",
    "n02115641": "dingo",
}


class _FastaiSubsetDataModule(ImageFolderDataModule):
    """fastai layout ``train/<wnid>/*.JPEG`` + ``val/<wnid>/*.JPEG``; ``classes`` are the sorted wnids."""

    eval_split_names: ClassVar[tuple[str, ...]] = ("val",)
    nominal_num_classes: ClassVar[int] = 10
    supports_download: ClassVar[bool] = True
    archive_name: ClassVar[str] = ""
    wnid_names: ClassVar[dict[str, str]] = {}

    @property
    def class_names(self) -> list[str]:
        """Human-readable names of :attr:`classes` (the wnid itself where unknown)."""
        return [self.wnid_names.get(wnid, wnid) for wnid in self.classes]

    def download_dataset(self, root: Path) -> None:
        """Download and extract fastai's ``<name>-160.tgz`` (shorter side 160 px) into ``root``."""
        download_and_extract_archive(f"{FASTAI_URL}/{self.archive_name}", download_root=str(root))


class ImagenetteDataModule(_FastaiSubsetDataModule):
    """Imagenette: 10 easy ImageNet classes (9,469 train / 3,925 val images in the imagenette2 split).

    ``root`` is a folder or archive in fastai's layout; ``download=True`` fetches ``imagenette2-160.tgz``.
    Training: ``RandomResizedCrop(image_size)`` + flip; evaluation: resize to ``int(image_size / 0.875)``
    + centre crop; ImageNet normalisation. In memory, training images are stored as
    ``int(image_size / 0.875)`` squares and evaluation images already resized and centre-cropped (see
    :func:`datamodules.transforms.imagenet_train_batch` for the approximation this implies).

    See :class:`~datamodules.base.ImageFolderDataModule` for the arguments.
    """

    archive_name: ClassVar[str] = "imagenette2-160.tgz"
    known_dataset: ClassVar[str | None] = "Imagenette"
    wnid_names: ClassVar[dict[str, str]] = IMAGENETTE_NAMES

    def __init__(self, root: str = "../shared/data/imagenette-128.tar.gz", image_size: int = 128, **kwargs: Any) -> None:
        super().__init__(root=root, image_size=image_size, **kwargs)


class ImagewoofDataModule(_FastaiSubsetDataModule):
    """Imagewoof: 10 dog breeds from ImageNet (9,025 train / 3,929 val images in the imagewoof2 split).

    Same layout and transforms as :class:`ImagenetteDataModule`; ``download=True`` fetches
    ``imagewoof2-160.tgz``.
    """

    archive_name: ClassVar[str] = "imagewoof2-160.tgz"
    known_dataset: ClassVar[str | None] = "Imagewoof"
    wnid_names: ClassVar[dict[str, str]] = IMAGEWOOF_NAMES

    def __init__(self, root: str = "../shared/data/imagewoof-128.tar.gz", image_size: int = 128, **kwargs: Any) -> None:
        super().__init__(root=root, image_size=image_size, **kwargs)


class ImageNetDataModule(ImageFolderDataModule):
    """ImageNet-1k as ``train/<wnid>/*.JPEG`` + ``val/<wnid>/*.JPEG``, always streamed from disk.

    No download (the dataset needs a licence); ``val/`` must already be sorted into class folders.
    Transforms as :class:`ImagenetteDataModule`, at ``image_size`` 224 by default.

    See :class:`~datamodules.base.ImageFolderDataModule` for the arguments; ``in_memory`` must be False.
    """

    eval_split_names: ClassVar[tuple[str, ...]] = ("val",)
    nominal_num_classes: ClassVar[int] = 1000
    supports_in_memory: ClassVar[bool] = False

    def __init__(
        self,
        root: str = "data/imagenet",
        image_size: int = 224,
        in_memory: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, image_size=image_size, in_memory=in_memory, **kwargs)

    def load_splits(self, dataset_dir: Path) -> tuple[Split, Split]:
        val_dir = dataset_dir / "val"
        loose = [entry.name for entry in val_dir.iterdir() if entry.is_file() and is_image_file(entry.name)]
        if loose:
            raise DatasetError(
                f"{val_dir} holds images directly ({loose[0]}, ...) but must hold one folder per class "
                f"(val/<wnid>/*.JPEG); sort the validation images into wnid folders first"
            )
        return super().load_splits(dataset_dir)
