"""The services an experiment's ``main`` calls around its CLI: fit and test, the run summary, the W&B run's
end, reading checkpoints (the baseline a pruning run starts from) and a split's accuracy by a bare trainer.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.loggers import WandbLogger

from callbacks.last_checkpoint import LastCheckpoint
from callbacks.run_clock import RunClock
from callbacks.stages import run_dir
from callbacks.stop_conditions import StopConditions, check_stages_done
from experiments.run.checkpoint_io import CheckpointError, check_checkpoint_file, write_json
from experiments.run.checks import ExperimentError
from lightning_modules.backbones import ArchitectureMismatch
from lightning_modules.deploy.profiling import tinyml_budget

if TYPE_CHECKING:
    from lightning.pytorch.cli import LightningCLI


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value


def fit_and_test(cli: LightningCLI) -> dict[str, str | None]:
    """Fit (resuming from ``--ckpt_path``), then test the best checkpoint (the current weights when
    checkpointing is off). The fit's metrics stay in ``trainer.callback_metrics`` next to the test's.
    Returns the best and last checkpoint paths."""
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    if not any(isinstance(cb, StopConditions) for cb in trainer.callbacks):
        trainer.callbacks.append(StopConditions())  # the step limit against the stages, before training
    trainer.fit(model, data, ckpt_path=cli.config.ckpt_path)
    check_stages_done(trainer)  # no summary of a run whose stage never happened
    fit_metrics, checkpoints = dict(trainer.callback_metrics), checkpoint_paths(trainer)
    trainer.test(model, data, ckpt_path=checkpoints["best_checkpoint"])
    trainer.callback_metrics.update({k: v for k, v in fit_metrics.items() if k not in trainer.callback_metrics})
    return checkpoints


def checkpoint_paths(trainer: L.Trainer) -> dict[str, str | None]:
    """Best and last checkpoint of the fit. Read them right after ``fit``: testing a checkpoint restores
    the checkpoint callback's state as it was when that file was written."""
    best = next((cb for cb in trainer.checkpoint_callbacks if not isinstance(cb, LastCheckpoint)), None)
    last = next((cb for cb in trainer.checkpoint_callbacks if isinstance(cb, LastCheckpoint)), None)
    return {"best_checkpoint": getattr(best, "best_model_path", "") or None,
            "last_checkpoint": getattr(last, "path", "") or None}


def run_seconds(trainer: L.Trainer, started: float) -> float:
    """The run's wall time: over all its processes when a :class:`~callbacks.run_clock.RunClock` carried the
    earlier ones' seconds in the checkpoint, else this process's since ``started``."""
    clock = next((cb for cb in trainer.callbacks if isinstance(cb, RunClock)), None)
    return time.time() - started + (clock.before if clock is not None else 0.0)


def write_summary(trainer: L.Trainer, model: L.LightningModule, datamodule: Any, started: float,
                  checkpoints: dict[str, str | None], extra: dict[str, Any] | None = None,
                  budget: dict[str, Any] | None = None) -> Path:
    """Write ``summary.json`` into the run folder and the logger's run summary; returns its path.

    ``checkpoints`` are the paths taken right after ``fit`` (see :func:`checkpoint_paths`); ``budget`` is
    the final network's :func:`tinyml_budget` when the caller already has it.
    """
    image_size = int(getattr(datamodule.hparams, "image_size", 224))
    budget = budget or tinyml_budget(model.net, image_size)
    summary: dict[str, Any] = {
        "metrics": {k: _plain(v) for k, v in sorted(trainer.callback_metrics.items())},
        "params": budget["params"],
        "macs": budget["macs"],
        "budget": budget,
        "image_size": image_size,
        "arch": model.arch,
        "channels_last": bool(model.hparams.get("channels_last", False)),
        "schedule_span": model.hparams.get("schedule_span", "fit"),  # per-stage LR schedules, or one over the fit
        "data_root": str(getattr(datamodule.hparams, "root", "")),
        "seed": int(os.environ["PL_GLOBAL_SEED"]) if os.environ.get("PL_GLOBAL_SEED") else None,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "wall_time_s": round(run_seconds(trainer, started), 1),
        **checkpoints,
        **(extra or {}),
    }
    path = run_dir(trainer) / "summary.json"
    if trainer.is_global_zero:
        write_json(path, summary)
        if isinstance(trainer.logger, WandbLogger):
            flat = {f"summary/{k}": v for k, v in summary.items() if isinstance(v, int | float)}
            flat |= {f"summary/budget/{k}": v for k, v in summary["budget"].items()}
            trainer.logger.experiment.summary.update(flat)
        print(f"Summary written to {path}")
    return path


def close_logger(trainer: L.Trainer) -> None:
    """Finish the W&B run, so that a later run in the same process starts a new one."""
    if isinstance(trainer.logger, WandbLogger) and trainer.is_global_zero:
        trainer.logger.experiment.finish()


def finish_run(trainer: L.Trainer, model: L.LightningModule, datamodule: Any, started: float,
               checkpoints: dict[str, str | None], extra: dict[str, Any] | None = None,
               budget: dict[str, Any] | None = None) -> Path:
    """The end of an entry point's run: :func:`write_summary`, then :func:`close_logger`; returns the
    summary's path."""
    path = write_summary(trainer, model, datamodule, started, checkpoints, extra, budget)
    close_logger(trainer)
    return path


def read_module(module_class: type[L.LightningModule], path: str, option: str = "--baseline_ckpt"
                ) -> L.LightningModule:
    """``module_class.load_from_checkpoint(path)`` on the CPU, weights only. The throw-away initialisation
    draws from a forked RNG, so reading a checkpoint leaves the run's random stream where it was."""
    check_checkpoint_file(path, option)
    try:
        with torch.random.fork_rng(devices=[]):
            return module_class.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, KeyError) as err:
        raise CheckpointError(f"cannot read checkpoint {path} ({option}): {str(err).splitlines()[0]}") from err


def load_baseline(model: L.LightningModule, path: str) -> L.LightningModule:
    """Load a trained, unpruned baseline's weights into ``model`` (the architectures must match) and
    return the baseline module read from ``path`` (arguments an older checkpoint lacks have their defaults)."""
    try:
        baseline = read_module(type(model), path)
    except ArchitectureMismatch as err:
        raise SystemExit(f"error: baseline checkpoint {path}: {err}") from err
    if baseline.arch != model.arch:
        raise ExperimentError(f"baseline checkpoint {path} has architecture {baseline.arch}, "
                              f"but the model is {model.arch}; pass the matching --model.* arguments")
    model.load_state_dict(baseline.state_dict())
    return baseline


def split_accuracy(model: L.LightningModule, datamodule: L.LightningDataModule, split: str = "val",
                   like: L.Trainer | None = None, precision: Any = None) -> float | None:
    """``<split>/acc`` of ``model`` on ``datamodule``'s ``val`` or ``test`` split, by a bare Trainer that
    logs and saves nothing (e.g. the accuracy of a baseline before it is pruned); on the CPU when the run's
    trainer ``like`` is on the CPU, else on Lightning's choice of device."""
    accelerator = "cpu" if like is not None and isinstance(like.accelerator, CPUAccelerator) else "auto"
    trainer = L.Trainer(accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, precision=precision)
    run = trainer.validate if split == "val" else trainer.test
    results = run(model, datamodule, verbose=False)
    value = results[0].get(f"{split}/acc") if results else None
    return None if value is None else float(value)
