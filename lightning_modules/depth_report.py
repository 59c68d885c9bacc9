"""Depth-pruning sweep report: choose a cut point and present the accuracy/cost trade-off.

A depth sweep trains an auxiliary classifier head at each cut point ``k`` of a trained network
(``0`` = after the stem, ``k`` = after block ``k``); "stem + blocks ≤ k + head k" is the pruned model.
Each cut gives one :class:`CutPoint` (params, MACs, accuracy). This module picks a cut (explicitly, by an
accuracy tolerance, or at the knee of the Pareto front), writes the sweep as CSV, JSON and a two-panel
plot, prints it as a console table and logs it to W&B.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

CSV_COLUMNS: tuple[str, ...] = ("cut", "params", "macs", "acc", "params_ratio", "macs_ratio", "acc_drop")


@dataclass
class CutPoint:
    """One sweep row: the model cut after block ``cut`` with its auxiliary head (``acc`` in [0, 1])."""

    cut: int
    params: int
    macs: int
    acc: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.acc <= 1.0:
            raise ValueError(f"cut {self.cut}: acc must be a fraction in [0, 1], got {self.acc}")


@dataclass
class Baseline:
    """The unpruned model the sweep is compared with (``acc`` in [0, 1])."""

    params: int
    macs: int
    acc: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.acc <= 1.0:
            raise ValueError(f"baseline: acc must be a fraction in [0, 1], got {self.acc}")


def format_count(n: float) -> str:
    """Compact human count: ``3217226`` → ``"3.22M"``, ``43500`` → ``"43.5k"``."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.0f}"


def row_for_cut(rows: Sequence[CutPoint], cut: int) -> CutPoint:
    """The row of cut point ``cut``; ``ValueError`` naming the available cuts when it is absent."""
    for row in rows:
        if row.cut == cut:
            return row
    available = sorted(r.cut for r in rows)
    raise ValueError(f"cut {cut} is not among the sweep's cut points {available}")


def pareto_front(rows: Sequence[CutPoint]) -> list[CutPoint]:
    """Rows no other row dominates (fewer-or-equal params and higher-or-equal accuracy, one strictly),
    sorted by params ascending (so accuracy ascends too). Of exact duplicates the lowest cut is kept."""
    front: list[CutPoint] = []
    best_acc = -math.inf
    for row in sorted(rows, key=lambda r: (r.params, -r.acc, r.cut)):
        if row.acc > best_acc:
            front.append(row)
            best_acc = row.acc
    return front


def knee_point(front: Sequence[CutPoint]) -> CutPoint:
    """Knee of a Pareto front (Kneedle-style): with log10(params) and accuracy normalised to [0, 1] over
    the front, the point farthest above the chord joining the front's endpoints. With fewer than three
    points, or none above the chord, the most accurate point is returned."""
    if not front:
        raise ValueError("knee_point needs at least one point")
    most_accurate = max(front, key=lambda r: (r.acc, -r.params))
    if len(front) < 3:
        return most_accurate
    pts = sorted(front, key=lambda r: r.params)
    logs = [math.log10(max(r.params, 1)) for r in pts]
    accs = [r.acc for r in pts]

    def norm(values: list[float]) -> list[float]:
        lo, hi = min(values), max(values)
        return [(v - lo) / (hi - lo) if hi > lo else 0.0 for v in values]

    xs, ys = norm(logs), norm(accs)
    dx, dy = xs[-1] - xs[0], ys[-1] - ys[0]
    length = math.hypot(dx, dy)
    if length == 0.0:
        return most_accurate
    # Signed perpendicular distance: positive above the chord (the concave, "knee" side).
    dists = [(dx * (y - ys[0]) - dy * (x - xs[0])) / length for x, y in zip(xs, ys, strict=True)]
    best = max(range(len(pts)), key=lambda i: dists[i])
    return pts[best] if dists[best] > 1e-12 else most_accurate


def _describe(row: CutPoint, baseline: Baseline) -> str:
    """``"cut 3 (43.5k params, 1.4% of baseline; acc 80.92%, +4.42 pp vs baseline)"``."""
    ratio = row.params / baseline.params if baseline.params else float("nan")
    delta = 100.0 * (row.acc - baseline.acc)
    return (
        f"cut {row.cut} ({format_count(row.params)} params, {100.0 * ratio:.1f}% of baseline; "
        f"acc {100.0 * row.acc:.2f}%, {delta:+.2f} pp vs baseline {100.0 * baseline.acc:.2f}%)"
    )


def choose_cut(
    rows: Sequence[CutPoint],
    baseline: Baseline,
    block: int | None = None,
    rule: Literal["tolerance", "knee"] = "tolerance",
    tolerance: float = 0.01,
) -> tuple[int, str]:
    """Pick the cut point to keep and explain why.

    ``block`` given: that cut (``ValueError`` if the sweep lacks it). ``rule="tolerance"``: the smallest
    model (fewest params) whose accuracy is at least ``baseline.acc - tolerance`` (tolerance in accuracy
    units: 0.01 = one point), else the most accurate row. ``rule="knee"``: :func:`knee_point` of
    :func:`pareto_front`. Returns ``(cut, reason)``.
    """
    if not rows:
        raise ValueError("choose_cut needs at least one sweep row")
    if block is not None:
        row = row_for_cut(rows, block)
        return row.cut, f"Cut {row.cut} chosen explicitly: {_describe(row, baseline)}."
    if rule == "tolerance":
        floor = baseline.acc - tolerance
        qualifying = [r for r in rows if r.acc >= floor]
        if qualifying:
            row = min(qualifying, key=lambda r: (r.params, -r.acc, r.cut))
            return row.cut, (
                f"Smallest model within {100.0 * tolerance:.2f} pp of the baseline "
                f"(acc ≥ {100.0 * floor:.2f}%, {len(qualifying)}/{len(rows)} cuts qualify): "
                f"{_describe(row, baseline)}."
            )
        row = max(rows, key=lambda r: (r.acc, -r.params))
        return row.cut, (
            f"No cut reaches acc ≥ {100.0 * floor:.2f}% (baseline minus {100.0 * tolerance:.2f} pp); "
            f"falling back to the most accurate: {_describe(row, baseline)}."
        )
    if rule == "knee":
        front = pareto_front(rows)
        row = knee_point(front)
        cuts = ", ".join(str(r.cut) for r in front)
        how = "knee" if len(front) >= 3 else "most accurate point (front too short for a knee)"
        return (
            row.cut,
            f"Pareto front (params vs acc) has cuts [{cuts}]; its {how}: {_describe(row, baseline)}.",
        )
    raise ValueError(f"unknown rule {rule!r}; expected 'tolerance' or 'knee'")


def sweep_records(rows: Sequence[CutPoint], baseline: Baseline) -> list[dict[str, Any]]:
    """Rows sorted by cut as dicts with :data:`CSV_COLUMNS` (ratios vs baseline, ``acc_drop`` =
    ``baseline.acc - acc``)."""
    records = []
    for r in sorted(rows, key=lambda r: r.cut):
        records.append(
            {
                "cut": r.cut,
                "params": r.params,
                "macs": r.macs,
                "acc": r.acc,
                "params_ratio": r.params / baseline.params if baseline.params else float("nan"),
                "macs_ratio": r.macs / baseline.macs if baseline.macs else float("nan"),
                "acc_drop": baseline.acc - r.acc,
            }
        )
    return records


def plot_sweep(
    rows: Sequence[CutPoint], baseline: Baseline, chosen: int, path: Path, title: str = "Depth-pruning sweep"
) -> Path:
    """Two panels, accuracy (%) vs params and vs MACs (log x): every cut annotated with its index, the
    baseline as a dashed line plus a marker at its cost, the chosen cut highlighted. Saved as PNG."""
    chosen_row = row_for_cut(rows, chosen)
    ordered = sorted(rows, key=lambda r: r.cut)
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, xlabel in ((axes[0], "params", "parameters"), (axes[1], "macs", "MACs")):
        xs = [getattr(r, key) for r in ordered]
        ys = [100.0 * r.acc for r in ordered]
        ax.plot(xs, ys, "-", color="tab:blue", alpha=0.35, linewidth=1)
        ax.scatter(xs, ys, color="tab:blue", s=30, zorder=3, label="auxiliary head at cut k")
        for r, x, y in zip(ordered, xs, ys, strict=True):
            ax.annotate(str(r.cut), (x, y), textcoords="offset points", xytext=(4, 5), fontsize=8)
        base_x, base_y = getattr(baseline, key), 100.0 * baseline.acc
        ax.axhline(base_y, color="gray", linestyle="--", linewidth=1, label=f"baseline {base_y:.2f}%")
        ax.scatter([base_x], [base_y], marker="s", color="gray", s=45, zorder=3, label="baseline model")
        ax.annotate(
            f"baseline\n{format_count(base_x)}",
            (base_x, base_y),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            va="bottom",
            fontsize=8,
            color="dimgray",
        )
        ax.scatter(
            [getattr(chosen_row, key)],
            [100.0 * chosen_row.acc],
            marker="*",
            color="tab:red",
            s=220,
            edgecolors="black",
            linewidths=0.6,
            zorder=4,
            label=f"chosen cut {chosen}",
        )
        ax.set_xscale("log")
        ax.set_xlabel(f"{xlabel} (log scale)")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"accuracy vs {xlabel}")
    axes[0].set_ylabel("top-1 accuracy (%)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=4, fontsize=9)
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def write_sweep_report(
    rows: Sequence[CutPoint],
    baseline: Baseline,
    chosen: int,
    out_dir: Path,
    title: str = "Depth-pruning sweep",
) -> dict[str, Path]:
    """Write ``depth_sweep.csv``, ``depth_sweep.json`` and ``depth_sweep.png`` under ``out_dir``;
    returns ``{"csv": …, "json": …, "png": …}``."""
    row_for_cut(rows, chosen)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = sweep_records(rows, baseline)
    paths = {k: out_dir / f"depth_sweep.{k}" for k in ("csv", "json", "png")}
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        writer.writerows(records)
    payload = {"title": title, "baseline": asdict(baseline), "rows": records, "chosen_cut": chosen}
    paths["json"].write_text(json.dumps(payload, indent=2) + "\n")
    plot_sweep(rows, baseline, chosen, paths["png"], title=title)
    return paths


def log_sweep_to_wandb(
    logger_experiment: Any,
    rows: Sequence[CutPoint],
    baseline: Baseline,
    chosen: int,
    png_path: Path | None = None,
) -> None:
    """Log the sweep to a W&B run: a table under ``depth_sweep/table`` and the plot under
    ``depth_sweep/plot``. A no-op for ``None`` or anything that is not a ``wandb.Run`` (e.g. Lightning's
    dummy experiment); W&B errors become warnings, never exceptions."""
    if logger_experiment is None:
        return
    try:
        import wandb

        if not isinstance(logger_experiment, wandb.Run):
            return
        columns = [*CSV_COLUMNS, "chosen"]
        data = [
            [rec[c] for c in CSV_COLUMNS] + [rec["cut"] == chosen] for rec in sweep_records(rows, baseline)
        ]
        payload: dict[str, Any] = {"depth_sweep/table": wandb.Table(columns=columns, data=data)}
        if png_path is not None and Path(png_path).is_file():
            payload["depth_sweep/plot"] = wandb.Image(str(png_path), caption=f"chosen cut {chosen}")
        logger_experiment.log(payload)
    except Exception as err:  # reporting must not break a finished sweep
        warnings.warn(f"could not log the depth sweep to W&B: {err}", stacklevel=2)


def format_sweep_table(rows: Sequence[CutPoint], baseline: Baseline, chosen: int) -> str:
    """Plain-text table (cut, params, MACs, acc %, Δacc in pp vs baseline), the baseline first and the
    chosen cut marked with ``*``."""
    header = ("", "cut", "params", "MACs", "acc %", "Δacc pp")
    lines: list[tuple[str, ...]] = [
        ("", "base", f"{baseline.params:,}", f"{baseline.macs:,}", f"{100.0 * baseline.acc:.2f}", "")
    ]
    for r in sorted(rows, key=lambda r: r.cut):
        lines.append(
            (
                "*" if r.cut == chosen else "",
                str(r.cut),
                f"{r.params:,}",
                f"{r.macs:,}",
                f"{100.0 * r.acc:.2f}",
                f"{100.0 * (r.acc - baseline.acc):+.2f}",
            )
        )
    widths = [max(len(row[i]) for row in (header, *lines)) for i in range(len(header))]

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.ljust(w) if i < 1 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    rule = "-" * len(fmt(header))
    body = [fmt(header), rule, *(fmt(line) for line in lines), rule, f"* chosen cut {chosen}"]
    return "\n".join(line.rstrip() for line in body)
