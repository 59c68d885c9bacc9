"""Image-folder splits (``<split>/<class>/<image>``) and deterministic, class-stratified index selection."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor
from torchvision.datasets.folder import make_dataset

from datamodules.errors import DatasetError

__all__ = [
    "IMAGE_EXTENSIONS",
    "Split",
    "check_same_classes",
    "find_class_dirs",
    "has_split_dirs",
    "is_image_file",
    "scan_image_folder",
    "stratified_split",
    "stratified_subset",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class Split:
    """Labelled images of one split, as file paths or as an already decoded uint8 tensor.

    Attributes:
        classes: class names, index = label.
        labels: int64 labels, shape ``(N,)``.
        paths: image files (``None`` when ``images`` is given).
        images: uint8 images ``(N, 3, H, W)`` (``None`` when ``paths`` is given).
        location: folder or file the split was read from, for messages.
    """

    classes: list[str]
    labels: Tensor
    paths: list[str] | None = None
    images: Tensor | None = None
    location: str = field(default="")

    def __len__(self) -> int:
        return int(self.labels.numel())

    def subset(self, indices: Tensor | None = None) -> Split:
        """Return the split restricted to ``indices`` (all of it when ``None``)."""
        if indices is None:
            return self
        paths = [self.paths[i] for i in indices.tolist()] if self.paths is not None else None
        images = self.images[indices] if self.images is not None else None
        return replace(self, labels=self.labels[indices], paths=paths, images=images)


def is_image_file(path: str = "") -> bool:
    """Whether ``path`` is a visible ``.jpg``/``.jpeg``/``.png`` file (any case); hidden files are junk."""
    name = os.path.basename(path)
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def find_class_dirs(split_dir: str | Path = "") -> list[str]:
    """Sorted names of the visible sub-folders of ``split_dir`` (ImageFolder class order)."""
    return sorted(
        entry.name for entry in os.scandir(split_dir) if entry.is_dir() and not entry.name.startswith(".")
    )


def has_split_dirs(
    folder: str | Path = "",
    train_names: tuple[str, ...] = ("train",),
    eval_names: tuple[str, ...] = ("val", "test"),
) -> bool:
    """Whether ``folder`` holds a training split folder and an evaluation split folder."""
    folder = Path(folder)
    return any((folder / n).is_dir() for n in train_names) and any((folder / n).is_dir() for n in eval_names)


def scan_image_folder(split_dir: str | Path = "") -> Split:
    """List the images of an ImageFolder split ``split_dir/<class>/**/<image>``.

    Files other than jpg/jpeg/png (``.DS_Store``, csv, ...) are ignored.

    Raises:
        DatasetError: the folder has no class folders, or a class folder holds no image.
    """
    split_dir = Path(split_dir)
    classes = find_class_dirs(split_dir)
    if not classes:
        raise DatasetError(
            f"{split_dir} holds no class folders; expected {split_dir}/<class name>/<image>.jpg "
            f"(one folder per class)"
        )
    class_to_idx = {name: i for i, name in enumerate(classes)}
    samples = make_dataset(split_dir, class_to_idx, is_valid_file=is_image_file, allow_empty=True)
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    counts = torch.bincount(labels, minlength=len(classes))
    empty = [classes[i] for i in torch.nonzero(counts == 0).flatten().tolist()]
    if empty:
        raise DatasetError(
            f"class folder {split_dir / empty[0]} holds no images (.jpg/.jpeg/.png)"
            + (f", nor do {len(empty) - 1} other class folders" if len(empty) > 1 else "")
            + "; add images to it or delete the folder"
        )
    return Split(classes=classes, labels=labels, paths=[path for path, _ in samples], location=str(split_dir))


def check_same_classes(train: Split, evaluation: Split) -> None:
    """Raise :class:`DatasetError` unless both splits have the same class folders."""
    if train.classes != evaluation.classes:
        only_train = sorted(set(train.classes) - set(evaluation.classes))
        only_eval = sorted(set(evaluation.classes) - set(train.classes))
        raise DatasetError(
            f"the splits disagree on the classes: only in {train.location}: {only_train}, only in "
            f"{evaluation.location}: {only_eval}; both splits need the same class folders"
        )


def _class_ranks(labels: Tensor, generator: torch.Generator) -> Tensor:
    """Rank of each sample among the shuffled samples of its class."""
    perm = torch.randperm(labels.numel(), generator=generator)
    order = perm[torch.argsort(labels[perm], stable=True)]  # grouped by class, shuffled within
    sorted_labels = labels[order]
    starts = torch.searchsorted(sorted_labels, sorted_labels, right=False)
    ranks = torch.empty_like(labels)
    ranks[order] = torch.arange(labels.numel()) - starts
    return ranks


def stratified_subset(labels: Tensor, size: int = 0, seed: int = 0) -> Tensor:
    """Pick ``size`` indices, as evenly spread over the classes as their sizes allow.

    Classes are dealt round-robin from per-class shuffles, so every class gets ``size // K`` or one more
    image (small classes give what they have). Deterministic given ``seed``.

    Returns:
        Sorted int64 indices into ``labels``; all of them if ``size >= len(labels)``.
    """
    if size <= 0:
        raise ValueError(f"subset size must be positive, got {size}")
    if size >= labels.numel():
        return torch.arange(labels.numel())
    generator = torch.Generator().manual_seed(seed)
    ranks = _class_ranks(labels, generator)
    order = torch.argsort(ranks * (int(labels.max()) + 1) + labels)
    return torch.sort(order[:size]).values


def stratified_split(labels: Tensor, fraction: float = 0.1, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Split indices into (kept, held out) with ``round(fraction * n_c)`` held out per class.

    Every class with at least two images keeps one and holds out at least one. Deterministic given ``seed``.

    Returns:
        Sorted int64 index tensors ``(kept, held_out)``.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    ranks = _class_ranks(labels, generator)
    counts = torch.bincount(labels)
    n_out = torch.round(counts.double() * fraction).long()
    n_out = torch.where(counts >= 2, n_out.clamp(1, None).minimum(counts - 1), torch.zeros_like(counts))
    held = ranks < n_out[labels]
    return torch.nonzero(~held).flatten(), torch.nonzero(held).flatten()
