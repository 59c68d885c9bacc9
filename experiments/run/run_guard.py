"""A run either does what it was asked or says, in one line, why not.

- :func:`check_new_run`: a run never replaces another run's files. A run folder that already holds a run
  (a checkpoint or a ``summary.json``) is refused unless ``--ckpt_path`` resumes it.
- :class:`ResumeHint` and :func:`interrupted_exit`: SIGTERM and Ctrl-C (SIGINT) end the run with the
  shell's status for the signal (143, 130), never 0, and one line naming the last checkpoint and the
  command that resumes from it. Lightning itself turns SIGTERM into a ``SystemExit`` without status (0) and
  Ctrl-C into status 1; it has no setting for either, hence this module.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks.stages import run_dir
from experiments.run.checks import ExperimentError

__all__ = ["ResumeHint", "check_new_run", "forget_hint", "interrupted_exit", "run_files"]

#: Exit status of a process ended by a signal, as a shell reports it (128 + the signal's number).
SIGNAL_STATUS: dict[str, int] = {"SIGTERM": 128 + signal.SIGTERM, "SIGINT": 128 + signal.SIGINT}


def run_files(folder: Path) -> list[Path]:
    """The files that show a run lives in ``folder``: its checkpoints and its ``summary.json``."""
    if not folder.is_dir():
        return []
    found = sorted((folder / "checkpoints").glob("*.ckpt")) if (folder / "checkpoints").is_dir() else []
    return found + [p for p in (folder / "summary.json",) if p.is_file()]


def _run_id(trainer: L.Trainer) -> str | None:
    version = getattr(trainer.logger, "version", None) if trainer.logger is not None else None
    return version if isinstance(version, str) else None


def check_new_run(trainer: L.Trainer, ckpt_path: str | None) -> None:
    """Raise :class:`ExperimentError` when a new run (no ``--ckpt_path``) would write into the folder of an
    earlier run. Checked on the launching process only (the processes a multi-device run starts later
    find the folder their own rank 0 is creating)."""
    if ckpt_path or trainer.fast_dev_run or rank_zero_only.rank != 0:
        return
    folder = run_dir(trainer)
    existing = run_files(folder)
    if not existing:
        return
    run_id = _run_id(trainer)
    last = folder / "checkpoints" / "last.ckpt"
    resume = f"--ckpt_path {last}" + (f" --trainer.logger.init_args.id {run_id}" if run_id else "")
    what = f"run {run_id}" if run_id else "a run"
    raise ExperimentError(
        f"{folder} already holds {what} ({existing[0].name}"
        f"{f' and {len(existing) - 1} more file(s)' if len(existing) > 1 else ''}); nothing of it is replaced: "
        f"resume it with {resume}, or start a new run with another id "
        f"(--trainer.logger.init_args.id NEW_ID, or none for a fresh one)"
    )


#: The hint of the latest fit interrupted in this process (read by :func:`interrupted_exit`).
_LAST_HINT: dict[str, Any] = {}


def forget_hint() -> None:
    """Start an entry point with no hint (one left by an earlier run in this process would misname the run)."""
    _LAST_HINT.clear()


class ResumeHint(L.Callback):
    """Remember, when a fit ends by an exception, where its last checkpoint is and which run it was."""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        last = next((cb for cb in trainer.checkpoint_callbacks if getattr(cb, "filename", None) == "last"), None)
        path = getattr(last, "best_model_path", "") if last is not None else ""
        _LAST_HINT.clear()
        _LAST_HINT.update(epoch=trainer.current_epoch, step=trainer.global_step, run_id=_run_id(trainer),
                          checkpoint=path if path and Path(path).is_file() else None)


def resume_line(signal_name: str) -> str:
    """The one line printed when a signal ended the run."""
    hint = dict(_LAST_HINT)
    where = f" at epoch {hint['epoch']}, step {hint['step']}" if hint else ""
    checkpoint = hint.get("checkpoint")
    if checkpoint:
        run_id = hint.get("run_id")
        resume = f"--ckpt_path {checkpoint}" + (f" --trainer.logger.init_args.id {run_id}" if run_id else "")
        advice = f"the last checkpoint {checkpoint} is intact; resume with the same command and {resume}"
    else:
        advice = "no checkpoint had been written yet; run the command again to start over"
    return f"error: stopped by {signal_name}{where}; {advice}"


def interrupted_exit(err: BaseException) -> SystemExit | None:
    """The ``SystemExit`` for ``err`` when it is a signal's doing (SIGTERM as Lightning raises it, Ctrl-C as
    ``KeyboardInterrupt`` or Lightning's ``sys.exit(1)`` after one), after printing the resume line;
    ``None`` for anything else."""
    if isinstance(err, SIGTERMException):
        name = "SIGTERM"
    elif isinstance(err, KeyboardInterrupt) or (
            isinstance(err, SystemExit) and isinstance(err.__context__, KeyboardInterrupt)):
        name = "SIGINT"
    else:
        return None
    print(resume_line(name), file=sys.stderr)
    _LAST_HINT.clear()
    return SystemExit(SIGNAL_STATUS[name])
