"""The results section of runs on timm backbones (``--model.backbone <timm name>``), for ``results.py``.

MobileNetV1 runs keep their own tables; every run whose ``arch`` names another backbone lands here.

- **Per-stage protocol**, one table per backbone, dataset and image size: each seed's depth run trains its
  own baseline to the end of its schedule, cuts where the rule chooses and fine-tunes; the width row of the
  same seed starts from that baseline checkpoint. Differences are paired per seed (pruned − that seed's
  baseline test accuracy).
- **Smoke and archived runs**: everything else (training subsets, whole-fit schedules, runs from another
  baseline). They show that the pipeline runs on the network and say nothing about pruning it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments.reports.format import count, pct, points, run_id
from experiments.reports.pairing import dataset_of, schedule_span
from experiments.reports.protocol import (
    cut_agreement,
    depth_schedule,
    difference,
    fmt_spread,
)
from experiments.reports.reproduce import baseline_of, checkpoint_producer, run_config, run_seed

MOBILENET_V1 = "mobilenet_v1"


def backbone_of(summary: dict) -> str:
    """The backbone a run trained (``mobilenet_v1`` for runs from before backbones could be chosen)."""
    return (summary.get("arch") or {}).get("backbone") or MOBILENET_V1


def backbone_rows(summary: dict) -> list[tuple[str, str, dict, float | None]]:
    """``(stage, what, cost, acc)`` rows of one run."""
    stage = summary.get("stage")
    if stage == "depth_prune":
        base, pruned = summary.get("baseline", {}), summary.get("pruned", {})
        module = ((summary.get("arch") or {}).get("structure") or {}).get("cut_module")
        point = f"{summary.get('chosen_cut')}" + (f", after {module}" if module else "")
        return [("baseline", "unpruned, val acc at the sweep", base, base.get("acc")),
                ("depth", f"cut at point {point} ({summary.get('init')})", pruned, pruned.get("acc"))]
    if stage == "width_prune":
        what = f"{summary.get('method')} {summary.get('criterion')}, sparsity {summary.get('sparsity')}"
        if summary.get("distillation"):
            what += " + distillation"
        return [("width", what, summary, summary.get("acc_after"))]
    return [("baseline", "train.py", summary, summary.get("metrics", {}).get("test/acc"))]



def protocol_groups(summaries: list[dict]) -> dict[tuple[str, str, int], dict[int, dict[str, dict]]]:
    """``(backbone, dataset, px)`` → seed → ``{"depth": …, "width": …, "control": …}``: depth runs under the
    per-stage protocol that trained their own baseline, the width run that started from that baseline, and
    the same-budget control (``train.py``, same network and seed). Input order is age order: a newer run of
    the same kind and seed replaces an older one."""
    depth = {run_id(s): s for s in summaries if backbone_of(s) != MOBILENET_V1 and s.get("stage") == "depth_prune"
             and schedule_span(s) == "stage" and not baseline_of(s) and run_seed(s) is not None}
    groups: dict[tuple[str, str, int], dict[int, dict[str, dict]]] = {}
    for s in depth.values():
        key = (backbone_of(s), dataset_of(s), s.get("image_size"))
        groups.setdefault(key, {})[run_seed(s)] = {"depth": s}
    for s in summaries:
        producer = checkpoint_producer(baseline_of(s)) if s.get("stage") == "width_prune" else None
        base = depth.get(producer[1]) if producer else None
        if base is None or backbone_of(s) != backbone_of(base) or s.get("image_size") != base.get("image_size"):
            continue
        runs = groups[(backbone_of(base), dataset_of(base), base.get("image_size"))].get(run_seed(base))
        if runs is not None and runs["depth"] is base:
            runs["width"] = s
    for s in summaries:  # the same-budget control: train.py on the same network, seed, data and size
        runs = groups.get((backbone_of(s), dataset_of(s), s.get("image_size")), {}).get(run_seed(s))
        if s.get("stage") == "baseline" and runs is not None \
                and s.get("params") == runs["depth"].get("baseline", {}).get("params"):
            runs["control"] = s
    return {key: dict(sorted(seeds.items())) for key, seeds in sorted(groups.items())}


def _width_what(summary: dict) -> str:
    what = f"{summary.get('method')} {summary.get('criterion')} {summary.get('sparsity')}"
    return what + (" + distillation" if summary.get("distillation") else "")


def _cut_what(summary: dict) -> str:
    prune = run_config(summary).get("prune") or {}
    module = ((summary.get("arch") or {}).get("structure") or {}).get("cut_module")
    rule = (f"{prune.get('rule')} {100 * prune['tolerance']:g} pt" if prune.get("rule") == "tolerance"
            and prune.get("tolerance") is not None else prune.get("rule")) if prune.get("block") is None else "fixed"
    return f"{summary.get('chosen_cut')}" + (f" ({module})" if module else "") + f", {rule}"


def protocol_columns(seeds: dict[int, dict[str, dict]]) -> dict[str, list[Any]]:
    """Per-seed accuracies, parameter counts and paired differences (pruned − that seed's baseline test)."""
    cols: dict[str, list[Any]] = {k: [] for k in ("val", "base", "cut", "cut_params", "d_cut", "control",
                                                   "d_control", "width", "width_params", "d_width")}
    for runs in seeds.values():
        depth, width = runs["depth"], runs.get("width")
        control = (runs.get("control") or {}).get("metrics", {}).get("test/acc")
        base = depth.get("baseline", {}).get("test_acc")
        cut = depth.get("pruned", {}).get("acc")
        acc_w = width.get("acc_after") if width else None
        for key, value in (("val", depth.get("baseline", {}).get("val_acc")), ("base", base), ("cut", cut),
                           ("cut_params", depth.get("pruned", {}).get("params")),
                           ("d_cut", difference(cut, base)), ("control", control),
                           ("d_control", difference(cut, control)), ("width", acc_w),
                           ("width_params", width.get("params") if width else None),
                           ("d_width", difference(acc_w, base))):
            cols[key].append(value)
    return cols


def protocol_table(seeds: dict[int, dict[str, dict]]) -> list[str]:
    """One row per seed and a row of mean ± std (accuracies in %, differences in points)."""
    cols = protocol_columns(seeds)
    lines = ["| seed | baseline val % (rule) | baseline test % | automatic cut | cut params | cut % | Δ cut (pp) "
             "| same-budget control % | cut − control (pp) | width row | width params | width % | Δ width (pp) | runs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, (seed, runs) in enumerate(seeds.items()):
        width = runs.get("width")
        ids = ", ".join(f"{k} `{run_id(s)}`" for k, s in runs.items())
        lines.append(f"| {seed} | {pct(cols['val'][i])} | {pct(cols['base'][i])} | {_cut_what(runs['depth'])} "
                     f"| {count(cols['cut_params'][i])} | {pct(cols['cut'][i])} | {points(cols['d_cut'][i])} "
                     f"| {pct(cols['control'][i])} | {points(cols['d_control'][i])} "
                     f"| {_width_what(width) if width else '—'} | {count(cols['width_params'][i])} "
                     f"| {pct(cols['width'][i])} | {points(cols['d_width'][i])} | {ids} |")
    cuts = [runs["depth"].get("chosen_cut") for runs in seeds.values()]
    lines.append(f"| mean ± std | {fmt_spread(cols['val'])} | {fmt_spread(cols['base'])} | {cut_agreement(cuts)} | "
                 f"| {fmt_spread(cols['cut'])} | {fmt_spread(cols['d_cut'], signed=True)} "
                 f"| {fmt_spread(cols['control'])} | {fmt_spread(cols['d_control'], signed=True)} | | "
                 f"| {fmt_spread(cols['width'])} | {fmt_spread(cols['d_width'], signed=True)} | |")
    return lines


def _schedule(seeds: dict[int, dict[str, dict]]) -> str:
    runs = next(iter(seeds.values()))
    text = depth_schedule(runs["depth"], head=True)
    if runs.get("width"):
        text += f"; width row: prune at epoch 0 of {runs['width'].get('epochs')}, one cosine schedule"
    control = next((r["control"] for r in seeds.values() if r.get("control")), None)
    if control is not None:
        text += f"; same-budget control: `train.py`, {control.get('epochs')} epochs, one cosine schedule"
    return text


def backbone_protocol_section(summaries: list[dict]) -> tuple[list[str], set[str]]:
    """The per-stage protocol tables of timm backbones and the run ids they use."""
    lines: list[str] = []
    used: set[str] = set()
    for (backbone, dataset, size), seeds in protocol_groups(summaries).items():
        depth = next(iter(seeds.values()))["depth"]
        params = depth.get("baseline", {}).get("params")
        lines += [f"### {backbone} on {dataset} @{size} px ({count(params)} params), per-stage protocol", "",
                  f"Schedule — {_schedule(seeds)}. Δ = pruned − the same seed's baseline, both on the test split. "
                  "The automatic cut: the rule named, applied by the depth run to its sweep; the width row starts "
                  "from the same seed's baseline checkpoint. Commands: *Runs and how to reproduce them*.", "",
                  *protocol_table(seeds), ""]
        used |= {run_id(s) for runs in seeds.values() for s in runs.values()}
    return lines, used


def backbone_section(summaries: list[dict]) -> list[str]:
    """Markdown lines of the timm-backbone section (empty without such runs)."""
    runs = [s for s in summaries if backbone_of(s) != MOBILENET_V1]
    if not runs:
        return []
    protocol, used = backbone_protocol_section(runs)
    smoke = [s for s in runs if run_id(s) not in used]
    lines = ["## Other backbones (timm)", "", *protocol]
    if not smoke:
        return lines
    lines += ["### Smoke and archived runs (not evidence)" if protocol else "### Smoke and archived runs", "",
              "Short runs (some on a 2,000-image training subset) and runs before the per-stage protocol: they "
              "show that the pipeline runs on these networks, not what pruning does to them. acc: test split, best "
              "checkpoint (a depth run's baseline: validation accuracy at the sweep).", "",
              "| backbone | dataset | px | stage | what | epochs | params | MACs | acc % | command |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for s in sorted(smoke, key=lambda s: (backbone_of(s), s.get("stage", ""))):
        folder = Path(s["_path"]).parent
        script = {"depth_prune": "depth_prune.py", "width_prune": "width_prune.py"}.get(s.get("stage"), "train.py")
        # the archived copy (docs/runs/<id>/), wherever the summary was read from
        command = f"`uv run experiments/{script} --config docs/runs/{folder.name}/config.yaml`"
        for stage, what, cost, acc in backbone_rows(s):
            lines.append(f"| {backbone_of(s)} | {s.get('dataset', '—')} | {s.get('image_size')} | {stage} | {what} "
                         f"| {s.get('epochs')} | {count(cost.get('params'))} | {count(cost.get('macs'))} "
                         f"| {pct(acc)} | {command} |")
    return [*lines, ""]
