"""One-shot width pruning: at one epoch, remove the lowest-ranked channels and fine-tune the rest."""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L

from callbacks.pruning_base import WidthPruningCallback
from callbacks.width_stage import prune_width
from lightning_modules.pruning.criteria import make_criterion


@dataclass(eq=False)
class OneShotPrune(WidthPruningCallback):
    """At the start of training epoch ``epoch``, prune every prunable layer once and fine-tune until the end.

    TinyNeuralNetwork's ``OneShotChannelPruner`` setting: ``sparsity`` is the fraction of channels removed
    from each prunable convolution (0.5 → MobileNetV1-0.5, FLOPs preserve rate ≈ 0.25; 0.75 → 0.25-width,
    ≈ 0.06); the classifier keeps its outputs.

    Args:
        epoch: the training epoch at whose start the network is pruned (0 = before any training, e.g. when
            starting from a trained baseline).
        criterion: ``random``, ``l1_norm``, ``l2_norm``, ``fpgm``, ``hrank`` or ``bn_scale``.
        sparsity: fraction removed from every layer, or ``{"default": s, "<conv name>": s, ...}``.
        round_to: kept channels are a multiple of this (8 suits MCU kernels).
        global_ranking: one threshold over all layers' (mean-normalised) scores instead of per layer.
        ignore: convolutions whose output channels are kept, e.g. ``["stem.0"]``.
        max_pruning_ratio: with ``global_ranking``, the largest fraction any one layer may lose.
        hrank_batches: training batches that HRank reads its statistics from.
        seed: of the ``random`` criterion.
    """

    method = "oneshot"

    epoch: int = 0
    sparsity: float | dict[str, float] = 0.5
    global_ranking: bool = False
    max_pruning_ratio: float = 1.0
    hrank_batches: int = 8
    seed: int = 0

    def schedule(self) -> str:
        return f"prune @{self.epoch}"

    def __repr__(self) -> str:
        return f"OneShotPrune(epoch={self.epoch}, criterion={self.criterion!r}, sparsity={self.sparsity})"

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.done or trainer.current_epoch < self.epoch:
            return
        kwargs = {"seed": self.seed} if self.criterion == "random" else {}
        self.result = prune_width(
            trainer, pl_module, make_criterion(self.criterion, **kwargs), self.sparsity, self.round_to,
            self.global_ranking, self.ignore, self.max_pruning_ratio, hrank_batches=self.hrank_batches,
        )
