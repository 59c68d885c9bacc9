"""Faults during a run: a full disk while writing a checkpoint, a diverging loss, hostile archive content.

Runs go through the experiment entry points (in-process, and once as a real subprocess) on a tiny
generated CIFAR-layout folder.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from datamodules import CIFAR10DataModule, DatasetError
from experiments import train
from experiments.run import checkpoint_io
from tests.helpers import fake_data
from tests.helpers.cli_args import base_args
from tests.helpers.weights import assert_same_weights

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return fake_data.make_image_folder(tmp_path / "data", {"train": 6, "test": 2})


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_full_disk_keeps_the_last_checkpoint_and_the_run_resumes(folder: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    args = [*base_args(folder, tmp_path / "out"), "--trainer.max_epochs", "3",
            "--trainer.logger.init_args.id", "fulldisk"]
    last = tmp_path / "out" / "tinyml-pruning" / "fulldisk" / "checkpoints" / "last.ckpt"
    saved: dict[str, bytes] = {}
    real_write = checkpoint_io.write_bytes

    def disk_fills_up(f, data: bytes) -> None:  # the first write after last.ckpt exists runs out of space
        if last.is_file() and not saved:
            saved["last"] = last.read_bytes()
            real_write(f, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(f, data)

    monkeypatch.setattr(checkpoint_io, "write_bytes", disk_fills_up)
    with pytest.raises(SystemExit) as exc:
        train.main(args)
    monkeypatch.undo()
    message = str(exc.value.code)
    assert message.startswith("error: could not write checkpoint") and "No space left on device" in message
    assert "intact" in message and "\n" not in message
    assert last.read_bytes() == saved["last"]  # the earlier last.ckpt, byte for byte
    assert not list(last.parent.glob(".*partial")), "a temporary file was left behind"
    assert not list(last.parent.parent.glob("summary.json"))
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 0

    resumed = json.loads(train.main([*args, "--ckpt_path", str(last)]).read_text())
    straight = json.loads(train.main([*base_args(folder, tmp_path / "straight"), "--trainer.max_epochs", "3"])
                          .read_text())
    assert resumed["epochs"] == straight["epochs"] == 3
    assert_same_weights(weights(Path(resumed["last_checkpoint"])), weights(Path(straight["last_checkpoint"])))


def test_diverging_loss_stops_the_run_before_anything_is_saved(folder: Path, tmp_path: Path) -> None:
    """A real subprocess through the script: exit status 1, one ``error:`` line, no traceback, no summary
    and no checkpoint of non-finite weights."""
    out = tmp_path / "out"
    cmd = [sys.executable, "experiments/train.py", *base_args(folder, out), "--trainer.max_epochs", "3",
           "--model.lr", "1e30", "--model.scheduler", "none"]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 1, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert lines[-1].startswith("error: the training loss is nan") or lines[-1].startswith("error: parameter")
    assert "at epoch 0, step" in lines[-1] and "diverged" in lines[-1] and "--model.lr" in lines[-1]
    assert not list(out.rglob("summary.json"))
    for ckpt in out.rglob("*.ckpt"):  # whatever was saved before the divergence is finite
        assert all(torch.isfinite(t).all() for t in weights(ckpt).values() if t.is_floating_point()), ckpt


def test_a_non_finite_validation_loss_stops_the_run_with_finite_weights(folder: Path, tmp_path: Path) -> None:
    """The training loss and the weights are finite but the eval-mode network gives NaN: one error line,
    no best checkpoint chosen on a NaN, no summary (before: exit 0 and ``NaN`` in summary.json)."""
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        train.main([*base_args(folder, out), "--trainer.max_epochs", "2",
                    "--trainer.callbacks+=tests.helpers.eval_overflow.EvalOverflow"])
    message = str(exc.value.code)
    assert message.startswith("error: the validation loss is nan") and "\n" not in message
    assert "the weights are finite" in message and "at epoch 0" in message
    assert not list(out.rglob("summary.json")) and not list(out.rglob("best-*.ckpt"))


class _Marker:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (self.path, "w"))


@pytest.mark.parametrize("target", ["data_batch_1", "batches.meta", "test_batch"])
def test_hostile_cifar_batch_runs_no_code(tmp_path: Path, target: str) -> None:
    folder = fake_data.make_cifar_batches(tmp_path / "src", per_batch=2, n_test=2)
    marker = tmp_path / "MARKER"
    (folder / target).write_bytes(pickle.dumps({"data": _Marker(str(marker)), "labels": [0, 1],
                                                "label_names": ["a"]}, protocol=2))
    packed = fake_data.make_archive(folder, tmp_path / "shelf" / "cifar-10-python.tar.gz")
    data = CIFAR10DataModule(root=str(packed), cache_dir=str(tmp_path / "cache"), check_counts=False)
    with pytest.raises(DatasetError, match="refusing to read") as info:
        data.setup()
    assert target in str(info.value) and "could run code" in str(info.value)
    assert not marker.exists()


def test_atomic_checkpoint_io_keeps_the_old_file_and_its_mode(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    io = checkpoint_io.AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    previous = os.umask(0o022)
    try:
        io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644  # what torch.save would have given, not mkstemp's 0o600
    path.chmod(0o640)
    old = path.read_bytes()

    def fails(f, data: bytes) -> None:
        f.write(data[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io, "write_bytes", fails)
    with pytest.raises(checkpoint_io.CheckpointError, match="intact: resume with --ckpt_path"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    assert path.read_bytes() == old and list(tmp_path.iterdir()) == [path]
    monkeypatch.undo()
    io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    assert path.stat().st_mode & 0o777 == 0o640  # a rewrite keeps the file's mode
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.zeros(3))


def test_a_summary_cut_short_by_a_full_disk_leaves_the_previous_one(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Summaries and reports (``write_json``) are replaced whole or not at all: a write that fails half-way
    leaves the earlier file byte for byte and no partial file beside it."""
    path = checkpoint_io.write_json(tmp_path / "run" / "summary.json", {"test/acc": 0.5, "path": tmp_path})
    old = path.read_bytes()
    assert json.loads(old) == {"test/acc": 0.5, "path": str(tmp_path)}

    def fails(f, data: bytes) -> None:
        f.write(data[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io, "write_bytes", fails)
    with pytest.raises(OSError, match="No space left"):
        checkpoint_io.write_json(path, {"test/acc": 0.9})
    assert path.read_bytes() == old and list(path.parent.iterdir()) == [path]


def test_a_pipeline_run_prints_no_warnings(folder: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Baseline, sweep (frozen backbone: modules in eval mode on purpose), cut and fine-tune: no warning
    reaches the user (tiny data, so the logging interval is lowered to the 3 batches an epoch has)."""
    from experiments import depth_prune

    monkeypatch.setattr(sys, "argv", ["depth_prune.py"])  # as run from the shell, not from pytest
    args = [*base_args(folder, tmp_path), "--model.lr", "0.01", "--trainer.log_every_n_steps", "1",
            "--trainer.max_epochs", "3", "--sweep.start_epoch", "1", "--sweep.epochs", "1", "--prune.epoch", "2",
            "--prune.block", "6", "--sweep.head", "[16, 8]"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        depth_prune.main(args)
    shown = [f"{w.category.__name__}: {w.message}" for w in caught
             if not issubclass(w.category, DeprecationWarning) or "lightning" in w.filename]
    assert shown == []
    err = capfd.readouterr().err
    assert "WARNING" not in err and "Tip:" not in err, err[-2000:]
