"""Which orderings of TinyNeuralNetwork's CIFAR-10 width tables hold here: random below the norm-based
criteria, distillation helping, iterative methods above one-shot, HRank against random, BN-slimming's
place. Each ordering compares two rows of one width table (the same baseline checkpoint, the per-stage
protocol) and is decided by the spread of the seeds:

* every row with ≥ 2 seeds: the mean difference ± 2 standard errors (of the difference of two means) must
  lie wholly on one side of zero;
* a row with one seed: a difference beyond the one-seed margin decides it ("1 seed"); a smaller one cannot
  tell, and needs more seeds. The margin is :data:`ONE_SEED_MARGIN`, or the largest change between seeds of
  one setting measured in the same table when that is larger (:func:`one_seed_margin`): a single seed
  cannot separate two settings by less than one setting's seeds differ among themselves.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from experiments.reports.width import REFERENCE_WIDTH, row_key

#: The least single-seed difference that decides an ordering (points), where the table measures no larger
#: change between seeds (the CIFAR-10 @32 depth runs' seeds differ by less, ``docs/RESULTS.md``).
ONE_SEED_MARGIN: float = 1.0

Setting = tuple[float, str, str, bool]  # (sparsity, method, criterion, distillation), as width.row_key

#: (ordering, lower setting, higher setting): TinyNeuralNetwork's tables put ``higher`` above ``lower``.
ORDERINGS: list[tuple[str, Setting, Setting]] = [
    *(("random < norm-based", (s, "oneshot", "random", False), (s, "oneshot", criterion, False))
      for s in (0.5, 0.75) for criterion in ("l1_norm", "l2_norm", "fpgm")),
    ("distillation helps", (0.75, "oneshot", "l2_norm", False), (0.75, "oneshot", "l2_norm", True)),
    *(("iterative > one-shot", (0.75, "oneshot", "l2_norm", False), (0.75, method, "l2_norm", False))
      for method in ("gradual", "admm")),
    *(("HRank > random", (s, "oneshot", "random", False), (s, "oneshot", "hrank", False)) for s in (0.5, 0.75)),
    ("BN-slimming < random", (0.5, "bn_slimming", "bn_scale", False), (0.5, "oneshot", "random", False)),
]


def setting_text(setting: Setting) -> str:
    sparsity, method, criterion, distill = setting
    return f"{1 - sparsity:g} {method} {criterion}{' + distill' if distill else ''}"


def one_seed_margin(accs: dict[Setting, list[float]]) -> float:
    """:data:`ONE_SEED_MARGIN`, or the largest max − min (points) among the seeds of one setting in ``accs``."""
    spreads = [100 * (max(a) - min(a)) for a in accs.values() if len(a) >= 2]
    return max([ONE_SEED_MARGIN, *spreads])


def margin_text(margin: float) -> str:
    """The one-seed margin as the verdicts and the section's rule name it."""
    return f"{margin:g} point" if margin == ONE_SEED_MARGIN else f"{margin:.2f} points"


def decide(lower: list[float], higher: list[float], margin: float = ONE_SEED_MARGIN) -> tuple[float, float | None, str]:
    """Mean difference ``higher − lower`` (points), its 2-standard-error half width (``None`` with a single
    seed on either side) and the verdict; ``margin``: the one-seed margin (points)."""
    diff = 100 * (statistics.fmean(higher) - statistics.fmean(lower))
    if len(lower) >= 2 and len(higher) >= 2:
        se = 100 * math.sqrt(statistics.variance(lower) / len(lower) + statistics.variance(higher) / len(higher))
        verdict = "holds" if diff - 2 * se > 0 else "does not hold" if diff + 2 * se < 0 else "cannot tell"
        return diff, 2 * se, verdict
    if abs(diff) >= margin:
        return diff, None, ("holds" if diff > 0 else "does not hold") + " (1 seed)"
    return diff, None, f"cannot tell (within {margin_text(margin)}, 1 seed)"


def accuracies(rows: list[dict[str, Any]]) -> dict[Setting, list[float]]:
    """Test accuracy after fine-tuning of every seed of each setting."""
    found: dict[Setting, list[float]] = {}
    for s in rows:
        if s.get("acc_after") is not None:
            found.setdefault(row_key(s), []).append(float(s["acc_after"]))
    return found


def ordering_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every ordering both of whose settings were run: the two accuracies, the difference, TinyNN's."""
    accs = accuracies(rows)
    margin = one_seed_margin(accs)
    out = []
    for name, lower, higher in ORDERINGS:
        if lower in accs and higher in accs:
            diff, half, verdict = decide(accs[lower], accs[higher], margin)
            published = REFERENCE_WIDTH[higher] - REFERENCE_WIDTH[lower]
            out.append({"ordering": name, "lower": lower, "higher": higher, "diff": diff, "half_width": half,
                        "seeds": (len(accs[lower]), len(accs[higher])), "published": published, "verdict": verdict,
                        "margin": margin})
    return out


def orderings_section(rows: list[dict[str, Any]], baseline: str, epochs: int | None = None) -> list[str]:
    """The orderings table of one width table (runs from ``baseline``, ``epochs`` long); empty when no pair
    was run."""
    found = ordering_rows(rows)
    if not found:
        return []
    length = f", {epochs}-epoch runs" if epochs is not None else ""
    margin = found[0]["margin"]
    why = margin_text(margin) + (" (the largest change between the seeds of one setting in this table)"
                                 if margin > ONE_SEED_MARGIN else "")
    lines = [f"#### Orderings of TinyNeuralNetwork's table (runs from baseline `{baseline}`{length})", "",
             f"Difference = higher − lower setting, test accuracy in points. Verdict: mean ± 2 standard errors with "
             f"≥ 2 seeds on both sides; with one seed, a difference of at least {why} decides "
             "and a smaller one cannot tell. TinyNN: the same difference in their 224 px table.", "",
             "| ordering | lower | higher | ours (pp) | seeds | TinyNN (pp) | verdict |",
             "|---|---|---|---|---|---|---|"]
    for r in found:
        spread = "" if r["half_width"] is None else f" ± {r['half_width']:.2f}"
        lines.append(f"| {r['ordering']} | {setting_text(r['lower'])} | {setting_text(r['higher'])} "
                     f"| {r['diff']:+.2f}{spread} | {r['seeds'][0]} / {r['seeds'][1]} | {r['published']:+.2f} "
                     f"| {r['verdict']} |")
    return lines + [""]


def orderings_finding(rows: list[dict[str, Any]], baseline: str | None, baseline_acc: float | None = None,
                      epochs: int | None = None, claim: str | None = None) -> str:
    """The Findings row: how many orderings hold, do not hold, cannot tell; ``baseline_acc``: the baseline's
    test accuracy, ``epochs``: the runs' length, named beside it; ``claim``: the first cell (default: the
    published orderings)."""
    claim = claim or ("| TinyNeuralNetwork's width orderings (random < norm-based, distillation helps, iterative > "
                      "one-shot, HRank, BN-slimming)")
    found = ordering_rows(rows)
    if not found:
        return f"{claim} | not rerun under the per-stage protocol yet | cannot tell |"
    tally = {v: sum(r["verdict"].startswith(v) for r in found) for v in ("holds", "does not hold", "cannot tell")}
    name = Path(baseline).parent.parent.name if baseline else "?"
    acc = f", {100 * baseline_acc:.2f} %" if baseline_acc is not None else ""
    length = f", {epochs}-epoch runs" if epochs is not None else ""
    return (f"{claim} | {len(found)} of {len(ORDERINGS)} pairs run from one baseline (`{name}`{acc}){length} | "
            f"{tally['holds']} hold, {tally['does not hold']} do not, {tally['cannot tell']} cannot tell "
            "(see *Orderings*) |")
