"""A callback for tests: SIGKILL the run at a given training batch, as a crash or a job scheduler would.

The run is started in a session of its own, so its whole process group goes (DataLoader workers too)."""

import os
import signal

import lightning as L


class KillAt(L.Callback):
    def __init__(self, epoch: int = 0, batch: int = 0) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: object,
                             batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.killpg(os.getpgid(0), signal.SIGKILL)
