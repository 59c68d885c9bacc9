"""A callback for tests: end ``fit`` after a given epoch, as if the job had been killed there."""

import lightning as L


class StopAfterEpoch(L.Callback):
    def __init__(self, epoch: int = 0) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch >= self.epoch:
            trainer.should_stop = True
