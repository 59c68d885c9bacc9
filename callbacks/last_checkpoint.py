"""``last.ckpt`` after every validation, whether or not the monitored metric improved.

Since Lightning 2.6, ``ModelCheckpoint(save_last=True)`` rewrites ``last.ckpt`` only in steps where a
top-k checkpoint is saved, so with ``save_top_k=1`` it can lag behind the run. Resuming needs the real
last state: this callback is a monitor-less ``ModelCheckpoint`` that overwrites ``last.ckpt`` each time.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    """Keep exactly one checkpoint, ``last.ckpt``, refreshed after every validation."""

    def __init__(self, dirpath: str | None = None) -> None:
        super().__init__(dirpath=dirpath, filename="last", monitor=None, save_top_k=1,
                         enable_version_counter=False)

    @property
    def path(self) -> str:
        return self.best_model_path
