"""Session-wide test setup: offline logging, a temporary dataset cache and the real-data location."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"

REPO_ROOT: Path = Path(__file__).resolve().parent.parent
REAL_DATA_DIR: Path = (REPO_ROOT / ".." / "shared" / "data").resolve()
REAL_ARCHIVES: tuple[str, ...] = ("cifar10-jpg.tar.gz", "imagenette-128.tar.gz", "imagewoof-128.tar.gz")


@pytest.fixture(scope="session", autouse=True)
def session_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point ``TINYML_CACHE_DIR`` at one temporary folder for the whole session.

    Nothing is written to the user's cache, and archives (the real ones included) are extracted and
    decoded at most once per session.
    """
    path = tmp_path_factory.mktemp("tinyml-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TINYML_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """``../shared/data`` next to the repository; skips (or fails with ``REQUIRE_REAL_DATA=1``) if absent."""
    missing = [name for name in REAL_ARCHIVES if not (REAL_DATA_DIR / name).is_file()]
    if missing:
        message = f"real data not found at {REAL_DATA_DIR} (missing {', '.join(missing)})"
        if os.environ.get("REQUIRE_REAL_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return REAL_DATA_DIR


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 3-class CIFAR-layout image folder for the pruning callbacks' fits (one per test module)."""
    from tests.helpers.tiny_fit import tiny_folder

    return tiny_folder(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Run a module's tests on one CPU thread (the latency and export tests ask for it by name)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def no_wandb_run_left_open(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test after which a W&B run is still open in this process (and close it, so the next test
    starts clean): every command closes its run, failed or not, and an open run would be reused by the
    next command's logger."""
    import sys

    yield
    wandb = sys.modules.get("wandb")
    if wandb is None:
        return
    from experiments.run.wandb_logger import wait_for_background_starts

    wait_for_background_starts(timeout=120)
    run = getattr(wandb, "run", None)
    if run is not None:
        wandb.finish()
        pytest.fail(f"{request.node.nodeid} left the W&B run {run.id} open", pytrace=False)
