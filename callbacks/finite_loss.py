"""Stop a run whose loss is no longer a number, before anything is saved from its weights or reported.

Lightning's ``EarlyStopping(check_finite=True)`` checks a logged metric once per validation and ends the
fit normally (exit 0, checkpoints and summary written from the broken weights); this callback checks
every training loss and fails the run instead, naming the epoch, the step and the last good checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch

__all__ = ["FiniteLoss", "NonFiniteLossError"]


class NonFiniteLossError(RuntimeError):
    """The training loss or the weights became NaN or infinite."""


def last_good_checkpoint(trainer: L.Trainer) -> str | None:
    """The newest checkpoint file on disk of the run (saved before anything went non-finite)."""
    files = [Path(p) for cb in trainer.checkpoint_callbacks
             for p in (getattr(cb, "last_model_path", ""), getattr(cb, "best_model_path", "")) if p]
    files = [p for p in files if p.is_file()]
    return str(max(files, key=lambda p: p.stat().st_mtime_ns)) if files else None


def non_finite_parameter(module: torch.nn.Module) -> str | None:
    """Name of the first parameter holding a NaN or an infinity, if any."""
    return next((name for name, p in module.named_parameters() if not torch.isfinite(p).all()), None)


class FiniteLoss(L.Callback):
    """Raise :class:`NonFiniteLossError` at the first non-finite training loss, validation loss or test
    loss, and refuse to save a checkpoint of non-finite weights."""

    def _fail(self, trainer: L.Trainer, what: str, hint: str | None = None) -> None:
        last = last_good_checkpoint(trainer)
        resume = hint or (f"the last good checkpoint is {last} (resume from it with --ckpt_path and a lower "
                          f"--model.lr)" if last else "no checkpoint had been saved yet; lower --model.lr and start "
                          "again")
        raise NonFiniteLossError(
            f"{what} at epoch {trainer.current_epoch}, step {trainer.global_step}: the run diverged and "
            f"was stopped without saving; {resume}"
        )

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss).all()):
            self._fail(trainer, f"the training loss is {loss.detach().float().mean().item()}")

    def _check_eval_loss(self, trainer: L.Trainer, pl_module: L.LightningModule, key: str, what: str) -> None:
        value = trainer.callback_metrics.get(key)
        if value is None or bool(torch.isfinite(torch.as_tensor(value)).all()):
            return
        name = non_finite_parameter(pl_module)
        cause = (f"parameter {name} holds NaN/inf values" if name is not None else
                 "the weights are finite, so the network in eval mode overflows (BatchNorm's running statistics "
                 "far from the batches' own: a learning rate too high for this data, or degenerate images)")
        self._fail(trainer, f"the {what} loss is {float(torch.as_tensor(value).float().mean())} ({cause})",
                   "lower --model.lr and start again, or check the data (this epoch's checkpoints hold the same "
                   "network)")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Before any checkpoint is chosen on it: Lightning calls checkpoint callbacks last."""
        if not trainer.sanity_checking:
            self._check_eval_loss(trainer, pl_module, "val/loss", "validation")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Before the run's summary is written from it."""
        self._check_eval_loss(trainer, pl_module, "test/loss", "test")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        name = non_finite_parameter(pl_module)
        if name is not None:
            self._fail(trainer, f"parameter {name} holds NaN/inf values")
