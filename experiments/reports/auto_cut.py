"""The RESULTS section of the automatic cut: from each seed's trained baseline, the cut a rule chose from the
depth run's sweep, the pruned net against that baseline and against the same seed's fixed cut after block 6."""

from __future__ import annotations

from typing import Any

from experiments.reports.backbones import MOBILENET_V1, backbone_of
from experiments.reports.format import count, pct, points, run_id
from experiments.reports.pairing import dataset_of, schedule_span
from experiments.reports.protocol import (
    cut_agreement,
    difference,
    fmt_spread,
    sweep_recipe,
)
from experiments.reports.reproduce import baseline_of, checkpoint_producer, run_config, run_seed


def rule_of(summary: dict) -> str | None:
    """The automatic rule a depth run cut by (``None``: an explicit ``--prune.block``)."""
    prune = run_config(summary).get("prune") or {}
    if prune.get("block") is not None:
        return None
    if prune.get("rule") == "tolerance" and prune.get("tolerance") is not None:
        return f"tolerance {100 * prune['tolerance']:g} pt"
    return prune.get("rule")


def auto_cut_groups(summaries: list[dict]) -> dict[tuple[str, int, str, str], dict[int, dict[str, dict]]]:
    """``(dataset, px, rule, sweep recipe)`` → seed → ``{"auto": run, "fixed": the depth run whose baseline it
    started from}``: MobileNetV1 runs under the per-stage protocol that cut by a rule from a baseline
    checkpoint of a depth run of the same seed. Input order is age order: a newer run replaces an older one."""
    by_id = {run_id(s): s for s in summaries}
    groups: dict[tuple[str, int, str, str], dict[int, dict[str, dict]]] = {}
    for s in summaries:
        if backbone_of(s) != MOBILENET_V1 or s.get("stage") != "depth_prune" or schedule_span(s) != "stage":
            continue
        rule, producer = rule_of(s), checkpoint_producer(baseline_of(s))
        fixed = by_id.get(producer[1]) if producer else None
        if rule is None or fixed is None or run_seed(fixed) != run_seed(s) or len(s.get("stages", [])) > 1:
            continue
        key = (dataset_of(s), int(s.get("image_size") or 0), rule, sweep_recipe(s))
        groups.setdefault(key, {})[run_seed(s)] = {"auto": s, "fixed": fixed}
    return {key: dict(sorted(seeds.items())) for key, seeds in sorted(groups.items())}


def auto_cut_table(seeds: dict[int, dict[str, dict]]) -> list[str]:
    """One row per seed and a mean ± std row: the baseline's test accuracy, the cut, its accuracy and the
    paired differences against the baseline and against the same seed's cut after block 6."""
    lines = ["| seed | baseline test % | cut chosen | params (of baseline) | cut % | Δ vs baseline (pp) "
             "| cut@6 % (same baseline) | Δ vs cut@6 (pp) | runs |", "|---|---|---|---|---|---|---|---|---|"]
    cols: dict[str, list[Any]] = {"base": [], "cut": [], "d_base": [], "fixed": [], "d_fixed": []}
    for seed, runs in seeds.items():
        auto, fixed = runs["auto"], runs["fixed"]
        base = auto.get("baseline", {}).get("test_acc") or fixed.get("baseline", {}).get("test_acc")
        cut, at6 = auto.get("pruned", {}).get("acc"), fixed.get("pruned", {}).get("acc")
        params, base_params = auto.get("pruned", {}).get("params"), auto.get("baseline", {}).get("params")
        share = f" ({100 * params / base_params:.1f} %)" if params and base_params else ""
        for key, value in (("base", base), ("cut", cut), ("d_base", difference(cut, base)), ("fixed", at6),
                           ("d_fixed", difference(cut, at6))):
            cols[key].append(value)
        lines.append(f"| {seed} | {pct(base)} | {auto.get('chosen_cut')} | {count(params)}{share} | {pct(cut)} "
                     f"| {points(cols['d_base'][-1])} | {pct(at6)} | {points(cols['d_fixed'][-1])} "
                     f"| auto `{run_id(auto)}`, cut@6 and baseline `{run_id(fixed)}` |")
    cuts = [runs["auto"].get("chosen_cut") for runs in seeds.values()]
    lines.append(f"| mean ± std | {fmt_spread(cols['base'])} | {cut_agreement(cuts)} | "
                 f"| {fmt_spread(cols['cut'])} | {fmt_spread(cols['d_base'], signed=True)} | {fmt_spread(cols['fixed'])} "
                 f"| {fmt_spread(cols['d_fixed'], signed=True)} | |")
    return lines


def auto_cut_section(summaries: list[dict]) -> list[str]:
    """A table per dataset, image size, rule and sweep recipe (empty without such runs)."""
    lines: list[str] = []
    for (dataset, size, rule, recipe), seeds in auto_cut_groups(summaries).items():
        auto = next(iter(seeds.values()))["auto"]
        sweep_epochs = int((run_config(auto).get("sweep") or {}).get("epochs", 1))
        lines += [f"### {dataset} @{size} px, automatic cut ({rule}), per-stage protocol", "",
                  f"From each seed's trained baseline (the `baseline.ckpt` of that seed's cut@6 run): a sweep of "
                  f"{sweep_epochs} epoch(s), heads trained with {recipe}; the rule chooses the cut; fine-tuning for "
                  f"{int(auto.get('epochs') or 0) - sweep_epochs} epoch(s) on a new cosine schedule. Δ = pruned − that seed's baseline (both on the test split), and pruned − that seed's "
                  "cut after block 6. Commands: *Runs and how to reproduce them*.", "",
                  *auto_cut_table(seeds), ""]
    return lines
