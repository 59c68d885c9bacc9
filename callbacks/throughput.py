"""Training throughput in images per second, logged once per epoch.

``train/img_per_s`` is end-to-end: wall time from the end of the last warm-up batch to the end of the
epoch's last training batch, divided by the images of the batches in between. Each such interval holds
one batch's data fetch, its transfer to the device, the augmentation done in the datamodule's
``on_after_batch_transfer``, the forward and backward passes and the optimiser step — everything a
training epoch costs except validation (paused out if it runs mid-epoch) and the checkpoint written
after the epoch. The first ``warmup`` batches (worker start-up, first-call allocations, autotuning)
are left out; an epoch with ``warmup`` batches or fewer is timed from its second batch on.

``train/compute_img_per_s`` is the compute-only figure over the same batches: the clock runs from each
batch's ``on_train_batch_start`` to its end, leaving out fetch, transfer and augmentation. On a CUDA
device the clock is read after a synchronise, so queued kernels are not left out.

Lightning's ``ThroughputMonitor`` reports per-step rates to the logger only; this callback keeps one
number per epoch in the metrics (and hence in ``summary.json``).

Start-up measurement: with ``TINYML_FIRST_BATCH_FILE`` set, the wall-clock time (``time.time()``) at the
start of the process's first training batch is written to that file (``experiments/bench/startup.py``
reads it).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

#: Environment variable naming the file that receives the wall-clock time of the first training batch.
FIRST_BATCH_ENV = "TINYML_FIRST_BATCH_FILE"


def note_first_batch() -> None:
    """Write ``time.time()`` to the file named by ``$TINYML_FIRST_BATCH_FILE`` (nothing if unset)."""
    path = os.environ.get(FIRST_BATCH_ENV)
    if path:
        Path(path).write_text(f"{time.time():.6f}\n")


def images_per_second(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 else 0.0


def timed_from(warmup: int, num_batches: int | float) -> int:
    """Index of the first timed batch: ``warmup``, or 1 when the epoch is too short for it."""
    if num_batches != float("inf") and num_batches <= warmup:
        return min(1, max(int(num_batches) - 1, 0))
    return warmup


class Throughput(L.Callback):
    """Log ``train/img_per_s`` (end to end) and ``train/compute_img_per_s`` (steps only) every epoch.

    Args:
        warmup: training batches at the start of each epoch left out of both figures.

    After each epoch ``images``, ``seconds`` (end to end) and ``compute_seconds`` hold its totals.
    """

    def __init__(self, warmup: int = 5) -> None:
        if warmup < 0:
            raise ValueError(f"Throughput: warmup must be >= 0, got {warmup}")
        self.warmup = warmup
        self.images = 0
        self.seconds = 0.0
        self.compute_seconds = 0.0
        self._first = warmup
        self._clock: float | None = None  # end of the previous batch (or of the warm-up)
        self._step_start = 0.0
        self._paused_at: float | None = None
        self._first_batch_seen = False

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.images, self.seconds, self.compute_seconds = 0, 0.0, 0.0
        self._first = timed_from(self.warmup, trainer.num_training_batches)
        # warm-up 0: the clock starts here, so the first fetch (iterator and worker start-up) counts too
        self._clock = time.perf_counter() if self._first == 0 else None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if not self._first_batch_seen:
            self._first_batch_seen = True
            note_first_batch()
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if pl_module.device.type == "cuda":  # read the clock when the step's kernels are done
            torch.cuda.synchronize(pl_module.device)
        now = time.perf_counter()
        if batch_idx >= self._first and self._clock is not None:
            self.seconds += now - self._clock
            self.compute_seconds += now - self._step_start
            self.images += int(batch[0].shape[0])
        if batch_idx + 1 >= self._first:
            self._clock = now

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._clock is not None and not trainer.sanity_checking:  # validation inside a training epoch
            self._paused_at = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._paused_at is not None and self._clock is not None:
            self._clock += time.perf_counter() - self._paused_at
        self._paused_at = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.images == 0:
            return
        pl_module.log("train/img_per_s", images_per_second(self.images, self.seconds), on_epoch=True)
        pl_module.log("train/compute_img_per_s", images_per_second(self.images, self.compute_seconds),
                      on_epoch=True)
