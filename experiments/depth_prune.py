"""Depth pruning with auxiliary networks, the whole pipeline in one ``fit`` (one W&B run):

    baseline training → auxiliary sweep (a head at every cut point, frozen backbone)
    → cut at the chosen block (stem + blocks ≤ k + head k) → fine-tune
    → [optional width stage: a width-pruning callback in trainer.callbacks thins the kept blocks] → test

    python experiments/depth_prune.py --trainer.devices 1                     # CIFAR-10 @32 px, CPU scale
    python experiments/depth_prune.py --config experiments/configs/depth_cifar10_224_cut6_original.yaml
    python experiments/depth_prune.py --config experiments/configs/depth_cifar10_32_width.yaml   # + width
    python experiments/depth_prune.py --baseline_ckpt PATH                     # skip the baseline stage
    python experiments/depth_prune.py --ckpt_path <run dir>/checkpoints/last.ckpt \\
        --trainer.logger.init_args.id <run id>                                 # resume

de Leon & Atienza, *Depth Pruning with Auxiliary Networks for TinyML*, arXiv:2204.10546 (2022).
"""

from __future__ import annotations

import time
from pathlib import Path

from callbacks.auxiliary_sweep import AuxiliarySweep
from callbacks.depth_prune import DepthPrune
from callbacks.progress import metric
from callbacks.pruning_base import PruningSettingsError, check_pruning, pruning_callbacks, width_pruners
from datamodules import ImageFolderDataModule
from experiments.run.cli import PruningCLI, build_cli, exits_cleanly
from experiments.run.services import finish_run, fit_and_test, load_baseline, read_module, split_accuracy
from lightning_modules.backbones import build_net
from lightning_modules.deploy.profiling import tinyml_budget
from lightning_modules.image_classifier import ImageClassifier

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "depth_cifar10_32.yaml"


class DepthPruneCLI(PruningCLI):
    """Adds the sweep (``--sweep.*``) and the cut (``--prune.*``) to ``--baseline_ckpt``."""

    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_lightning_class_args(AuxiliarySweep, "sweep")
        parser.add_lightning_class_args(DepthPrune, "prune")


def check_stages(trainer, sweep: AuxiliarySweep, prune: DepthPrune, net, image_size: int) -> None:
    """The stages fit together and every pruning callback's settings fit the network (before training)."""
    if sweep.epochs == 0 and prune.block is None:
        raise PruningSettingsError("--sweep.epochs 0 trains no auxiliary heads, so nothing can choose the cut; "
                                   "give --prune.block")
    if sweep.epochs == 0 and prune.init == "original":
        raise PruningSettingsError("--prune.init original keeps the cut point's trained auxiliary head, and "
                                   "--sweep.epochs 0 trains none; use --prune.init original_fresh_head (the trained "
                                   "layers and a new head) or random, or give the sweep epochs")
    if sweep.epochs > 0 and prune.epoch != sweep.start_epoch + sweep.epochs:
        raise PruningSettingsError(f"--prune.epoch ({prune.epoch}) must equal --sweep.start_epoch + --sweep.epochs "
                                   f"({sweep.start_epoch} + {sweep.epochs})")
    for callback in width_pruners(trainer):  # an optional width stage thins the kept blocks after the cut
        if callback.first_epoch <= prune.epoch:
            raise PruningSettingsError(f"the width stage ({type(callback).__name__}) must start after the cut "
                                       f"(epoch {prune.epoch}), not at epoch {callback.first_epoch}")
    check_pruning(trainer, net, image_size)


@exits_cleanly
def main(args: list[str] | None = None) -> Path:
    """Run the pipeline, test the best pruned checkpoint, write ``summary.json``; returns its path."""
    started = time.time()
    cli = build_cli(ImageClassifier, ImageFolderDataModule, DEFAULT_CONFIG, args, cli_class=DepthPruneCLI)
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    sweep = next(cb for cb in trainer.callbacks if isinstance(cb, AuxiliarySweep))
    prune = next(cb for cb in trainer.callbacks if isinstance(cb, DepthPrune))
    if cli.config.baseline_ckpt:
        if not cli.config.ckpt_path:  # a resumed run has its weights in its checkpoint
            load_baseline(model, cli.config.baseline_ckpt)
        # the baseline stage is done: start at the sweep, or at the cut when there is no sweep (the
        # same shift when resuming, so the schedule is the one the checkpoint was written in)
        shift = sweep.start_epoch if sweep.epochs > 0 else prune.epoch
        sweep.start_epoch = 0
        trainer.fit_loop.max_epochs -= shift
        for callback in pruning_callbacks(trainer):  # the cut and any width stage, every epoch of them
            callback.shift_schedule(shift)
    if sweep.epochs == 0:
        trainer.callbacks.remove(sweep)
    check_stages(trainer, sweep, prune, model.net, int(data.hparams.image_size))
    checkpoints = fit_and_test(cli)
    baseline_test = baseline_test_accuracy(sweep.baseline_checkpoint or cli.config.baseline_ckpt, data, trainer)
    image_size = int(data.hparams.image_size)
    result = prune.result
    budget = tinyml_budget(model.net, image_size)
    test_acc = metric(trainer.callback_metrics, "test/acc")
    extra = {
        "stage": "depth_prune",
        "dataset": type(data).__name__.removesuffix("DataModule"),
        "baseline": {**result.get("before", {}), "acc": result.get("baseline", {}).get("acc"),
                     "val_acc": result.get("baseline", {}).get("acc"),  # what the tolerance rule compared with
                     "test_acc": baseline_test,  # the trained baseline (before any head or cut), test split
                     "budget": tinyml_budget(build_net(result["arch_before"]), image_size)
                     if "arch_before" in result else None},
        "sweep": result.get("sweep", []),
        "chosen_cut": result.get("cut"),
        "cut_reason": result.get("reason"),
        "init": result.get("init"),
        "finetune": result.get("finetune"),
        "pruned": {"params": budget["params"], "macs": budget["macs"], "acc": test_acc, "budget": budget},
        "stages": stage_rows(prune, width_pruners(trainer), budget, test_acc),
        "width": [cb.describe() for cb in width_pruners(trainer)],
        "baseline_ckpt": cli.config.baseline_ckpt,
        "baseline_checkpoint": sweep.baseline_checkpoint,
    }
    return finish_run(trainer, model, data, started, checkpoints, extra, budget)


def baseline_test_accuracy(path: str | None, data, trainer) -> float | None:
    """Test accuracy of the trained baseline (the checkpoint the sweep saved at its start, before any head
    or cut), on the split the pruned net is tested on; logged as ``baseline/test_acc``."""
    if not path:
        return None
    acc = split_accuracy(read_module(ImageClassifier, path, "the baseline checkpoint"), data, "test", trainer)
    if acc is not None and trainer.logger is not None and trainer.is_global_zero:
        trainer.logger.log_metrics({"baseline/test_acc": acc}, step=trainer.global_step)
    return acc


def stage_rows(prune: DepthPrune, widths: list, final: dict, test_acc: float | None) -> list[dict]:
    """One row per pruning stage that changed the network: its method, the net's params/MACs after it, the
    epochs it pruned at, and the validation accuracy just before the next stage (the final row carries the
    test accuracy of the best checkpoint). A width stage that never pruned has no row."""
    rows = [{"stage": "depth", "cut": prune.result.get("cut"), **prune.result.get("after", {})}]
    for width in (cb.describe() for cb in widths):
        if not width["pruned_at"]:
            continue
        rows[-1]["val_acc"] = width["result"].get("val_acc_before")
        rows.append({"stage": "width", **{k: width[k] for k in ("method", "criterion", "sparsity", "pruned_at")},
                     "done": width["done"], **width["result"].get("after", {})})
    rows[-1].update(params=final["params"], macs=final["macs"], test_acc=test_acc)
    return rows


if __name__ == "__main__":
    main()
