"""Lightning callbacks: reseeding, and the pruning and distillation stages of a run.

The classes are imported on first use (``callbacks.ADMMPrune`` or ``from callbacks import ADMMPrune``), so
that importing one callback module does not load the pruning libraries of all the others.
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULES = {"ADMMPrune": "admm_prune", "AuxiliarySweep": "auxiliary_sweep", "BNSlimming": "bn_slimming",
            "DepthPrune": "depth_prune", "Distillation": "distillation", "EpochSeed": "epoch_seed",
            "GradualPrune": "gradual_prune", "OneShotPrune": "one_shot_prune", "RepPrune": "rep_prune"}

__all__ = sorted(_MODULES)


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return getattr(importlib.import_module(f"callbacks.{_MODULES[name]}"), name)
    raise AttributeError(f"module 'callbacks' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULES])
