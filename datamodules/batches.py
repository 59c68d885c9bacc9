"""Float batches of a split, as a network outside ``fit`` wants them (calibration, statistics, accuracy)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from datamodules.folder import stratified_subset


def float_batches(
    data: Any, split: str = "test", limit: int | None = None, device: torch.device | str | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """Normalised float ``(images, labels)`` batches of a set-up datamodule's ``split`` (``train``, ``val``
    or ``test``) with the evaluation transform (no augmentation), on ``device`` (where the loader puts
    them: ``None``), at most ``limit`` images (all: ``None``).

    A ``limit`` below the size of ``val`` or ``test`` takes a class-stratified, seeded sample of it
    (:func:`~datamodules.folder.stratified_subset`, the datamodule's ``seed``): those loaders read the
    folder in class order, so their first ``limit`` images would hold a few classes only. ``train`` is
    read in its loader's shuffled order (seeded), whose first images already mix the classes."""
    loader = {"train": data.train_dataloader, "val": data.val_dataloader, "test": data.test_dataloader}[split]()
    labels = getattr(loader.dataset, "labels", None)
    if split != "train" and limit is not None and labels is not None and limit < len(labels):
        seed = int(getattr(getattr(data, "hparams", None), "seed", 0) or 0)
        loader = DataLoader(Subset(loader.dataset, stratified_subset(labels, limit, seed).tolist()),
                            batch_size=loader.batch_size, collate_fn=loader.collate_fn, num_workers=0)
    seen = 0
    for images, labels in loader:
        if limit is not None and seen >= limit:
            return
        if device is not None:
            images = images.to(device)
        if images.dtype == torch.uint8:  # the in-memory path: transformed on the device
            images = data.transform_batch(images, train=False)
        take = len(labels) if limit is None else min(len(labels), limit - seen)
        seen += take
        yield images[:take].float(), labels[:take]
