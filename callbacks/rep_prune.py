"""ResRep width pruning inside one fit: train compactors with re-routed gradients, then merge and slice.

Ding et al., *ResRep: Lossless CNN Pruning via Decoupling Remembering and Forgetting*, ICCV 2021; the maths
is in :mod:`lightning_modules.pruning.resrep`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from callbacks.pruning_base import (
    PruningSettingsError,
    WidthPruningCallback,
    check_at_least,
    notify_before_prune,
    settings_error,
)
from callbacks.stages import data_image_size, log_scalars, restart_optimization
from callbacks.width_stage import prune_width
from lightning_modules.deploy.profiling import model_cost
from lightning_modules.models.layers import Compactor
from lightning_modules.models.mobilenet_v1 import MobileNetV1
from lightning_modules.pruning.compactors import (
    CompactorPlacementError,
    compactor_channel_groups,
    compactor_positions,
)
from lightning_modules.pruning.resrep import (
    ROW_NORMS,
    CompactorRowNorm,
    compactor_groups,
    mask_vector,
    masked_row_norm,
    ramp_fraction,
    removal_plan,
    removal_targets,
    resrep_gradients,
    update_masks,
)
from lightning_modules.pruning.width import flops_preserve_rate, ignored_modules


def backbone_name(net: torch.nn.Module) -> str:
    """timm's name of a (possibly cut) timm network, else its class name."""
    body = getattr(net, "body", net)
    return (getattr(body, "pretrained_cfg", None) or {}).get("architecture") or type(net).__name__


@dataclass(eq=False)
class RepPrune(WidthPruningCallback):
    """ResRep: compactors from ``start_epoch``, a structural prune at ``prune_epoch``, fine-tuning after.

    * At the start of epoch ``start_epoch`` the prune is announced (a
      :class:`~callbacks.distillation.Distillation` teacher is the plain network, without compactors),
      identity compactors are put in by the backbone adapter (the function is unchanged; the network's
      description records them, so checkpoints rebuild them) and a new optimiser and LR schedule start,
      spanning the epochs up to ``prune_epoch``. MobileNetV1: one after the BatchNorm of the stem and of
      every pointwise convolution (``ImageClassifier``'s ``compactors`` hyper-parameter). timm networks:
      after every BatchNorm of each channel group torch-pruning's dependency graph finds, the compactors
      of coupled channels (residual additions, depthwise convolutions, squeeze-excitation gates) sharing
      one mask (:mod:`lightning_modules.pruning.compactors`; ``structure["compactors"]``). Networks with
      no such placement (a LayerNorm or GroupNorm in a channel group, as in ConvNeXt) are refused before
      training (:meth:`check_backbone`).
    * Before every optimiser step the compactors' gradients are re-routed
      (:func:`~lightning_modules.pruning.resrep.resrep_gradients`): masked rows get no objective gradient, all rows
      get the group-lasso gradient of strength ``penalty``. Every ``mask_interval`` optimiser steps the
      masks are chosen afresh: the rows of smallest ``criterion`` norm (over all compactors of a group),
      as many as ``k / ramp_updates`` of each group's target after the ``k``-th update. ``resrep/masked_channels``, ``resrep/masked_norm``
      (mean norm of the masked rows) and ``resrep/kept_norm`` are logged then.
    * At the start of epoch ``prune_epoch`` the masks are completed to the targets (if the ramp has not
      got there), the compactors are folded into their convolutions
      (the adapter's ``merge_compactors``) and the masked channels are sliced out by
      :func:`~callbacks.width_stage.prune_width`, which rebuilds the plain network and restarts the
      optimiser and LR schedule for the fine-tuning until the end of the fit.

    The targets follow TinyNeuralNetwork's convention, as :class:`~callbacks.one_shot_prune.OneShotPrune`:
    ``sparsity`` is the fraction of channels removed from each prunable convolution (0.5 → width 0.5,
    FLOPs preserve rate ≈ 0.25; 0.75 → ≈ 0.06); the classifier keeps its outputs.

    The compactors are trained by the module's optimiser without weight decay, as in ResRep's reference
    implementation (which also gives them momentum 0.99; here they share the module's momentum).

    Args:
        start_epoch: the training epoch at whose start the compactors are installed.
        prune_epoch: the training epoch at whose start they are merged and the masked channels removed
            (> ``start_epoch``).
        sparsity: fraction removed from every layer, or ``{"default": s, "<conv name>": s, ...}`` with the
            names of the channel groups (their root convolutions: ``"stem.0"``, ``"blocks.3.pw.0"``;
            ``"layer1.0.conv1"`` in a ResNet).
        penalty: group-lasso strength λ (ResRep uses 1e-4).
        mask_interval: optimiser steps between two mask updates (ResRep uses 200); the first comes after
            ``mask_interval`` steps with compactors.
        ramp_updates: mask updates until each layer masks its whole target (linear ramp).
        criterion: the norm of a compactor row that ranks the rows: ``l2_norm`` (ResRep's metric, the norm
            the penalty acts on) or ``l1_norm``.
        round_to: kept channels are a multiple of this (8 suits MCU kernels).
        ignore: convolutions whose output channels are kept, e.g. ``["stem.0"]``.
    """

    method = "resrep"
    criteria = frozenset(ROW_NORMS)
    epoch_attributes = ("start_epoch", "prune_epoch")
    state_attributes = ("result", "targets", "masks", "start_step", "updates", "baseline")

    start_epoch: int = 0
    prune_epoch: int = 3
    sparsity: float | dict[str, float] = 0.75
    penalty: float = 1e-4
    mask_interval: int = 50
    ramp_updates: int = 10

    def schedule(self) -> str:
        return f"compactors λ={self.penalty} @{self.start_epoch}–{self.prune_epoch - 1}, merge + prune @{self.prune_epoch}"

    def __post_init__(self) -> None:
        super().__post_init__()
        #: Rows to remove from each compactor (keyed by the convolution it follows).
        self.targets: dict[str, int] = {}
        #: Currently masked rows of each compactor.
        self.masks: dict[str, list[int]] = {}
        #: ``trainer.global_step`` when the compactors were installed (``None`` before).
        self.start_step: int | None = None
        #: Mask updates done so far.
        self.updates = 0
        #: Params and MACs of the plain network before the compactors (the baseline of the preserve rate).
        self.baseline: dict[str, Any] = {}
        self._mask_cache: dict[str, torch.Tensor] = {}

    def structure_epochs(self) -> list[int]:
        """Compactors are installed at ``start_epoch`` and merged away at ``prune_epoch``."""
        return [self.start_epoch, self.prune_epoch]

    def check_settings(self) -> None:
        super().check_settings()
        if self.prune_epoch <= self.start_epoch:
            raise settings_error(self, "prune_epoch", self.prune_epoch, f"must come after start_epoch "
                                 f"({self.start_epoch}): the compactors train in between", "set start_epoch < prune_epoch")
        check_at_least(self, "penalty", self.penalty, 0.0)
        check_at_least(self, "mask_interval", self.mask_interval, 1)
        check_at_least(self, "ramp_updates", self.ramp_updates, 1)

    def check_backbone(self, net: torch.nn.Module, image_size: int) -> None:
        """Refuse a network in which the compactors cannot be placed (before training; the placement is
        traced on ``net``, MobileNetV1 always has one)."""
        if isinstance(net, MobileNetV1) or any(isinstance(m, Compactor) for m in net.modules()):
            return
        try:
            compactor_positions(net, self._probe(net, image_size))
        except CompactorPlacementError as err:
            raise PruningSettingsError(
                f"RepPrune (ResRep) cannot prune backbone {backbone_name(net)!r}: {err}; choose another width "
                "method (OneShotPrune, BNSlimming, GradualPrune or ADMMPrune)") from err

    @staticmethod
    def _probe(net: torch.nn.Module, image_size: int) -> torch.Tensor:
        """A zero image that traces the compactor placement (zeros: the global random stream is untouched)."""
        first = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
        return torch.zeros(1, first.in_channels, image_size, image_size, device=first.weight.device)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and not self.done:
            self.check_backbone(pl_module.net, data_image_size(trainer))

    @property
    def active(self) -> bool:
        """Compactors are installed and being trained."""
        return self.start_step is not None and not self.done

    @property
    def row_norm(self) -> CompactorRowNorm:
        return CompactorRowNorm(self.criterion)

    # ------------------------------------------------------------------------------------------ hooks
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.done or trainer.current_epoch < self.start_epoch:
            return
        if self.start_step is None:
            self._install(trainer, pl_module)
        if trainer.current_epoch >= self.prune_epoch:
            self._prune(trainer, pl_module)

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        # After the backward pass and AMP unscaling, before clipping and the step: once per optimiser step.
        if not self.active:
            return
        compactors = compactor_groups(pl_module.net)
        assert self.start_step is not None
        due = (trainer.global_step - self.start_step) // self.mask_interval
        if due > self.updates:
            self.updates = due
            self._update_masks(pl_module, compactors, ramp_fraction(self.updates, self.ramp_updates))
        for name, group in compactors.items():
            for compactor in group:  # the group's mask on each of its compactors
                if compactor.weight.requires_grad:
                    resrep_gradients(compactor, self._mask(name, compactor), self.penalty)

    # ---------------------------------------------------------------------------------------- stages
    def _install(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        net = pl_module.net
        ignored = ignored_modules(net, self.ignore)  # unknown names are an error
        if any(isinstance(m, Compactor) for m in net.modules()):
            rank_zero_warn("RepPrune: the network already has compactors (no callback state was restored); "
                           "training them from here.")
        else:
            self.baseline = model_cost(net, data_image_size(trainer))
            notify_before_prune(trainer, pl_module)
            new_net, arch = pl_module.adapter.with_compactors(net, self._probe(net, data_image_size(trainer)), ignored)
            pl_module.rebuild_net(new_net, **arch)
            restart_optimization(trainer, pl_module, self.prune_epoch - trainer.current_epoch)
        compactors = compactor_groups(pl_module.net)
        self.targets = removal_targets(compactors, self.sparsity, self.round_to, self.ignore,
                                       compactor_channel_groups(pl_module.net))
        self.masks = {name: [] for name in compactors}
        self._mask_cache = {}
        self.start_step = trainer.global_step
        self.updates = 0
        log_scalars(trainer, {"resrep/compactors": len(compactors),
                              "resrep/target_channels": sum(self.targets.values())})

    def _prune(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        net = pl_module.net
        compactors = compactor_groups(net)
        masked = sum(len(v) for v in self.masks.values())
        target = sum(self.targets.values())
        if masked < target:
            rank_zero_warn(f"RepPrune: the mask ramp reached {masked} of {target} channels before epoch "
                           f"{self.prune_epoch}; the smallest rows complete it (raise the epochs between "
                           f"start and prune, or lower mask_interval or ramp_updates).")
            self._update_masks(pl_module, compactors, 1.0)
        norm = masked_row_norm(compactors, self.masks, self.row_norm)
        with_compactors_cost = model_cost(net, data_image_size(trainer))
        merged, arch = pl_module.adapter.merge_compactors(net)
        pl_module.rebuild_net(merged, **arch)
        result = prune_width(trainer, pl_module, self.row_norm, self.sparsity, self.round_to,
                             ignore=self.ignore, plan=removal_plan(self.masks))
        baseline = self.baseline or result["before"]
        rate = flops_preserve_rate(baseline["macs"], result["after"]["macs"])
        log_scalars(trainer, {"resrep/flops_preserve_rate": rate, "resrep/masked_norm_at_prune": norm})
        rank_zero_info(f"ResRep: merged {len(compactors)} compactors and removed "
                       f"{result['channels_removed']} channels (mean masked-row norm {norm:.3g}); "
                       f"FLOPs preserve rate {rate:.4g}")
        self.result = {
            **result,
            "before": baseline,
            "with_compactors": with_compactors_cost,
            "flops_preserve_rate": rate,
            "flops_preserve_rate_vs_compactors": flops_preserve_rate(with_compactors_cost["macs"],
                                                                     result["after"]["macs"]),
            "start_epoch": self.start_epoch,
            "mask_updates": self.updates,
            "masked_norm": norm,
        }
        self._mask_cache = {}

    # ----------------------------------------------------------------------------------------- masks
    def _update_masks(
        self, pl_module: L.LightningModule, compactors: dict[str, list[Compactor]], fraction: float
    ) -> None:
        self.masks = update_masks(compactors, self.targets, fraction, self.row_norm,
                                  compactor_channel_groups(pl_module.net))
        self._mask_cache = {}
        scores = {name: self.row_norm.group_score(c) for name, c in compactors.items()}
        kept = [s[mask_vector(len(s), self.masks[name], s).bool()] for name, s in scores.items()]
        metrics = {
            "resrep/masked_channels": float(sum(len(v) for v in self.masks.values())),
            "resrep/masked_norm": masked_row_norm(compactors, self.masks, self.row_norm),
            "resrep/kept_norm": float(torch.cat(kept).mean()) if kept else 0.0,
        }
        # straight to the logger: masks are also updated at the prune, in an epoch-start hook where
        # LightningModule.log cannot log per step
        if pl_module.trainer.logger is not None:
            pl_module.trainer.logger.log_metrics(metrics, step=pl_module.trainer.global_step)

    def _mask(self, name: str, compactor: Compactor) -> torch.Tensor:
        mask = self._mask_cache.get(name)
        weight = compactor.weight
        if mask is None or mask.device != weight.device or mask.dtype != weight.dtype:
            mask = mask_vector(compactor.out_channels, self.masks.get(name, []), weight)
            self._mask_cache[name] = mask
        return mask

    # ------------------------------------------------------------------------------------ checkpoint
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._mask_cache = {}
