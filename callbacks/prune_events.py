"""Tell the other callbacks that the network is about to be pruned.

A pruning callback calls :func:`notify_before_prune` right before it changes ``pl_module.net``. Every
callback of the trainer that defines ``on_before_prune(trainer, pl_module)`` is then called with the
network still intact, e.g. :class:`~callbacks.distillation.Distillation` keeps a copy of the unpruned
network as its teacher. In a multi-process fit every rank first takes rank 0's parameters and buffers,
so that the pruning decision that follows (and the teacher) are the same on every rank.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import lightning as L

from callbacks.stages import sync_from_rank_zero


@runtime_checkable
class PruneListener(Protocol):
    """A callback that reacts before the network is pruned."""

    def on_before_prune(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None: ...


def notify_before_prune(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
    """Call ``on_before_prune(trainer, pl_module)`` on each of ``trainer.callbacks`` that has it, in order."""
    sync_from_rank_zero(trainer, pl_module)
    for callback in trainer.callbacks:
        hook = getattr(callback, "on_before_prune", None)
        if callable(hook):
            hook(trainer, pl_module)
