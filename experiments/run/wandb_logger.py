"""A W&B logger whose run starts in the background, so that ``wandb.init`` does not delay training.

Importing ``wandb`` and starting its run (service process, run folder, offline files) takes seconds; with
Lightning's ``WandbLogger`` that time passes before the first training batch, because the trainer asks
for the run (``logger.experiment``) before its ``setup`` hooks and waits for it. With
:class:`BackgroundWandbLogger` that first request (or the first logger call, or :meth:`start`) starts
the run in a thread and returns at once; training goes on (data set-up, sanity check, first batches)
while the run starts. A run is started when Lightning's would be (on global rank 0, at the fit's set-up),
so a command that fails its start-up checks creates no W&B run. Everything else is Lightning's:

- ``log_hyperparams`` and ``log_metrics`` called before the run has started are queued and sent, in
  order, at the first logger call after it has started (and at the latest when the fit ends);
- ``experiment`` returns the run once it has started; before that, a stand-in that waits for the run at
  its first use (``logger.experiment.log(...)``, ``isinstance(logger.experiment, wandb.Run)``) and then
  behaves as the run, so nothing that uses the run directly is dropped;
- the run's id is drawn when the logger is built (W&B's own format: 8 characters of ``[a-z0-9]``), so the
  run folder and the checkpoint folder are known before the run has started;
- a failure of ``wandb.init`` is raised in the main thread (:class:`WandbStartError`, one ``error:`` line
  from the entry points) at the first logger call after it, and at the latest when the fit ends. It is
  never swallowed.

Lightning has no such option (its logger starts the run in the calling thread and waits), hence this
subclass.
"""

from __future__ import annotations

import os
import secrets
import string
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from lightning.fabric.utilities.logger import (
    _convert_json_serializable,
    _convert_params,
    _sanitize_callable_params,
)
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from experiments.run.checks import ExperimentError

__all__ = ["BackgroundWandbLogger", "WandbStartError", "new_run_id", "wait_for_background_starts"]

_ID_ALPHABET = string.ascii_lowercase + string.digits

# The loggers whose background ``wandb.init`` was started in this process. A command that fails while a
# start is under way must wait for it before it closes the run: a start that finishes after the close
# leaves ``wandb.run`` set, and Lightning's logger attaches the next command in this process to that run.
_STARTED: weakref.WeakSet[BackgroundWandbLogger] = weakref.WeakSet()


class WandbStartError(ExperimentError):
    """``wandb.init`` failed in the background."""


def wait_for_background_starts(timeout: float | None = None) -> None:
    """Wait until every ``wandb.init`` started in the background in this process has returned (or failed)."""
    for logger in list(_STARTED):
        thread = logger._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)


def new_run_id(length: int = 8) -> str:
    """A fresh run id in W&B's format (``wandb.util.generate_id``'s alphabet and length), drawn without
    importing wandb and without touching any seeded random stream."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


class _PendingRun:
    """Stands for the W&B run until it has started: any attribute waits for the run and is the run's."""

    def __init__(self, logger: BackgroundWandbLogger) -> None:
        object.__setattr__(self, "_logger", logger)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger.wait_for_run(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._logger.wait_for_run(), name, value)

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # isinstance(stand-in, wandb.Run) holds, once the run has started
        return type(self._logger.wait_for_run())

    def __repr__(self) -> str:
        return f"<W&B run of {self._logger.__class__.__name__}, starting>"


class BackgroundWandbLogger(WandbLogger):
    """Lightning's ``WandbLogger`` whose ``wandb.init`` runs in a background thread started here.

    Takes Lightning's ``WandbLogger`` arguments. ``experiment=`` (an existing run) starts nothing.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Lightning passes anonymous=None to wandb.init, which wandb answers with a deprecation warning;
        # leaving the key out is the same setting.
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
        if self._wandb_init.get("id") is None:
            self._id = self._wandb_init["id"] = new_run_id()
        self._queue: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._background = self._experiment is None  # an existing run (experiment=...) starts nothing
        self._thread: threading.Thread | None = None

    # -- the background start -------------------------------------------------------------------------
    @rank_zero_only
    def start(self) -> None:
        """Start ``wandb.init`` in the background (once; later calls do nothing)."""
        with self._lock:
            if not self._background or self._thread is not None:
                return
            if self._offline:  # what WandbLogger.experiment does before wandb.init
                os.environ["WANDB_MODE"] = "dryrun"
            self._thread = threading.Thread(target=self._run_init, name="wandb-init", daemon=False)
            _STARTED.add(self)
            self._thread.start()

    def _run_init(self) -> None:
        try:
            WandbLogger.experiment.fget(self)  # type: ignore[attr-defined]  # wandb.init + define_metric
        except BaseException as err:  # noqa: BLE001  raised in the main thread by wait_for_run
            self._start_error = err
        finally:
            self._started.set()

    def wait_for_run(self) -> Any:
        """The started run (starts it if needed and waits for it); sends the queued calls first. Raises
        :class:`WandbStartError` if ``wandb.init`` failed."""
        self.start()
        self._started.wait()
        if self._start_error is not None:
            err = self._start_error
            detail = " ".join(str(err).split()) or type(err).__name__
            raise WandbStartError(
                f"the W&B run could not start ({type(err).__name__}: {detail}); check the W&B settings "
                "(WANDB_MODE=offline logs without a network, --trainer.logger false logs nothing)"
            ) from err
        self._flush()
        return self._experiment

    def _flush(self) -> None:
        with self._lock:
            queued, self._queue = self._queue, []
        for call in queued:
            call()

    def _when_started(self, call: Callable[[], None]) -> None:
        """Run ``call`` now if the run has started (after the queued ones), else queue it."""
        self.start()
        with self._lock:
            if not self._started.is_set():
                self._queue.append(call)
                return
        self.wait_for_run()
        call()

    @property
    def pending(self) -> bool:
        """Whether the run has not started yet (its start not asked for, or under way)."""
        return self._background and not self._started.is_set()

    # -- Lightning's logger interface ----------------------------------------------------------------
    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if not self._background:
            return super().experiment
        if not self._started.is_set():
            self.start()
            return _PendingRun(self)
        return self.wait_for_run()

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        params = _convert_json_serializable(_sanitize_callable_params(_convert_params(params)))
        self._when_started(lambda: WandbLogger.log_hyperparams(self, params))

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        metrics = dict(metrics)  # the caller may reuse its dict
        self._when_started(lambda: WandbLogger.log_metrics(self, metrics, step))

    @property
    def version(self) -> str | None:
        return self._experiment.id if self._experiment is not None and not self.pending else self._id

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._background and self._thread is not None:
            if status == "success":
                self.wait_for_run()  # nothing queued is left behind; a failed start is raised here
            elif self._started.is_set() and self._start_error is None:
                self._flush()
        super().finalize(status)

    def __getstate__(self) -> dict[str, Any]:
        if self._background:
            self.wait_for_run()
        state = super().__getstate__()
        for key in ("_lock", "_started", "_thread", "_queue", "_start_error", "_background"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._queue, self._lock, self._started = [], threading.Lock(), threading.Event()
        self._start_error, self._thread, self._background = None, None, False
        self._started.set()
