"""Soft filter pruning (SFP): zero the weakest filters every epoch but keep training them, then remove them.

He et al., *Soft Filter Pruning for Accelerating Deep Convolutional Neural Networks*, IJCAI 2018. A
filter set to zero still receives gradients, so a filter zeroed too early can grow back and another take
its place; the network keeps its full capacity while it adapts, and only the last choice is removed.
A zeroed filter followed by BatchNorm and ReLU grows back only where that BatchNorm's shift is positive
(elsewhere its output is a constant zero and gets no gradient): start from a trained baseline, as SFP's
fine-tuning setting does, not from a fresh network whose shifts are all zero. Where it does grow back, its
first gradient passes a batch variance of zero and is scaled by 1/sqrt(eps) (about 316): in a small fit a
zeroed stem's weight norm went from 1.4 to 1,251 in one step, and the filters zeroed one epoch later were
the same as before no more often than chance (852 of 1,122, 76 %, at 75 % sparsity). At the 75 % sparsity of TinyNeuralNetwork's width-0.25 row this costs far
more than one-shot pruning (docs/RESULTS.md); the paper prunes 30-40 % of ResNet filters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from callbacks.pruning_base import WidthPruningCallback
from callbacks.stages import log_scalars
from callbacks.width_stage import module_groups, prune_width
from lightning_modules.pruning.admm import kept_rows
from lightning_modules.pruning.criteria import L2Norm
from lightning_modules.pruning.width import keep_counts


def weakest_rows(w: Tensor, keep: int, channel_groups: int = 1) -> list[int]:
    """The filters (rows) of ``w`` outside its ``keep`` largest-L2-norm ones, ascending (the same positions
    of each of ``channel_groups`` equal chunks, :func:`~lightning_modules.pruning.admm.kept_rows`)."""
    kept = set(kept_rows(w, keep, channel_groups).tolist())
    return [i for i in range(w.shape[0]) if i not in kept]


@dataclass(eq=False)
class SoftFilterPrune(WidthPruningCallback):
    """At the start of every epoch from ``start_epoch`` to ``prune_epoch − 1``, set the filters of lowest L2
    norm of every prunable group's root convolution to zero (they go on training); at the start of
    ``prune_epoch``, remove the filters of lowest L2 norm then (a new LR stage follows).

    ``keep = keep_count(C, sparsity, round_to)`` filters of each group's ``C`` stay. The zeroing lives in
    the weights, so a checkpoint holds it and a resumed run goes on from it.

    Args:
        start_epoch: the first epoch whose start zeroes the weakest filters.
        prune_epoch: the epoch at whose start they are removed (``≥ start_epoch``).
        sparsity: fraction of filters removed from every prunable layer, or
            ``{"default": s, "<conv name>": s, ...}``.
        criterion: only ``l2_norm`` (SFP's filter norm).
        round_to: kept channels are a multiple of this (8 suits MCU kernels).
        ignore: convolutions whose output channels are kept, e.g. ``["stem.0"]``.
    """

    method = "sfp"
    criteria = frozenset({"l2_norm"})
    epoch_attributes = ("start_epoch", "prune_epoch")
    state_attributes = ("soft_epochs", "result")

    start_epoch: int = 0
    prune_epoch: int = 3
    sparsity: float | dict[str, float] = 0.75

    def schedule(self) -> str:
        return f"SFP zeroes @{self.start_epoch}–{self.prune_epoch - 1}, prune @{self.prune_epoch}"

    def __post_init__(self) -> None:
        super().__post_init__()
        #: Epochs whose start zeroed the weakest filters.
        self.soft_epochs: list[int] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.done or epoch < self.start_epoch:
            return
        groups = module_groups(trainer, pl_module, self.ignore)
        keep = keep_counts({g.name: g.num_channels for g in groups}, self.sparsity, self.round_to,
                           channel_groups={g.name: g.channel_groups for g in groups})
        weakest = {g.name: weakest_rows(g.root.weight.detach(), keep[g.name], g.channel_groups) for g in groups}
        if epoch >= self.prune_epoch:
            result = prune_width(trainer, pl_module, L2Norm(), self.sparsity, self.round_to, False, self.ignore,
                                 plan=weakest, tag="sfp")
            self.result = {**result, "plan": weakest, "soft_epochs": list(self.soft_epochs)}
            return
        zeroed = zero_filters({g.name: g.root.weight for g in groups}, weakest)
        self.soft_epochs.append(epoch)
        log_scalars(trainer, {"sfp/zeroed_filters": zeroed, "sfp/soft_epochs": len(self.soft_epochs)})
        rank_zero_info(f"SFP @{epoch}: zeroed {zeroed} filters of {sum(g.num_channels for g in groups)}")


def zero_filters(weights: Mapping[str, Tensor], rows: Mapping[str, list[int]]) -> int:
    """Set ``rows`` of each named weight to zero in place; the number of filters zeroed."""
    with torch.no_grad():
        for name, w in weights.items():
            w[rows[name]] = 0
    return sum(len(r) for r in rows.values())
