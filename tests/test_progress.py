"""A run whose stdout is not a terminal (nohup, a scheduler, CI) prints one plain line per epoch; the
rich bar is kept for terminals."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

from lightning.pytorch.callbacks import RichProgressBar

from callbacks.progress import EpochLines, epoch_line, eta_seconds, progress_bar
from tests.helpers.fake_data import make_image_folder

REPO = Path(__file__).resolve().parent.parent
# img/s needs more batches than the warm-up the tiny run has: a dash then
LINE = re.compile(r"^epoch (\d+)/2 \| stage baseline \| loss \d+\.\d{4} \| val acc \d+\.\d\d % \| (\d+|—) img/s "
                  r"\| ETA \d+:\d\d:\d\d$")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_the_rich_bar_and_a_pipe_the_epoch_lines() -> None:
    assert isinstance(progress_bar(Terminal()), RichProgressBar)
    assert isinstance(progress_bar(io.StringIO()), EpochLines)


def test_the_line_says_what_is_known_and_dashes_the_rest() -> None:
    assert eta_seconds(60.0, 2, 5) == 90.0 and eta_seconds(0.0, 0, 5) is None
    line = epoch_line(0, 16, "sweep", {"train/loss_epoch": 2.5}, None)
    assert line == "epoch 1/16 | stage sweep | loss 2.5000 | val acc — | — img/s | ETA —"


def test_a_run_into_a_pipe_logs_one_line_per_epoch(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "data", {"train": 8, "test": 4})
    done = subprocess.run(
        [sys.executable, "experiments/train.py", "--data.root", str(folder), "--data.batch_size", "8",
         "--model.width_mult", "0.25", "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu",
         "--trainer.default_root_dir", str(tmp_path / "out"), "--trainer.logger", "false",
         "--trainer.enable_model_summary", "false"],
        cwd=REPO, capture_output=True, text=True, timeout=600)  # stdout: a pipe
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and all(LINE.match(line) for line in lines), done.stdout[-2000:]
    assert [LINE.match(line).group(1) for line in lines] == ["1", "2"]
