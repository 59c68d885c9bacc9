"""Depth-pruning sweep report: the sweep as CSV, JSON, a two-panel plot, a console table and W&B logs."""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lightning_modules.pruning.depth_cut import Baseline, CutPoint, format_count, row_for_cut

CSV_COLUMNS: tuple[str, ...] = ("cut", "params", "macs", "acc", "params_ratio", "macs_ratio", "acc_drop")


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
