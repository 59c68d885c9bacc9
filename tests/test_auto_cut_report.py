"""The automatic-cut results: each rule-chosen cut paired with the baseline it started from and with that
seed's fixed cut after block 6; runs of another seed, a fixed block, or another recipe are kept apart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.reports import results as report
from experiments.reports.auto_cut import auto_cut_groups, auto_cut_section


def write_run(root: Path, run_id: str, summary: dict, config: dict) -> None:
    folder = root / "tinyml-pruning" / run_id
    folder.mkdir(parents=True)
    base = {"schedule_span": "stage", "dataset": "CIFAR10", "image_size": 32, "params": 100, "macs": 100,
            "arch": {"num_blocks": 13}, "data_root": "cifar10-jpg.tar.gz", "stage": "depth_prune", "init": "original"}
    (folder / "summary.json").write_text(json.dumps(base | summary))
    (folder / "config.yaml").write_text(json.dumps(config))  # YAML is a superset of JSON


def fixed(seed: int, base: float, at6: float) -> dict:
    return {"seed": seed, "chosen_cut": 6, "baseline_ckpt": None, "epochs": 16,
            "baseline": {"test_acc": base, "val_acc": base, "params": 1000}, "pruned": {"acc": at6, "params": 100}}


def auto(seed: int, producer: str, cut: int, acc: float) -> dict:
    return {"seed": seed, "chosen_cut": cut, "epochs": 6,
            "baseline_ckpt": f"logs/tinyml-pruning/{producer}/checkpoints/baseline.ckpt",
            "baseline": {"test_acc": None, "val_acc": 0.7, "params": 1000}, "pruned": {"acc": acc, "params": 250}}


def config(block: int | None, rule: str = "tolerance", optimizer: str | None = "adam") -> dict:
    return {"prune": {"block": block, "rule": rule, "tolerance": 0.01},
            "sweep": {"epochs": 1, "optimizer": optimizer, "lr": 0.001}}


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    logs = tmp_path / "logs"
    for seed, (b, at6, cut) in enumerate([(0.74, 0.775, 0.77), (0.76, 0.786, 0.79)]):
        write_run(logs, f"p32s{seed}", fixed(seed, b, at6), config(6))
        write_run(logs, f"atol32s{seed}", auto(seed, f"p32s{seed}", 7, cut), config(None))
    write_run(logs, "aknee32s0", auto(0, "p32s0", 4, 0.70), config(None, "knee"))
    write_run(logs, "oldsweep", auto(0, "p32s0", 12, 0.78), config(None, optimizer=None))  # another recipe
    write_run(logs, "otherseed", auto(5, "p32s0", 7, 0.70), config(None))  # not the baseline's seed
    write_run(logs, "fixedfrom", auto(0, "p32s0", 6, 0.70), config(6))  # an explicit block: no rule
    return logs


def test_rule_chosen_cuts_pair_with_the_baseline_they_started_from(runs: Path) -> None:
    groups = auto_cut_groups(report.load_summaries(runs))
    assert list(groups) == [("CIFAR10", 32, "knee", "adam lr 0.001"), ("CIFAR10", 32, "tolerance 1 pt", "adam lr 0.001"),
                            ("CIFAR10", 32, "tolerance 1 pt", "the model's optimiser")]
    seeds = groups[("CIFAR10", 32, "tolerance 1 pt", "adam lr 0.001")]
    assert {seed: {k: Path(s["_path"]).parent.name for k, s in r.items()} for seed, r in seeds.items()} == {
        0: {"auto": "atol32s0", "fixed": "p32s0"}, 1: {"auto": "atol32s1", "fixed": "p32s1"}}


def test_the_table_gives_paired_differences_against_the_baseline_and_cut6(runs: Path) -> None:
    section = auto_cut_section(report.load_summaries(runs))
    start = section.index("### CIFAR10 @32 px, automatic cut (tolerance 1 pt), per-stage protocol")
    rows = [line for line in section[start:start + 12] if line.startswith("| ")]
    # the baseline test accuracy comes from the run that trained it when the auto run has none
    assert rows[1].startswith("| 0 | 74.00 | 7 | 250 (25.0 %) | 77.00 | +3.00 | 77.50 | -0.50 |")
    assert rows[2].startswith("| 1 | 76.00 | 7 | 250 (25.0 %) | 79.00 | +3.00 | 78.60 | +0.40 |")
    assert rows[3].startswith("| mean ± std | 75.00 ± 1.41") and "the same cut on every seed" in rows[3]
    assert "+3.00 ± 0.00" in rows[3]
    assert "heads trained with adam lr 0.001" in section[start + 2] and "fine-tuning for 5 epoch(s)" in section[start + 2]


def test_depth_then_width_runs_pair_per_seed_and_whole_fit_runs_stay_apart(tmp_path: Path) -> None:
    from experiments.reports.combined import combined_section

    logs = tmp_path / "logs"
    stages = [{"stage": "depth", "cut": 6, "params": 300, "val_acc": 0.60},
              {"stage": "width", "method": "oneshot", "criterion": "l2_norm", "sparsity": 0.5, "params": 80,
               "test_acc": None}]
    for seed, (base, final) in enumerate([(0.74, 0.72), (0.76, 0.75), (0.76, 0.73)]):
        write_run(logs, f"c6w50p{seed}", {"seed": seed, "chosen_cut": 6, "stages": [stages[0], {**stages[1], "test_acc": final}],
                                           "baseline": {"test_acc": base, "params": 1000}}, config(6))
    write_run(logs, "wholefit", {"seed": 0, "chosen_cut": 6, "schedule_span": "fit", "stages": [stages[0], {**stages[1], "test_acc": 0.7}],
                                 "baseline": {"test_acc": 0.6, "params": 1000}}, config(6))
    section = combined_section(report.load_summaries(logs))
    title = section.index("### CIFAR10 @32 px: cut after block 6, then oneshot l2_norm, sparsity 0.5, per-stage protocol")
    rows = section[title + 2:title + 8]
    assert rows[2].startswith("| 0 | 74.00 | 60.00 | 80 (8.0 %) | 72.00 | -2.00 | `c6w50p0` |")
    assert rows[5].startswith("| mean ± std | 75.33 ± 1.15") and "-2.00 ± 1.00" in rows[5]
    archived = section[section.index("### Archived whole-fit runs (not evidence)"):]
    assert any(line.startswith("| wholefit | width |") for line in archived)
    assert not any("wholefit" in line for line in section[title:title + 8])
