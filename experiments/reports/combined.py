"""The RESULTS section of depth + width in one pipeline: per seed, the net after the cut and after the width
prune against the baseline it started from; runs from before the per-stage protocol listed apart."""

from __future__ import annotations

from typing import Any

from experiments.reports.format import count, pct, points, run_id
from experiments.reports.pairing import dataset_of, schedule_span
from experiments.reports.protocol import difference, fmt_spread
from experiments.reports.reproduce import run_seed

COMMAND = "uv run experiments/depth_prune.py --config experiments/configs/depth_cifar10_32_width.yaml"



def stage_text(row: dict) -> str:
    """One pipeline stage in words (``cut after block 6``, ``oneshot l2_norm, sparsity 0.5``)."""
    if row["stage"] == "depth":
        return f"cut after block {row.get('cut')}"
    return f"{row.get('method')} {row.get('criterion')}, sparsity {row.get('sparsity')}"


def combined_groups(summaries: list[dict]) -> dict[tuple[str, int, str], dict[int, dict]]:
    """``(dataset, px, stages in words)`` → seed → the newest per-stage depth run with a width stage."""
    groups: dict[tuple[str, int, str], dict[int, dict]] = {}
    for s in summaries:
        if s.get("stage") != "depth_prune" or len(s.get("stages", [])) < 2 or schedule_span(s) != "stage" \
                or run_seed(s) is None:
            continue
        key = (dataset_of(s), int(s.get("image_size") or 0), ", then ".join(stage_text(r) for r in s["stages"]))
        groups.setdefault(key, {})[run_seed(s)] = s
    return {key: dict(sorted(seeds.items())) for key, seeds in sorted(groups.items())}


def combined_table(seeds: dict[int, dict]) -> list[str]:
    """A row per seed and a mean ± std row: the baseline's test accuracy, the cut net's validation accuracy
    before the width prune, the final net's parameters and test accuracy, the paired difference."""
    lines = ["| seed | baseline test % | after the cut, val % | final params (of baseline) | final test % "
             "| Δ vs baseline (pp) | run |", "|---|---|---|---|---|---|---|"]
    cols: dict[str, list[Any]] = {"base": [], "cut": [], "final": [], "delta": []}
    for seed, s in seeds.items():
        base = s.get("baseline", {}).get("test_acc")
        final = s["stages"][-1].get("test_acc", s.get("pruned", {}).get("acc"))
        params, base_params = s["stages"][-1].get("params"), s.get("baseline", {}).get("params")
        share = f" ({100 * params / base_params:.1f} %)" if params and base_params else ""
        for key, value in (("base", base), ("cut", s["stages"][0].get("val_acc")), ("final", final),
                           ("delta", difference(final, base))):
            cols[key].append(value)
        lines.append(f"| {seed} | {pct(base)} | {pct(cols['cut'][-1])} | {count(params)}{share} | {pct(final)} "
                     f"| {points(cols['delta'][-1])} | `{run_id(s)}` |")
    lines.append(f"| mean ± std | {fmt_spread(cols['base'])} | {fmt_spread(cols['cut'])} | "
                 f"| {fmt_spread(cols['final'])} | {fmt_spread(cols['delta'], signed=True)} | |")
    return lines


def archived_table(runs: list[dict]) -> list[str]:
    """Whole-fit depth + width runs, a row per stage (kept for reproducibility, not evidence)."""
    lines = ["| run | stage | method | params | MACs | acc % |", "|---|---|---|---|---|---|"]
    for s in runs:
        for row in s["stages"]:
            lines.append(f"| {run_id(s)} | {row['stage']} | {stage_text(row)} | {count(row.get('params'))} "
                         f"| {count(row.get('macs'))} | {pct(row.get('test_acc', row.get('val_acc')))} |")
    return lines


def combined_section(summaries: list[dict]) -> list[str]:
    """The depth + width section (empty without such runs)."""
    groups = combined_groups(summaries)
    archived = [s for s in summaries if s.get("stage") == "depth_prune" and len(s.get("stages", [])) > 1
                and schedule_span(s) != "stage"]
    if not groups and not archived:
        return []
    lines = ["## Depth + width in one pipeline", "",
             f"`{COMMAND}`: cut after the sweep, then a width-pruning callback thins the kept blocks. Δ = the final "
             "net's test accuracy − the same seed's baseline (the checkpoint the run started from), both on the "
             "test split. Commands per run: *Runs and how to reproduce them*.", ""]
    for (dataset, size, stages), seeds in groups.items():
        lines += [f"### {dataset} @{size} px: {stages}, per-stage protocol", "", *combined_table(seeds), ""]
    if archived:
        lines += ["### Archived whole-fit runs (not evidence)", "",
                  "Accuracy: validation right before the next stage; the last row's is the test accuracy.", "",
                  *archived_table(archived), ""]
    return lines
