"""Progress for a terminal and for a log file: the rich bar when stdout is a terminal, otherwise one plain
line per epoch (nohup, a batch scheduler, CI), which a file keeps and ``grep``/``tail`` read.

    epoch 3/16 | stage baseline | loss 1.2345 | val acc 45.67 % | 1234 img/s | ETA 0:05:12
"""

from __future__ import annotations

import datetime
import sys
import time
from typing import Any, TextIO

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress import ProgressBar

from callbacks.pruning_base import pruning_callbacks


def stage_name(trainer: L.Trainer, pl_module: L.LightningModule) -> str:
    """``sweep`` while auxiliary heads train, ``after <Callback>`` once a pruning callback's schedule has
    begun (the latest to begin), else ``baseline``."""
    if getattr(pl_module, "aux_heads", None) is not None:
        return "sweep"
    begun = [cb for cb in pruning_callbacks(trainer) if cb.first_epoch <= trainer.current_epoch]
    return f"after {type(max(begun, key=lambda cb: cb.first_epoch)).__name__}" if begun else "baseline"


def eta_seconds(elapsed: float, epochs_done: int, epochs_total: int) -> float | None:
    """Time left at the mean epoch time so far; ``None`` before the first epoch has ended."""
    return elapsed / epochs_done * (epochs_total - epochs_done) if epochs_done > 0 else None


def metric(metrics: dict[str, Any], *keys: str) -> float | None:
    """The first of ``keys`` the run has logged, as a float (``None`` when none is)."""
    value = next((metrics[k] for k in keys if k in metrics), None)
    return None if value is None else float(value)


def epoch_line(epoch: int, max_epochs: int, stage: str, metrics: dict[str, Any], eta: float | None) -> str:
    """The plain line of one finished epoch (a field the run has not logged reads ``—``)."""
    loss = metric(metrics, "train/loss_epoch", "train/loss")
    acc = metric(metrics, "val/acc")
    speed = metric(metrics, "train/img_per_s")
    fields = [
        f"epoch {epoch + 1}/{max_epochs}",
        f"stage {stage}",
        "loss —" if loss is None else f"loss {loss:.4f}",
        "val acc —" if acc is None else f"val acc {100 * acc:.2f} %",
        "— img/s" if speed is None else f"{speed:.0f} img/s",
        "ETA —" if eta is None else f"ETA {datetime.timedelta(seconds=round(eta))}",
    ]
    return " | ".join(fields)


class EpochLines(ProgressBar):
    """A progress "bar" that prints one line per training epoch to ``stream`` (stdout), on rank zero."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self.stream = stream
        self.enabled = True
        self.started: float | None = None
        self.first_epoch = 0

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started, self.first_epoch = time.perf_counter(), trainer.current_epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or not trainer.is_global_zero or trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        elapsed = time.perf_counter() - (self.started or time.perf_counter())
        eta = eta_seconds(elapsed, epoch + 1 - self.first_epoch, trainer.max_epochs - self.first_epoch)
        line = epoch_line(epoch, trainer.max_epochs, stage_name(trainer, pl_module), trainer.callback_metrics, eta)
        print(line, file=self.stream or sys.stdout, flush=True)


def progress_bar(stream: TextIO | None = None) -> ProgressBar:
    """The rich bar on a terminal, :class:`EpochLines` anywhere else."""
    return RichProgressBar() if (stream or sys.stdout).isatty() else EpochLines(stream)
