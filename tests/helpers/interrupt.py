"""A callback for tests: a Ctrl-C at the first training batch of a given epoch, raised in-process."""

import lightning as L


class CtrlCAt(L.Callback):
    def __init__(self, epoch: int = 0) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: object,
                             batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt
