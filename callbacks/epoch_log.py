"""A run's learning curve as a file: one CSV row per finished training epoch in ``<run dir>/epochs.csv``
(epoch, stage, train loss, validation accuracy and loss, learning rate, images per second), so that a
report can show that a stage converged without a W&B account (the same values go to the W&B run).

On resume the rows of epochs the checkpoint does not hold are dropped first (a run killed after writing
epoch ``k``'s row but before saving it repeats epoch ``k``), so the file always has one row per epoch.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from callbacks.progress import metric, stage_name
from callbacks.stages import run_dir

#: The columns of ``epochs.csv``; a value the run has not logged is empty.
COLUMNS: tuple[str, ...] = ("epoch", "stage", "train_loss", "val_acc", "val_loss", "lr", "img_per_s")

#: Logged metric names read for each column (the first present wins).
_SOURCES: dict[str, tuple[str, ...]] = {
    "train_loss": ("train/loss_epoch", "train/loss"),
    "val_acc": ("val/acc",),
    "val_loss": ("val/loss",),
    "img_per_s": ("train/img_per_s",),
}


def epoch_row(epoch: int, stage: str, metrics: dict[str, Any], lr: float | None) -> dict[str, Any]:
    """One row of ``epochs.csv`` from the trainer's logged metrics."""
    row: dict[str, Any] = {"epoch": epoch, "stage": stage, "lr": "" if lr is None else f"{lr:.6g}"}
    for column, keys in _SOURCES.items():
        value = metric(metrics, *keys)
        row[column] = "" if value is None else f"{value:.6g}"
    return row


def read_epochs(path: str | Path) -> list[dict[str, Any]]:
    """The rows of an ``epochs.csv``, numbers as floats (``epoch`` as int, empty cells as ``None``)."""
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = {"epoch": int(raw["epoch"]), "stage": raw["stage"]}
            row |= {k: float(raw[k]) if raw.get(k) else None for k in COLUMNS[2:]}
            rows.append(row)
    return rows


def keep_epochs_before(path: Path, epoch: int) -> None:
    """Drop the rows of ``epoch`` and later from ``path`` (absent: nothing to do)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        kept = [r for r in csv.DictReader(f) if int(r["epoch"]) < epoch]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(kept)


class EpochLog(Callback):
    """Append each finished training epoch's row to ``<run dir>/epochs.csv`` on rank zero."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            keep_epochs_before(run_dir(trainer) / "epochs.csv", trainer.current_epoch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        optimizers = trainer.optimizers
        lr = float(optimizers[0].param_groups[0]["lr"]) if optimizers else None
        row = epoch_row(trainer.current_epoch, stage_name(trainer, pl_module), trainer.callback_metrics, lr)
        path = run_dir(trainer) / "epochs.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.is_file()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow(row)
