"""Every way a fit can stop, checked against the stages it was asked to run.

A pipeline's stages (the auxiliary sweep, the depth cut, a width prune, distillation) act at scheduled
epochs, but a fit also ends at ``max_steps``, ``max_time``, by early stopping, or after
``limit_train_batches`` × ``max_epochs`` batches. :func:`check_trains_something` refuses runs that would
train nothing; :class:`StopConditions` checks, once the number of batches per epoch is known (before the
first step), that the step limit leaves every stage its epoch; :func:`check_stages_done` refuses, after
the fit, a run whose stage never happened (``max_time``, early stopping), so that no summary of such a
run is written.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L

from callbacks.auxiliary_sweep import AuxiliarySweep
from callbacks.distillation import Distillation
from callbacks.pruning_base import PruningCallback

__all__ = ["IncompleteRunError", "Stage", "StopConditions", "check_stages_done", "check_trains_something",
           "full_epochs", "stages"]


class IncompleteRunError(RuntimeError):
    """The fit stops (or stopped) before a stage it was asked to run."""


@dataclass(frozen=True)
class Stage:
    """A stage of the run: its name, the epoch that must run to its end, and whether it happened."""

    name: str
    epoch: int
    happened: Callable[[], bool]


def stages(trainer: L.Trainer) -> list[Stage]:
    """The stages of ``trainer``'s callbacks, in their order."""
    found: list[Stage] = []
    for cb in trainer.callbacks:
        if isinstance(cb, PruningCallback):
            found.append(Stage(f"{type(cb).__name__} (last change at epoch {cb.last_epoch})", cb.last_epoch,
                               lambda cb=cb: cb.done))
        elif isinstance(cb, AuxiliarySweep) and cb.epochs > 0:
            last = cb.start_epoch + cb.epochs - 1
            found.append(Stage(f"the auxiliary sweep (epochs {cb.start_epoch}-{last})", last,
                               lambda cb=cb: cb.started and bool(cb.accuracies)))
        elif isinstance(cb, Distillation):
            found.append(Stage(f"Distillation (from epoch {cb.start_epoch})", cb.start_epoch,
                               lambda cb=cb: cb.has_teacher and trainer.current_epoch > cb.start_epoch))
    return found


def check_trains_something(trainer: L.Trainer, lr: Any = None) -> None:
    """Raise :class:`IncompleteRunError` for settings under which the fit trains nothing."""
    limit = trainer.limit_train_batches
    nothing = [
        ("--model.lr", lr, lr is not None and not float(lr) > 0, "a positive learning rate"),
        ("--trainer.max_epochs", trainer.max_epochs, trainer.max_epochs == 0, "at least 1"),
        ("--trainer.max_steps", trainer.max_steps, trainer.max_steps == 0, "at least 1 (or -1: no limit)"),
        ("--trainer.limit_train_batches", limit, limit is not None and limit == 0, "more than 0"),
    ]
    for option, value, refused, fix in nothing:
        if refused:
            raise IncompleteRunError(f"{option} {value}: the run would train nothing; use {fix}")


def full_epochs(trainer: L.Trainer) -> float:
    """Epochs the fit runs to their end under ``max_epochs`` and ``max_steps`` (``inf``: no limit)."""
    epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else math.inf
    batches = trainer.num_training_batches
    if trainer.max_steps >= 0 and math.isfinite(batches) and batches > 0:
        steps_per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)
        epochs = min(epochs, trainer.max_steps // steps_per_epoch)
    return epochs


class StopConditions(L.Callback):
    """Before the first training step: every stage's epoch runs to its end under the step limit."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epochs = full_epochs(trainer)
        late = [s for s in stages(trainer) if s.epoch >= epochs and not s.happened()]
        if not late:
            return
        batches = trainer.num_training_batches
        per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)
        if epochs == trainer.max_epochs:  # the epoch limit binds (the pruning callbacks check it themselves)
            raise IncompleteRunError(
                f"--trainer.max_epochs {trainer.max_epochs} ends the fit before {', '.join(s.name for s in late)}; "
                f"use --trainer.max_epochs {late[-1].epoch + 1} or more, or schedule the stage earlier")
        needed = (late[-1].epoch + 1) * per_epoch
        raise IncompleteRunError(
            f"--trainer.max_steps {trainer.max_steps} ends the fit after {int(epochs)} full epoch(s) "
            f"({per_epoch} step(s) per epoch: {batches} batch(es), --trainer.accumulate_grad_batches "
            f"{trainer.accumulate_grad_batches}), before {', '.join(s.name for s in late)}; use "
            f"--trainer.max_steps {needed} or more (or -1), or schedule the stage earlier")


def check_stages_done(trainer: L.Trainer) -> None:
    """After the fit: raise :class:`IncompleteRunError` if a stage never happened, or nothing trained."""
    if trainer.global_step == 0:
        raise IncompleteRunError("the fit ended before its first training step: nothing was trained; "
                                 "no summary was written")
    missing = [s.name for s in stages(trainer) if not s.happened()]
    if not missing:
        return
    last = next((cb.best_model_path for cb in trainer.checkpoint_callbacks
                 if getattr(cb, "filename", None) == "last" and cb.best_model_path), None)
    resume = f"--ckpt_path {last}" if last else "--ckpt_path <run dir>/checkpoints/last.ckpt"
    raise IncompleteRunError(
        f"the fit stopped at epoch {trainer.current_epoch}, step {trainer.global_step} ({stop_reason(trainer)}) "
        f"before {', '.join(missing)} happened; no summary was written; lift that limit and resume with "
        f"{resume} (and the same --trainer.logger.init_args.id)")


def stop_reason(trainer: L.Trainer) -> str:
    """Which stop condition ended the fit, in the words of its option."""
    if 0 <= trainer.max_steps <= trainer.global_step:
        return f"--trainer.max_steps {trainer.max_steps}"
    for cb in trainer.callbacks:
        name = type(cb).__name__
        if name == "Timer" and getattr(cb, "_duration", None) is not None and cb.time_remaining() <= 0:
            return "--trainer.max_time"
        if name == "EarlyStopping" and getattr(cb, "stopped_epoch", 0):
            return f"early stopping on {getattr(cb, 'monitor', '?')}"
    return "stopped early"
