"""Helpers shared by callbacks that change the network or the training stage inside one ``fit``."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from callbacks.last_checkpoint import LastCheckpoint


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
    trainer.save_checkpoint(path)
    return path


def restart_optimization(trainer: L.Trainer, pl_module: L.LightningModule, epochs: int) -> None:
    """Start a new stage of ``epochs`` epochs: fresh optimiser over the trainable parameters and a fresh
    LR schedule, both built by the module's ``configure_optimizers`` through the strategy."""
    if trainer.world_size > 1:
        rank_zero_warn("Changing the network during a multi-process fit is untested; prefer --trainer.devices 1.")
    pl_module.start_stage(max(int(epochs), 1))
    trainer.strategy.setup_optimizers(trainer)


def rebuild_optimizer(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
    """New optimiser over the (changed) parameters, inside the current stage: the rebuilt LR schedule is
    moved to the stage's position at once (a fresh timm scheduler leaves the base LR in the optimiser until
    its first update, which would give the next batch the wrong LR)."""
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
