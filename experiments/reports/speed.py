"""The training-speed section of ``docs/RESULTS.md``, for ``results.py``: throughput against the plain
loop (``bench_throughput*.json``), the sweep's cost (``bench_sweep*.json``) and start-up
(``bench_startup*.json``), each with the command that measured it."""

from __future__ import annotations

import json
from pathlib import Path

TARGETS = ("Targets: ours ≥ 1.5× the plain loop and ≥ 20 % of the matmul peak on the CPU @32 px (≥ 3× on a "
           "GPU @224 px); the 14 heads ≤ +30 % over a plain epoch; the sweep ≤ 1.3× one head's run; "
           "≤ 8 s from the command to the first batch.")


def throughput_lines(r: dict) -> list[str]:
    ips, frac = r["img_per_s"], r.get("fraction_of_peak", {})
    lines = [f"`{r.get('command', 'uv run experiments/bench/throughput.py')}` — {r.get('backbone', 'mobilenet_v1')}, "
             f"{r['mode']} ({r['device']}), "
             f"batch {r['batch_size']}, {r['steps']} timed steps after {r['warmup']}, {r['rounds']} "
             f"interleaved rounds in one process, {r['threads']} thread(s); {r['note']}. Peak: dense matmul "
             f"{r['peak_flops_median'] / 1e9:.1f} GFLOP/s measured in the same run; a training step counts "
             f"3 × 2 × {r['macs_per_image'] / 1e6:.1f} M MACs per image.", "",
             "| pipeline | img/s (end to end) | × plain, median (per round) | % of matmul peak |", "|---|---|---|---|"]
    rounds = {(x["round"], x["pipeline"]): x["img_per_s"] for x in r.get("runs", [])}
    for name, value in ips.items():
        per_round = ", ".join(f"{rounds[(i, name)] / rounds[(i, 'plain')]:.2f}" for i in range(r["rounds"])
                              if (i, name) in rounds and rounds.get((i, "plain")))
        ratio = "1.00" if name == "plain" else f"{r.get(f'ratio_{name}_vs_plain', float('nan')):.2f} (rounds: {per_round})"
        pct = f"{100 * frac[name]:.1f}" if name in frac else "—"
        lines.append(f"| {name} | {value:.1f} | {ratio} | {pct} |")
    if "heads_overhead" in r:
        lines.append(f"\nThe 14 sweep heads (frozen backbone) cost {100 * r['heads_overhead']:+.0f} % time per "
                     "image over a plain training epoch.")
    return [*lines, ""]


def sweep_lines(r: dict) -> list[str]:
    head = f"{r['head']} heads, " if r.get("head") else ""
    lines = [f"`{r.get('command', 'uv run experiments/bench/sweep.py')}` — {r['mode']}, {head}{r['epochs']} "
             f"epoch(s) of {r['train_images']} images ({r['note']}): the one-run 14-head sweep took "
             f"{r['sweep_s']:.1f} s.", "", "| single head at cut | s | sweep / one head |", "|---|---|---|"]
    for k, seconds in r["one_head_s"].items():
        lines.append(f"| {k} | {seconds:.1f} | {r['ratio_sweep_vs_one_head'][k]:.2f}× |")
    if "ratio_separate_vs_sweep" in r:
        lines.append(f"\nOne run per cut point, as in the paper (all 14 above): {r['separate_runs_s']:.1f} s, "
                     f"**{r['ratio_separate_vs_sweep']:.2f}×** the one-run sweep.")
    return [*lines, ""]


def startup_lines(r: dict) -> list[str]:
    lines = [f"`{r.get('command', 'uv run experiments/bench/startup.py')}` — `{r['script']}` as a subprocess, "
             "stopped after one training step, dataset already in the cache; seconds from spawn:", "",
             "| W&B | first batch: min / median / max | exit: median |", "|---|---|---|"]
    for mode, figures in r["summary"].items():
        first = figures["first_batch_s"]
        lines.append(f"| {mode} | {first['min']:.1f} / **{first['median']:.1f}** / {first['max']:.1f} "
                     f"| {figures['exit_s']['median']:.1f} |")
    return [*lines, ""]


def speed_section(runs: Path) -> list[str]:
    """Every benchmark JSON found in ``runs`` (archived next to the runs), rendered in turn."""
    found = {kind: [json.loads(p.read_text()) for p in sorted(runs.glob(f"bench_{kind}*.json"))]
             for kind in ("throughput", "sweep", "startup")}
    if not any(found.values()):
        return []
    lines = ["## Training speed", "", TARGETS, ""]
    for r in found["throughput"]:
        lines += throughput_lines(r)
    for r in found["sweep"]:
        lines += sweep_lines(r)
    if found["startup"]:
        lines += ["### Start-up", ""]
    for r in found["startup"]:
        lines += startup_lines(r)
    return lines
