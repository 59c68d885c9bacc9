"""The per-epoch learning curve file: its rows from logged metrics, and resume keeping one row per epoch."""

from __future__ import annotations

from pathlib import Path

import torch

from callbacks.epoch_log import COLUMNS, epoch_row, keep_epochs_before, read_epochs
from experiments.reports.curves import stage_spans


def write(path: Path, rows: list[dict]) -> None:
    path.write_text(",".join(COLUMNS) + "\n" + "".join(
        ",".join(str(r.get(c, "")) for c in COLUMNS) + "\n" for r in rows))


def test_a_row_reads_the_logged_metrics_and_leaves_missing_ones_empty() -> None:
    row = epoch_row(3, "baseline", {"train/loss_epoch": torch.tensor(1.25), "val/acc": torch.tensor(0.5)}, 0.01)
    assert row == {"epoch": 3, "stage": "baseline", "train_loss": "1.25", "val_acc": "0.5", "val_loss": "",
                   "lr": "0.01", "img_per_s": ""}


def test_resume_drops_the_rows_the_checkpoint_does_not_hold(tmp_path: Path) -> None:
    path = tmp_path / "epochs.csv"
    write(path, [{"epoch": e, "stage": "baseline", "val_acc": 0.1 * e} for e in range(4)])
    keep_epochs_before(path, 2)  # killed after epoch 3's row, resumed from the checkpoint of epoch 1
    rows = read_epochs(path)
    assert [r["epoch"] for r in rows] == [0, 1] and rows[1]["val_acc"] == 0.1 and rows[1]["train_loss"] is None
    keep_epochs_before(tmp_path / "absent.csv", 0)
    assert not (tmp_path / "absent.csv").exists()


def test_stage_spans_group_consecutive_epochs() -> None:
    rows = [{"epoch": e, "stage": s} for e, s in [(2, "sweep"), (0, "baseline"), (1, "baseline"), (3, "after DepthPrune")]]
    assert [(s, [r["epoch"] for r in rs]) for s, rs in stage_spans(rows)] == [
        ("baseline", [0, 1]), ("sweep", [2]), ("after DepthPrune", [3])]
