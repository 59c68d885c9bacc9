"""What every width-pruning callback does when it slices the network inside a ``fit``.

:func:`prune_width` announces the prune (a :class:`~callbacks.distillation.Distillation` callback keeps the
unpruned net as its teacher), gathers activation statistics when the criterion needs them (HRank), removes
channels with :func:`~lightning_modules.pruning.width.prune_model` (or an explicit plan), describes the
sliced network through its backbone adapter (MobileNetV1: rebuilt from its constructor arguments), restarts the optimiser (and, if asked, the LR schedule)
and logs params, MACs and the FLOPs preserve rate.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from callbacks.pruning_base import notify_before_prune
from callbacks.stages import (
    broadcast_from_rank_zero,
    data_image_size,
    log_scalars,
    rebuild_optimizer,
    reset_best_checkpoint,
    restart_optimization,
)
from datamodules.batches import float_batches
from lightning_modules.deploy.profiling import model_cost
from lightning_modules.pruning.criteria import Criterion
from lightning_modules.pruning.width import (
    ChannelGroup,
    SparsitySpec,
    apply_plan,
    channel_scores,
    flops_preserve_rate,
    ignored_modules,
    plan_pruning,
    prunable_groups,
)


def example_input(pl_module: L.LightningModule, image_size: int) -> torch.Tensor:
    """One input image for tracing the dependency graph, on the module's device."""
    param = next(pl_module.net.parameters())
    return torch.randn(1, int(pl_module.hparams.get("in_chans", 3)), image_size, image_size, device=param.device)


def statistics_batches(trainer: L.Trainer, num_batches: int, device: torch.device) -> Iterator[torch.Tensor]:
    """Up to ``num_batches`` evaluation-transformed training images on ``device`` (HRank's statistics)."""
    for images, _labels in itertools.islice(float_batches(trainer.datamodule, "train", device=device), num_batches):
        yield images


def module_groups(
    trainer: L.Trainer, pl_module: L.LightningModule, ignore: Sequence[str] = ()
) -> list[ChannelGroup]:
    """The prunable channel groups of ``pl_module.net`` as it is now, traced at the data's image size."""
    net = pl_module.net
    return prunable_groups(net, example_input(pl_module, data_image_size(trainer)), ignored_modules(net, ignore))


def prune_width(
    trainer: L.Trainer,
    pl_module: L.LightningModule,
    criterion: Criterion,
    sparsity: SparsitySpec,
    round_to: int = 1,
    global_ranking: bool = False,
    ignore: Sequence[str] = (),
    max_pruning_ratio: float = 1.0,
    plan: Mapping[str, Sequence[int]] | None = None,
    stage_epochs: int | None = None,
    restart_schedule: bool = True,
    hrank_batches: int = 8,
    tag: str = "prune",
) -> dict[str, Any]:
    """Slice ``pl_module.net`` in place of the training and return what happened.

    Args:
        criterion: scores the channels (ignored when ``plan`` is given).
        sparsity, round_to, global_ranking, max_pruning_ratio: see
            :func:`~lightning_modules.pruning.width.plan_pruning`.
        ignore: module names whose output channels are kept.
        plan: channels to remove per group, instead of ranking them with ``criterion``.
        stage_epochs: epochs of the new LR schedule (default: the rest of the fit).
        restart_schedule: start a new LR schedule; ``False`` keeps the current one's position (AGP's
            successive prunes inside one schedule) and only rebuilds the optimiser over the new parameters.
        hrank_batches: training batches HRank reads its feature-map ranks from.
        tag: prefix of the logged keys.
    """
    image_size = data_image_size(trainer)
    val_acc = trainer.callback_metrics.get("val/acc")  # of the net as it is now, if validated yet
    net = pl_module.net
    before = model_cost(net, image_size)
    notify_before_prune(trainer, pl_module)
    device = next(net.parameters()).device
    groups = module_groups(trainer, pl_module, ignore)
    if plan is None:
        if criterion.needs_data:
            criterion.collect(net, statistics_batches(trainer, hrank_batches, device))
        scores = channel_scores(groups, criterion, normalize=global_ranking)
        plan = plan_pruning(scores, sparsity, round_to, global_ranking, max_pruning_ratio=max_pruning_ratio,
                            channel_groups={g.name: g.channel_groups for g in groups})
    plan = broadcast_from_rank_zero(trainer, plan)  # every rank removes exactly rank 0's channels
    apply_plan(groups, plan, example_input(pl_module, image_size))  # only its shape matters
    new_net, arch = pl_module.adapter.after_width_prune(net)
    pl_module.rebuild_net(new_net, **arch)
    if restart_schedule:
        restart_optimization(trainer, pl_module, stage_epochs or int(trainer.max_epochs) - trainer.current_epoch)
    else:
        rebuild_optimizer(trainer, pl_module)
    reset_best_checkpoint(trainer)
    after = model_cost(pl_module.net, image_size)
    rate = flops_preserve_rate(before["macs"], after["macs"])
    removed = sum(len(v) for v in plan.values())
    rank_zero_info(f"Width pruning ({criterion!r}): removed {removed} channels at epoch {trainer.current_epoch}; "
                   f"channels {arch.get('channels') or str(len(arch['structure'].get('layers', {}))) + ' layers sliced'}")
    log_scalars(trainer, {f"{tag}/params": after["params"], f"{tag}/macs": after["macs"],
                          f"{tag}/flops_preserve_rate": rate,
                          f"{tag}/params_ratio": after["params"] / before["params"],
                          f"{tag}/channels_removed": removed})
    return {"epoch": trainer.current_epoch, "criterion": repr(criterion),
            "val_acc_before": None if val_acc is None else float(val_acc), "before": before, "after": after,
            "flops_preserve_rate": rate, "channels_removed": removed, "arch": arch}
