"""Command-line front end shared by the experiment scripts.

``ExperimentCLI`` is a ``LightningCLI`` with the project's defaults: a W&B logger that falls back to
offline mode by itself, a checkpoint callback keeping ``last.ckpt`` and the best model by validation
accuracy, a rich progress bar, per-epoch reseeding (exact resume), atomic checkpoint writes, a stop at the
first non-finite loss and a ``--ckpt_path`` argument. :func:`exits_cleanly` wraps every entry point's
``main``: the project's known errors end the run with one ``error: ...`` line on stderr and exit status 1.
What ``main`` calls once the CLI is built (fit and test, the summary, reading checkpoints) is in
:mod:`experiments.run.services`, and importable from here too.
"""

from __future__ import annotations

import functools
import logging
import netrc
import os
import socket
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import torch
from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from callbacks.epoch_log import EpochLog
from callbacks.epoch_seed import EpochSeed
from callbacks.finite_loss import FiniteLoss, NonFiniteLossError
from callbacks.last_checkpoint import LastCheckpoint
from callbacks.progress import progress_bar
from callbacks.pruning_base import PruningSettingsError
from callbacks.run_clock import RunClock
from callbacks.stages import run_dir
from callbacks.stop_conditions import IncompleteRunError, check_trains_something
from callbacks.throughput import Throughput
from datamodules import DatasetError
from experiments.run.checkpoint_io import AtomicCheckpointIO, CheckpointError, check_checkpoint_file
from experiments.run.checks import ExperimentError, check_channels, check_output_dir, check_resolution
from experiments.run.run_guard import (
    ResumeHint,
    check_new_run,
    forget_hint,
    interrupted_exit,
    set_script_entry,
)
from experiments.run.services import (  # noqa: F401 (the entry points' import path)
    checkpoint_paths,
    close_logger,
    finish_run,
    fit_and_test,
    load_baseline,
    read_module,
    split_accuracy,
    write_summary,
)
from experiments.run.wandb_logger import wait_for_background_starts
from lightning_modules.backbones import ArchitectureMismatch
from lightning_modules.deploy.errors import DeploymentError
from lightning_modules.deploy.tflite_file import MissingDependency

WANDB_HOST = "api.wandb.ai"
#: The logger's default ``save_dir``; ``--trainer.default_root_dir`` replaces it when given.
DEFAULT_SAVE_DIR = "logs"


#: Errors whose message says everything: reported as one line, without a traceback.
KNOWN_ERRORS: tuple[type[BaseException], ...] = (
    DatasetError, ExperimentError, CheckpointError, NonFiniteLossError, MisconfigurationException,
    PruningSettingsError, ArchitectureMismatch, IncompleteRunError, MissingDependency,
    DeploymentError,
)

Main = TypeVar("Main", bound=Callable[..., Any])


def finish_wandb_run(exit_code: int) -> None:
    """Close a W&B run a failed command leaves open, marked failed (``exit_code``), so its dashboard does
    not show it running and a later run in the same process starts a run of its own. Without ``wandb``
    imported there is no run to close."""
    wandb = sys.modules.get("wandb")
    if wandb is None:
        return
    wait_for_background_starts(timeout=120)  # a run still starting would be left open after the close (wandb.init
    # gives up after its own init_timeout, 90 s by default; the bound keeps a failing command from hanging)
    if getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)


def exits_cleanly(main: Main) -> Main:
    """Decorate an entry point's ``main``: a known error (:data:`KNOWN_ERRORS`), or an ``OSError`` about a
    named file, becomes ``SystemExit`` with the one-line message ``error: ...`` (printed on stderr, exit
    status 1); SIGTERM and Ctrl-C end with 143 / 130 and the resume line
    (:func:`experiments.run.run_guard.interrupted_exit`); anything else keeps its traceback, since it is a bug
    to report."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        forget_hint()
        try:
            set_script_entry(main.__module__ == "__main__")  # run as `python experiments/<script>.py`
            return main(*args, **kwargs)
        except KNOWN_ERRORS as err:
            message = " ".join(str(err).split())  # one line, whatever the source wrote
            finish_wandb_run(1)
            raise SystemExit(f"error: {message}") from err
        except OSError as err:  # a file or folder named on the command line: missing, unreadable, disk full
            if err.filename is None:
                raise
            finish_wandb_run(1)
            raise SystemExit(f"error: {err.filename}: {err.strerror or err}") from err
        except (SystemExit, KeyboardInterrupt) as err:  # SIGTERM / Ctrl-C: never status 0 or 1
            signalled = interrupted_exit(err)
            if signalled is None:
                raise
            finish_wandb_run(signalled.code if isinstance(signalled.code, int) else 1)
            raise signalled from None

    return wrapper  # type: ignore[return-value]


def _wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _host_reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def quiet_known_warnings() -> None:
    """Silence the warnings of a default run that call for no action:

    - frozen parts of the net (the backbone during the auxiliary sweep) are in eval mode on purpose,
      so Lightning's "Found N module(s) in eval mode at the start of training" is expected;
    - Lightning's own use of APIs its dependencies deprecated (jsonargparse ``instantiate_classes`` etc.,
      torch's ``LeafSpec``) is not something a user can change;
    - Lightning's advertisement for its own logging service is not a message about the run.
    """
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"lightning\.pytorch\.cli")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdverts())


class _NoAdverts(logging.Filter):
    """Drop Lightning's start-up advertisement ("💡 Tip: ... litlogger"), printed on every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def configure_wandb_mode() -> str:
    """Choose W&B's mode before any run starts: an explicit ``WANDB_MODE`` wins; without an API key or
    without a route to W&B the run is logged offline (sync later with ``wandb sync``)."""
    if "WANDB_MODE" in os.environ:
        return os.environ["WANDB_MODE"]
    if not _wandb_has_credentials():
        reason = "no W&B API key found (wandb login / WANDB_API_KEY)"
    elif not _host_reachable(WANDB_HOST):
        reason = f"{WANDB_HOST} is unreachable"
    else:
        return "online"
    os.environ["WANDB_MODE"] = "offline"
    print(f"W&B runs offline: {reason}. Sync later with `wandb sync <run dir>`.")
    return "offline"


class LogConfigCallback(SaveConfigCallback):
    """Write the resolved config into the run folder and send it to the logger (W&B's run config)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.already_saved or trainer.fast_dev_run:
            return
        folder = run_dir(trainer)
        if trainer.is_global_zero:
            folder.mkdir(parents=True, exist_ok=True)
            self.parser.save(self.config, folder / self.config_filename, skip_unset=False, overwrite=True,
                             multifile=False)
            if trainer.logger is not None:
                trainer.logger.log_hyperparams({"config": self.config.as_dict()})
        self.already_saved = True


class ExperimentCLI(LightningCLI):
    """LightningCLI with checkpointing under ``--checkpoint.*`` and a ``--ckpt_path`` to resume from."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="Checkpoint to resume from (e.g. <run dir>/checkpoints/last.ckpt).")
        # The classifier's outputs are the classes the datamodule finds (``--model.num_classes`` is not an
        # argument: a mismatch between model and data cannot be configured).
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/acc",
            "checkpoint.mode": "max",
            "checkpoint.save_last": False,  # LastCheckpoint writes last.ckpt every epoch
            "checkpoint.filename": "best-{epoch:03d}",
        })

    def before_instantiate_classes(self) -> None:
        # --trainer.default_root_dir is where the run goes: the logger (whose folder holds the checkpoints
        # too) would otherwise keep writing to ./logs.
        trainer = self.config.get("trainer", {})
        logger = trainer.get("logger") if trainer else None
        init_args = logger.get("init_args") if hasattr(logger, "get") else None
        if trainer and trainer.get("default_root_dir") and init_args is not None \
                and init_args.get("save_dir") == DEFAULT_SAVE_DIR:
            init_args["save_dir"] = trainer["default_root_dir"]

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        # The default progress bar (rich, or a line per epoch) yields to --trainer.enable_progress_bar false,
        # the learning-rate monitor (which needs a logger) to --trainer.logger false.
        trainer_config = self._get(self.config_init, "trainer", default={})
        drop = (ProgressBar,) if trainer_config.get("enable_progress_bar") is False else ()
        drop += (LearningRateMonitor,) if trainer_config.get("logger") is False else ()
        self.trainer_defaults["callbacks"] = [
            cb for cb in self.trainer_defaults.get("callbacks", []) if not isinstance(cb, drop)
        ]
        accelerator = str(self._get(self.config_init, "trainer", default={}).get("accelerator") or "")
        if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            raise ExperimentError(
                f"--trainer.accelerator {accelerator} was given, but this machine has no usable GPU "
                f"(torch.cuda.is_available() is False); use --trainer.accelerator cpu (or auto)"
            )
        plugins = self._get(self.config_init, "trainer", default={}).get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):  # atomic writes unless one is given
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        trainer = super().instantiate_trainer(**kwargs)
        for logger in trainer.loggers:
            # Lightning passes anonymous=None to wandb.init, which wandb answers with a deprecation
            # warning on every run; leaving the key out is the same setting.
            init = getattr(logger, "_wandb_init", None) if isinstance(logger, WandbLogger) else None
            if isinstance(init, dict) and init.get("anonymous") is None:
                init.pop("anonymous", None)
        return trainer


class PruningCLI(ExperimentCLI):
    """Adds ``--baseline_ckpt``: the trained, unpruned network a pruning run starts from."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument("--baseline_ckpt", type=str | None, default=None,
                            help="Trained baseline to prune (an experiments/train.py checkpoint); the depth "
                                 "pipeline then skips its baseline stage.")


def trainer_defaults(project: str = "tinyml-pruning") -> dict[str, Any]:
    return {
        "logger": {
            "class_path": "experiments.run.wandb_logger.BackgroundWandbLogger",
            "init_args": {"project": project, "save_dir": DEFAULT_SAVE_DIR},
        },
        # Persistent callbacks (instances, added to whatever --trainer.callbacks lists).
        "callbacks": [progress_bar(), LearningRateMonitor(logging_interval="epoch"), EpochSeed(),
                      LastCheckpoint(), Throughput(), FiniteLoss(), ResumeHint(), EpochLog(), RunClock()],
    }


def build_cli(
    model_class: type,
    datamodule_class: type,
    default_config: Path | None,
    args: list[str] | None,
    project: str = "tinyml-pruning",
    cli_class: type[ExperimentCLI] = ExperimentCLI,
) -> ExperimentCLI:
    """The CLI of an experiment script: parsed and instantiated, nothing run yet."""
    configure_wandb_mode()
    quiet_known_warnings()
    parser_kwargs: dict[str, Any] = {"default_config_files": [str(default_config)]} if default_config else {}
    parser_kwargs["exit_on_error"] = False  # a parse error becomes one line below, not the whole usage text
    try:
        cli = instantiate_cli(cli_class, model_class, datamodule_class, args, project, parser_kwargs)
    except ArgumentError as err:  # the command line or a --config file does not parse
        raise ExperimentError(parse_error_message(err, sys.argv[1:] if args is None else args)) from None
    except ValueError as err:  # a constructor refused a configured value
        cause = root_cause(err)
        if isinstance(cause, KNOWN_ERRORS):
            raise cause from None
        if isinstance(cause, ValueError):
            raise ExperimentError(f"invalid configuration: {' '.join(str(cause).split())}") from err  # one line
        raise
    check_setup(cli)
    return cli


def instantiate_cli(cli_class: type[ExperimentCLI], model_class: type, datamodule_class: type,
                    args: list[str] | None, project: str, parser_kwargs: dict[str, Any]) -> ExperimentCLI:
    return cli_class(
        model_class,
        datamodule_class,
        subclass_mode_data=True,
        run=False,
        args=args,
        seed_everything_default=0,
        trainer_defaults=trainer_defaults(project),
        save_config_callback=LogConfigCallback,
        save_config_kwargs={"overwrite": True},
        parser_kwargs=parser_kwargs,
    )


def parse_error_message(err: Exception, args: list[str]) -> str:
    """jsonargparse's message, with the ``--config`` files it read (its YAML errors name none)."""
    configs = [a.split("=", 1)[1] if "=" in a else args[i + 1] for i, a in enumerate(args)
               if (a == "--config" and i + 1 < len(args)) or a.startswith("--config=")]
    where = f" (in --config {', '.join(configs)})" if configs and "config" in str(err).lower() else ""
    return f"{err}{where}; `--help` lists every option"


def root_cause(err: BaseException) -> BaseException:
    """The innermost exception of ``err``'s chain (what the user's value actually broke)."""
    while (inner := err.__cause__ or err.__context__) is not None:
        err = inner
    return err


def check_setup(cli: ExperimentCLI) -> None:
    """Checks that need the instantiated objects but no data: the checkpoint to resume from, the output
    folder, the input channels and the resolution."""
    if cli.config.get("ckpt_path"):
        check_checkpoint_file(cli.config.ckpt_path, "--ckpt_path")
    if not cli.trainer.fast_dev_run:
        check_output_dir(run_dir(cli.trainer).parent)
    check_new_run(cli.trainer, cli.config.get("ckpt_path"))
    check_trains_something(cli.trainer, getattr(cli.model, "hparams", {}).get("lr"))
    check_channels(cli.model, cli.datamodule)
    check_resolution(cli.model, cli.datamodule)
