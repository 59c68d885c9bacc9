"""A run either does what it was asked or says, in one line, why not.

- :func:`check_new_run`: a run never replaces another run's files. A run folder that already holds a run
  (a checkpoint or a ``summary.json``) is refused unless ``--ckpt_path`` resumes it.
- :class:`ResumeHint` and :func:`interrupted_exit`: SIGTERM and Ctrl-C (SIGINT) end the run with the
  shell's status for the signal (143, 130), never 0, and one line naming the last checkpoint and the
  command that resumes from it. Lightning itself turns SIGTERM into a ``SystemExit`` without status (0) and
  Ctrl-C into status 1; it has no setting for either, hence this module.
- :func:`arm_shutdown_deadline`: once a signal has stopped a command run as a script, its shutdown (the
  W&B run's close, Lightning's teardown, threads the interpreter waits for) has
  :data:`SHUTDOWN_GRACE_S` seconds; then the process ends with the signal's status all the same. After a
  Ctrl-C Lightning ignores further Ctrl-Cs, so a shutdown that hung could otherwise only be killed.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks.stages import run_dir
from experiments.run.checks import ExperimentError

__all__ = ["ResumeHint", "arm_shutdown_deadline", "check_new_run", "forget_hint", "interrupted_exit", "run_files",
           "set_script_entry"]

#: Exit status of a process ended by a signal, as a shell reports it (128 + the signal's number).
SIGNAL_STATUS: dict[str, int] = {"SIGTERM": 128 + signal.SIGTERM, "SIGINT": 128 + signal.SIGINT}


#: Seconds a command stopped by a signal has to shut down before it ends regardless: the wait for a W&B
#: start still under way (at most 120 s, ``finish_wandb_run``) and the close, with room to spare.
#: ``TINYML_SHUTDOWN_GRACE_S`` sets another value.
SHUTDOWN_GRACE_S = 240.0

#: Whether the entry point running now is the process's own script (``python experiments/train.py``), not
#: a call from other code (a test, a notebook), whose process must never be ended from here.
_SCRIPT_ENTRY: dict[str, bool] = {"on": False}
_DEADLINE: dict[str, threading.Timer] = {}


def set_script_entry(on: bool) -> None:
    """Say whether the command now starting is the whole process (see :func:`arm_shutdown_deadline`); a
    script checks its grace setting here, at its start, rather than after a signal."""
    _SCRIPT_ENTRY["on"] = on
    if on:
        shutdown_grace()
    else:
        disarm_shutdown_deadline()


def shutdown_grace() -> float:
    """:data:`SHUTDOWN_GRACE_S`, or ``TINYML_SHUTDOWN_GRACE_S`` when set (a positive number of seconds;
    anything else is an :class:`ExperimentError`)."""
    value = os.environ.get("TINYML_SHUTDOWN_GRACE_S", "").strip()
    if not value:
        return SHUTDOWN_GRACE_S
    try:
        grace = float(value)
    except ValueError:
        grace = math.nan
    if not grace > 0 or math.isinf(grace):
        raise ExperimentError(f"TINYML_SHUTDOWN_GRACE_S={value!r}: give the seconds a run stopped by a signal has "
                              f"to shut down, a positive number (unset: {SHUTDOWN_GRACE_S:g})")
    return grace


def arm_shutdown_deadline(signal_name: str) -> None:
    """End this process with ``signal_name``'s status if it is still running :func:`shutdown_grace` seconds
    from now (only when the command is the process's script; armed once).

    A signal's shutdown waits on code this project does not control: a W&B start or close that never
    returns, a library thread the interpreter joins at exit. Lightning ignores Ctrl-C once its shutdown
    has begun, so without a deadline such a hang could be ended only by ``kill -9``. The checkpoints are
    complete by then (each is written to a temporary file and renamed), so ending the process loses no
    training; the W&B run may be left unfinished, and ``wandb sync`` on its folder uploads it.
    """
    if not _SCRIPT_ENTRY["on"] or "timer" in _DEADLINE:
        return
    grace = shutdown_grace()

    def expire() -> None:
        try:
            sys.stderr.write(f"warning: the shutdown after {signal_name} did not end within {grace:g} s; the "
                             "process ends now (the W&B run may be left unfinished: wandb sync its folder)\n")
            sys.stderr.flush()
        finally:
            os._exit(SIGNAL_STATUS[signal_name])

    timer = threading.Timer(grace, expire)
    timer.name, timer.daemon = "shutdown-deadline", True
    _DEADLINE["timer"] = timer
    timer.start()


def disarm_shutdown_deadline() -> None:
    """Cancel the deadline (a later command in this process starts without one)."""
    timer = _DEADLINE.pop("timer", None)
    if timer is not None:
        timer.cancel()


def signal_name(err: BaseException) -> str | None:
    """``"SIGTERM"`` or ``"SIGINT"`` when ``err`` is a signal's doing (SIGTERM as Lightning raises it,
    Ctrl-C as ``KeyboardInterrupt`` or Lightning's ``sys.exit(1)`` after one), else ``None``."""
    if isinstance(err, SIGTERMException):
        return "SIGTERM"
    if isinstance(err, KeyboardInterrupt) or (
            isinstance(err, SystemExit) and isinstance(err.__context__, KeyboardInterrupt)):
        return "SIGINT"
    return None


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
        name = signal_name(exception)
        if name is not None:  # before Lightning's teardown and the loggers' close, which may hang
            arm_shutdown_deadline(name)
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
    name = signal_name(err)
    if name is None:
        return None
    arm_shutdown_deadline(name)
    print(resume_line(name), file=sys.stderr)
    _LAST_HINT.clear()
    return SystemExit(SIGNAL_STATUS[name])
