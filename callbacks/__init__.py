"""Lightning callbacks: reseeding, and the pruning and distillation stages of a run."""

from callbacks.auxiliary_sweep import AuxiliarySweep
from callbacks.depth_prune import DepthPrune
from callbacks.distillation import Distillation
from callbacks.epoch_seed import EpochSeed

__all__ = ["AuxiliarySweep", "DepthPrune", "Distillation", "EpochSeed"]
