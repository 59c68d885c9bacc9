"""Train auxiliary classifiers at every cut point in one pass, on the frozen backbone."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from callbacks.pruning_base import PruningSettingsError
from callbacks.stages import data_image_size, log_scalars, restart_optimization, save_stage_checkpoint
from lightning_modules.deploy.profiling import model_cost
from lightning_modules.models.aux_heads import head_channels_of


class AuxiliarySweep(L.Callback):
    """From ``start_epoch`` on: attach a head at each cut point, freeze the backbone (weights and BN
    statistics), and train all heads together for ``epochs`` epochs on detached features.

    Each validation logs ``val/aux_<k>/acc``; the last one's accuracies are the sweep results that
    :class:`~callbacks.depth_prune.DepthPrune` chooses the cut from.

    Args:
        start_epoch: first epoch of the sweep (0 when starting from a trained baseline checkpoint).
        epochs: length of the sweep stage (its LR schedule spans these epochs).
        head: head preset (``replication``, ``paper``, ``linear``) or explicit widths.
        cut_points: which cut points get a head; all of the backbone's by default (MobileNetV1: the stem +
            13 blocks; timm: after every block, see
            :mod:`~lightning_modules.backbones.timm_blocks`).
        optimizer: the heads' optimiser, no weight decay and no warm-up, on the model's LR schedule over the
            sweep's epochs; ``None``: the model's own optimiser and settings. The default is the paper's
            heads' (Adam at 1e-3, their code): with the baseline's SGD at 0.1 for one epoch, the heads of
            the deep cut points had not separated from each other and the tolerance rule chose cuts 8-12
            where heads trained one at a time chose 7 (RESULTS, *One-run sweep vs one head per cut point*).
        lr: the heads' learning rate (with ``optimizer``).
    """

    def __init__(
        self,
        start_epoch: int = 0,
        epochs: int = 1,
        head: str | list[int] = "replication",
        cut_points: list[int] | None = None,
        optimizer: Literal["adam", "adamw", "sgd", "nesterov"] | None = "adam",
        lr: float = 1e-3,
    ) -> None:
        if lr <= 0:
            raise PruningSettingsError(f"--sweep.lr must be positive, got {lr}")
        self.start_epoch = start_epoch
        self.epochs = epochs
        self.optimizer = optimizer
        self.lr = lr
        self.head_channels = head_channels_of(head)
        self.cut_points = cut_points
        self.started = False
        self.costs: dict[int, dict] = {}
        self.baseline: dict[str, Any] = {}
        self.accuracies: dict[int, float] = {}
        self.baseline_checkpoint: str | None = None

    def stage_restarts(self) -> list[int]:
        """The sweep restarts the LR schedule at its first epoch (so the baseline stage ends there)."""
        return [self.start_epoch] if self.epochs > 0 else []

    def head_optimizer(self) -> dict[str, Any] | None:
        """The sweep stage's own optimisation settings (``None``: the model's)."""
        if self.optimizer is None:
            return None
        return {"optimizer": self.optimizer, "lr": self.lr, "weight_decay": 0.0, "warmup_epochs": 0}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.started or trainer.current_epoch < self.start_epoch:
            return
        self.started = True
        self.baseline_checkpoint = save_stage_checkpoint(trainer, "baseline.ckpt")
        pl_module.attach_aux_heads(self.head_channels, self.cut_points)
        pl_module.freeze_modules(["net"])
        image_size = data_image_size(trainer)
        self.costs = pl_module.adapter.cut_costs(pl_module.net, pl_module.arch, pl_module.aux_heads.cut_points,
                                                 self.head_channels, image_size)
        self.baseline = model_cost(pl_module.net, image_size)
        restart_optimization(trainer, pl_module, self.epochs, self.head_optimizer())
        how = f"{self.optimizer} lr {self.lr:g}" if self.optimizer else "the model's optimiser"
        rank_zero_info(f"Auxiliary sweep: {len(self.costs)} heads {self.head_channels} on a frozen backbone "
                       f"for {self.epochs} epoch(s), {how}")
        log_scalars(trainer, {f"aux_{k}/params": c["params"] for k, c in self.costs.items()}
                    | {f"aux_{k}/macs": c["macs"] for k, c in self.costs.items()})

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or pl_module.aux_heads is None:
            return
        metrics = trainer.callback_metrics
        self.accuracies = {k: float(metrics[f"val/aux_{k}/acc"]) for k in pl_module.aux_heads.cut_points
                           if f"val/aux_{k}/acc" in metrics}
        if "val/acc" in metrics:
            self.baseline["acc"] = float(metrics["val/acc"])

    def state_dict(self) -> dict[str, Any]:
        return {"started": self.started, "costs": self.costs, "baseline": self.baseline,
                "accuracies": self.accuracies, "head_channels": list(self.head_channels),
                "baseline_checkpoint": self.baseline_checkpoint}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.started = state_dict["started"]
        self.costs = {int(k): v for k, v in state_dict["costs"].items()}
        self.baseline = state_dict["baseline"]
        self.accuracies = {int(k): v for k, v in state_dict["accuracies"].items()}
        self.head_channels = tuple(state_dict["head_channels"])
        self.baseline_checkpoint = state_dict.get("baseline_checkpoint")
