"""The RESULTS section of ``experiments/sweep_check.py``: the one-run sweep beside one head per cut point."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

#: The one-run sweep's pre-registered bar: Spearman ρ against the per-point column.
RHO_BAR: float = 0.9

_COLUMN_TITLES = {"per_point": "per point (one head per fit)", "one_run": "one run (all heads in one fit)",
                  "default_sweep": "one run, depth_prune.py's default sweep",
                  "depth_run_sweep": "the depth run's sweep"}


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def _rho(value: float | None) -> str:
    return "— (a constant column)" if value is None else f"{value:.3f}"


def sweep_check_table(result: dict[str, Any]) -> list[str]:
    """One row per cut point: each column's accuracy and the per-point head's last-epoch change; then
    the rank correlations and the rules' choices."""
    names = list(result["columns"])
    lines = ["| cut | params | " + " | ".join(f"{column_title(n)} %" for n in names)
             + " | per-point last-epoch change (pp) |", "|---" * (len(names) + 3) + "|"]
    for cut in sorted(result["columns"]["per_point"], key=int):
        change = result["last_epoch_change"].get(cut)
        cells = " | ".join(_pct(result["columns"][n].get(cut)) for n in names)
        lines.append(f"| {cut} | {result['costs'][cut]['params']:,} | {cells} | "
                     f"{'—' if change is None else f'{100 * change:+.2f}'} |")
    lines += ["", "| column | Spearman ρ vs per point | tolerance rule → cut | knee rule → cut |", "|---|---|---|---|"]
    for n in names:
        rules = result["rules"][n]
        lines.append(f"| {column_title(n)} | {_rho(result['spearman_vs_per_point'][n])} | "
                     f"{rules['tolerance']} | {rules['knee']} |")
    return lines


def discordant_pairs(reference: dict[str, float], other: dict[str, float]) -> list[tuple[str, str, float]]:
    """Pairs of cut points that ``other`` orders differently from ``reference`` (a tie in one and not the
    other counts), each with the reference column's accuracy gap between the two."""
    common = sorted(set(reference) & set(other), key=int)
    return [(i, j, abs(reference[i] - reference[j])) for i, j in itertools.combinations(common, 2)
            if (reference[i] > reference[j]) != (other[i] > other[j])
            or (reference[i] == reference[j]) != (other[i] == other[j])]


def where_text(result: dict[str, Any], name: str) -> str:
    """Where a column's ranking departs from the per-point column's, in words."""
    pairs = discordant_pairs(result["columns"]["per_point"], result["columns"][name])
    n = len(result["columns"]["per_point"])
    if not pairs:
        return f"orders all {n * (n - 1) // 2} pairs of cut points as the per-point heads do"
    cuts = sorted({c for i, j, _ in pairs for c in (i, j)}, key=int)
    return (f"orders {len(pairs)} of {n * (n - 1) // 2} pairs of cut points differently, all among cuts "
            f"{', '.join(cuts)}, where the per-point heads are at most {100 * max(g for *_, g in pairs):.2f} pp apart")


def knee_margin_text(result: dict[str, Any], name: str) -> str | None:
    """Where a column's knee differs from the per-point heads': how far above the chord the per-point
    column puts both cuts (:func:`~lightning_modules.pruning.depth_cut.knee_distances`), i.e. how clear
    the per-point knee itself is. ``None`` where the knees agree."""
    from lightning_modules.pruning.depth_cut import CutPoint, knee_distances, pareto_front

    ours, theirs = result["rules"]["per_point"]["knee"], result["rules"][name]["knee"]
    if ours == theirs:
        return None
    costs = result["costs"]
    rows = [CutPoint(cut=int(k), params=costs[k]["params"], macs=costs[k]["macs"], acc=a)
            for k, a in result["columns"]["per_point"].items()]
    dists = knee_distances(pareto_front(rows))

    def where(cut: int) -> str:
        return f"{dists[cut]:.3f} above the chord" if cut in dists else "off the knee's front"

    return (f"its knee is cut {theirs}, the per-point heads' cut {ours}: on the per-point column cut {ours} lies "
            f"{where(ours)} and cut {theirs} {where(theirs)}")


def baseline_identity(check: dict[str, Any]) -> tuple:
    """Which network a check measured: its path and validation accuracy (a baseline retrained under one path
    is another network), or its weights digest where it has one."""
    acc = check.get("baseline_val_acc")
    return (check.get("baseline_ckpt"), None if acc is None else round(float(acc), 6),
            check.get("baseline_weights_sha256"))


def _protocol(check: dict[str, Any]) -> tuple:
    return (baseline_identity(check),
            *(check.get(k) for k in ("epochs", "lr", "head", "train_subset", "optimizer")))


def seed_repeats(checks: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pairs of checks of the same baseline and recipe that differ only in seed: the per-point protocol
    measured against itself."""
    return [(a, b) for a, b in itertools.combinations(checks, 2)
            if _protocol(a) == _protocol(b) and a.get("seed") != b.get("seed")]


def head_noise(checks: list[dict[str, Any]]) -> float | None:
    """The largest change of one cut point's per-point accuracy between seeds of the same baseline and
    recipe (``None`` without such a repeat)."""
    gaps = [abs(a["columns"]["per_point"][k] - b["columns"]["per_point"][k]) for a, b in seed_repeats(checks)
            for k in set(a["columns"]["per_point"]) & set(b["columns"]["per_point"])]
    return max(gaps) if gaps else None


def repeat_text(checks: list[dict[str, Any]]) -> list[str]:
    """The per-point protocol against itself (another seed, same baseline): its rank correlation, its cuts."""
    from experiments.sweep_check import rank_correlation

    lines = []
    for a, b in seed_repeats(checks):
        pa, pb = a["columns"]["per_point"], b["columns"]["per_point"]
        rho = rank_correlation({int(k): v for k, v in pa.items()}, {int(k): v for k, v in pb.items()})
        ra, rb = a["rules"]["per_point"], b["rules"]["per_point"]
        lines.append(f"**The per-point heads against themselves** (`{a['_name']}` seed {a['seed']} vs `{b['_name']}` "
                     f"seed {b['seed']}, same baseline and recipe): Spearman ρ {_rho(rho)}; tolerance rule {ra['tolerance']} "
                     f"vs {rb['tolerance']}, knee {ra['knee']} vs {rb['knee']}; the largest change of one cut point's "
                     f"accuracy {100 * head_noise([a, b]):.2f} pp. Seed {b['seed']} {where_text({'columns': {'per_point': pa, 'x': pb}}, 'x')}.")
    return lines


def sweep_findings(checks: list[dict[str, Any]]) -> list[str]:
    """The Findings rows of the one-run sweep against per-point heads: the pre-registered bar (ρ ≥ 0.9 and
    the same cuts), and the same question asked only of the pairs that the per-point heads separate by more
    than their own seed-to-seed change (a plateau of near-equal cut points ranks at random in any protocol)."""
    claim = (f"| our one-run sweep ranks cut points like the paper's per-point heads: Spearman ρ ≥ {RHO_BAR} and "
             "both rules choose the same cut")
    if not checks:
        return [f"{claim} | not measured yet | cannot tell |"]
    baselines = len({baseline_identity(c) for c in checks})
    parts, ok, beyond, same_all = [], [], [], []
    from experiments.reports.sweep_reference import converged_findings

    noise = head_noise(checks)
    for check in checks:
        rho = check["spearman_vs_per_point"]["one_run"]
        rules, per_point = check["rules"]["one_run"], check["rules"]["per_point"]
        same = all(rules[r] == per_point[r] for r in ("tolerance", "knee"))
        ok.append(rho is not None and rho >= RHO_BAR and same)
        same_all.append(same)
        parts.append(f"`{check['_name']}`: ρ {'—' if rho is None else f'{rho:.3f}'}; tolerance {rules['tolerance']} "
                     f"vs {per_point['tolerance']}, knee {rules['knee']} vs {per_point['knee']}")
        if noise is not None:
            beyond.append(sum(g > noise for *_, g in discordant_pairs(check["columns"]["per_point"],
                                                                    check["columns"]["one_run"])))
    n = f"{baselines} baseline{'s' if baselines > 1 else ''}, {checks[0]['epochs']} epochs"
    rows = [f"{claim} | {'; '.join(parts)} ({n}) | {'holds' if all(ok) else 'does not hold'} |"]
    rows += default_sweep_findings(checks) + converged_findings(checks)
    second = ("| the same, only for pairs of cut points the per-point heads separate by more than their own "
              "seed-to-seed change (asked after the first check: its disagreements were all on a plateau)")
    if noise is None:
        rows.append(f"{second} | no seed repeat of the per-point heads yet | cannot tell |")
    else:
        rows.append(f"{second} | change {100 * noise:.2f} pp; pairs beyond it ordered differently: "
                    f"{', '.join(map(str, beyond))} ({n}); rules as above "
                    f"| {'holds' if not any(beyond) and all(same_all) else 'does not hold'} |")
    return rows


#: Epochs of the sweep the depth configs run (``sweep.epochs``): a default-sweep check of this length is
#: *the* default sweep, one of another length a variant beside it.
DEFAULT_SWEEP_EPOCHS: int = 1  # AuxiliarySweep's default and every committed depth config's sweep.epochs


def column_title(name: str) -> str:
    """A column's heading (``sweep_2_epochs`` → the default sweep's optimiser for 2 epochs;
    ``sweep_8_epochs_lr0.01`` → that optimiser at learning rate 0.01 for 8 epochs)."""
    if name.startswith("sweep_") and name.endswith("_epochs"):
        return f"one run, the default's optimiser for {name.split('_')[1]} epochs"
    if name.startswith("sweep_") and "_epochs_lr" in name:
        epochs, lr = name.removeprefix("sweep_").split("_epochs_lr")
        return f"one run, the default's optimiser at lr {lr} for {epochs} epoch{'s' if epochs != '1' else ''}"
    return _COLUMN_TITLES.get(name, name)


def merge_default_sweeps(checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A check that measured only a default-optimiser sweep against an earlier check's heads
    (``per_point_from``) becomes a column of that check (its Spearman ρ, its rules' cuts, its command), so
    the per-point heads are counted once: ``default_sweep`` at the depth configs' length, else
    ``sweep_<n>_epochs``; ``sweep_<n>_epochs_lr<lr>`` at another learning rate than the sweep's own."""
    from callbacks.auxiliary_sweep import AuxiliarySweep
    from experiments.sweep_check import same_baseline

    by_name = {c["_name"]: c for c in checks}
    merged = [c for c in checks if not c.get("per_point_from")]
    for extra in sorted((c for c in checks if c.get("per_point_from")), key=lambda c: int(c["default_sweep"]["epochs"])):
        earlier = by_name.get(Path(extra["per_point_from"]).stem)
        if earlier is None:
            raise FileNotFoundError(f"{extra['_name']}.json reuses {extra['per_point_from']}, which is not among the checks")
        if not same_baseline(earlier, extra):
            raise ValueError(f"{extra['_name']}.json reuses {extra['per_point_from']} but measured another baseline "
                             f"(validation accuracy {100 * extra['baseline_val_acc']:.2f} %, there "
                             f"{100 * earlier['baseline_val_acc']:.2f} %): its column would stand beside heads of "
                             "another network")
        epochs, lr = int(extra["default_sweep"]["epochs"]), float(extra["default_sweep"]["lr"])
        column = (f"sweep_{epochs}_epochs_lr{lr:g}" if lr != AuxiliarySweep().lr  # a candidate default rate
                  else "default_sweep" if epochs == DEFAULT_SWEEP_EPOCHS else f"sweep_{epochs}_epochs")
        for key in ("columns", "spearman_vs_per_point", "rules"):
            earlier[key] = {**earlier[key], column: extra[key]["default_sweep"]}
        earlier.setdefault("sweep_variants", {})[column] = {
            **extra["default_sweep"], "command": extra["command"], "wall_time_s": extra["wall_time_s"],
            "_name": extra["_name"]}
    return merged


def default_sweep_findings(checks: list[dict[str, Any]]) -> list[str]:
    """The Findings row of the sweep that ``depth_prune.py`` runs by default, where it was measured: the same
    bar (ρ ≥ 0.9 and both rules on the per-point heads' cut), beside what the depth runs' own sweeps chose."""
    from experiments.reports.sweep_reference import reference_gap

    measured = [c for c in checks if "default_sweep" in c["columns"]]
    if not measured:
        return []
    recipe = measured[0]["sweep_variants"]["default_sweep"]
    parts, ok = [], []
    for check in measured:
        rho = check["spearman_vs_per_point"]["default_sweep"]
        rules, per_point = check["rules"]["default_sweep"], check["rules"]["per_point"]
        ok.append(rho is not None and rho >= RHO_BAR and all(rules[r] == per_point[r] for r in ("tolerance", "knee")))
        earlier = check["rules"].get("depth_run_sweep")
        before = f" (the depth run's own sweep: tolerance {earlier['tolerance']}, knee {earlier['knee']})" if earlier else ""
        parts.append(f"`{check['_name']}`: ρ {'—' if rho is None else f'{rho:.3f}'}; tolerance {rules['tolerance']} vs "
                     f"{per_point['tolerance']}, knee {rules['knee']} vs {per_point['knee']}{before}")
    gaps = [g for c in measured if (g := reference_gap(c)) is not None and g[2] > 0]
    caveat = (f"; but a longer sweep beats these per-point heads by up to {100 * max(g[2] for g in gaps):.2f} pp: "
              "the reference had not converged" if gaps else "")
    return [f"| the same for the sweep `depth_prune.py` runs by default ({recipe['optimizer']} lr {recipe['lr']:g}, "
            f"{recipe['epochs']} epoch(s) on the whole split) | {'; '.join(parts)}{caveat} | "
            f"{'holds' if all(ok) else 'does not hold'} |"]


def sweep_checks(runs_dir: str | Path = "docs/runs") -> list[dict[str, Any]]:
    """Every ``sweep_check_*.json`` under ``runs_dir``, with its file stem as ``_name`` (a default-sweep
    check merged into the check whose heads it reused)."""
    return merge_default_sweeps([{**json.loads(p.read_text()), "_name": p.stem}
                                 for p in sorted(Path(runs_dir).glob("sweep_check_*.json"))])


def default_sweep_text(result: dict[str, Any]) -> list[str]:
    """How the default-optimiser sweep columns were measured (nothing without one)."""
    lines = []
    for column, extra in sorted(result.get("sweep_variants", {}).items(), key=lambda item: int(item[1]["epochs"])):
        what = ("the sweep as `depth_prune.py` trains it unless told otherwise" if column == "default_sweep" else
                "the same sweep at a candidate learning rate" if "_lr" in column else "the same sweep for longer")
        lines += [f"The column *{column_title(column)}* is {what}: all heads in one fit, {extra['optimizer']} lr "
                  f"{extra['lr']:g}, {extra['epochs']} epoch(s) on the whole training split, from the same baseline "
                  f"({extra['wall_time_s'] / 60:.1f} min):", "", f"`uv run {extra['command'].removeprefix('python ')}`", ""]
    return lines


def namesake_text(result: dict[str, Any], checks: list[dict[str, Any]]) -> list[str]:
    """A warning where another check names the same checkpoint path but measured another network (a baseline
    retrained under one path): their columns are not comparable across sections."""
    others = [c for c in checks if c["baseline_ckpt"] == result["baseline_ckpt"]
              and baseline_identity(c) != baseline_identity(result)]
    if not others:
        return []
    names = ", ".join(f"`{c['_name']}` ({_pct(c['baseline_val_acc'])} %)" for c in others)
    return [f"**Another network under the same path.** {names} measured a different file at "
            f"`{result['baseline_ckpt']}` (that run's command rerun, which gives other weights on another machine; "
            "see *What is bit-identical*): compare columns within a section, not across these.", ""]


def sweep_check_sections(runs_dir: str | Path = "docs/runs") -> list[str]:
    """A section per ``sweep_check_*.json`` under ``runs_dir`` (none: nothing)."""
    from experiments.reports.sweep_reference import reference_gap_text, reference_text

    lines: list[str] = []
    checks = sweep_checks(runs_dir)
    for result in checks:
        subset = result.get("train_subset") or "all"
        lines += [f"### One-run sweep vs one head per cut point ({result['_name']})", "",
                  f"`uv run {result['command'].removeprefix('python ')}`", "",
                  f"From `{result['baseline_ckpt']}` (validation accuracy {_pct(result['baseline_val_acc'])} %): "
                  f"heads `{result['head']}`, {result['optimizer']} lr {result['lr']:g}, {result['epochs']} epochs, "
                  f"{subset} training images per epoch, seed {result['seed']}, frozen base; "
                  f"{result['wall_time_s'] / 60:.1f} min. The depth run's sweep column is that run's own sweep "
                  "stage (the optimiser and epochs of its config; the archived MobileNetV1 runs trained their heads "
                  "with the model's SGD at 0.1 for 1 epoch).", "",
                  *namesake_text(result, checks),
                  *default_sweep_text(result),
                  *sweep_check_table(result), "",
                  *(f"- {column_title(n)}: {where_text(result, n)}"
                    + (f"; {knee}." if (knee := knee_margin_text(result, n)) else ".")
                    for n in result["columns"] if n != "per_point"),
                  *([f"- {gap}."] if (gap := reference_gap_text(result)) else []),
                  *([f"- {ref}."] if (ref := reference_text(result)) else []), ""]
    for line in repeat_text(checks):
        lines += [line, ""]
    return lines
