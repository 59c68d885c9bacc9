"""From the command to the first training batch: how long an experiment takes to start.

    python experiments/bench/startup.py --runs 5                          # train.py, default config
    python experiments/bench/startup.py --runs 3 --wandb offline -- --data.root DATA.tar.gz
    python experiments/bench/startup.py --runs 1 --profile_dir prof/      # + importtime and cProfile

Runs the real CLI (``--script``, default ``experiments/train.py``) as a subprocess: one untimed run first
(it decodes the dataset into the cache if needed), then ``--runs`` timed runs per W&B mode (``off``:
``--trainer.logger false``; ``offline``: the default W&B logger, offline). Each child stops after one
training step (``--trainer.max_steps 1``, one validation and test batch) in a temporary folder; its
``Throughput`` callback writes the wall-clock time of its first training batch to the file named by
``TINYML_FIRST_BATCH_FILE``. Printed: min / median / max seconds from spawning the child to its first
training batch, and to its exit. Arguments after ``--`` go to every child (e.g. ``--data.root``).

``--profile_dir`` adds one run per mode under ``python -X importtime -m cProfile``: the import times
(``<mode>.importtime.txt``, the slowest printed) and the profile (``<mode>.prof``) land there.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from callbacks.throughput import FIRST_BATCH_ENV
from experiments.run.arguments import OneLineArgumentParser, positive_int
from experiments.run.checkpoint_io import write_json
from experiments.run.cli import exits_cleanly

REPO = Path(__file__).resolve().parents[2]
MODES = ("off", "offline")
#: Arguments that end every child after its first step (plus one validation and one test batch).
ONE_STEP = ["--trainer.max_steps", "1", "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
            "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false"]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(description=__doc__)
    parser.add_argument("--script", default="experiments/train.py", help="entry point, relative to the repo")
    parser.add_argument("--runs", type=positive_int, default=5, help="timed runs per W&B mode")
    parser.add_argument("--wandb", choices=[*MODES, "both"], default="both")
    parser.add_argument("--out", default=None, help="write the timings as JSON here")
    parser.add_argument("--profile_dir", default=None, help="one more run per mode under importtime + cProfile")
    return parser


def split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """Own arguments, and the ones after ``--`` (for the child CLI)."""
    if "--" in args:
        i = args.index("--")
        return args[:i], args[i + 1:]
    return args, []


def child_command(script: str, mode: str, out_dir: Path, cli_args: list[str],
                  python_flags: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The child's command line and environment for W&B ``mode`` (``off`` or ``offline``)."""
    cmd = [sys.executable, *(python_flags or []), str(REPO / script), *ONE_STEP,
           "--trainer.default_root_dir", str(out_dir)]
    env = {**os.environ, FIRST_BATCH_ENV: str(out_dir / "first_batch.txt")}
    if mode == "off":
        cmd += ["--trainer.logger", "false"]
    else:
        env |= {"WANDB_MODE": mode, "WANDB_SILENT": "true"}
    return [*cmd, *cli_args], env


def run_once(script: str, mode: str, cli_args: list[str], python_flags: list[str] | None = None,
             keep: Path | None = None) -> dict[str, float]:
    """One child run: seconds from spawn to its first training batch and to its exit. A child that fails
    or never reaches a training batch raises ``RuntimeError`` with the tail of its output."""
    with tempfile.TemporaryDirectory(prefix="bench_startup_") as tmp:
        out_dir = Path(tmp)
        cmd, env = child_command(script, mode, out_dir, cli_args, python_flags)
        spawned = time.time()
        result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
        ended = time.time()
        if keep is not None:
            keep.write_text(result.stderr)
        stamp = out_dir / "first_batch.txt"
        if result.returncode != 0 or not stamp.is_file():
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
            why = f"exit status {result.returncode}" if result.returncode else "no training batch was reached"
            raise RuntimeError(f"{' '.join(cmd)}: {why}\n{tail}")
        return {"first_batch_s": float(stamp.read_text()) - spawned, "exit_s": ended - spawned}


def stats(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def summarise(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per mode: min / median / max of ``first_batch_s`` and ``exit_s``."""
    return {mode: {key: stats([r[key] for r in rows]) for key in ("first_batch_s", "exit_s")}
            for mode, rows in runs.items() if rows}


def format_summary(summary: dict[str, dict[str, dict[str, float]]], runs: int) -> str:
    lines = [f"seconds from spawn, {runs} timed run(s) per mode: min / median / max"]
    for mode, figures in summary.items():
        first, end = figures["first_batch_s"], figures["exit_s"]
        lines.append(f"W&B {mode:<8} first batch {first['min']:6.2f} / {first['median']:6.2f} / {first['max']:6.2f}"
                     f"   exit {end['min']:6.2f} / {end['median']:6.2f} / {end['max']:6.2f}")
    return "\n".join(lines)


def slowest_imports(importtime: str, top: int = 15) -> list[tuple[str, float]]:
    """``python -X importtime`` output → the ``top`` modules by cumulative import time (seconds)."""
    rows = []
    for line in importtime.splitlines():
        if not line.startswith("import time:") or "|" not in line or "cumulative" in line:
            continue
        _, cumulative, name = (part.strip() for part in line[len("import time:"):].split("|", 2))
        rows.append((name.strip(), int(cumulative) / 1e6))
    return sorted(rows, key=lambda r: -r[1])[:top]


def profile(script: str, modes: list[str], cli_args: list[str], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for mode in modes:
        flags = ["-X", "importtime", "-m", "cProfile", "-o", str(folder / f"{mode}.prof")]
        text = folder / f"{mode}.importtime.txt"
        timing = run_once(script, mode, cli_args, flags, keep=text)
        print(f"profiled W&B {mode}: first batch after {timing['first_batch_s']:.2f} s (under the profiler); "
              f"{folder / (mode + '.prof')}")
        for name, seconds in slowest_imports(text.read_text(), top=12):
            print(f"  import {name:<50} {seconds:6.2f} s")


@exits_cleanly
def main(args: list[str] | None = None) -> dict[str, Any]:
    """Time the runs; prints the table, writes ``--out`` if given, returns the timings and summary."""
    own, cli_args = split_args(sys.argv[1:] if args is None else args)
    opts = build_parser().parse_args(own)
    if opts.runs < 1:
        raise SystemExit(f"error: --runs must be at least 1, got {opts.runs}")
    modes = list(MODES) if opts.wandb == "both" else [opts.wandb]
    warm = run_once(opts.script, modes[0], cli_args)  # decodes the dataset into the cache if needed
    print(f"untimed first run (fills the cache): first batch after {warm['first_batch_s']:.2f} s")
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    for _ in range(opts.runs):
        for mode in modes:  # alternating, so a shared machine's drift hits every mode alike
            runs[mode].append(run_once(opts.script, mode, cli_args))
    summary = summarise(runs)
    print(format_summary(summary, opts.runs))
    command = shlex.join(["uv", "run", "experiments/bench/startup.py", *(sys.argv[1:] if args is None else args)])
    result = {"script": opts.script, "cli_args": cli_args, "runs": runs, "summary": summary, "untimed": warm,
              "cpus": os.cpu_count(), "command": command}
    if opts.out is not None:
        write_json(opts.out, result)
    if opts.profile_dir is not None:
        profile(opts.script, modes, cli_args, Path(opts.profile_dir))
    return result


if __name__ == "__main__":
    main()
