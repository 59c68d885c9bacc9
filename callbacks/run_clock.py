"""A run's wall time over all its processes: the seconds the earlier processes ran (up to their last
checkpoint) travel in the checkpoint, so the summary of a resumed run counts them too instead of only the
last process's time. The time a killed process spent after its last checkpoint is not counted: the
resumed run does that work again and counts it then.

Only a resumed fit takes the clock from its checkpoint: testing or validating a checkpoint
(``trainer.test(ckpt_path=...)``) restores every callback's state too, and taking the clock there would count
this process's time up to that checkpoint twice (the summaries written before this guard did: up to 2x)."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn


class RunClock(Callback):
    """Carries ``seconds`` (the run's time so far) in every checkpoint; :meth:`seconds` is the total now."""

    def __init__(self) -> None:
        self.started = time.time()  # built with the trainer, at the start of the process
        self.before = 0.0  # seconds of the earlier processes of this run (from the resumed checkpoint)
        self._resuming = True  # whether the checkpoint being loaded resumes a fit (set by on_load_checkpoint)

    def seconds(self) -> float:
        """The run's wall time up to now, earlier processes included."""
        return self.before + time.time() - self.started

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds()}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # Lightning calls this just before load_state_dict, for a resumed fit and for an evaluated checkpoint alike
        self._resuming = trainer.state.fn == TrainerFn.FITTING

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._resuming:
            self.before = float(state_dict.get("seconds", 0.0))
