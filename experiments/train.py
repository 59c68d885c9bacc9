"""Train (and test) an image classifier — the baseline stage of every pruning experiment.

    python experiments/train.py --trainer.devices 1                        # CIFAR-10 @32 px, CPU scale
    python experiments/train.py --config experiments/configs/baseline_cifar10_224.yaml
    python experiments/train.py --ckpt_path logs/tinyml-pruning/<run>/checkpoints/last.ckpt \\
        --trainer.logger.init_args.id <run>                                 # resume run <run>
"""

from __future__ import annotations

import time
from pathlib import Path

from datamodules import DatasetError, ImageFolderDataModule
from lightning_modules.cli import build_cli, checkpoint_paths, close_logger, write_summary
from lightning_modules.image_classifier import ImageClassifier

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "baseline_cifar10_32.yaml"


def main(args: list[str] | None = None) -> Path:
    """Fit, test the best checkpoint, write ``summary.json``; returns the summary's path."""
    started = time.time()
    try:
        cli = build_cli(ImageClassifier, ImageFolderDataModule, DEFAULT_CONFIG, args)
        trainer, model, data = cli.trainer, cli.model, cli.datamodule
        trainer.fit(model, data, ckpt_path=cli.config.ckpt_path)
        fit_metrics, checkpoints = dict(trainer.callback_metrics), checkpoint_paths(trainer)
        best = "best" if checkpoints["best_checkpoint"] else None
        trainer.test(model, data, ckpt_path=best)
    except DatasetError as err:
        raise SystemExit(f"error: {err}") from err
    trainer.callback_metrics.update({k: v for k, v in fit_metrics.items() if k not in trainer.callback_metrics})
    path = write_summary(trainer, model, data, started, {"stage": "baseline", **checkpoints})
    close_logger(trainer)
    return path


if __name__ == "__main__":
    main()
