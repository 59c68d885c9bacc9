"""The timm-backbone results: per-stage seeds paired with their own baseline, smoke runs kept apart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.reports import results as report
from experiments.reports.backbones import backbone_section, protocol_columns, protocol_groups


def write_run(root: Path, run_id: str, summary: dict, config: dict | None = None) -> None:
    folder = root / "tinyml-pruning" / run_id
    folder.mkdir(parents=True)
    base = {"schedule_span": "stage", "dataset": "CIFAR10", "image_size": 32, "params": 100, "macs": 100,
            "arch": {"backbone": "resnet10t"}, "data_root": "cifar10-jpg.tar.gz", "epochs": 16}
    (folder / "summary.json").write_text(json.dumps(base | summary))
    if config is not None:
        (folder / "config.yaml").write_text(json.dumps(config))  # YAML is a superset of JSON


def depth(seed: int, base_test: float, cut_acc: float, cut: int = 3) -> dict:
    return {"stage": "depth_prune", "seed": seed, "init": "original", "chosen_cut": cut, "baseline_ckpt": None,
            "arch": {"backbone": "resnet10t", "structure": {"cut_module": f"layer{cut}"}},
            "baseline": {"val_acc": base_test, "acc": base_test, "test_acc": base_test, "params": 100},
            "pruned": {"acc": cut_acc, "params": 30, "macs": 40}}


def width(seed: int, baseline_run: str, acc: float) -> dict:
    return {"stage": "width_prune", "seed": seed, "method": "oneshot", "criterion": "l2_norm", "sparsity": 0.5,
            "baseline_ckpt": f"logs/tinyml-pruning/{baseline_run}/checkpoints/baseline.ckpt", "acc_after": acc,
            "params": 25, "epochs": 6}


DEPTH_CONFIG = {"prune": {"block": None, "rule": "tolerance", "tolerance": 0.01, "epoch": 11},
                "sweep": {"start_epoch": 10, "epochs": 1, "head": "replication"},
                "model": {"optimizer": "sgd", "lr": 0.05}}


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    logs = tmp_path / "logs"
    for seed, (b, c, w) in enumerate([(0.80, 0.78, 0.76), (0.82, 0.81, 0.77)]):
        write_run(logs, f"r10tp{seed}", depth(seed, b, c), DEPTH_CONFIG)
        # the width row of seed s is the one that started from seed s's baseline, whatever its own seed
        write_run(logs, f"r10tw{seed}", width(7, f"r10tp{seed}", w))
    # seed 0's same-budget control (train.py, the unpruned net: the depth run's baseline params)
    write_run(logs, "r10tc0", {"stage": "baseline", "seed": 0, "epochs": 15, "metrics": {"test/acc": 0.79}})
    write_run(logs, "r10tsmall", {"stage": "baseline", "seed": 1, "params": 7, "metrics": {"test/acc": 0.5}})  # another net
    write_run(logs, "smoke", depth(0, 0.35, 0.32) | {"schedule_span": "fit"})  # whole-fit: never paired
    write_run(logs, "fromtrain", width(0, "trainrun", 0.30))  # from a train.py baseline: not this protocol
    write_run(logs, "mbv1", depth(0, 0.70, 0.72) | {"arch": {"num_blocks": 6}})  # MobileNetV1: its own tables
    return logs


def test_width_rows_pair_with_the_depth_run_whose_baseline_they_start_from(runs: Path) -> None:
    groups = protocol_groups(report.load_summaries(runs))
    assert list(groups) == [("resnet10t", "CIFAR10", 32)]
    seeds = groups[("resnet10t", "CIFAR10", 32)]
    assert sorted(seeds) == [0, 1]
    assert {k: Path(s["_path"]).parent.name for k, s in seeds[1].items()} == {"depth": "r10tp1", "width": "r10tw1"}
    assert Path(groups[("resnet10t", "CIFAR10", 32)][0]["control"]["_path"]).parent.name == "r10tc0"
    assert "control" not in seeds[1]  # a train.py run of another size is no control
    cols = protocol_columns(seeds)
    assert cols["d_cut"] == pytest.approx([-0.02, -0.01])
    assert cols["control"] == [pytest.approx(0.79), None] and cols["d_control"] == [pytest.approx(-0.01), None]
    assert cols["d_width"] == pytest.approx([-0.04, -0.05])


def test_smoke_runs_are_kept_out_of_the_protocol_table(runs: Path) -> None:
    text = "\n".join(backbone_section(report.load_summaries(runs)))
    protocol, smoke = text.split("### Smoke and archived runs (not evidence)")
    assert "### resnet10t on CIFAR10 @32 px (100 params), per-stage protocol" in protocol
    assert "| 1 | 82.00 | 82.00 | 3 (layer3), tolerance 1 pt | 30 | 81.00 | -1.00 | — | — |" in protocol
    assert "| 0 | 80.00 | 80.00 | 3 (layer3), tolerance 1 pt | 30 | 78.00 | -2.00 | 79.00 | -1.00 |" in protocol
    assert "same-budget control: `train.py`, 15 epochs" in protocol
    assert "| mean ± std | 81.00 ± 1.41 (80.00 to 82.00, 2 seeds) |" in protocol
    assert "-4.50 ± 0.71 (-5.00 to -4.00, 2 seeds) |" in protocol  # paired width differences
    assert "smoke/config.yaml" in smoke and "fromtrain/config.yaml" in smoke
    assert "smoke" not in protocol and "fromtrain" not in protocol and "mbv1" not in text


def test_without_protocol_runs_the_section_is_the_smoke_table(tmp_path: Path) -> None:
    write_run(tmp_path, "smoke", depth(0, 0.35, 0.32) | {"schedule_span": "fit"})
    text = "\n".join(backbone_section(report.load_summaries(tmp_path)))
    assert ", per-stage protocol" not in text and "### Smoke and archived runs\n" in text
