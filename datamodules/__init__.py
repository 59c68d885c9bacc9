"""LightningDataModules for the image-classification datasets of this project.

``CIFAR10DataModule``, ``ImagenetteDataModule`` and ``ImagewoofDataModule`` read a folder or a
``.tar``/``.tar.gz``/``.tgz`` archive (extracted once into a cache, see :func:`resolve_root`) and by
default keep the decoded images in memory, augmenting whole batches on the training device.
``ImageNetDataModule`` streams from disk. Every bad input raises :class:`DatasetError`.
"""

from datamodules.archive import resolve_root
from datamodules.base import ImageFolderDataModule
from datamodules.cifar import CIFAR10DataModule
from datamodules.errors import DatasetError
from datamodules.imagenette import ImageNetDataModule, ImagenetteDataModule, ImagewoofDataModule

__all__ = [
    "CIFAR10DataModule",
    "DatasetError",
    "ImageFolderDataModule",
    "ImageNetDataModule",
    "ImagenetteDataModule",
    "ImagewoofDataModule",
    "resolve_root",
]
