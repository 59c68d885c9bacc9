"""Which runs belong together under the per-stage protocol: per dataset, image size and schedule, each
seed's depth run with its own baseline, the random-init run from that baseline and the same-budget control."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments.reports.reproduce import baseline_of, checkpoint_producer, run_config, run_seed


def schedule_span(summary: dict) -> str:
    """``stage`` (per-stage LR schedules) or ``fit`` (one schedule over the fit, the archived protocol)."""
    if summary.get("schedule_span"):
        return str(summary["schedule_span"])
    model = run_config(summary).get("model") if "_path" in summary else None
    return str(model.get("schedule_span", "fit")) if isinstance(model, dict) else "fit"


def dataset_of(summary: dict) -> str:
    """The dataset's name (``CIFAR10``, ``Imagenette`` …): the summary's, else its config's datamodule."""
    if summary.get("dataset"):
        return str(summary["dataset"])
    data = run_config(summary).get("data")
    class_path = data.get("class_path", "") if isinstance(data, dict) else ""
    return class_path.rsplit(".", 1)[-1].removesuffix("DataModule") or "?"


#: ``(baseline epochs, fine-tune epochs)`` of a depth run; ``None`` where its archived config does not say.
Schedule = tuple[int, int] | None


def schedule_of(summary: dict) -> Schedule:
    """``(baseline epochs, fine-tune epochs)`` of a depth run that trained its own baseline: the sweep starts
    where the baseline's schedule ends, and the cut net fine-tunes from ``prune.epoch`` to the run's end."""
    config = run_config(summary)
    start, cut = (config.get("sweep") or {}).get("start_epoch"), (config.get("prune") or {}).get("epoch")
    epochs = summary.get("epochs")
    if not all(isinstance(v, int) for v in (start, cut, epochs)) or epochs <= cut:
        return None
    return start, epochs - cut


def schedule_name(schedule: Schedule) -> str:
    """``10-epoch baseline, 5-epoch fine-tune`` (``""`` when unknown)."""
    return "" if schedule is None else f"{schedule[0]}-epoch baseline, {schedule[1]}-epoch fine-tune"


def paired_by_schedule(summaries: list[dict], dataset: str, image_size: int,
                       cut: int = 6) -> dict[Schedule, dict[int, dict[str, Any]]]:
    """Per schedule (:func:`schedule_of`), per seed: the depth run with its own baseline (``original``), the
    random-init run from that run's baseline checkpoint (``random``) and the same-budget control
    (``control``: ``train.py`` on the same network for baseline + fine-tune epochs), all under the
    per-stage protocol. Runs of different schedules never pair: a 30-epoch baseline's cut is no Δ against a
    10-epoch one's, and a 35-epoch control no control for a 10 + 5-epoch run."""
    mine = [s for s in summaries if schedule_span(s) == "stage" and dataset_of(s) == dataset
            and s.get("image_size") == image_size]
    originals: dict[int, list[dict]] = {}
    randoms, controls = [], []
    for s in mine:  # oldest first: the newest run of a kind, seed and schedule wins
        if run_seed(s) is None:
            continue
        if s.get("stage") == "depth_prune" and s.get("chosen_cut") == cut and len(s.get("stages", [])) <= 1:
            if s.get("init") == "original" and not s.get("baseline_ckpt"):
                originals.setdefault(run_seed(s), []).append(s)
            elif s.get("init") == "random":
                randoms.append(s)
        elif s.get("stage") == "baseline":
            controls.append(s)
    paired: dict[Schedule, dict[int, dict[str, Any]]] = {}
    schedule = {id(s): schedule_of(s) for runs in originals.values() for s in runs}  # read each config once
    for seed, runs in sorted(originals.items()):
        for s in runs:
            paired.setdefault(schedule[id(s)], {}).setdefault(seed, {})["original"] = s
    for s in randoms:  # under the schedule of the run whose baseline checkpoint it started from
        producer = checkpoint_producer(baseline_of(s))
        same_seed = originals.get(run_seed(s), [])
        source = [o for o in same_seed if producer and Path(o["_path"]).parent.name == producer[1]]
        schedules = {schedule[id(o)] for o in (source or same_seed)}
        if len(schedules) == 1:
            paired[schedules.pop()][run_seed(s)]["random"] = s
    for key, seeds in paired.items():
        for seed, runs in seeds.items():
            reference = runs.get("original", {}).get("baseline", {}).get("params")
            # the network the depth run started from (same parameter count), for baseline + fine-tune epochs
            mine_controls = [c for c in controls if run_seed(c) == seed
                             and (reference is None or c.get("params") == reference)
                             and (key is None or c.get("epochs") == sum(key))]
            if mine_controls:
                runs["control"] = mine_controls[-1]
    return paired


def main_schedule(by_schedule: dict[Schedule, dict[int, dict[str, Any]]]) -> Schedule:
    """The schedule the Findings read: the longest baseline among those run on at least two seeds (a verdict
    needs two), else the one with the most seeds."""
    if not by_schedule:
        return None
    seeded = [k for k, v in by_schedule.items() if len(v) >= 2]
    if seeded:
        return max(seeded, key=lambda k: (-1, -1) if k is None else k)
    return max(by_schedule, key=lambda k: len(by_schedule[k]))


def paired_runs(summaries: list[dict], dataset: str, image_size: int, cut: int = 6) -> dict[int, dict[str, Any]]:
    """The seeds of :func:`main_schedule` (see :func:`paired_by_schedule`)."""
    by_schedule = paired_by_schedule(summaries, dataset, image_size, cut)
    return by_schedule.get(main_schedule(by_schedule), {})
