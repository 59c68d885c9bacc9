"""Helpers shared by callbacks that change the network or the training stage inside one ``fit``.

Every structural change (a depth cut, a width prune, ResRep's compactors put in or merged, auxiliary heads
attached or dropped, parts frozen) is followed by :func:`restart_optimization` or :func:`rebuild_optimizer`.
Both first call :func:`share_network`, which makes a multi-process (DDP) fit train the new network: the
DistributedDataParallel wrapper registers its parameters when it is built, so after a change it would go
on averaging the gradients of the old ones (or none) and the ranks would drift apart.
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.overrides.distributed import _sync_module_states
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from torch.nn.parallel import DistributedDataParallel

from callbacks.last_checkpoint import LastCheckpoint

T = TypeVar("T")


def run_dir(trainer: L.Trainer) -> Path:
    """The folder of this run: ``<save_dir>/<project or name>/<version>`` (where checkpoints go too)."""
    logger = trainer.logger
    if logger is not None and logger.save_dir is not None:
        version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
        return Path(logger.save_dir) / str(logger.name) / version
    return Path(trainer.default_root_dir)


def save_stage_checkpoint(trainer: L.Trainer, name: str) -> str | None:
    """Save the state at a stage boundary (e.g. the trained baseline) next to the run's checkpoints."""
    folder = next((cb.dirpath for cb in trainer.checkpoint_callbacks if cb.dirpath), None)
    if folder is None:
        return None
    path = str(Path(folder) / name)
    trainer.save_checkpoint(path, weights_only=False)  # a full checkpoint (optimiser, loops): said, not defaulted
    return path


def distributed(trainer: L.Trainer) -> bool:
    """Whether ``trainer`` runs in several processes that exchange data (a stand-in without ``world_size``,
    as in unit tests of a callback, is one process)."""
    return getattr(trainer, "world_size", 1) > 1 and dist.is_available() and dist.is_initialized()


def broadcast_from_rank_zero(trainer: L.Trainer, obj: T) -> T:
    """Rank 0's ``obj`` on every rank (a pruning decision made once, applied everywhere); ``obj`` itself on
    a single process. Every rank must call it at the same point."""
    return trainer.strategy.broadcast(obj, src=0) if distributed(trainer) else obj


def sync_from_rank_zero(trainer: L.Trainer, module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers of ``module`` to every rank (no-op on a single process).

    Under DDP the parameters are equal on all ranks, but the BatchNorm running statistics are not quite:
    the wrapper broadcasts rank 0's buffers at the start of every training forward, and each rank's forward
    then updates them from its own batch. Calling this before a pruning decision (and before a teacher is
    copied) makes every rank decide from the same state.
    """
    if distributed(trainer):
        _sync_module_states(module)  # Lightning's coalesced broadcast of parameters and buffers from rank 0


def share_network(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
    """After a structural change: every rank trains rank 0's new network, with its gradients averaged.

    Under DDP the module is wrapped anew by the strategy (``DDPStrategy.configure_ddp``: a new
    ``DistributedDataParallel``, whose construction checks that all ranks hold parameters of the same
    shapes and registers the current trainable parameters with its gradient reducer), and rank 0's
    parameters and buffers are broadcast. The old wrapper is released first (its reducer's gradient hooks
    go with it). A no-op on a single process; other multi-process strategies cannot follow a change and
    stop with an error.
    """
    strategy = trainer.strategy
    if not isinstance(strategy.model, DistributedDataParallel):
        if distributed(trainer):
            raise RuntimeError(f"The network changed during a {trainer.world_size}-process fit with "
                               f"{type(strategy).__name__}, which cannot re-wrap a changed network; use "
                               f"--trainer.strategy ddp (or one device).")
        return
    if not isinstance(strategy, DDPStrategy):
        raise RuntimeError(f"{type(strategy).__name__} wraps the module in DistributedDataParallel but is not a "
                           f"DDPStrategy; the changed network cannot be re-wrapped")
    if getattr(strategy, "_layer_sync", None) is not None:
        raise RuntimeError("--trainer.sync_batchnorm true cannot be combined with a change of the network: the "
                           "pruned network is rebuilt with plain BatchNorm; leave sync_batchnorm off")
    check_same_structure(trainer, pl_module)
    old = weakref.ref(strategy.model)
    strategy.model = pl_module
    if old() is not None:
        gc.collect()
    if old() is not None:  # its reducer would keep reducing the old parameters' gradients
        raise RuntimeError("the previous DistributedDataParallel wrapper is still referenced; cannot re-wrap")
    strategy.configure_ddp()
    sync_from_rank_zero(trainer, pl_module)


def check_same_structure(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
    """Stop every rank with a clear error when the ranks' modules differ in structure (names, shapes)."""
    if not distributed(trainer):
        return
    mine = [(name, tuple(t.shape)) for name, t in pl_module.state_dict().items()]
    structures: list[Any] = [None] * trainer.world_size
    dist.all_gather_object(structures, mine)
    differ = [rank for rank, s in enumerate(structures) if s != structures[0]]
    if differ:
        diff = sorted(set(map(tuple, structures[differ[0]])) ^ set(map(tuple, structures[0])))[:4]
        raise RuntimeError(f"after a structural change, ranks {differ} hold a different network than rank 0 "
                           f"(first differences: {diff}); pruning decisions must be the same on every rank")


def restart_optimization(trainer: L.Trainer, pl_module: L.LightningModule, epochs: int,
                         optimizer: dict[str, Any] | None = None) -> None:
    """Start a new stage of ``epochs`` epochs: fresh optimiser over the trainable parameters and a fresh
    LR schedule, both built by the module's ``configure_optimizers`` through the strategy, on every rank
    (after :func:`share_network`). ``optimizer`` sets this stage's own optimisation settings (the module's
    otherwise)."""
    share_network(trainer, pl_module)
    pl_module.start_stage(max(int(epochs), 1), optimizer)
    trainer.strategy.setup_optimizers(trainer)


def rebuild_optimizer(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
    """New optimiser over the (changed) parameters, inside the current stage: the rebuilt LR schedule is
    moved to the stage's position at once (a fresh timm scheduler leaves the base LR in the optimiser until
    its first update, which would give the next batch the wrong LR). Calls :func:`share_network` first."""
    share_network(trainer, pl_module)
    trainer.strategy.setup_optimizers(trainer)
    for config in trainer.lr_scheduler_configs:
        pl_module.lr_scheduler_step(config.scheduler, None)


def reset_best_checkpoint(trainer: L.Trainer) -> None:
    """Forget the best score so that "best" refers to the new (pruned) network; files stay on disk."""
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and not isinstance(cb, LastCheckpoint):
            cb.best_k_models = {}
            cb.best_model_path = ""
            cb.best_model_score = None
            cb.kth_best_model_path = ""
            cb.kth_value = torch.tensor(float("inf") if cb.mode == "min" else -float("inf"))


def log_scalars(trainer: L.Trainer, metrics: dict[str, float]) -> None:
    """Log stage-level numbers (params, MACs, chosen cut) to the logger and print them."""
    if trainer.logger is not None:
        trainer.logger.log_metrics(metrics, step=trainer.global_step)
    rank_zero_info("  ".join(f"{k}={v:,.4g}" if isinstance(v, float) else f"{k}={v:,}" for k, v in metrics.items()))


def data_image_size(trainer: L.Trainer, default: int = 224) -> int:
    """The image size the datamodule feeds the network (costs are counted at it)."""
    return int(getattr(trainer.datamodule.hparams, "image_size", default)) if trainer.datamodule else default


def find_callback(trainer: L.Trainer, cls: type) -> L.Callback | None:
    return next((cb for cb in trainer.callbacks if isinstance(cb, cls)), None)
