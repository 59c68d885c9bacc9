"""SIGKILL a real run at five stages of the depth + width + distillation pipeline and resume it from its
``last.ckpt`` each time: the final weights equal those of the uninterrupted run, bit for bit (CPU, tiny
generated data, learning rate 0.01).

Pipeline (one ``fit``): baseline (epochs 0–1) → auxiliary sweep (2–3) → cut at block 6 (start of 4) →
fine-tune with distillation from the unpruned net (4–9) → gradual width prune (AGP), one step at the start
of epochs 6, 7 and 8.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import fake_data
from tests.helpers.cli_args import base_args
from tests.helpers.weights import assert_same_weights

REPO = Path(__file__).resolve().parent.parent

PIPELINE = [
    "--model.lr", "0.01",  # 0.1 diverges on 18 flat-colour images (the run would stop with a NaN loss)
    "--trainer.max_epochs", "10", "--sweep.start_epoch", "2", "--sweep.epochs", "2", "--prune.epoch", "4",
    "--prune.block", "6", "--sweep.head", "[16, 8]",
    "--trainer.callbacks+=callbacks.Distillation", "--trainer.callbacks.start_epoch", "4",
    "--trainer.callbacks+=callbacks.GradualPrune", "--trainer.callbacks.start_epoch", "6",
    "--trainer.callbacks.num_steps", "3", "--trainer.callbacks.interval", "1",
    "--trainer.callbacks.final_sparsity", "0.5",
]

#: stage → (epoch, batch) at which the process is killed; it resumes from the previous epoch's last.ckpt.
STAGES: dict[str, tuple[int, int]] = {
    "baseline": (1, 1),
    "sweep": (3, 1),  # resumes from a checkpoint with the heads attached and the backbone frozen
    "right after the cut": (5, 0),  # the newest checkpoint is the first one of the cut network
    "middle of the gradual prune": (7, 1),  # one AGP step done, the one of epoch 7 in flight
    "distillation fine-tune": (9, 1),
}


def run(args: list[str], cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "TINYML_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, "experiments/depth_prune.py", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900, start_new_session=True)


def csv_logger(out: Path, run_id: str) -> list[str]:
    """The run's folder ``<out>/tinyml-pruning/<run_id>`` through a CSV logger: W&B's service process
    outlives a SIGKILL of the run (it runs in a session of its own) and holds the run id for a while, so
    a prompt resume under the same W&B id can find it in use; the resume itself is what is tested here."""
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger",
              "init_args": {"save_dir": str(out), "name": "tinyml-pruning", "version": run_id}}
    return ["--trainer.logger", json.dumps(logger)]


def last_weights(out: Path, run_id: str) -> dict[str, torch.Tensor]:
    path = out / "tinyml-pruning" / run_id / "checkpoints" / "last.ckpt"
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_sigkill_at_every_stage_then_resume_reaches_the_uninterrupted_weights(tmp_path: Path,
                                                                             session_cache_dir: Path) -> None:
    """One run is killed five times, once in each stage, each time resumed from its ``last.ckpt`` (each
    resumed process runs into the next kill): the run that finally completes has the weights of the
    run that was never interrupted."""
    folder = fake_data.make_image_folder(tmp_path / "data", {"train": 6, "test": 2})
    straight = run([*base_args(folder, tmp_path / "straight"), *PIPELINE,
                    *csv_logger(tmp_path / "straight", "straight")], session_cache_dir)
    assert straight.returncode == 0, straight.stderr[-3000:]

    out = tmp_path / "killed"
    args = [*base_args(folder, out), *PIPELINE, *csv_logger(out, "killed")]
    last = out / "tinyml-pruning" / "killed" / "checkpoints" / "last.ckpt"
    resume: list[str] = []
    for stage, (epoch, batch) in STAGES.items():
        killed = run([*args, *resume, "--trainer.callbacks+=tests.helpers.kill_at.KillAt", "--trainer.callbacks.epoch",
                      str(epoch), "--trainer.callbacks.batch", str(batch)], session_cache_dir)
        assert killed.returncode == -signal.SIGKILL, f"{stage}: {killed.stderr[-3000:]}"
        assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == epoch - 1, stage
        assert not list(out.rglob("summary.json")), stage
        resume = ["--ckpt_path", str(last)]

    finished = run([*args, *resume], session_cache_dir)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert_same_weights(last_weights(tmp_path / "straight", "straight"), last_weights(out, "killed"))
