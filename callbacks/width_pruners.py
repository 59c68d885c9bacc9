"""The width-pruning callbacks as one family: find them on a trainer, know when they prune, summarise them.

The experiment scripts use this to check a schedule before training and to describe the run afterwards
(method, criterion, sparsity, FLOPs preserve rate) without special-casing each callback.
"""

from __future__ import annotations

from typing import Any

import lightning as L

from callbacks.admm_prune import ADMMPrune
from callbacks.bn_slimming import BNSlimming
from callbacks.gradual_prune import GradualPrune
from callbacks.one_shot_prune import OneShotPrune
from callbacks.rep_prune import RepPrune

#: Width-pruning callback classes → the method names used in summaries and tables.
METHODS: dict[type[L.Callback], str] = {
    OneShotPrune: "oneshot",
    BNSlimming: "bn_slimming",
    GradualPrune: "gradual",
    ADMMPrune: "admm",
    RepPrune: "resrep",
}

#: Attributes holding epoch numbers of a width-pruning schedule (shifted together when stages move).
EPOCH_ATTRIBUTES: tuple[str, ...] = ("epoch", "start_epoch", "prune_epoch")


def width_pruners(trainer: L.Trainer) -> list[L.Callback]:
    """The trainer's width-pruning callbacks, in their order."""
    return [cb for cb in trainer.callbacks if isinstance(cb, tuple(METHODS))]


def method_of(callback: L.Callback) -> str:
    return METHODS[type(callback)]


def final_prune_epoch(callback: L.Callback) -> int:
    """The epoch at whose start ``callback`` performs its last structural prune."""
    if isinstance(callback, GradualPrune):
        return callback.start_epoch + callback.num_steps * callback.interval
    if isinstance(callback, OneShotPrune):
        return callback.epoch
    return callback.prune_epoch


def shift_epochs(callback: L.Callback, shift: int) -> None:
    """Move ``callback``'s schedule ``shift`` epochs earlier (e.g. when a trained baseline replaces the
    baseline stage of a pipeline)."""
    for name in EPOCH_ATTRIBUTES:
        if hasattr(callback, name):
            setattr(callback, name, max(getattr(callback, name) - shift, 0))


def check_schedule(callback: L.Callback, max_epochs: int | None) -> None:
    """A clear error when the fit ends before the callback's last prune (or leaves no epoch to fine-tune)."""
    last = final_prune_epoch(callback)
    if max_epochs is None or max_epochs <= last:
        raise SystemExit(f"error: {type(callback).__name__} prunes last at epoch {last}, so --trainer.max_epochs "
                         f"({max_epochs}) must exceed it to leave epochs for fine-tuning")


def describe(callback: L.Callback) -> dict[str, Any]:
    """Method, criterion, sparsity and the outcome of ``callback`` (for ``summary.json``)."""
    result = dict(callback.result)
    return {
        "method": method_of(callback),
        "criterion": callback.criterion,
        "sparsity": callback.sparsity,
        "done": callback.done,
        "prune_epoch": final_prune_epoch(callback),
        "flops_preserve_rate": result.get("flops_preserve_rate"),
        "result": result,
    }
