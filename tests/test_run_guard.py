"""A run does what it was asked or fails with one line: a reused id never replaces an earlier run, a
signal never ends a run with status 0, and a run whose stage never happened exits != 0 without a summary."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from experiments import depth_prune, train, width_prune
from tests.helpers import fake_data
from tests.helpers.cli_args import base_args

REPO = Path(__file__).resolve().parent.parent


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "wandb" not in p.parts}


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def sigint_reaches_children() -> Iterator[None]:
    """A shell starts background jobs (``pytest ... &``) with SIGINT ignored, and an ignored signal stays
    ignored through fork and exec, so a CLI run started from such a test would never see its Ctrl-C. A
    handler, unlike an ignored disposition, is reset to the default by exec: this process gets one while
    the test runs."""
    before = signal.getsignal(signal.SIGINT)
    if before == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_data.make_image_folder(tmp_path_factory.mktemp("guard") / "d", {"train": 6, "test": 2})


def test_a_reused_run_id_is_refused_and_the_earlier_run_untouched(data: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    args = [*base_args(data, tmp_path / "out"), "--trainer.logger.init_args.id", "myrun"]
    summary = train.main(args)
    folder = summary.parent
    before = digests(folder)
    assert "summary.json" in before and "checkpoints/last.ckpt" in before
    with pytest.raises(SystemExit) as exc:
        train.main([*args, "--trainer.max_epochs", "2"])
    message = str(exc.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert "myrun" in message and f"--ckpt_path {folder / 'checkpoints' / 'last.ckpt'}" in message
    assert "another id" in message
    assert digests(folder) == before
    # resuming it is the way in: the same id with --ckpt_path continues the run
    resumed = train.main([*args, "--trainer.max_epochs", "2", "--ckpt_path", str(folder / "checkpoints" / "last.ckpt")])
    assert resumed == summary and '"epochs": 2' in resumed.read_text()


@pytest.mark.parametrize("option, value", [("--model.lr", "0"), ("--model.lr", "-0.1"), ("--trainer.max_epochs", "0"),
                                           ("--trainer.max_steps", "0"), ("--trainer.limit_train_batches", "0")])
def test_a_run_that_would_train_nothing_is_refused(option: str, value: str, data: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        train.main([*base_args(data, tmp_path / "out"), option, value])
    message = str(exc.value.code)
    assert message.startswith("error: ") and option in message and "train nothing" in message, message
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("summary.json"))


DEPTH = ["--trainer.max_epochs", "4", "--sweep.start_epoch", "2", "--sweep.epochs", "1", "--prune.epoch", "3",
         "--sweep.head", "[16, 8]"]


def test_a_step_limit_before_the_cut_is_refused_before_training(data: Path, tmp_path: Path) -> None:
    # 18 images, batch 8: 3 steps per epoch; the cut's epoch 3 ends at step 12
    with pytest.raises(SystemExit) as exc:
        depth_prune.main([*base_args(data, tmp_path / "out"), *DEPTH, "--trainer.max_steps", "10"])
    message = str(exc.value.code)
    assert message.startswith("error: --trainer.max_steps 10") and "DepthPrune" in message, message
    assert "--trainer.max_steps 12" in message
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("summary.json"))


def test_a_width_prune_cut_short_writes_no_summary(data: Path, tmp_path: Path) -> None:
    baseline = train.main(base_args(data, tmp_path / "base"))
    ckpt = str(baseline.parent / "checkpoints" / "last.ckpt")
    with pytest.raises(SystemExit) as exc:
        width_prune.main([*base_args(data, tmp_path / "out"), "--baseline_ckpt", ckpt, "--trainer.max_epochs", "3",
                          "--trainer.callbacks+=callbacks.OneShotPrune", "--trainer.callbacks.epoch", "2",
                          "--trainer.max_steps", "5"])
    assert "OneShotPrune" in str(exc.value.code) and "--trainer.max_steps 9" in str(exc.value.code)
    assert not list((tmp_path / "out").rglob("summary.json"))


@pytest.mark.usefixtures("sigint_reaches_children")
def test_a_shutdown_that_hangs_after_a_signal_still_ends_with_the_signals_status(data: Path, tmp_path: Path) -> None:
    """After Ctrl-C, a thread that never ends (what a W&B start or close that never returns leaves behind)
    would keep the process alive, and Lightning ignores a second Ctrl-C: the run ends anyway once the
    shutdown grace has passed, with status 130, its one error line, a warning saying why, and the
    checkpoint intact."""
    out = tmp_path / "out"
    args = [*base_args(data, out), "--trainer.max_epochs", "100000", "--trainer.logger.init_args.id", "stuck",
            "--trainer.callbacks+=tests.helpers.stuck_shutdown.NeverEndingThread"]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "TINYML_SHUTDOWN_GRACE_S": "3"}
    proc = subprocess.Popen([sys.executable, "experiments/train.py", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = out / "tinyml-pruning" / "stuck" / "checkpoints" / "last.ckpt"
    try:
        while not last.is_file() and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=600)  # the thread sleeps for an hour: only the deadline ends the run
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert one_error_line(err).startswith("error: stopped by SIGINT")
    assert "warning: the shutdown after SIGINT did not end within 3 s" in err, err
    assert torch.load(last, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.parametrize("grace", ["abc", "-5"])
def test_a_shutdown_grace_that_is_no_positive_number_is_refused_before_anything_runs(grace: str, data: Path,
                                                                                     tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "offline", "TINYML_SHUTDOWN_GRACE_S": grace}
    proc = subprocess.run([sys.executable, "experiments/train.py", *base_args(data, tmp_path / "out")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert one_error_line(proc.stderr).startswith(f"error: TINYML_SHUTDOWN_GRACE_S='{grace}': give the seconds")
    assert not (tmp_path / "out").exists()


def test_a_command_called_from_python_never_arms_the_deadline_that_would_end_its_process(data: Path,
                                                                                          tmp_path: Path) -> None:
    """The deadline ends a whole process, so only a script run as ``python experiments/<script>.py`` arms
    it; a command called in-process (a test, a notebook) stopped by Ctrl-C leaves no timer behind."""
    import threading

    handler = signal.getsignal(signal.SIGINT)  # Lightning ignores Ctrl-C once it has caught one
    with pytest.raises(SystemExit) as exc:
        train.main([*base_args(data, tmp_path / "out"), "--trainer.callbacks+=tests.helpers.interrupt.CtrlCAt",
                    "--trainer.callbacks.epoch", "0"])
    signal.signal(signal.SIGINT, handler)
    assert exc.value.code == 130
    assert not [t for t in threading.enumerate() if t.name == "shutdown-deadline"]


def test_a_stage_that_never_happened_fails_after_the_fit(data: Path, tmp_path: Path) -> None:
    """Early stopping (here a callback that ends the fit after epoch 0) before the cut: exit != 0, no summary."""
    with pytest.raises(SystemExit) as exc:
        depth_prune.main([*base_args(data, tmp_path / "out"), *DEPTH,
                          "--trainer.callbacks+=tests.helpers.stop_after.StopAfterEpoch", "--trainer.callbacks.epoch", "0"])
    message = str(exc.value.code)
    assert message.startswith("error: the fit stopped at epoch 1") and "DepthPrune" in message, message
    assert "no summary was written" in message and "--ckpt_path" in message
    assert not list(tmp_path.rglob("summary.json"))
    assert list(tmp_path.rglob("last.ckpt"))  # what was trained is kept, to resume from


@pytest.mark.usefixtures("sigint_reaches_children")
@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_epoch_exits_non_zero_with_the_checkpoint_intact(signum: int, status: int, data: Path,
                                                                      tmp_path: Path) -> None:
    """A real run of the CLI, stopped by SIGTERM (a scheduler, ``kill``) or SIGINT (Ctrl-C) once it has
    written its first checkpoint."""
    out = tmp_path / "out"
    run_id = f"termed{status}"  # W&B's offline service of the other case's killed run may still hold its id
    args = [*base_args(data, out), "--trainer.max_epochs", "100000", "--trainer.logger.init_args.id", run_id]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.Popen([sys.executable, "experiments/train.py", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = out / "tinyml-pruning" / run_id / "checkpoints" / "last.ckpt"
    try:
        while not last.is_file() and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(signum)
        # the run may wait up to 120 s for a W&B start still under way before it closes it (finish_wandb_run)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == status, err
    line = one_error_line(err)
    assert line.startswith(f"error: stopped by {signal.Signals(signum).name}") and f"--ckpt_path {last}" in line, line
    assert f"--trainer.logger.init_args.id {run_id}" in line
    state = torch.load(last, map_location="cpu", weights_only=True)  # a whole checkpoint, never a partial one
    assert state["epoch"] >= 0 and state["state_dict"]
    assert not (last.parent.parent / "summary.json").exists()
