"""Lightning callbacks: reseeding, and the pruning and distillation stages of a run."""

from callbacks.epoch_seed import EpochSeed

__all__ = ["EpochSeed"]
