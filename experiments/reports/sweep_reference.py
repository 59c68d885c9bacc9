"""Converged heads as the one-run sweep's reference: the longest sweep of one learning rate, once a sweep of
half its epochs at that rate is within a point of it at every cut point.

On a frozen base one fit trains each head exactly as a fit of that head alone would
(``test_heads_trained_in_one_fit_end_where_each_trained_alone_ends``), so a one-run sweep trained until
doubling its epochs no longer moves any cut point is the paper's per-point protocol run to convergence, at
the cost of one run. Each learning rate is its own family of lengths: a faster rate reaches the plateau in
fewer epochs, and only lengths at one rate show whether more training still moves a head.
"""

from __future__ import annotations

from typing import Any

from experiments.reports.sweep_check import DEFAULT_SWEEP_EPOCHS, RHO_BAR, _rho, column_title

#: Halving the longest one-run sweep's epochs must change every cut point's accuracy by less than this before
#: that sweep stands as converged heads.
CONVERGED_CHANGE: float = 0.01


def sweep_families(result: dict[str, Any]) -> dict[str | None, list[tuple[int, str]]]:
    """The one-run sweeps on the whole split by learning rate, each as ``(epochs, column)`` shortest first:
    ``None`` for the default's rate (``default_sweep``, ``sweep_<n>_epochs``), else the candidate rate as
    written in its columns (``sweep_<n>_epochs_lr<lr>``)."""
    families: dict[str | None, list[tuple[int, str]]] = {}
    for name in result["columns"]:
        if name == "default_sweep":
            families.setdefault(None, []).append((DEFAULT_SWEEP_EPOCHS, name))
        elif name.startswith("sweep_") and name.endswith("_epochs"):
            families.setdefault(None, []).append((int(name.split("_")[1]), name))
        elif name.startswith("sweep_") and "_epochs_lr" in name:
            epochs, lr = name.removeprefix("sweep_").split("_epochs_lr")
            families.setdefault(lr, []).append((int(epochs), name))
    return {lr: sorted(lengths) for lr, lengths in families.items()}


def sweep_lengths(result: dict[str, Any]) -> list[tuple[int, str]]:
    """The one-run sweeps with the default's optimiser and rate on the whole split, shortest first."""
    return sweep_families(result).get(None, [])


def _halving_pair(lengths: list[tuple[int, str]]) -> tuple[tuple[int, str], tuple[int, str]] | None:
    """A family's longest sweep and the longest of half its epochs or fewer, as ``((epochs, column), (epochs,
    column))``; ``None`` without such a shorter sweep."""
    long_n, _ = lengths[-1]
    halves = [(n, name) for n, name in lengths if 2 * n <= long_n]
    return (halves[-1], lengths[-1]) if halves else None


def _family_step(result: dict[str, Any], lr: str | None, lengths: list[tuple[int, str]]) -> tuple[float, str, str] | None:
    """The step from the longest sweep of half the family's longest epochs or fewer to that longest one, as
    ``(largest change at any cut point, evidence in words, longest column)``; ``None`` without such a pair."""
    pair = _halving_pair(lengths)
    if pair is None:
        return None
    (short_n, short), (long_n, longest) = pair
    a, b = result["columns"][short], result["columns"][longest]
    cut, change = max(((k, abs(b[k] - a[k])) for k in b if k in a), key=lambda item: item[1])
    rate = "" if lr is None else f"at lr {lr}, "
    return change, f"{rate}{short_n} → {long_n} epochs moves cut {cut} by {100 * change:.2f} pp, the most of any cut point", longest


def converged_reference(result: dict[str, Any], bound: float = CONVERGED_CHANGE) -> tuple[str | None, str]:
    """The converged heads' column (``None``: none yet) and the evidence in words. Among the learning rates
    whose halving step moved every cut point by under ``bound``, the default's rate first, then the rate with
    the longest sweep; without one, the evidence of every rate that measured a halving step."""
    families = sweep_families(result)
    steps = [(lr, step) for lr, lengths in families.items() if (step := _family_step(result, lr, lengths)) is not None]
    if not steps:
        return None, "no sweep of at most half the longest one's epochs measured"
    settled = [(lr, step) for lr, step in steps if step[0] < bound]
    if not settled:
        return None, "; ".join(step[1] for _, step in steps)
    lr, (_, evidence, longest) = min(settled, key=lambda item: (item[0] is not None, -families[item[0]][-1][0]))
    return longest, evidence


def against_reference(result: dict[str, Any], reference: str) -> dict[str, float | None]:
    """Every column's Spearman ρ against the ``reference`` column."""
    from experiments.sweep_check import rank_correlation

    ref = {int(k): v for k, v in result["columns"][reference].items()}
    return {name: rank_correlation({int(k): v for k, v in col.items()}, ref) for name, col in result["columns"].items()}


def _by_length(result: dict[str, Any]) -> str:
    """The rules' cuts by sweep length, per learning rate measured at two lengths or more."""
    parts = []
    for lr, lengths in sweep_families(result).items():
        if len(lengths) < 2:
            continue
        cuts = "; ".join(f"{n} epoch{'s' if n > 1 else ''}: tolerance {result['rules'][c]['tolerance']}, knee "
                         f"{result['rules'][c]['knee']}" for n, c in lengths)
        parts.append(cuts if lr is None else f"at lr {lr}, {cuts}")
    return "; ".join(parts)


def reference_text(result: dict[str, Any]) -> str | None:
    """The section's line on the converged reference: its evidence, every column's ρ and cuts against it."""
    if not any(len(lengths) >= 2 for lengths in sweep_families(result).values()):
        return None
    reference, evidence = converged_reference(result)
    if reference is None:
        return (f"No column stands as converged heads yet: {evidence} (the bar: under {100 * CONVERGED_CHANGE:g} pp). "
                f"The rules' cuts by sweep length: {_by_length(result)}")
    rules = result["rules"][reference]
    others = "; ".join(f"{column_title(n)} ρ {_rho(rho)}, cuts {result['rules'][n]['tolerance']} / "
                       f"{result['rules'][n]['knee']}" for n, rho in against_reference(result, reference).items()
                       if n != reference)
    return (f"*{column_title(reference)}* stands as converged heads ({evidence}; one fit trains each head as its own "
            f"fit would): tolerance rule cut {rules['tolerance']}, knee cut {rules['knee']}. Against it: {others}")


def converged_findings(checks: list[dict[str, Any]]) -> list[str]:
    """The Findings row of the default sweep against converged heads, where a check measured one learning
    rate at two lengths or more; checks without a converged reference are listed but decide nothing."""
    measured = [c for c in checks if "default_sweep" in c["columns"]
                and any(len(lengths) >= 2 for lengths in sweep_families(c).values())]
    if not measured:
        return []
    parts, answers = [], []
    for check in measured:
        reference, evidence = converged_reference(check)
        if reference is None:
            parts.append(f"`{check['_name']}`: no converged reference ({evidence}){settled_cuts_text(check)}")
            answers.append(None)
            continue
        rho = against_reference(check, reference)["default_sweep"]
        ours, theirs = check["rules"]["default_sweep"], check["rules"][reference]
        answers.append(rho is not None and rho >= RHO_BAR and all(ours[r] == theirs[r] for r in ("tolerance", "knee")))
        parts.append(f"`{check['_name']}`: ρ {_rho(rho)} against {column_title(reference)} ({evidence}); tolerance "
                     f"{ours['tolerance']} vs {theirs['tolerance']}, knee {ours['knee']} vs {theirs['knee']}")
    judged = [a for a in answers if a is not None]  # checks without a converged reference decide nothing
    verdict = "cannot tell (no converged reference)" if not judged else "holds" if all(judged) else "does not hold"
    return [f"| the sweep `depth_prune.py` runs by default ranks cut points like converged heads (the longest one-run "
            f"sweep of one learning rate, once a sweep of half its epochs or fewer at that rate is within "
            f"{100 * CONVERGED_CHANGE:g} point of it at every cut point; one fit trains each head exactly as its own "
            f"fit would): Spearman ρ ≥ {RHO_BAR} and both rules choose the same cut | {'; '.join(parts)} | {verdict} |"]


def settled_cuts_text(result: dict[str, Any]) -> str:
    """Where no sweep stands as converged heads: the rates whose halving step left both rules' cuts where
    they were (accuracies still moving, the decision not), beside the default's cuts; empty where none."""
    parts = []
    for lr, lengths in sweep_families(result).items():
        pair = _halving_pair(lengths)
        if pair is None:
            continue
        (short_n, short), (long_n, longest) = pair
        a, b = result["rules"][short], result["rules"][longest]
        if all(a[r] == b[r] for r in ("tolerance", "knee")):
            rate = "" if lr is None else f" at lr {lr}"
            parts.append(f"{short_n} and {long_n} epochs{rate} choose the same cuts, tolerance {b['tolerance']} and "
                         f"knee {b['knee']}")
    if not parts:
        return ""
    ours = result["rules"].get("default_sweep")
    default = f"; the default: tolerance {ours['tolerance']}, knee {ours['knee']}" if ours else ""
    return f"; but {'; '.join(parts)}{default}"


def reference_gap(result: dict[str, Any]) -> tuple[str, str, float] | None:
    """The largest lead over the per-point heads of any one-run sweep but the default, at any rate or length, as
    ``(column, cut, lead)``: heads trained in one run for longer beating the reference means the reference
    had not converged there (a cosine schedule ends flat, whatever the heads have learnt)."""
    per_point = result["columns"]["per_point"]
    longer = [name for lengths in sweep_families(result).values() for _, name in lengths if name != "default_sweep"]
    leads = [(name, cut, result["columns"][name][cut] - per_point[cut]) for name in longer
             for cut in result["columns"][name] if cut in per_point]
    return max(leads, key=lambda lead: lead[2]) if leads else None


def reference_gap_text(result: dict[str, Any]) -> str | None:
    """:func:`reference_gap` in words (``None`` without a longer sweep, or where it leads by nothing)."""
    gap = reference_gap(result)
    if gap is None or gap[2] <= 0:
        return None
    name, cut, lead = gap
    return (f"*{column_title(name)}* beats the per-point heads by up to {100 * lead:.2f} pp (cut {cut}): the "
            "per-point heads had not converged there, flat last epoch or not")
