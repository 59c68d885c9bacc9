"""The Throughput callback times whole training intervals: data fetch, transfer and batch augmentation
included, warm-up batches and validation excluded (structural checks, no timing thresholds)."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import callbacks.throughput as throughput_module
from callbacks.throughput import Throughput, timed_from

FETCH_S, AUGMENT_S, STEP_S, VAL_S, BATCH = 0.02, 0.01, 0.004, 0.5, 4


class FakeClock:
    """A clock that moves only when the test's loader, augmentation or step "waits"."""

    def __init__(self) -> None:
        self.now = 0.0

    def wait(self, seconds: float) -> None:
        self.now += seconds

    def perf_counter(self) -> float:
        return self.now


class SlowDataset(Dataset):
    """Random images whose every batch takes ``FETCH_S`` to fetch (a slow loader)."""

    def __init__(self, n: int, wait: Callable[[float], None] = time.sleep, seconds: float = FETCH_S) -> None:
        self.x, self.y = torch.randn(n, 8), torch.randint(0, 2, (n,))
        self.wait, self.seconds = wait, seconds

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]

    def __getitems__(self, indices):
        self.wait(self.seconds)
        index = torch.as_tensor(indices)
        return self.x[index], self.y[index]


class SlowData(L.LightningDataModule):
    """A datamodule whose per-batch augmentation (``on_after_batch_transfer``) takes ``AUGMENT_S``."""

    def __init__(self, batches: int, wait: Callable[[float], None] = time.sleep) -> None:
        super().__init__()
        self.batches, self.wait = batches, wait

    def train_dataloader(self) -> DataLoader:
        return DataLoader(SlowDataset(self.batches * BATCH, self.wait), batch_size=BATCH, collate_fn=lambda b: b)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(SlowDataset(BATCH, self.wait, VAL_S), batch_size=BATCH, collate_fn=lambda b: b)

    def on_after_batch_transfer(self, batch, dataloader_idx: int = 0):
        if self.trainer is not None and self.trainer.training:
            self.wait(AUGMENT_S)
        return batch


class Linear(L.LightningModule):
    def __init__(self, wait: Callable[[float], None] = time.sleep) -> None:
        super().__init__()
        self.layer = nn.Linear(8, 2)
        self.wait = wait

    def training_step(self, batch, batch_idx):
        self.wait(STEP_S)
        x, y = batch
        return nn.functional.cross_entropy(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(callback: Throughput, batches: int, wait: Callable[[float], None] = time.sleep,
        **trainer_kwargs) -> L.Trainer:
    trainer = L.Trainer(max_epochs=1, callbacks=[callback], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        num_sanity_val_steps=0, **trainer_kwargs)
    trainer.fit(Linear(wait), SlowData(batches, wait))
    return trainer


@pytest.mark.parametrize("warmup", [0, 2])
def test_interval_covers_fetch_and_augmentation(warmup: int) -> None:
    batches = 6
    callback = Throughput(warmup=warmup)
    trainer = fit(callback, batches, limit_val_batches=0)
    timed = batches - warmup
    assert callback.images == timed * BATCH
    # every timed interval holds one fetch and one augmentation, outside the step-only window
    assert callback.seconds - callback.compute_seconds >= timed * (FETCH_S + AUGMENT_S)
    metrics = trainer.callback_metrics
    assert float(metrics["train/img_per_s"]) == pytest.approx(callback.images / callback.seconds, rel=1e-5)
    assert float(metrics["train/compute_img_per_s"]) > float(metrics["train/img_per_s"])


@pytest.mark.parametrize("warmup", [0, 1, 3])
def test_exact_intervals_on_a_fake_clock(monkeypatch: pytest.MonkeyPatch, warmup: int) -> None:
    """On a clock that moves only in the loader, the augmentation, the step and validation: each timed
    batch costs exactly fetch + augmentation + step, the compute-only figure exactly the step, and a
    validation run in the middle of the epoch costs nothing."""
    clock = FakeClock()
    monkeypatch.setattr(throughput_module, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    batches = 6
    callback = Throughput(warmup=warmup)
    fit(callback, batches, clock.wait, val_check_interval=3)
    timed = batches - warmup
    assert callback.images == timed * BATCH
    assert callback.seconds == pytest.approx(timed * (FETCH_S + AUGMENT_S + STEP_S))
    assert callback.compute_seconds == pytest.approx(timed * STEP_S)
    assert clock.now >= 2 * VAL_S  # validation did run, mid-epoch and at the end


def test_short_epochs_time_from_the_second_batch() -> None:
    assert timed_from(5, 3) == 1
    assert timed_from(5, 1) == 0
    assert timed_from(5, 100) == 5
    assert timed_from(0, float("inf")) == 0
    callback = Throughput(warmup=5)
    fit(callback, 3, limit_val_batches=0)
    assert callback.images == 2 * BATCH


def test_negative_warmup_is_refused() -> None:
    with pytest.raises(ValueError, match="warmup"):
        Throughput(warmup=-1)
