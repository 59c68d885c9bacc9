"""Map-style datasets: uint8 tensors served in whole batches, and per-sample streaming with transforms."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from datamodules.memory import read_image

__all__ = ["ImageFileDataset", "ImageTensorDataset", "InMemoryImageDataset", "collate_batch"]

Transform = Callable[[Tensor], Tensor]


class InMemoryImageDataset(Dataset):
    """Decoded uint8 images ``(N, 3, H, W)`` and int64 labels, indexed a whole batch at a time.

    ``__getitems__`` lets the DataLoader fetch a batch with one tensor index instead of N item calls;
    use it with :func:`collate_batch`. Augmentation and normalisation happen later, on the device.
    """

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"expected uint8 (N,3,H,W) images and N labels, got {images.shape}, {labels.shape}"
            )
        self.images = images.contiguous()
        self.labels = labels.to(torch.int64)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(indices, dtype=torch.int64)
        return self.images[index], self.labels[index]


def collate_batch(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Collate function for :class:`InMemoryImageDataset`: its ``__getitems__`` already returns a batch."""
    return batch


class ImageFileDataset(Dataset):
    """Image files decoded one at a time with ``torchvision.io`` and passed through a transform.

    Like ``torchvision.datasets.ImageFolder`` but over a given file list (so subsets and held-out
    splits need no copying) and decoding to tensors, which ``transforms.v2`` handles fastest.
    """

    def __init__(self, paths: list[str], labels: Tensor, transform: Transform | None = None) -> None:
        self.paths = list(paths)
        self.labels = labels.to(torch.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = read_image(self.paths[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]


class ImageTensorDataset(Dataset):
    """Already decoded uint8 images ``(N, 3, H, W)`` passed one at a time through a transform."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Transform | None = None) -> None:
        self.images = images
        self.labels = labels.to(torch.int64)
        self.transform = transform

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]
