"""Width (channel) pruning of a trained baseline, one method per run, in one ``fit`` (one W&B run):

    load the baseline → [method-specific training: BN-slimming penalty, ADMM, AGP steps, ResRep compactors]
    → structural prune → fine-tune (optionally distilling from the unpruned net) → test

The method is a callback in the config's ``trainer.callbacks`` (``OneShotPrune``, ``BNSlimming``,
``GradualPrune``, ``ADMMPrune``, ``RepPrune``, plus ``Distillation``); without one the run prunes one-shot
(l2_norm, sparsity 0.5). ``experiments/configs/width/`` holds one config per row of TinyNeuralNetwork's
CIFAR-10 tables, at 224 px (paper scale) and 32 px (CPU scale). The default config names no callback on
purpose: a config's callback then gets exactly its own arguments and the class defaults (a callback
in the default config would lend its values to a different class's arguments of the same name).

    python experiments/train.py --trainer.devices 1                                   # the baseline first
    python experiments/width_prune.py --baseline_ckpt logs/tinyml-pruning/<run>/checkpoints/last.ckpt
    python experiments/width_prune.py --config experiments/configs/width/cifar10_32/w025_admm_l2.yaml \\
        --baseline_ckpt PATH
    python experiments/width_prune.py --config <the same> --ckpt_path <run dir>/checkpoints/last.ckpt \\
        --trainer.logger.init_args.id <run id>                                        # resume
"""

from __future__ import annotations

import time
from pathlib import Path

from callbacks.distillation import Distillation
from callbacks.one_shot_prune import OneShotPrune
from callbacks.progress import metric
from callbacks.pruning_base import check_pruning, width_pruners
from datamodules import ImageFolderDataModule
from experiments.run.cli import PruningCLI, build_cli, exits_cleanly
from experiments.run.services import finish_run, fit_and_test, load_baseline, read_module, split_accuracy
from lightning_modules.deploy.profiling import model_cost
from lightning_modules.image_classifier import ImageClassifier

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "width_cifar10_32.yaml"


@exits_cleanly
def main(args: list[str] | None = None) -> Path:
    """Prune, fine-tune, test the best pruned checkpoint, write ``summary.json``; returns its path."""
    started = time.time()
    cli = build_cli(ImageClassifier, ImageFolderDataModule, DEFAULT_CONFIG, args, cli_class=PruningCLI)
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    pruners = width_pruners(trainer)
    if not pruners:  # no method named: one-shot l2_norm at sparsity 0.5, before the first epoch
        pruners = [OneShotPrune()]
        trainer.callbacks.insert(0, pruners[0])
        print(f"No pruning callback given; using {pruners[0]!r}.")
    if len(pruners) != 1:
        raise SystemExit(f"error: a width-pruning run needs exactly one pruning callback in trainer.callbacks "
                         f"(OneShotPrune, BNSlimming, GradualPrune, ADMMPrune or RepPrune), found {len(pruners)}")
    baseline_ckpt = cli.config.baseline_ckpt
    if not baseline_ckpt and not cli.config.ckpt_path:
        raise SystemExit("error: --baseline_ckpt is required: train a baseline first with "
                         "`python experiments/train.py` (its checkpoints are in <run dir>/checkpoints/)")
    acc_before, test_before, baseline_cost = None, None, {}
    if baseline_ckpt:
        baseline = (read_module(ImageClassifier, baseline_ckpt) if cli.config.ckpt_path  # resuming
                    else load_baseline(model, baseline_ckpt))
    check_pruning(trainer, model.net, int(data.hparams.image_size))  # before any data is decoded
    if baseline_ckpt:
        acc_before = split_accuracy(baseline, data, "val", trainer)
        test_before = split_accuracy(baseline, data, "test", trainer)  # beside the pruned net's test/acc
        baseline_cost = model_cost(baseline.net, int(data.hparams.image_size))
    checkpoints = fit_and_test(cli)
    width = pruners[0].describe()
    pruned = model_cost(model.net, int(data.hparams.image_size))
    rate = pruned["macs"] / baseline_cost["macs"] if baseline_cost else width["flops_preserve_rate"]
    acc_after = metric(trainer.callback_metrics, "test/acc")
    extra = {
        "stage": "width_prune",
        "dataset": type(data).__name__.removesuffix("DataModule"),
        **{k: width[k] for k in ("method", "criterion", "sparsity", "prune_epoch")},
        "flops_preserve_rate": rate,
        "params_ratio": pruned["params"] / baseline_cost["params"] if baseline_cost else None,
        "distillation": any(isinstance(cb, Distillation) for cb in trainer.callbacks),
        "baseline": {**baseline_cost, "acc": acc_before, "val_acc": acc_before,
                     "test_acc": test_before, "checkpoint": baseline_ckpt},
        "acc_before": acc_before,
        "acc_after": acc_after,
        "max_epochs": trainer.max_epochs,
        "width": width,
        "callbacks": [cb.as_dict() if hasattr(cb, "as_dict") else cb for cb in cli.config.trainer.callbacks or []],
    }
    return finish_run(trainer, model, data, started, checkpoints, extra)


if __name__ == "__main__":
    main()
