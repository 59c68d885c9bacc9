"""Float batches of a split, as a network outside ``fit`` wants them (calibration, statistics, accuracy)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor


def float_batches(
    data: Any, split: str = "test", limit: int | None = None, device: torch.device | str | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """Normalised float ``(images, labels)`` batches of a set-up datamodule's ``split`` (``train``, ``val``
    or ``test``) with the evaluation transform (no augmentation), on ``device`` (where the loader puts
    them: ``None``), at most ``limit`` images (all: ``None``)."""
    loader = {"train": data.train_dataloader, "val": data.val_dataloader, "test": data.test_dataloader}[split]()
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
