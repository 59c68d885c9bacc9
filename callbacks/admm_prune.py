"""Structured ADMM pruning: pull the weights towards a filter-sparse copy, then remove what it leaves out.

Zhang et al., *A Systematic DNN Weight Pruning Framework using Alternating Direction Methods of
Multipliers*, ECCV 2018, in the structured form of TinyNeuralNetwork's ``ADMMPruner`` (the ADMM variables
live on the convolution that produces each prunable group's channels). The maths is in
:mod:`lightning_modules.pruning.admm`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from callbacks.loss_term import LossTermCallback
from callbacks.stages import log_scalars
from callbacks.width_stage import module_groups, prune_width
from lightning_modules.pruning.admm import admm_penalty, admm_update, primal_residual, project_rows, zero_rows
from lightning_modules.pruning.criteria import L2Norm
from lightning_modules.pruning.width import (
    SparsitySpec,
    check_sparsity_names,
    keep_count,
    sparsity_of,
)

if TYPE_CHECKING:
    from lightning_modules.image_classifier import ImageClassifier

#: Key of the augmented-Lagrangian term in ``ImageClassifier.loss_hooks``.
HOOK_NAME = "admm"


class ADMMPrune(LossTermCallback):
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

    def __init__(
        self,
        start_epoch: int = 0,
        admm_epoch: int = 1,
        prune_epoch: int = 3,
        rho: float = 1e-3,
        sparsity: float | dict[str, float] = 0.75,
        criterion: str = "l2_norm",
        round_to: int = 1,
        ignore: list[str] | None = None,
    ) -> None:
        if criterion != "l2_norm":
            raise ValueError(
                f"ADMMPrune supports only criterion='l2_norm' (the Euclidean projection onto the "
                f"filter-sparse set keeps the filters of largest L2 norm), got {criterion!r}"
            )
        if start_epoch < 0:
            raise ValueError(f"start_epoch must be >= 0, got {start_epoch}")
        if prune_epoch < start_epoch:
            raise ValueError(f"prune_epoch ({prune_epoch}) must not come before start_epoch ({start_epoch})")
        if admm_epoch < 1:
            raise ValueError(f"admm_epoch must be >= 1, got {admm_epoch}")
        if rho <= 0:
            raise ValueError(f"rho must be > 0, got {rho}")
        if round_to < 1:
            raise ValueError(f"round_to must be >= 1, got {round_to}")
        rates = list(sparsity.values()) if isinstance(sparsity, Mapping) else [sparsity]
        if not all(0.0 <= s < 1.0 for s in rates):
            raise ValueError(f"sparsities must be in [0, 1), got {sparsity}")
        self.start_epoch = start_epoch
        self.admm_epoch = admm_epoch
        self.prune_epoch = prune_epoch
        self.rho = rho
        self.sparsity: SparsitySpec = sparsity
        self.criterion = criterion
        self.round_to = round_to
        self.ignore = list(ignore or [])
        #: Filters kept by the projection, per root convolution name.
        self.keep: dict[str, int] = {}
        #: ADMM variables per root convolution name (on the module's device while training).
        self.Z: dict[str, Tensor] = {}
        self.U: dict[str, Tensor] = {}
        #: Z/U updates done so far.
        self.updates = 0
        self.result: dict[str, Any] = {}

    @property
    def done(self) -> bool:
        return bool(self.result)

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

    def loss_hook(
        self,
        pl_module: ImageClassifier,
        images: torch.Tensor,
        labels: torch.Tensor,
        logits: torch.Tensor,
        task_loss: torch.Tensor,
    ) -> torch.Tensor:
        """The ``LossHook``: ``task_loss + Σ ρ/2 ‖W − Z + U‖²``."""
        penalty = admm_penalty(self._weights(pl_module), self.Z, self.U, self.rho)
        pl_module.log("train/admm_penalty", penalty.detach(), on_step=False, on_epoch=True)
        return task_loss + penalty

    # -------------------------------------------------------------------------------------- steps
    def _init(self, trainer: L.Trainer, pl_module: ImageClassifier) -> dict[str, Tensor]:
        """``Z = proj(W)``, ``U = 0`` over the root convolution of every prunable group."""
        groups = module_groups(trainer, pl_module, self.ignore)
        check_sparsity_names(self.sparsity, [g.name for g in groups])
        self.keep = {g.name: keep_count(g.num_channels, sparsity_of(g.name, self.sparsity), self.round_to)
                     for g in groups}
        weights = {g.name: g.root.weight for g in groups}
        with torch.no_grad():
            self.Z = {n: project_rows(w, self.keep[n]) for n, w in weights.items()}
            self.U = {n: torch.zeros_like(w) for n, w in weights.items()}
        rank_zero_info(f"ADMM: {len(weights)} layers, keeping {sum(self.keep.values())} of "
                       f"{sum(w.shape[0] for w in weights.values())} filters, rho={self.rho}")
        return weights

    def _update(self, weights: Mapping[str, Tensor]) -> None:
        for name, w in weights.items():
            self.Z[name], self.U[name] = admm_update(w, self.Z[name], self.U[name], self.keep[name])
        self.updates += 1

    def _prune(self, trainer: L.Trainer, pl_module: ImageClassifier, weights: Mapping[str, Tensor]) -> None:
        plan = {}
        for name, z in self.Z.items():
            removed, expected = zero_rows(z), z.shape[0] - self.keep[name]
            if len(removed) > expected:  # a kept row of W + U was exactly zero: remove only the count planned
                rank_zero_warn(f"ADMM: Z of {name!r} has {len(removed)} zero rows, {expected} are removed")
            plan[name] = removed[:expected]
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

    # ----------------------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {
            "keep": dict(self.keep),
            "Z": {n: z.detach().cpu().clone() for n, z in self.Z.items()},
            "U": {n: u.detach().cpu().clone() for n, u in self.U.items()},
            "updates": self.updates,
            "result": self.result,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.keep = dict(state_dict["keep"])
        self.Z = dict(state_dict["Z"])
        self.U = dict(state_dict["U"])
        self.updates = int(state_dict["updates"])
        self.result = state_dict["result"]
