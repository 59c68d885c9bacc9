"""Structured ADMM pruning: pull the weights towards a filter-sparse copy, then remove what it leaves out.

Zhang et al., *A Systematic DNN Weight Pruning Framework using Alternating Direction Methods of
Multipliers*, ECCV 2018, in the structured form of TinyNeuralNetwork's ``ADMMPruner`` (the ADMM variables
live on the convolution that produces each prunable group's channels). The maths is in
:mod:`lightning_modules.pruning.admm`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from callbacks.loss_term import LossTermCallback
from callbacks.pruning_base import WidthPruningCallback, check_at_least, settings_error
from callbacks.stages import log_scalars
from callbacks.width_stage import module_groups, prune_width
from lightning_modules.pruning.admm import (
    admm_penalty,
    admm_update,
    primal_residual,
    project_rows,
    row_norms,
    zero_rows,
)
from lightning_modules.pruning.criteria import L2Norm
from lightning_modules.pruning.width import keep_counts, lowest_channels

if TYPE_CHECKING:
    from lightning_modules.image_classifier import ImageClassifier

#: Key of the augmented-Lagrangian term in ``ImageClassifier.loss_hooks``.
HOOK_NAME = "admm"


@dataclass(eq=False)
class ADMMPrune(WidthPruningCallback, LossTermCallback):
    """ADMM training from ``start_epoch``, a hard structural prune onto ``Z``'s support at ``prune_epoch``.

    For the root convolution ``W`` of every prunable group (stem, pointwise convolutions) with ``C`` output
    filters, ``keep = keep_count(C, sparsity, round_to)``:

    * at the start of ``start_epoch``: ``Z = proj(W)`` (the ``keep`` largest-L2-norm filters), ``U = 0``,
      and ``pl_module.loss_hooks["admm"]`` adds ``Σ ρ/2 ‖W − Z + U‖²`` to the loss (logged as
      ``train/admm_penalty``);
    * every ``admm_epoch`` epochs after that, and once more at ``prune_epoch``: ``Z ← proj(W + U)``,
      ``U ← U + W − Z``; ``admm/primal_residual`` (``Σ ‖W − Z‖``) is logged;
    * at the start of ``prune_epoch``: the filters outside ``Z``'s support (its all-zero rows) are sliced
      out by :func:`~callbacks.width_stage.prune_width` with that explicit plan, a new LR stage starts and
      the hook is removed.

    ``Z`` and ``U`` are part of the callback's state (CPU tensors keyed by convolution name), so a resumed
    run continues the same ADMM iterations; after the prune they stay as they were at the prune.

    Args:
        start_epoch: first training epoch with the ADMM term.
        admm_epoch: training epochs between two Z/U updates.
        prune_epoch: training epoch at whose start the network is pruned (``≥ start_epoch``).
        rho: the penalty weight ``ρ``.
        sparsity: fraction of filters removed from every prunable layer, or
            ``{"default": s, "<conv name>": s, ...}``.
        criterion: only ``l2_norm``: the projection onto the filter-sparse set keeps the largest-L2 filters.
        round_to: kept channels are a multiple of this (8 suits MCU kernels).
        ignore: convolutions whose output channels are kept, e.g. ``["stem.0"]``.
    """

    hook_name = HOOK_NAME
    penalty_name = "admm_penalty"
    method = "admm"
    # the Euclidean projection onto the filter-sparse set keeps the filters of largest L2 norm
    criteria = frozenset({"l2_norm"})
    epoch_attributes = ("start_epoch", "prune_epoch")
    state_attributes = ("keep", "channel_groups", "Z", "U", "updates", "result")

    start_epoch: int = 0
    admm_epoch: int = 1
    prune_epoch: int = 3
    rho: float = 1e-3
    sparsity: float | dict[str, float] = 0.75

    def schedule(self) -> str:
        return f"ADMM ρ={self.rho} every {self.admm_epoch} ep @{self.start_epoch}–{self.prune_epoch - 1}, " \
               f"prune @{self.prune_epoch}"

    def __post_init__(self) -> None:
        super().__post_init__()
        #: Filters kept by the projection, per root convolution name.
        self.keep: dict[str, int] = {}
        #: Equal chunks pruned alike, per root convolution name (> 1 where a grouped convolution follows).
        self.channel_groups: dict[str, int] = {}
        #: ADMM variables per root convolution name (on the module's device while training).
        self.Z: dict[str, Tensor] = {}
        self.U: dict[str, Tensor] = {}
        #: Z/U updates done so far.
        self.updates = 0

    def check_settings(self) -> None:
        super().check_settings()
        check_at_least(self, "admm_epoch", self.admm_epoch, 1)
        if self.rho <= 0:
            raise settings_error(self, "rho", self.rho, "must be > 0", "give the penalty weight, e.g. 1e-3")

    @property
    def started(self) -> bool:
        return bool(self.Z)

    def update_due(self, epoch: int) -> bool:
        """Whether the Z/U update runs at the start of ``epoch`` (before the prune at ``prune_epoch``)."""
        since = epoch - self.start_epoch
        return since > 0 and (since % self.admm_epoch == 0 or epoch == self.prune_epoch)

    # ------------------------------------------------------------------------------------- hooks
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: ImageClassifier) -> None:
        epoch = trainer.current_epoch
        if self.done or epoch < self.start_epoch:
            self.set_loss_term(pl_module, False)
            return
        if not self.started:
            weights = self._init(trainer, pl_module)
        else:
            weights = self._weights(pl_module)
            if self.update_due(epoch):
                self._update(weights)
        log_scalars(trainer, {"admm/primal_residual": primal_residual(weights, self.Z),
                              "admm/updates": self.updates})
        if epoch >= self.prune_epoch:
            self.set_loss_term(pl_module, False)
            self._prune(trainer, pl_module, weights)
        else:
            self.set_loss_term(pl_module, True)

    def penalty_term(self, pl_module: ImageClassifier, images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``Σ ρ/2 ‖W − Z + U‖²`` (logged as ``train/admm_penalty``)."""
        return admm_penalty(self._weights(pl_module), self.Z, self.U, self.rho)

    # -------------------------------------------------------------------------------------- steps
    def _init(self, trainer: L.Trainer, pl_module: ImageClassifier) -> dict[str, Tensor]:
        """``Z = proj(W)``, ``U = 0`` over the root convolution of every prunable group."""
        groups = module_groups(trainer, pl_module, self.ignore)
        self.channel_groups = {g.name: g.channel_groups for g in groups}
        self.keep = keep_counts({g.name: g.num_channels for g in groups}, self.sparsity, self.round_to,
                                channel_groups=self.channel_groups)
        weights = {g.name: g.root.weight for g in groups}
        with torch.no_grad():
            self.Z = {n: project_rows(w, self.keep[n], self.channel_groups[n]) for n, w in weights.items()}
            self.U = {n: torch.zeros_like(w) for n, w in weights.items()}
        rank_zero_info(f"ADMM: {len(weights)} layers, keeping {sum(self.keep.values())} of "
                       f"{sum(w.shape[0] for w in weights.values())} filters, rho={self.rho}")
        return weights

    def _update(self, weights: Mapping[str, Tensor]) -> None:
        for name, w in weights.items():
            self.Z[name], self.U[name] = admm_update(w, self.Z[name], self.U[name], self.keep[name],
                                                     self.channel_groups.get(name, 1))
        self.updates += 1

    def _prune(self, trainer: L.Trainer, pl_module: ImageClassifier, weights: Mapping[str, Tensor]) -> None:
        plan = {}
        for name, z in self.Z.items():
            removed, expected = zero_rows(z), z.shape[0] - self.keep[name]
            if len(removed) > expected:  # a kept row of W + U was exactly zero: remove only the count planned
                rank_zero_warn(f"ADMM: Z of {name!r} has {len(removed)} zero rows, {expected} are removed")
            # the rows of least norm: the zero rows, the lowest first (the same positions of every chunk of a
            # group that reaches a grouped convolution)
            plan[name] = lowest_channels(row_norms(z).double(), expected, self.channel_groups.get(name, 1))
        residual = primal_residual(weights, self.Z)
        result = prune_width(trainer, pl_module, L2Norm(), self.sparsity, self.round_to, False, self.ignore,
                             plan=plan, tag="admm")
        self.result = {**result, "plan": plan, "primal_residual": residual, "updates": self.updates}

    def _weights(self, pl_module: ImageClassifier) -> dict[str, Tensor]:
        """The root convolution weights that carry the ADMM variables (Z, U moved to their device)."""
        modules = dict(pl_module.net.named_modules())
        missing = [n for n in self.Z if n not in modules]
        if missing:
            raise RuntimeError(f"ADMM: the network has no module {missing} any more (was it changed since?)")
        weights = {n: modules[n].weight for n in self.Z}
        for n, w in weights.items():
            if self.Z[n].shape != w.shape:
                raise RuntimeError(f"ADMM: {n!r} has shape {tuple(w.shape)}, its Z {tuple(self.Z[n].shape)}")
            if self.Z[n].device != w.device or self.Z[n].dtype != w.dtype:
                self.Z[n] = self.Z[n].to(w)
                self.U[n] = self.U[n].to(w)
        return weights
