"""Lightning callbacks: reseeding, and the pruning and distillation stages of a run."""

from callbacks.admm_prune import ADMMPrune
from callbacks.auxiliary_sweep import AuxiliarySweep
from callbacks.bn_slimming import BNSlimming
from callbacks.depth_prune import DepthPrune
from callbacks.distillation import Distillation
from callbacks.epoch_seed import EpochSeed
from callbacks.gradual_prune import GradualPrune
from callbacks.one_shot_prune import OneShotPrune
from callbacks.rep_prune import RepPrune

__all__ = ["ADMMPrune", "AuxiliarySweep", "BNSlimming", "DepthPrune", "Distillation", "EpochSeed", "GradualPrune",
           "OneShotPrune", "RepPrune"]
