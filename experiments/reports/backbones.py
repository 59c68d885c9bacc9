"""The results section of runs on timm backbones (``--model.backbone <timm name>``), for ``results.py``.

MobileNetV1 runs keep their own tables; every run whose ``arch`` names another backbone lands here: the
baseline and the chosen cut of a depth-pruning run, and each width-pruning run, with params, MACs,
accuracy and the command that repeats it.
"""

from __future__ import annotations

from pathlib import Path

from experiments.reports.format import count, pct

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


def backbone_section(summaries: list[dict]) -> list[str]:
    """Markdown lines of the timm-backbone table (empty without such runs)."""
    runs = [s for s in summaries if backbone_of(s) != MOBILENET_V1]
    if not runs:
        return []
    lines = ["## Other backbones (timm)", "",
             "Runs with `--model.backbone <timm name>`; acc: test split, best checkpoint (the depth run's baseline: "
             "validation accuracy at the sweep). Each run repeats with the command beside it.", "",
             "| backbone | dataset | px | stage | what | epochs | params | MACs | acc % | command |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in sorted(runs, key=lambda s: (backbone_of(s), s.get("stage", ""))):
        folder = Path(s["_path"]).parent
        script = {"depth_prune": "depth_prune.py", "width_prune": "width_prune.py"}.get(s.get("stage"), "train.py")
        # the archived copy (docs/runs/<id>/), wherever the summary was read from
        command = f"`uv run experiments/{script} --config docs/runs/{folder.name}/config.yaml`"
        for stage, what, cost, acc in backbone_rows(s):
            lines.append(f"| {backbone_of(s)} | {s.get('dataset', '—')} | {s.get('image_size')} | {stage} | {what} "
                         f"| {s.get('epochs')} | {count(cost.get('params'))} | {count(cost.get('macs'))} "
                         f"| {pct(acc)} | {command} |")
    return [*lines, ""]
