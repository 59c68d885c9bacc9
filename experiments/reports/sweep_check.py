"""The RESULTS section of ``experiments/sweep_check.py``: the one-run sweep beside one head per cut point."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_COLUMN_TITLES = {"per_point": "per point (one head per fit)", "one_run": "one run (all heads in one fit)",
                  "depth_run_sweep": "the depth run's sweep"}


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def _rho(value: float | None) -> str:
    return "— (a constant column)" if value is None else f"{value:.3f}"


def sweep_check_table(result: dict[str, Any]) -> list[str]:
    """One row per cut point: each column's accuracy and the per-point head's last-epoch change; then
    the rank correlations and the rules' choices."""
    names = list(result["columns"])
    lines = ["| cut | params | " + " | ".join(f"{_COLUMN_TITLES.get(n, n)} %" for n in names)
             + " | per-point last-epoch change (pp) |", "|---" * (len(names) + 3) + "|"]
    for cut in sorted(result["columns"]["per_point"], key=int):
        change = result["last_epoch_change"].get(cut)
        cells = " | ".join(_pct(result["columns"][n].get(cut)) for n in names)
        lines.append(f"| {cut} | {result['costs'][cut]['params']:,} | {cells} | "
                     f"{'—' if change is None else f'{100 * change:+.2f}'} |")
    lines += ["", "| column | Spearman ρ vs per point | tolerance rule → cut | knee rule → cut |", "|---|---|---|---|"]
    for n in names:
        rules = result["rules"][n]
        lines.append(f"| {_COLUMN_TITLES.get(n, n)} | {_rho(result['spearman_vs_per_point'][n])} | "
                     f"{rules['tolerance']} | {rules['knee']} |")
    return lines


def sweep_checks(runs_dir: str | Path = "docs/runs") -> list[dict[str, Any]]:
    """Every ``sweep_check_*.json`` under ``runs_dir``, with its file stem as ``_name``."""
    return [{**json.loads(p.read_text()), "_name": p.stem} for p in sorted(Path(runs_dir).glob("sweep_check_*.json"))]


def sweep_check_sections(runs_dir: str | Path = "docs/runs") -> list[str]:
    """A section per ``sweep_check_*.json`` under ``runs_dir`` (none: nothing)."""
    lines: list[str] = []
    for result in sweep_checks(runs_dir):
        subset = result.get("train_subset") or "all"
        lines += [f"### One-run sweep vs one head per cut point ({result['_name']})", "",
                  f"`uv run {result['command'].removeprefix('python ')}`", "",
                  f"From `{result['baseline_ckpt']}` (validation accuracy {_pct(result['baseline_val_acc'])} %): "
                  f"heads `{result['head']}`, {result['optimizer']} lr {result['lr']:g}, {result['epochs']} epochs, "
                  f"{subset} training images per epoch, seed {result['seed']}, frozen base; "
                  f"{result['wall_time_s'] / 60:.1f} min. The depth run's sweep column is its own stage "
                  "(its optimiser and epochs, see its config).", "",
                  *sweep_check_table(result), ""]
    return lines
