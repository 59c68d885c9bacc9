"""The W&B run starts in the background: nothing logged before it has started is lost, a failed start
is one clear error, and the CLIs' offline runs hold every metric, the config and the summary."""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from experiments import train
from experiments.run.wandb_logger import (
    BackgroundWandbLogger,
    WandbStartError,
    new_run_id,
    wait_for_background_starts,
)
from lightning_modules.reporting.sweep import log_sweep_to_wandb, write_sweep_report
from tests.helpers.sweep_rows import BASELINE, SWEEP
from tests.helpers.wandb_records import read_offline_run

wandb = pytest.importorskip("wandb")


@pytest.fixture(autouse=True)
def no_run_left_open() -> Iterator[None]:
    """Each test starts with no W&B run in this process: a run an earlier test left open would be
    reused by any logger (Lightning's and ours), so nothing here would start in the background."""
    if wandb.run is not None:
        wandb.finish()
    yield
    if wandb.run is not None:
        wandb.finish()


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Hold every ``wandb.init`` until the test sets the event (the real init runs after it)."""
    opened, real_init = threading.Event(), wandb.init

    @functools.wraps(real_init)  # the CLI reads wandb.init's signature for the logger's options (tags, ...)
    def held_init(*args: Any, **kwargs: Any) -> Any:
        opened.wait(timeout=120)
        return real_init(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", held_init)
    yield opened
    opened.set()


def offline_run_folder(save_dir: Path, run_id: str) -> Path:
    (folder,) = (save_dir / "wandb").glob(f"offline-run-*-{run_id}")
    return folder


def test_run_ids_have_wandbs_format() -> None:
    ids = {new_run_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(len(i) == 8 and i.isalnum() and i == i.lower() for i in ids)


def test_calls_before_the_start_are_queued_and_sent_in_order(tmp_path: Path, gate: threading.Event) -> None:
    logger = BackgroundWandbLogger(project="bg-test", save_dir=str(tmp_path))
    run_id = logger.version
    assert logger.pending and isinstance(run_id, str)  # the folder is known before the run exists
    logger.log_hyperparams({"lr": 0.1, "config": {"model": {"width_mult": 0.25}}})
    logger.log_metrics({"val/acc": 0.25}, step=3)
    logger.log_metrics({"val/acc": 0.5}, step=7)
    pending = logger.experiment  # what Lightning asks for before its setup hooks: must not wait
    assert logger.pending and type(pending).__name__ == "_PendingRun"

    gate.set()
    logger.finalize("success")  # waits for the run and sends the queue
    assert not logger.pending and logger.version == run_id
    assert isinstance(pending, wandb.Run)  # the stand-in now is the run
    logger.log_metrics({"val/acc": 0.75}, step=9)  # after the start: sent at once
    logger.experiment.finish()

    records = read_offline_run(offline_run_folder(tmp_path, run_id))
    assert records.config["lr"] == 0.1 and records.config["config"] == {"model": {"width_mult": 0.25}}
    rows = [(r["trainer/global_step"], r["val/acc"]) for r in records.history if "val/acc" in r]
    assert rows == [(3, 0.25), (7, 0.5), (9, 0.75)]


def test_the_stand_in_run_takes_the_sweep_table(tmp_path: Path, gate: threading.Event) -> None:
    """``log_sweep_to_wandb`` checks ``isinstance(run, wandb.Run)``: the stand-in passes once started."""
    logger = BackgroundWandbLogger(project="bg-test", save_dir=str(tmp_path))
    experiment = logger.experiment
    assert logger.pending
    gate.set()
    png = write_sweep_report(SWEEP, BASELINE, chosen=3, out_dir=tmp_path / "report")["png"]
    log_sweep_to_wandb(experiment, SWEEP, BASELINE, 3, png)
    logger.experiment.finish()
    run_folder = offline_run_folder(tmp_path, logger.version)
    keys = read_offline_run(run_folder).metric_keys()  # media rows: "<key>/_type", "<key>/path", ...
    assert any(k.startswith("depth_sweep/table/") for k in keys), keys
    assert any(k.startswith("depth_sweep/plot/") for k in keys), keys
    assert list((run_folder / "files" / "media" / "table" / "depth_sweep").glob("*.table.json"))


def test_a_failed_start_is_raised_not_swallowed(tmp_path: Path, gate: threading.Event) -> None:
    logger = BackgroundWandbLogger(project="bg-test", save_dir=str(tmp_path), mode="no-such-mode")
    logger.log_metrics({"val/acc": 0.5}, step=1)  # queued: the start has not failed yet
    gate.set()
    with pytest.raises(WandbStartError, match="W&B run could not start.*no-such-mode"):
        logger.finalize("success")
    with pytest.raises(WandbStartError):  # and again at any later use
        logger.log_metrics({"val/acc": 0.5}, step=2)


def tiny_train_args(folder: Path, out: Path, *extra: str) -> list[str]:
    return ["--data.root", str(folder), "--data.check_counts", "false", "--data.batch_size", "16",
            "--model.width_mult", "0.25", "--trainer.max_epochs", "1",
            "--trainer.logger.init_args.save_dir", str(out), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.accelerator", "cpu", *extra]


def test_cli_run_logs_metrics_config_and_summary_to_the_offline_run(folder: Path, tmp_path: Path) -> None:
    summary_path = train.main(tiny_train_args(folder, tmp_path / "logs"))
    summary = json.loads(Path(summary_path).read_text())
    run_id = Path(summary_path).parent.name
    records = read_offline_run(offline_run_folder(tmp_path / "logs", run_id))

    assert {"val/acc", "train/img_per_s", "train/compute_img_per_s", "test/acc",
            "trainer/global_step"} <= records.metric_keys()
    assert records.config["width_mult"] == 0.25  # the model's hyper-parameters
    assert records.config["config"]["data"]["init_args"]["batch_size"] == 16  # the CLI's resolved config
    assert records.summary["summary/params"] == summary["params"]
    assert records.summary["test/acc"] == pytest.approx(summary["metrics"]["test/acc"])


def test_cli_with_a_failing_wandb_start_exits_with_one_message(folder: Path, tmp_path: Path) -> None:
    # a fresh process: W&B reads WANDB_MODE once per process, so an in-process run after other W&B
    # tests would keep their mode
    import os
    import subprocess
    import sys

    env = {**os.environ, "WANDB_MODE": "no-such-mode"}  # wandb.init refuses it (in the background)
    done = subprocess.run([sys.executable, "experiments/train.py", *tiny_train_args(folder, tmp_path / "logs")],
                          cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert lines and lines[-1].startswith("error: the W&B run could not start") and "no-such-mode" in lines[-1], \
        done.stderr[-2000:]


def test_a_run_refused_at_start_up_creates_no_wandb_run(folder: Path, tmp_path: Path) -> None:
    """The run starts when Lightning's would (the fit's set-up), not when the logger is built."""
    with pytest.raises(SystemExit, match="error: .*no-such.ckpt"):
        train.main(tiny_train_args(folder, tmp_path / "logs", "--ckpt_path", str(tmp_path / "no-such.ckpt")))
    assert not list((tmp_path / "logs").glob("wandb/*run-*"))


def test_a_command_failing_while_its_run_starts_leaves_no_run_open(
        folder: Path, tmp_path: Path, gate: threading.Event) -> None:
    """The run is still starting (``wandb.init`` held) when training hits a corrupt image: the command
    waits for the start, closes the run marked failed, and leaves nothing for the next command in this
    process to attach to (Lightning's logger reuses an open ``wandb.run``)."""
    import shutil

    from tests.helpers.fake_data import corrupt_image

    data = tmp_path / "data"
    shutil.copytree(folder, data)
    corrupt_image(next((data / "train").glob("*/*.jpg")))
    threading.Timer(3.0, gate.set).start()  # the start finishes only after the failure
    with pytest.raises(SystemExit, match="error: .*cannot decode"):
        train.main(tiny_train_args(data, tmp_path / "logs", "--data.num_workers", "0"))
    wait_for_background_starts(timeout=60)  # a start the command did not wait for would end only now
    assert wandb.run is None
    assert list((tmp_path / "logs").glob("wandb/offline-run-*"))  # the run did start, and was closed
