"""bench_startup.py: the child command, the timing of real CLI children and the summary (no timings
asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from callbacks.throughput import FIRST_BATCH_ENV
from experiments.bench import startup as bench_startup

IMPORTTIME = """import time: self [us] | cumulative | imported package
import time:       100 |        100 |   small
import time:      2000 |    3000000 | torch
import time:        50 |    1500000 |     torch._dynamo
"""


def test_arguments_after_the_double_dash_go_to_the_child(tmp_path: Path) -> None:
    own, child = bench_startup.split_args(["--runs", "2", "--", "--data.root", "x.tar.gz"])
    assert own == ["--runs", "2"] and child == ["--data.root", "x.tar.gz"]
    cmd, env = bench_startup.child_command("experiments/train.py", "off", tmp_path, child)
    assert cmd[-2:] == ["--data.root", "x.tar.gz"] and "--trainer.logger" in cmd
    assert env[FIRST_BATCH_ENV] == str(tmp_path / "first_batch.txt")
    cmd, env = bench_startup.child_command("experiments/train.py", "offline", tmp_path, child)
    assert "--trainer.logger" not in cmd and env["WANDB_MODE"] == "offline"


def test_summary_and_import_table() -> None:
    runs = {"off": [{"first_batch_s": 3.0, "exit_s": 5.0}, {"first_batch_s": 1.0, "exit_s": 4.0},
                    {"first_batch_s": 2.0, "exit_s": 9.0}]}
    summary = bench_startup.summarise(runs)
    assert summary["off"]["first_batch_s"] == {"min": 1.0, "median": 2.0, "max": 3.0}
    assert summary["off"]["exit_s"] == {"min": 4.0, "median": 5.0, "max": 9.0}
    assert "W&B off" in bench_startup.format_summary(summary, 3)
    assert bench_startup.slowest_imports(IMPORTTIME, top=2) == [("torch", 3.0), ("torch._dynamo", 1.5)]


def test_real_cli_children_are_timed_to_their_first_batch(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "startup.json"
    result = bench_startup.main(["--runs", "1", "--wandb", "offline", "--out", str(out), "--",
                                 "--data.root", str(folder), "--data.check_counts", "false",
                                 "--data.batch_size", "16", "--model.width_mult", "0.25"])
    (run,) = result["runs"]["offline"]
    assert 0 < run["first_batch_s"] < run["exit_s"]  # the stamp was written by the child, before its exit
    assert 0 < result["untimed"]["first_batch_s"]
    assert json.loads(out.read_text())["summary"]["offline"]["first_batch_s"]["median"] == run["first_batch_s"]


def test_a_failing_child_is_an_error_with_its_output(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="exit status 1(.|\n)*error: .*data"):
        bench_startup.run_once("experiments/train.py", "off", ["--data.root", str(tmp_path / "missing")])
