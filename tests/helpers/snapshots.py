"""A callback keeping a copy of the network at the end of every training epoch."""

from __future__ import annotations

import copy

import lightning as L
from torch import nn


# --------------------------------------------------------------------------------------- in a fit
class Snapshots(L.Callback):
    """Copies of the network at the end of every training epoch."""

    def __init__(self) -> None:
        self.nets: dict[int, nn.Module] = {}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.nets[trainer.current_epoch] = copy.deepcopy(pl_module.net).eval()
