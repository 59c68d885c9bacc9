"""Training throughput in images per second, logged once per epoch as ``train/img_per_s``.

Lightning's ``ThroughputMonitor`` reports per-step rates to the logger only; this callback keeps one
number per epoch in the metrics (and hence in ``summary.json``). Validation time is excluded: the clock
runs from each training batch's start to its end.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L


def images_per_second(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 else 0.0


class Throughput(L.Callback):
    def __init__(self) -> None:
        self.images = 0
        self.seconds = 0.0
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.images, self.seconds = 0, 0.0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.seconds += time.perf_counter() - self._start
        self.images += int(batch[0].shape[0])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.log("train/img_per_s", images_per_second(self.images, self.seconds), on_epoch=True)
