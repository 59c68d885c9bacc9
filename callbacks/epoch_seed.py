"""Reseed every random number generator at the start of each training epoch.

Lightning checkpoints do not carry RNG states, so a run resumed from ``last.ckpt`` would otherwise shuffle
and augment differently from an uninterrupted one. Seeding with ``seed + epoch`` makes each epoch's data
order, augmentation and dropout a function of the epoch alone: resuming reproduces the same weights.
"""

from __future__ import annotations

import os

import lightning as L
from lightning.fabric.utilities.seed import seed_everything


def epoch_seed(base_seed: int, epoch: int) -> int:
    """The seed of one epoch (kept within the 32-bit range NumPy accepts)."""
    return (base_seed * 1_000_003 + epoch) % (2**32)


class EpochSeed(L.Callback):
    """Seed torch, NumPy and ``random`` with :func:`epoch_seed` when each training epoch starts.

    Args:
        seed: base seed; ``None`` takes the one given to ``seed_everything`` (``PL_GLOBAL_SEED``).
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        base = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        previous = os.environ.get("PL_GLOBAL_SEED")
        seed_everything(epoch_seed(base, trainer.current_epoch), workers=True, verbose=False)
        if previous is not None:  # seed_everything overwrites it; keep the run's base seed visible
            os.environ["PL_GLOBAL_SEED"] = previous
