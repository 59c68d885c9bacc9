"""The training-speed section of the results page, from the benchmark scripts' JSON files."""

from __future__ import annotations

import json
from pathlib import Path

from experiments.bench import startup as bench_startup
from experiments.bench import sweep as bench_sweep
from experiments.bench.throughput import pipelines, summarise
from experiments.reports.speed import speed_section


def write(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data))


def test_every_benchmark_is_rendered_with_its_command(tmp_path: Path) -> None:
    runs = [{"round": 0, "pipeline": n, "img_per_s": v} for n, v in (("plain", 400.0), ("ours", 800.0),
                                                                     ("ours_heads", 640.0))]
    write(tmp_path / "bench_throughput_cpu_32px.json", {
        **summarise(runs, [1e11], 10_000_000, pipelines("both")), "runs": runs, "mode": "cpu-32px", "device": "cpu",
        "batch_size": 128, "steps": 30, "warmup": 5, "rounds": 1, "threads": 2, "note": "n",
        "peak_flops_median": 1e11, "macs_per_image": 10_000_000, "command": "uv run experiments/bench/throughput.py"})
    sweep_runs = [{"round": 0, "run": "sweep", "seconds": 12.0}] + [
        {"round": 0, "run": f"one_head@{k}", "seconds": 2.0} for k in range(14)]
    write(tmp_path / "bench_sweep_cpu_32px.json", {
        **bench_sweep.summarise(sweep_runs, list(range(14)), 1), "mode": "cpu-32px", "epochs": 1, "head": "paper",
        "train_images": 2000, "note": "n", "command": "uv run experiments/bench/sweep.py --cut all"})
    startup = {"off": [{"first_batch_s": 7.0, "exit_s": 9.0}], "offline": [{"first_batch_s": 7.5, "exit_s": 9.5}]}
    write(tmp_path / "bench_startup_cpu.json", {"script": "experiments/train.py", "summary":
                                                bench_startup.summarise(startup), "command": "uv run x"})
    text = "\n".join(speed_section(tmp_path))
    assert "| ours | 800.0 | 2.00 (rounds: 2.00) | 48.0 |" in text  # 800 img/s × 6e7 FLOP / 1e11
    assert "cost +25 % time per image" in text
    assert "| 13 | 2.0 | 6.00× |" in text and "**2.33×** the one-run sweep" in text  # 28 s / 12 s
    assert "| off | 7.0 / **7.0** / 7.0 | 9.0 |" in text
    for command in ("uv run experiments/bench/throughput.py", "bench/sweep.py --cut all", "`uv run x`"):
        assert command in text


def test_no_benchmarks_no_section(tmp_path: Path) -> None:
    assert speed_section(tmp_path) == []
