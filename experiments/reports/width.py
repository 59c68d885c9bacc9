"""Tables and a figure for width-pruning runs, next to the numbers TinyNeuralNetwork reports.

Each ``experiments/width_prune.py`` run writes a ``summary.json`` with its method, criterion, sparsity,
FLOPs preserve rate and accuracy before/after; :func:`width_rows` keeps the newest run of each setting and
:func:`width_table` renders them as a Markdown table.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from callbacks.pruning_base import WidthPruningCallback
from experiments.reports.format import pct
from experiments.reports.reproduce import run_seed

#: TinyNeuralNetwork's CIFAR-10 MobileNetV1 tables (baseline 94.2 %, fine-tuned at 224 px):
#: (sparsity, method, criterion, distillation) → top-1 %.
REFERENCE_WIDTH: dict[tuple[float, str, str, bool], float] = {
    (0.5, "oneshot", "random", False): 94.04,
    (0.5, "oneshot", "l1_norm", False): 94.52,
    (0.5, "oneshot", "l2_norm", False): 94.59,
    (0.5, "oneshot", "fpgm", False): 94.55,
    (0.5, "oneshot", "hrank", False): 94.25,
    (0.5, "bn_slimming", "bn_scale", False): 93.74,
    (0.75, "oneshot", "random", False): 92.01,
    (0.75, "oneshot", "l1_norm", False): 93.36,
    (0.75, "oneshot", "l2_norm", False): 93.35,
    (0.75, "oneshot", "l2_norm", True): 93.48,
    (0.75, "oneshot", "hrank", False): 92.16,
    (0.75, "oneshot", "fpgm", False): 93.09,
    (0.75, "admm", "l2_norm", False): 93.56,
    (0.75, "gradual", "l2_norm", False): 93.78,
    (0.75, "resrep", "l2_norm", True): 93.49,
}
METHOD_ORDER = ("oneshot", "bn_slimming", "admm", "gradual", "resrep")


def row_key(summary: dict[str, Any]) -> tuple[float, str, str, bool]:
    sparsity = summary.get("sparsity")
    sparsity = float(sparsity) if isinstance(sparsity, int | float) else -1.0
    return (sparsity, summary.get("method", "?"), summary.get("criterion", "?"), bool(summary.get("distillation")))


def baseline_of(summary: dict[str, Any]) -> str:
    """The baseline checkpoint a width run started from (rows of one table must share it)."""
    return str((summary.get("baseline") or {}).get("checkpoint") or summary.get("baseline_ckpt") or "?")


def width_groups(rows: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """Rows by (dataset, image size, baseline checkpoint, schedule span, epochs): one table each, so rows
    of one table share their baseline and their length (a longer fine-tune is another table, never a row
    that replaces a shorter one's)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for s in rows:
        key = (s.get("dataset"), s.get("image_size"), baseline_of(s), s.get("schedule_span", "fit"), s.get("epochs"))
        groups.setdefault(key, []).append(s)
    return groups


def width_rows(summaries: list[dict[str, Any]], image_size: int | None = None) -> list[dict[str, Any]]:
    """The newest width-pruning run of each (baseline, epochs, seed, sparsity, method, criterion, distillation) at
    ``image_size``,
    ordered as TinyNeuralNetwork's tables (width 0.5 first, then by method)."""
    runs = [s for s in summaries if s.get("stage") == "width_prune"
            and (image_size is None or s.get("image_size") == image_size)]
    newest = {(s.get("dataset"), s.get("image_size"), baseline_of(s), s.get("epochs"), s.get("seed"), *row_key(s)): s
              for s in runs}
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    return sorted(newest.values(), key=lambda s: (s.get("dataset", ""), s.get("image_size", 0), row_key(s)[0],
                                                  order.get(s.get("method"), 99), s.get("criterion", ""),
                                                  bool(s.get("distillation"))))


def width_label(summary: dict[str, Any]) -> str:
    sparsity = summary.get("sparsity")
    width = f"MBv1-{1 - sparsity:g}" if isinstance(sparsity, int | float) else "MBv1 (per-layer)"
    distill = " + distillation" if summary.get("distillation") else ""
    return f"{width} {summary.get('method')} {summary.get('criterion')}{distill}"


def schedule_text(summary: dict[str, Any]) -> str:
    """The method's schedule in a few words, as its pruning callback describes it (built from the arguments
    the summary recorded, the class's defaults for the rest)."""
    for spec in summary.get("callbacks", []):
        if not isinstance(spec, dict) or "class_path" not in spec:
            continue
        module, _, name = spec["class_path"].rpartition(".")
        callback = getattr(importlib.import_module(module), name, None)
        if isinstance(callback, type) and issubclass(callback, WidthPruningCallback):
            return callback(**spec.get("init_args", {})).schedule()
    return "—"


def width_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| net | method | criterion | distill | sparsity | FLOPs preserve rate | params | MACs | acc before % "
        "| acc after % | Δ pp | epochs | schedule (epochs) | wall min | TinyNN % (from 94.2) | seed | run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in rows:
        ref = REFERENCE_WIDTH.get(row_key(s))
        before, after = s.get("acc_before"), s.get("acc_after")
        delta = "—" if before is None or after is None else f"{100 * (after - before):+.2f}"
        sparsity = s.get("sparsity")
        width = f"{1 - sparsity:g}" if isinstance(sparsity, int | float) else "—"
        wall, seed = s.get("wall_time_s"), run_seed(s)
        lines.append(
            f"| MBv1-{width} | {s.get('method')} | {s.get('criterion')} | {'yes' if s.get('distillation') else ''} "
            f"| {sparsity} | {s.get('flops_preserve_rate', float('nan')):.3f} | {s.get('params', 0):,} "
            f"| {s.get('macs', 0):,} | {pct(before)} | {pct(after)} | {delta} | {s.get('epochs')} "
            f"| {schedule_text(s)} "
            f"| {'—' if wall is None else f'{wall / 60:.1f}'} | {'—' if ref is None else f'{ref:.2f}'} "
            f"| {'—' if seed is None else seed} | `{Path(s['_path']).parent.name}` |"
        )
    return lines


def plot_width_rows(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Accuracy after fine-tuning vs FLOPs preserve rate, one marker per run (None without rows)."""
    rows = [s for s in rows if s.get("acc_after") is not None and s.get("flops_preserve_rate") is not None]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    markers = dict(zip(METHOD_ORDER, "os^Dv", strict=True))
    for s in rows:
        ax.scatter(s["flops_preserve_rate"], 100 * s["acc_after"], marker=markers.get(s.get("method"), "x"))
        ax.annotate(width_label(s).split(" ", 1)[1], (s["flops_preserve_rate"], 100 * s["acc_after"]),
                    fontsize=6, xytext=(3, 2), textcoords="offset points")
    befores = [s["acc_before"] for s in rows if s.get("acc_before") is not None]
    if befores:
        ax.axhline(100 * befores[-1], color="grey", ls="--", lw=0.8, label="unpruned baseline")
        ax.legend(loc="lower right", fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs preserve rate (MACs after / before)")
    ax.set_ylabel("test accuracy after fine-tuning (%)")
    ax.set_title("Width pruning of MobileNetV1-1.0")
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
