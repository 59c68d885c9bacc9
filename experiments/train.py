"""Train (and test) an image classifier — the baseline stage of every pruning experiment.

    python experiments/train.py --trainer.devices 1                        # CIFAR-10 @32 px, CPU scale
    python experiments/train.py --config experiments/configs/baseline_cifar10_224.yaml
    python experiments/train.py --ckpt_path logs/tinyml-pruning/<run>/checkpoints/last.ckpt \\
        --trainer.logger.init_args.id <run>                                 # resume run <run>
"""

from __future__ import annotations

import time
from pathlib import Path

from callbacks.pruning_base import check_pruning
from datamodules import ImageFolderDataModule
from experiments.run.cli import build_cli, exits_cleanly
from experiments.run.services import finish_run, fit_and_test
from lightning_modules.image_classifier import ImageClassifier

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "baseline_cifar10_32.yaml"


@exits_cleanly
def main(args: list[str] | None = None) -> Path:
    """Fit, test the best checkpoint, write ``summary.json``; returns the summary's path."""
    started = time.time()
    cli = build_cli(ImageClassifier, ImageFolderDataModule, DEFAULT_CONFIG, args)
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    check_pruning(trainer, model.net, int(data.hparams.image_size))  # any pruning callback given
    checkpoints = fit_and_test(cli)
    return finish_run(trainer, model, data, started, checkpoints, {"stage": "baseline"})


if __name__ == "__main__":
    main()
