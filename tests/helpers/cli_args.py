"""Command-line arguments of tiny real runs of the entry points."""

from __future__ import annotations

from pathlib import Path


def cli_args(folder: Path, out: Path, backbone: str) -> list[str]:
    return [
        "--data.root", str(folder), "--data.image_size", "32", "--data.batch_size", "8",
        "--model.backbone", backbone, "--model.lr", "0.01",
        "--trainer.logger.init_args.save_dir", str(out),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.accelerator", "cpu",
    ]


STOP_AFTER = ["--trainer.callbacks+=tests.helpers.stop_after.StopAfterEpoch", "--trainer.callbacks.epoch"]


def tiny_args(real_data_dir: Path, out: Path, train_subset: int = 256, eval_subset: int = 128) -> list[str]:
    return [
        "--data.root", str(real_data_dir / "cifar10-jpg.tar.gz"),
        "--data.train_subset", str(train_subset),
        "--data.eval_subset", str(eval_subset),
        "--data.batch_size", "64",
        "--model.width_mult", "0.25",
        "--trainer.logger.init_args.save_dir", str(out),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.accelerator", "cpu",
    ]

def pipeline_args(real_data_dir: Path, out: Path) -> list[str]:
    return [
        *tiny_args(real_data_dir, out),
        "--trainer.max_epochs", "4",
        "--sweep.start_epoch", "1", "--sweep.epochs", "1",
        "--prune.epoch", "2", "--prune.block", "6",
        "--sweep.head", "[16, 8]",
    ]


def base_args(data_root: Path | str, out: Path) -> list[str]:
    """A few steps of MobileNetV1-0.25 on a generated folder. The learning rate is 0.001, not the config's 0.1:
    after a handful of steps at 0.1 the BatchNorm running statistics lag the weights so far that the eval-mode
    network overflows (validation losses of 1e12 to 1e33, NaN on some seeds and thread counts), which the
    run rightly stops as an error; at 0.001 the same runs validate at losses of 1 to 100."""
    return [
        "--data.root", str(data_root), "--data.batch_size", "8", "--data.num_workers", "0", "--model.width_mult", "0.25",
        "--model.lr", "0.001",
        "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(out),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    ]
