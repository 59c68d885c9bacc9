"""Choosing where to cut a network from a depth-pruning sweep.

A depth sweep trains an auxiliary classifier head at each cut point ``k`` of a trained network
(``0`` = after the stem, ``k`` = after block ``k``); "stem + blocks ≤ k + head k" is the pruned model.
Each cut gives one :class:`CutPoint` (params, MACs, accuracy). This module picks a cut (explicitly, by an
accuracy tolerance, or at the knee of the Pareto front); ``lightning_modules.reporting.sweep`` writes it out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal


def check_fraction(acc: float, what: str) -> None:
    """``ValueError`` naming ``what`` unless the accuracy ``acc`` is a fraction in [0, 1] (not a percentage)."""
    if not 0.0 <= acc <= 1.0:
        raise ValueError(f"{what}: acc must be a fraction in [0, 1], got {acc}")


@dataclass
class CutPoint:
    """One sweep row: the model cut after block ``cut`` with its auxiliary head (``acc`` in [0, 1])."""

    cut: int
    params: int
    macs: int
    acc: float

    def __post_init__(self) -> None:
        check_fraction(self.acc, f"cut {self.cut}")


@dataclass
class Baseline:
    """The unpruned model the sweep is compared with (``acc`` in [0, 1])."""

    params: int
    macs: int
    acc: float

    def __post_init__(self) -> None:
        check_fraction(self.acc, "baseline")


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


def knee_distances(front: Sequence[CutPoint]) -> dict[int, float]:
    """Each front point's signed distance above the chord joining the front's endpoints, with log10(params)
    and accuracy normalised to [0, 1] over the front (Kneedle-style): the knee is the farthest, and the gap
    to the runner-up says how clear it is. Empty with fewer than three points or a front of one point."""
    if len(front) < 3:
        return {}
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
        return {}
    # Signed perpendicular distance: positive above the chord (the concave, "knee" side).
    return {r.cut: (dx * (y - ys[0]) - dy * (x - xs[0])) / length for r, x, y in zip(pts, xs, ys, strict=True)}


def knee_point(front: Sequence[CutPoint]) -> CutPoint:
    """Knee of a Pareto front: the point farthest above the chord (:func:`knee_distances`). With fewer than
    three points, or none above the chord, the most accurate point is returned."""
    if not front:
        raise ValueError("knee_point needs at least one point")
    most_accurate = max(front, key=lambda r: (r.acc, -r.params))
    dists = knee_distances(front)
    if not dists:
        return most_accurate
    pts = sorted(front, key=lambda r: r.params)
    best = max(range(len(pts)), key=lambda i: dists[pts[i].cut])
    return pts[best] if dists[pts[best].cut] > 1e-12 else most_accurate


def _describe(row: CutPoint, baseline: Baseline) -> str:
    """``"cut 3 (43.5k params, 1.4% of baseline; acc 80.92%, +4.42 pp vs baseline)"``."""
    ratio = row.params / baseline.params if baseline.params else float("nan")
    delta = 100.0 * (row.acc - baseline.acc)
    return (
        f"cut {row.cut} ({format_count(row.params)} params, {100.0 * ratio:.1f}% of baseline; "
        f"acc {100.0 * row.acc:.2f}%, {delta:+.2f} pp vs baseline {100.0 * baseline.acc:.2f}%)"
    )


def removes_nothing(row: CutPoint, baseline: Baseline, last: int) -> str | None:
    """Why cutting at ``row`` prunes nothing, or ``None`` when it does prune: the last cut point keeps every
    block, and a cut network with as many parameters as the baseline (its head larger than the classifier
    it replaces) is no smaller. ``last``: the network's last cut point."""
    if row.cut >= last:
        return f"the last cut point, which keeps every block ({format_count(row.params)} params)"
    if baseline.params and row.params >= baseline.params:
        return (f"whose network has {format_count(row.params)} params, no fewer than the baseline's "
                f"{format_count(baseline.params)}")
    return None


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
