"""Results under the per-stage protocol: seeds paired by their baseline, and the Findings lines.

Each seed's depth run trains its own baseline to the end of that baseline's LR schedule, reads it (test
accuracy of the checkpoint the sweep starts from), cuts and fine-tunes on a new schedule. The random-init
run of the same seed starts from that baseline checkpoint, and the same-budget control is the unpruned net
trained by ``train.py`` with the same seed for as many epochs as baseline + fine-tuning. Differences are
paired per seed (pruned − baseline of the same seed), so the spread between seeds' baselines cancels.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from callbacks.epoch_log import read_epochs
from experiments.reports.curves import loss_rises, rise_text
from experiments.reports.format import pct, points
from experiments.reports.pairing import (
    Schedule,
    dataset_of,
    main_schedule,
    paired_by_schedule,
    schedule_name,
    schedule_span,
)
from experiments.reports.reproduce import run_config
from experiments.reports.sweep_check import sweep_findings

#: Published replication of de Leon & Atienza (arXiv:2204.10546), MobileNetV1 cut after block 6, test
#: accuracy in % (224 px; 50 + 50 epochs of Adam 5e-4 in the replication's recipe).
PUBLISHED = {
    "CIFAR10": {"baseline": 89.73, "original": 88.80, "random": 88.68},
    "Imagenette": {"baseline": 76.50, "original": 81.15, "random": 78.17},
    "Imagewoof": {"baseline": 55.94, "original": 63.62, "random": 60.04},
}


def spread(values: list[float]) -> dict[str, float] | None:
    """Mean, sample standard deviation (0 for one value), min, max and count."""
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.mean(values), "std": std, "min": min(values), "max": max(values), "n": len(values)}


def fmt_spread(values: list[float | None], scale: float = 100.0, signed: bool = False) -> str:
    """``mean ± std (min–max, n seeds)`` in percent (points for differences); one value as it is."""
    s = spread([v for v in values if v is not None])
    if s is None:
        return "—"
    sign = "+" if signed else ""
    if s["n"] == 1:
        return f"{scale * s['mean']:{sign}.2f} (1 seed)"
    return (f"{scale * s['mean']:{sign}.2f} ± {scale * s['std']:.2f} ({scale * s['min']:{sign}.2f} to "
            f"{scale * s['max']:{sign}.2f}, {s['n']} seeds)")


def verdict(diffs: list[float], bound: float) -> str:
    """``holds`` when the paired differences stay above ``bound`` (in accuracy units) by two standard errors,
    ``does not`` when they stay below it by two, ``cannot tell`` in between or with fewer than two seeds."""
    if len(diffs) < 2:
        return "cannot tell (fewer than 2 seeds)"
    s = spread(diffs)
    sem = s["std"] / math.sqrt(s["n"])
    if s["mean"] - 2 * sem >= bound:
        return "holds"
    if s["mean"] + 2 * sem < bound:
        return "does not hold"
    return "cannot tell"


def _acc(summary: dict | None, key: str) -> float | None:
    if summary is None:
        return None
    if key == "baseline_test":
        return summary.get("baseline", {}).get("test_acc")
    if key == "baseline_val":
        return summary.get("baseline", {}).get("val_acc")
    if key == "pruned":
        return summary.get("pruned", {}).get("acc")
    return summary.get("metrics", {}).get("test/acc")


def cut_agreement(cuts: list[int | None]) -> str:
    """Whether the seeds' automatic cuts agree, in words (one seed: nothing to compare)."""
    if len(cuts) < 2:
        return "—"
    return "the same cut on every seed" if len(set(cuts)) == 1 else "cuts differ between seeds"


def difference(a: float | None, b: float | None) -> float | None:
    """``a − b``, or ``None`` when either is missing."""
    return None if a is None or b is None else a - b


def columns(seeds: dict[int, dict[str, Any]]) -> dict[str, list[float | None]]:
    """Per-seed accuracies and paired differences, in seed order."""
    cols: dict[str, list[float | None]] = {k: [] for k in (
        "baseline_val", "baseline_test", "original", "random", "control", "d_original", "d_random", "d_control",
        "d_random_original")}
    for runs in seeds.values():
        orig = runs.get("original")
        base = _acc(orig, "baseline_test")
        values = {"baseline_val": _acc(orig, "baseline_val"), "baseline_test": base,
                  "original": _acc(orig, "pruned"), "random": _acc(runs.get("random"), "pruned"),
                  "control": _acc(runs.get("control"), "control")}
        values |= {"d_original": difference(values["original"], base), "d_random": difference(values["random"], base),
                   "d_control": difference(values["original"], values["control"]),
                   "d_random_original": difference(values["random"], values["original"])}
        for key, value in values.items():
            cols[key].append(value)
    return cols


def paired_table(seeds: dict[int, dict[str, Any]]) -> list[str]:
    """One row per seed and a final row of mean ± std; accuracies in %, differences in points."""
    cols = columns(seeds)
    lines = ["| seed | baseline val % (rule) | baseline test % | cut@6 original % | Δ original (pp) "
             "| cut@6 random % | Δ random (pp) | same-budget control % | cut − control (pp) | runs |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for i, (seed, runs) in enumerate(seeds.items()):
        ids = ", ".join(f"{k} `{Path(runs[k]['_path']).parent.name}`" for k in ("original", "random", "control")
                        if k in runs)
        lines.append(f"| {seed} | {pct(cols['baseline_val'][i])} | {pct(cols['baseline_test'][i])} "
                     f"| {pct(cols['original'][i])} | {points(cols['d_original'][i])} "
                     f"| {pct(cols['random'][i])} | {points(cols['d_random'][i])} "
                     f"| {pct(cols['control'][i])} | {points(cols['d_control'][i])} | {ids} |")
    lines.append(f"| mean ± std | {fmt_spread(cols['baseline_val'])} | {fmt_spread(cols['baseline_test'])} "
                 f"| {fmt_spread(cols['original'])} | {fmt_spread(cols['d_original'], signed=True)} "
                 f"| {fmt_spread(cols['random'])} | {fmt_spread(cols['d_random'], signed=True)} "
                 f"| {fmt_spread(cols['control'])} | {fmt_spread(cols['d_control'], signed=True)} | |")
    return lines


#: Seed-to-seed range (max − min) of one accuracy column above which the report says so in words.
UNSTABLE_RANGE: float = 0.03
# a baseline has converged when training the unpruned net as long as baseline + fine-tuning gains less than this
CONVERGED_GAIN: float = 0.01

_COLUMN_RUNS = {"baseline_test": ("baseline", "original"), "original": ("cut@6 original", "original"),
                "random": ("cut@6 random", "random"), "control": ("same-budget control", "control")}


def spread_warnings(seeds: dict[int, dict[str, Any]], limit: float = UNSTABLE_RANGE) -> list[str]:
    """A sentence for every accuracy column whose seeds differ by more than ``limit``: the paired
    differences it enters are then dominated by the training recipe's seed variance."""
    cols = columns(seeds)
    lines = []
    for key, (label, role) in _COLUMN_RUNS.items():
        pairs = [(v, runs.get(role)) for v, runs in zip(cols[key], seeds.values(), strict=True) if v is not None]
        if len(pairs) < 2:
            continue
        values = [v for v, _ in pairs]
        if max(values) - min(values) > limit + 1e-9:  # 0.81 - 0.78 is 0.0300…03 in floats
            low = min(pairs, key=lambda p: p[0])
            folder = Path(low[1]["_path"]).parent if low[1] else None
            cause = ("whose per-epoch validation curve is in its W&B run" if folder is None
                     or not (folder / "epochs.csv").is_file() else unstable_text(folder / "epochs.csv"))
            lines.append(f"**Seed spread:** the {label} ranges over {100 * (max(values) - min(values)):.2f} points "
                         f"between seeds ({100 * min(values):.2f}–{100 * max(values):.2f} %; lowest: run "
                         f"`{folder.name if folder else '?'}`, {cause}). Differences that include this column "
                         "measure the recipe's seed variance as much as pruning.")
    return lines


def unstable_text(epochs_csv: Path) -> str:
    """What a run's learning curve says about its training: where its loss rose, if it did."""
    stretches = loss_rises(read_epochs(epochs_csv))
    if not stretches:
        return "whose training loss fell every epoch (learning curves below)"
    return (f"whose training loss rose above its earlier minimum in {'; '.join(rise_text(s) for s in stretches)}: "
            "the recipe lost ground it had gained on this seed (learning curves below)")


def selection_warning(seeds: dict[int, dict[str, Any]]) -> list[str]:
    """A sentence when the runs validated on the test split (no held-out part of train)."""
    runs = next(iter(seeds.values()), {})
    orig = runs.get("original")
    if orig is None:
        return []
    data = run_config(orig).get("data", {})
    fraction = (data.get("init_args") or data).get("val_fraction", 0.0) or 0.0
    if fraction > 0:
        return []
    return ["**Selection on the test split:** these runs validate on the test split (`val_fraction` 0), so the "
            "best checkpoint of each stage (and an automatic cut) is chosen on the images the table reports, "
            "a slightly optimistic figure; `--data.init_args.val_fraction 0.1` holds out a tenth of train instead."]


def sweep_recipe(summary: dict) -> str:
    """How the run's sweep trained its heads (``sweep.optimizer`` / ``sweep.lr`` of its config)."""
    from callbacks.auxiliary_sweep import AuxiliarySweep

    sweep, defaults = run_config(summary).get("sweep") or {}, AuxiliarySweep()  # a config without the keys ran the defaults
    optimizer = sweep.get("optimizer", defaults.optimizer)
    return "the model's optimiser" if optimizer is None else f"{optimizer} lr {sweep.get('lr', defaults.lr):g}"


def depth_schedule(summary: dict, head: bool = False) -> str:
    """The schedule a per-stage depth run followed, read from its archived config (``head``: name the
    sweep's head too)."""
    config = run_config(summary)
    sweep, prune, model = config.get("sweep", {}), config.get("prune", {}), config.get("model", {})
    start = sweep.get("start_epoch")
    heads = f" with head `{sweep.get('head')}`" if head else ""
    return (f"baseline epochs 0–{start - 1 if isinstance(start, int) else '?'} (own cosine schedule, "
            f"{model.get('optimizer')} lr {model.get('lr')}, warm-up {model.get('warmup_epochs')}), sweep "
            f"{sweep.get('epochs')} epoch(s){heads} (heads trained with {sweep_recipe(summary)}), cut at epoch {prune.get('epoch')}, fine-tune to epoch "
            f"{summary.get('epochs')} (new cosine schedule)")


def schedule_text(seeds: dict[int, dict[str, Any]]) -> str:
    """The schedule the runs followed, read from the first seed's configs."""
    runs = next(iter(seeds.values()), {})
    orig, control = runs.get("original"), runs.get("control")
    parts = []
    if orig is not None:
        parts.append(f"depth run: {depth_schedule(orig)}")
    if control is not None:
        parts.append(f"control: `train.py`, {control.get('epochs')} epochs, one cosine schedule")
    return "; ".join(parts)


def protocol_section(summaries: list[dict]) -> list[str]:
    """The paired tables, one per dataset and image size that has protocol runs."""
    keys = dict.fromkeys((dataset_of(s), s.get("image_size")) for s in summaries
                         if schedule_span(s) == "stage" and s.get("stage") == "depth_prune")
    lines: list[str] = []
    for dataset, size in keys:
        by_schedule = paired_by_schedule(summaries, dataset, size)
        main = main_schedule(by_schedule)
        for schedule, seeds in sorted(by_schedule.items(), key=lambda kv: (kv[0] != main, kv[0] or (0, 0))):
            lines += schedule_table(dataset, size, schedule, seeds, main=schedule == main and len(by_schedule) > 1)
    return lines


def schedule_table(dataset: str, size: int, schedule: Schedule, seeds: dict[int, dict[str, Any]],
                   main: bool = False) -> list[str]:
    """One schedule's paired table, its warnings and the published figures."""
    lines: list[str] = []
    if seeds:
        ref = PUBLISHED.get(dataset)
        name = f", {schedule_name(schedule)}" if schedule else ""
        lines += [f"### {dataset} @{size} px, cut after block 6, per-stage protocol{name}", "",
                  *([f"The Findings read this schedule ({'the longest baseline run on two seeds or more' if len(seeds) >= 2 else 'no schedule has two seeds yet: the one with the most'}).", ""]
                    if main else []),
                  f"Schedule — {schedule_text(seeds)}. Δ = pruned − the same seed's baseline, both on the test "
                  "split; the baseline is the checkpoint the sweep starts from (its schedule ended there). "
                  "\"baseline val\" is the figure the tolerance rule compares the sweep's heads with.", "",
                  *paired_table(seeds), ""]
        for warning in spread_warnings(seeds) + selection_warning(seeds):
            lines += [warning, ""]
        if ref:
            lines += [f"Published (224 px, the replication's 50 + 50 epochs): baseline {ref['baseline']:.2f} % → "
                      f"cut@6 original {ref['original']:.2f} % ({ref['original'] - ref['baseline']:+.2f} pp), "
                      f"random {ref['random']:.2f} % ({ref['random'] - ref['baseline']:+.2f} pp).", ""]
    return lines


def findings(summaries: list[dict], sweep_checks: list[dict] | None = None,
             width_lines: list[str] | None = None) -> list[str]:
    """One line per published claim: holds / does not hold / cannot tell, with our numbers; ``width_lines``:
    the width orderings' rows (:func:`~experiments.reports.orderings.orderings_finding`)."""
    lines = ["## Findings", "",
             "Each line tests a published claim against paired seeds under the per-stage protocol (verdict rule: "
             "the mean paired difference ± 2 standard errors against the bound named).", "",
             "| claim (published) | ours | verdict |", "|---|---|---|"]
    cifar, schedule = main_columns(summaries, "CIFAR10", 32)
    at = f"at 32 px{baseline_suffix(schedule)}"

    def present(key: str, cols: dict[str, list[float | None]]) -> list[float]:
        return [v for v in cols[key] if v is not None]

    def row(claim: str, values: list[float], at: str, bound: float, label: str = "",
            qualify: Callable[[str], str] = lambda text: text) -> str:
        ours = f"{label}{fmt_spread(values, signed=True)} pp {at}" if values else f"not run {at} yet"
        return f"| {claim} | {ours} | {qualify(verdict(values, bound))} |"

    premise, qualify = convergence_finding("CIFAR-10", cifar, 32, baseline_suffix(schedule))
    lines += [*premise,
              row("cut@6 ≈ baseline on CIFAR-10 (89.73 → 88.80 %, −0.93 pp at 224 px): loss ≤ 1 point",
                  present("d_original", cifar), at, -0.01, "Δ ", qualify),
              row("random init competitive (88.68 vs 88.80 %, −0.12 pp, trained from scratch as long as the 50-epoch "
                  "baseline): random − original ≥ −1 point",
                  present("d_random_original", cifar), at, -0.01, "random − original "),
              row("the gain is not just more epochs: cut@6 ≥ same-budget unpruned net − 1 point",
                  present("d_control", cifar), at, -0.01, "cut − control "),
              *other_baseline_rows(summaries, "CIFAR-10", "CIFAR10", 32)]
    for name in ("Imagenette", "Imagewoof"):
        cols, schedule = main_columns(summaries, name, 128)
        at = f"at 128 px{baseline_suffix(schedule)}"
        ref = PUBLISHED[name]
        premise, qualify = convergence_finding(name, cols, 128, baseline_suffix(schedule))
        lines += [*premise,
                  row(f"pruning raises accuracy on {name} ({ref['baseline']:.2f} → {ref['original']:.2f} %)",
                      present("d_original", cols), at, 0.0, "Δ ", qualify),
                  row(f"{name}: random init raises accuracy too ({ref['baseline']:.2f} → {ref['random']:.2f} %)",
                      present("d_random", cols), at, 0.0, "Δ random ", qualify),
                  row(f"{name}: the gain is not just more epochs: cut@6 ≥ the same-budget unpruned net",
                      present("d_control", cols), at, 0.0, "cut − control "),
                  *other_baseline_rows(summaries, name, name, 128)]
    lines += [*(width_lines or ["| TinyNeuralNetwork's width orderings (random < norm-based, distillation helps, "
                                "iterative > one-shot) | not rerun under the per-stage protocol yet | cannot tell |"]),
              *sweep_findings(sweep_checks or []), ""]
    return lines


#: The figures of a schedule other than the one the verdicts read.
OTHER_FIGURES: tuple[tuple[str, str], ...] = (("d_original", "Δ "), ("d_random", "Δ random "),
                                              ("d_control", "cut − control "))


def other_baseline_rows(summaries: list[dict], name: str, dataset: str, size: int) -> list[str]:
    """A row per schedule other than the one the verdicts read, with its figures and no verdict of its own.

    - A longer baseline not yet run on two seeds: a longer baseline can reverse a Δ read against a short
      one, and a reader should see that before the second seed lands.
    - A shorter baseline, once a longer one has two seeds: the verdicts have moved to the longer one, and
      the row keeps the earlier figures in view, with whether their baseline had converged.
    """
    by_schedule = paired_by_schedule(summaries, dataset, size)
    main = main_schedule(by_schedule)
    rows = []
    for schedule in sorted(k for k in by_schedule if k is not None and main is not None and k[0] != main[0]):
        cols = columns(by_schedule[schedule])
        seeds = len(by_schedule[schedule])
        gains = [c - b for c, b in zip(cols["control"], cols["baseline_test"], strict=True)
                 if c is not None and b is not None]
        parts = [f"baseline test {fmt_spread(cols['baseline_test'])} %",
                 *([f"control − baseline {fmt_spread(gains, signed=True)} pp"] if gains else []),
                 *(f"{label}{fmt_spread(values, signed=True)} pp" for key, label in OTHER_FIGURES
                   if (values := [v for v in cols[key] if v is not None]))]
        if schedule[0] > main[0]:
            where = "under a longer baseline"
            answer = f"cannot tell ({seeds} seed{'s' if seeds > 1 else ''}; a verdict needs 2)"
        else:
            converged = convergence_verdict(gains) if gains else "cannot tell"
            where = "under a shorter baseline"
            answer = (f"superseded by the {main[0]}-epoch baseline; this one "
                      + {"holds": "had converged", "does not hold": "had not converged"}.get(
                          converged, "was not shown to have converged"))
        rows.append(f"| {name} @{size} px, {schedule_name(schedule)} (the rows above, {where}) | "
                    f"{'; '.join(parts)} | {answer} |")
    return rows


def main_columns(summaries: list[dict], dataset: str, size: int) -> tuple[dict[str, list[float | None]], Schedule]:
    """The Findings' columns for one dataset and the schedule they were read from (its :func:`main_schedule`)."""
    by_schedule = paired_by_schedule(summaries, dataset, size)
    schedule = main_schedule(by_schedule)
    return columns(by_schedule.get(schedule, {})), schedule


def baseline_suffix(schedule: Schedule) -> str:
    """``, 10-epoch baseline, 5-epoch fine-tune`` (``""`` for a schedule the configs do not say): a random-init
    row trains the cut net from scratch for the fine-tune epochs alone, so a reader needs both."""
    return f", {schedule_name(schedule)}" if schedule else ""


def convergence_verdict(gains: list[float], bound: float = CONVERGED_GAIN) -> str:
    """Whether a baseline had converged, from the same-budget control's gain on it per seed: baseline −
    control ≥ −bound by two standard errors ("more epochs would not have helped the baseline")."""
    return verdict([-g for g in gains], -bound)


def convergence_finding(name: str, cols: dict[str, list[float | None]], image_size: int, schedule: str = "",
                        bound: float = CONVERGED_GAIN) -> tuple[list[str], Callable[[str], str]]:
    """The premise of every "pruned − baseline" verdict: the baseline had converged, i.e. the unpruned net
    trained as long as baseline + fine-tuning (the same-budget control) gains less than ``bound`` on it, per
    seed. Returns the Findings row (none without a depth run) and a function that qualifies a verdict drawn
    against a baseline shown not to have converged, or not shown to have."""
    claim = (f"| {name} @{image_size} px{schedule}: the baseline had converged (the premise of the Δ rows): the same-budget "
             f"unpruned net gains < {100 * bound:g} point on it")
    if not any(b is not None for b in cols["baseline_test"]):
        return [], lambda text: text
    gains = [c - b for c, b in zip(cols["control"], cols["baseline_test"], strict=True) if c is not None and b is not None]
    answer = convergence_verdict(gains, bound) if gains else "cannot tell (no same-budget control run)"
    ours = f"control − baseline {fmt_spread(gains, signed=True)} pp" if gains else "no same-budget control run yet"
    row = f"{claim} | {ours} | {answer} |"
    if answer == "holds":
        return [row], lambda text: text
    caveat = "but against a baseline that had not converged" if answer == "does not hold" else \
        "against a baseline not shown to have converged"
    return [row], lambda text: text if text.startswith("cannot tell") else f"{text}, {caveat}"
