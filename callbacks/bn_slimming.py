"""Network slimming: an L1 penalty on normalisation scales, then pruning the channels with the smallest ``|γ|``.

Liu et al., *Learning Efficient Convolutional Networks through Network Slimming*, ICCV 2017. The training
loss gets ``λ·Σ|γ|`` over every BatchNorm scale, which drives the scales of unimportant channels towards
zero; the channels with the smallest ``|γ|`` across the whole network (one global threshold, as in the
paper) are then removed and the thinner network is fine-tuned. Networks normalised by LayerNorm or
GroupNorm (ConvNeXt) are slimmed the same way through the per-channel affine weight γ of those layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import lightning as L
import torch
from torch import nn

from callbacks.loss_term import LossTermCallback
from callbacks.pruning_base import WidthPruningCallback, check_at_least
from callbacks.width_stage import prune_width
from lightning_modules.pruning.criteria import BNScale

if TYPE_CHECKING:
    from lightning_modules.image_classifier import ImageClassifier

#: Key of the sparsity penalty in ``ImageClassifier.loss_hooks``.
HOOK_NAME = "bn_slimming"


#: Normalisation layers whose per-channel affine scale γ gets the L1 penalty (timm's ``BatchNormAct2d``,
#: ``LayerNorm2d`` and ``GroupNorm1`` are subclasses).
SCALED_NORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)


def bn_l1_penalty(net: nn.Module) -> torch.Tensor:
    """``Σ|γ|`` over the per-channel scales of every affine ``BatchNorm2d``, ``LayerNorm`` and ``GroupNorm``
    of ``net`` (differentiable in γ); for a LayerNorm / GroupNorm γ is its elementwise affine weight."""
    scales = [m.weight.abs().sum() for m in net.modules()
              if isinstance(m, SCALED_NORMS) and getattr(m, "weight", None) is not None and m.weight.ndim == 1]
    if not scales:
        raise ValueError("network slimming needs normalisation layers with a per-channel affine scale "
                         "(BatchNorm2d, LayerNorm or GroupNorm); the network has none: choose another method")
    return torch.stack(scales).sum()


@dataclass(eq=False)
class BNSlimming(WidthPruningCallback, LossTermCallback):
    """Train with ``λ·Σ|γ|`` from ``start_epoch``, prune by ``|γ|`` at ``prune_epoch``, fine-tune after.

    During the training epochs ``start_epoch ≤ e < prune_epoch`` the callback installs
    ``pl_module.loss_hooks["bn_slimming"]``, which adds ``penalty · bn_l1_penalty(net)`` to the loss and
    logs ``train/bn_l1`` (``Σ|γ|``, before the ``λ`` weighting). At the start of ``prune_epoch`` the hook is
    removed and :func:`~callbacks.width_stage.prune_width` removes the channels with the smallest
    normalisation scales (``bn_scale`` criterion), starting a new LR stage for the fine-tuning.

    Args:
        start_epoch: first training epoch with the L1 penalty.
        prune_epoch: training epoch at whose start the network is pruned (``≥ start_epoch``); the penalty
            is off from then on.
        sparsity: fraction of channels removed from every prunable layer (with a global ranking: the same
            total, distributed by one threshold), or ``{"default": s, "<conv name>": s, ...}``.
        penalty: the L1 weight ``λ`` (the paper uses 1e-4 to 1e-5).
        global_ranking: one threshold on ``|γ|`` over all layers (the paper's setting) instead of per layer.
        round_to: kept channels are a multiple of this (8 suits MCU kernels).
        ignore: convolutions whose output channels are kept, e.g. ``["stem.0"]``.
        max_pruning_ratio: with the global ranking, no layer loses more than this fraction of its channels
            (the last BatchNorm of MobileNetV1 has uniformly small ``|γ|``: an uncapped threshold removed
            1,023 of its 1,024 channels in our CIFAR-10 run).
    """

    hook_name = HOOK_NAME
    penalty_name = "bn_l1"
    method = "bn_slimming"
    criteria = frozenset({"bn_scale"})
    epoch_attributes = ("start_epoch", "prune_epoch")

    start_epoch: int = 0
    prune_epoch: int = 1
    sparsity: float | dict[str, float] = 0.5
    penalty: float = 1e-4
    global_ranking: bool = True
    max_pruning_ratio: float = 0.8
    criterion: str = field(default="bn_scale", kw_only=True)

    def schedule(self) -> str:
        return f"L1(γ) λ={self.penalty} @{self.start_epoch}–{self.prune_epoch - 1}, prune @{self.prune_epoch}"

    @property
    def penalty_weight(self) -> float:  # type: ignore[override]
        return self.penalty

    def check_settings(self) -> None:
        super().check_settings()
        check_at_least(self, "penalty", self.penalty, 0.0)

    def penalty_active(self, epoch: int) -> bool:
        """Whether the L1 term is part of the loss during training epoch ``epoch``."""
        return not self.done and self.start_epoch <= epoch < self.prune_epoch

    # ------------------------------------------------------------------------------------- hooks
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: ImageClassifier) -> None:
        epoch = trainer.current_epoch
        if not self.done and epoch >= self.prune_epoch:
            self.set_loss_term(pl_module, False)
            with torch.no_grad():
                bn_l1 = float(bn_l1_penalty(pl_module.net))
            result = prune_width(
                trainer, pl_module, BNScale(), self.sparsity, self.round_to, self.global_ranking, self.ignore,
                max_pruning_ratio=self.max_pruning_ratio, tag="bn_slimming",
            )
            self.result = {**result, "bn_l1": bn_l1}
        self.set_loss_term(pl_module, self.penalty_active(epoch))

    def penalty_term(self, pl_module: ImageClassifier, images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``Σ|γ|`` (logged as ``train/bn_l1``); the loss gets ``λ·Σ|γ|``."""
        return bn_l1_penalty(pl_module.net)
