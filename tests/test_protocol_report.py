"""The per-stage results: seeds paired with their own baseline, the same-budget control, the verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.reports import results as report
from experiments.reports.pairing import paired_runs
from experiments.reports.protocol import columns, verdict


def write_run(root: Path, run_id: str, summary: dict) -> None:
    folder = root / "tinyml-pruning" / run_id
    folder.mkdir(parents=True)
    base = {"schedule_span": "stage", "dataset": "CIFAR10", "image_size": 32, "params": 1, "macs": 1,
            "arch": {"num_blocks": 6}, "data_root": "cifar10-jpg.tar.gz", "epochs": 16}
    (folder / "summary.json").write_text(json.dumps(base | summary))


def depth(seed: int, base_test: float, pruned: float, init: str = "original", baseline_ckpt: str | None = None,
          span: str = "stage") -> dict:
    return {"stage": "depth_prune", "seed": seed, "init": init, "chosen_cut": 6, "baseline_ckpt": baseline_ckpt,
            "schedule_span": span, "stages": [{"stage": "depth"}],
            "baseline": {"val_acc": base_test - 0.001, "acc": base_test - 0.001, "test_acc": base_test,
                         "params": 10, "macs": 10},
            "pruned": {"acc": pruned, "params": 1, "macs": 1}}


def control(seed: int, acc: float) -> dict:
    return {"stage": "baseline", "seed": seed, "metrics": {"test/acc": acc}, "epochs": 15, "params": 10}


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    logs = tmp_path / "logs"
    for seed, (b, o, r, c) in enumerate([(0.80, 0.79, 0.78, 0.81), (0.82, 0.80, 0.81, 0.83), (0.81, 0.80, 0.79, 0.82)]):
        write_run(logs, f"s{seed}", depth(seed, b, o))
        write_run(logs, f"r{seed}", depth(seed, b + 0.05, r, "random", f"logs/tinyml-pruning/s{seed}/x.ckpt"))
        write_run(logs, f"c{seed}", control(seed, c))
    write_run(logs, "old", depth(0, 0.60, 0.75, span="fit"))  # whole-fit: never paired
    return logs


def test_seeds_pair_with_their_own_baseline(runs: Path) -> None:
    summaries = report.load_summaries(runs)
    seeds = paired_runs(summaries, "CIFAR10", 32)
    assert sorted(seeds) == [0, 1, 2] and all(set(v) == {"original", "random", "control"} for v in seeds.values())
    cols = columns(seeds)
    assert cols["d_original"] == pytest.approx([-0.01, -0.02, -0.01])
    # random init is compared with the baseline of its own seed's depth run, not its own summary's
    assert cols["d_random"] == pytest.approx([-0.02, -0.01, -0.02])
    assert cols["d_control"] == pytest.approx([-0.02, -0.03, -0.02])


def test_verdicts_need_two_seeds_and_two_standard_errors() -> None:
    assert verdict([0.005], -0.01).startswith("cannot tell")
    assert verdict([-0.002, -0.004, -0.003], -0.01) == "holds"
    assert verdict([-0.05, -0.04, -0.06], -0.01) == "does not hold"
    assert verdict([-0.03, 0.01, -0.01], -0.01) == "cannot tell"


def test_results_page_shows_the_paired_table_and_findings(runs: Path, tmp_path: Path) -> None:
    out = report.main(["--runs", str(runs), "--out", str(tmp_path / "docs" / "RESULTS.md"), "--latency_runs", "0"])
    text = out.read_text()
    assert text.index("## Findings") < text.index("## Depth pruning")
    assert "| mean ± std | 80.90 ± 1.00 (79.90 to 81.90, 3 seeds) |" in text  # baseline val: 0.799, 0.819, 0.809
    # a loss of 1.33 ± 0.58 points against a 1-point bound: two standard errors span it either way
    assert "| Δ -1.33 ± 0.58 (-2.00 to -1.00, 3 seeds) pp at 32 px | cannot tell |" in text
    assert ", whole-fit" in text  # the archived protocol's row is marked


def test_a_column_whose_seeds_disagree_is_named_with_its_lowest_run(runs: Path) -> None:
    from experiments.reports.protocol import spread_warnings

    summaries = report.load_summaries(runs)
    assert spread_warnings(paired_runs(summaries, "CIFAR10", 32)) == []  # every column within 3 points
    write_run(runs, "c3", control(3, 0.70))
    write_run(runs, "s3", depth(3, 0.81, 0.80))
    warnings = spread_warnings(paired_runs(report.load_summaries(runs), "CIFAR10", 32))
    assert len(warnings) == 1
    assert "same-budget control ranges over 13.00 points" in warnings[0] and "run `c3`" in warnings[0]


def test_the_lowest_run_s_unstable_epochs_are_named_from_its_learning_curve(runs: Path) -> None:
    """c32s1's shape: the loss falls, climbs back at the peak learning rate for two epochs, then falls again."""
    from callbacks.epoch_log import COLUMNS
    from experiments.reports.protocol import spread_warnings

    write_run(runs, "c3", control(3, 0.70))
    write_run(runs, "s3", depth(3, 0.81, 0.80))
    losses = [2.13, 1.62, 1.435, 1.497, 1.671, 1.519, 1.414, 1.32]
    rows = "\n".join(f"{e},baseline,{loss},0.5,1.0,0.1,600" for e, loss in enumerate(losses))
    (runs / "tinyml-pruning" / "c3" / "epochs.csv").write_text(",".join(COLUMNS) + "\n" + rows + "\n")
    (warning,) = spread_warnings(paired_runs(report.load_summaries(runs), "CIFAR10", 32))
    # 1.497 is 4.3 % above 1.435 (under the 5 % mark); 1.671 and 1.519 are above it
    assert "run `c3`, whose training loss rose above its earlier minimum in epochs 5–6 of the baseline stage " \
           "(1.435 → 1.671)" in warning


def test_loss_rises_are_stretches_within_a_stage() -> None:
    from experiments.reports.curves import loss_rises

    def rows(*spec: tuple[str, float | None]) -> list[dict]:
        return [{"epoch": e, "stage": st, "train_loss": loss} for e, (st, loss) in enumerate(spec)]

    assert loss_rises(rows(("baseline", 2.0), ("baseline", 1.0), ("baseline", 0.9))) == []
    # a new stage (the cut net) starts from its own loss: a jump at the stage change is no rise
    assert loss_rises(rows(("baseline", 1.0), ("finetune", 2.0), ("finetune", 1.5))) == []
    # two separate stretches, a missing value skipped, the peak and the minimum before it reported
    got = loss_rises(rows(("b", 1.0), ("b", 1.2), ("b", None), ("b", 1.3), ("b", 0.9), ("b", 0.8), ("b", 0.95)))
    assert got == [{"stage": "b", "first": 2, "last": 4, "before": 1.0, "peak": 1.3},
                   {"stage": "b", "first": 7, "last": 7, "before": 0.8, "peak": 0.95}]
    assert loss_rises(rows(("b", 1.0), ("b", 1.04))) == [] and loss_rises(rows(("b", 1.0), ("b", 1.04)), 0.03)


def test_a_control_trains_the_network_the_depth_run_started_from(runs: Path) -> None:
    """A baseline run of another network with the same seed (a timm net, another width) is no control."""
    write_run(runs, "other", control(0, 0.50) | {"params": 999})
    seeds = paired_runs(report.load_summaries(runs), "CIFAR10", 32)
    assert seeds[0]["control"]["metrics"]["test/acc"] == 0.81


def test_imagenette_findings_compare_the_cut_with_its_same_budget_control(runs: Path, tmp_path: Path) -> None:
    imagenette = {"dataset": "Imagenette", "image_size": 128}
    for seed, (b, o, c) in enumerate([(0.62, 0.66, 0.67), (0.63, 0.66, 0.68)]):
        write_run(runs, f"n{seed}", depth(seed, b, o) | imagenette)
        write_run(runs, f"nc{seed}", control(seed, c) | imagenette)
    text = report.main(["--runs", str(runs), "--out", str(tmp_path / "R.md"), "--latency_runs", "0"]).read_text()
    # the cut gains 3.5 points on its baseline, and is 1.5 points under the net trained as long
    assert "| pruning raises accuracy on Imagenette (76.50 → 81.15 %) | Δ +3.50 ± 0.71 (+3.00 to +4.00, 2 seeds)" in text
    assert ("| Imagenette: the gain is not just more epochs: cut@6 ≥ the same-budget unpruned net "
            "| cut − control -1.50 ± 0.71 (-2.00 to -1.00, 2 seeds) pp at 128 px | does not hold |") in text
    # a claim nobody ran says so, with no verdict
    assert ("| Imagewoof: the gain is not just more epochs: cut@6 ≥ the same-budget unpruned net | not run at 128 px "
            "yet | cannot tell (fewer than 2 seeds) |") in text
    assert ("| Imagenette: random init raises accuracy too (76.50 → 78.17 %) | not run at 128 px yet | cannot tell "
            "(fewer than 2 seeds) |") in text
    for seed, r in enumerate([0.60, 0.61]):
        write_run(runs, f"nr{seed}", depth(seed, 0.70, r, "random", f"logs/tinyml-pruning/n{seed}/x.ckpt") | imagenette)
    text = report.main(["--runs", str(runs), "--out", str(tmp_path / "R.md"), "--latency_runs", "0"]).read_text()
    # paired with the baseline of the same seed's depth run (62 and 63 %), not the random run's own summary
    assert ("| Imagenette: random init raises accuracy too (76.50 → 78.17 %) | Δ random -2.00 ± 0.00 (-2.00 to -2.00, "
            "2 seeds) pp at 128 px | does not hold, but against a baseline that had not converged |") in text


def test_a_verdict_against_a_baseline_that_had_not_converged_says_so(runs: Path, tmp_path: Path) -> None:
    """Five more epochs lift the unpruned net 5 points on both seeds: "pruning raises accuracy" then stands
    against a baseline that was still climbing, and the Findings say so beside the verdict."""
    imagenette = {"dataset": "Imagenette", "image_size": 128}
    for seed, (b, o, c) in enumerate([(0.62, 0.66, 0.67), (0.63, 0.66, 0.68)]):
        write_run(runs, f"n{seed}", depth(seed, b, o) | imagenette)
        write_run(runs, f"nc{seed}", control(seed, c) | imagenette)
    text = report.main(["--runs", str(runs), "--out", str(tmp_path / "R.md"), "--latency_runs", "0"]).read_text()
    assert ("| Imagenette @128 px: the baseline had converged (the premise of the Δ rows): the same-budget unpruned "
            "net gains < 1 point on it | control − baseline +5.00 ± 0.00 (+5.00 to +5.00, 2 seeds) pp "
            "| does not hold |") in text
    assert "2 seeds) pp at 128 px | holds, but against a baseline that had not converged |" in text


def scheduled(root: Path, run_id: str, summary: dict, baseline_epochs: int, finetune: int = 5) -> None:
    """A depth run whose archived config says its schedule: the sweep (one epoch) starts where the
    baseline ends, the cut net fine-tunes ``finetune`` epochs to the run's end."""
    write_run(root, run_id, summary | {"epochs": baseline_epochs + 1 + finetune})
    (root / "tinyml-pruning" / run_id / "config.yaml").write_text(
        f"sweep:\n  start_epoch: {baseline_epochs}\nprune:\n  epoch: {baseline_epochs + 1}\n")


def test_runs_of_another_schedule_pair_among_themselves_and_findings_read_the_longest_on_two_seeds(
        tmp_path: Path) -> None:
    """A 30-epoch-baseline run of seed 0 neither replaces seed 0's 10-epoch run nor takes its control (nor
    its random-init run); the Findings stay on the schedule with two seeds until the longer one has two."""
    from experiments.reports.pairing import paired_by_schedule

    logs = tmp_path / "logs"
    for seed, (b, o, c) in enumerate([(0.74, 0.77, 0.78), (0.76, 0.78, 0.79)]):
        scheduled(logs, f"s{seed}", depth(seed, b, o), 10)
        write_run(logs, f"r{seed}", depth(seed, 0.0, o - 0.05, "random",
                                              f"logs/tinyml-pruning/s{seed}/checkpoints/baseline.ckpt"))
        write_run(logs, f"c{seed}", control(seed, c))  # 15 epochs: 10 + 5
    scheduled(logs, "long0", depth(0, 0.84, 0.83), 30)
    write_run(logs, "longc0", control(0, 0.845) | {"epochs": 35})

    by_schedule = paired_by_schedule(report.load_summaries(logs), "CIFAR10", 32)
    assert sorted(by_schedule) == [(10, 5), (30, 5)]
    short, long = by_schedule[(10, 5)], by_schedule[(30, 5)]
    assert Path(short[0]["original"]["_path"]).parent.name == "s0"
    assert Path(short[0]["control"]["_path"]).parent.name == "c0" and short[0]["random"]
    assert set(long) == {0} and set(long[0]) == {"original", "control"}  # r0 started from s0's baseline
    assert Path(long[0]["control"]["_path"]).parent.name == "longc0"

    out = tmp_path / "R.md"
    text = report.main(["--runs", str(logs), "--out", str(out), "--latency_runs", "0"]).read_text()
    assert "### CIFAR10 @32 px, cut after block 6, per-stage protocol, 30-epoch baseline, 5-epoch fine-tune" in text
    assert "Δ +2.50 ± 0.71 (+2.00 to +3.00, 2 seeds) pp at 32 px, 10-epoch baseline, 5-epoch fine-tune |" in text
    # "Every depth run": runs cut from baselines of different lengths are different rows, never one mean
    assert "| CIFAR10 | 32 | original, NCHW, 30-epoch baseline | 6 | 36 | 83.90 |" in text
    assert "| CIFAR10 | 32 | original, NCHW, 10-epoch baseline | 6 | 16 | 74.90 (73.90–75.90, 2 seeds) |" in text
    # the longer schedule's one seed stands under the verdicts it may reverse, with no verdict of its own
    assert ("| CIFAR-10 @32 px, 30-epoch baseline, 5-epoch fine-tune (the rows above, under a longer baseline) | "
            "baseline test 84.00 (1 seed) %; control − baseline +0.50 (1 seed) pp; Δ -1.00 (1 seed) pp; "
            "cut − control -1.50 (1 seed) pp | cannot tell (1 seed; a verdict needs 2) |") in text

    scheduled(logs, "long1", depth(1, 0.85, 0.845), 30)
    write_run(logs, "longc1", control(1, 0.852) | {"epochs": 35})
    text = report.main(["--runs", str(logs), "--out", str(out), "--latency_runs", "0"]).read_text()
    assert "Δ -0.75 ± 0.35 (-1.00 to -0.50, 2 seeds) pp at 32 px, 30-epoch baseline, 5-epoch fine-tune |" in text
    assert "under a longer baseline" not in text  # the verdicts read it now
    # and the shorter schedule's figures stay in view, marked as superseded, with whether it had converged
    assert ("| CIFAR-10 @32 px, 10-epoch baseline, 5-epoch fine-tune (the rows above, under a shorter baseline) | "
            "baseline test 75.00 ± 1.41 (74.00 to 76.00, 2 seeds) %; control − baseline +3.50 ± 0.71 (+3.00 to +4.00, "
            "2 seeds) pp; Δ +2.50 ± 0.71 (+2.00 to +3.00, 2 seeds) pp; Δ random -2.50 ± 0.71 (-3.00 to -2.00, 2 seeds) "
            "pp; cut − control -1.00 ± 0.00 (-1.00 to -1.00, 2 seeds) pp | superseded by the 30-epoch baseline; this "
            "one had not converged |") in text
    # 0.5 and 0.2 points more for 5 more epochs: converged, so the verdicts carry no caveat
    assert ("| CIFAR-10 @32 px, 30-epoch baseline, 5-epoch fine-tune: the baseline had converged (the premise of the Δ rows): the "
            "same-budget unpruned net gains < 1 point on it | control − baseline +0.35 ± 0.21 (+0.20 to +0.50, 2 "
            "seeds) pp | holds |") in text
    assert "pp at 32 px, 30-epoch baseline, 5-epoch fine-tune | cannot tell |" in text and "not shown to have converged" not in text
    assert "| not run at 32 px, 30-epoch baseline, 5-epoch fine-tune yet | cannot tell (fewer than 2 seeds) |" in text  # no random run
    table = text.index("fine-tune\n\nThe Findings read this schedule (the longest baseline run on two seeds or more)")
    assert text.rfind("30-epoch baseline", 0, table) > text.rfind("10-epoch baseline, 5-epoch", 0, table)


def test_convergence_is_judged_per_seed_against_one_point() -> None:
    from experiments.reports.protocol import convergence_finding

    def cols(base: list[float | None], ctrl: list[float | None]) -> dict:
        return {"baseline_test": base, "control": ctrl}

    # no depth run: no row; depth runs without a control: a row that cannot tell, and verdicts say so
    assert convergence_finding("X", cols([None], [0.8]), 32)[0] == []
    (row,), qualify = convergence_finding("X", cols([0.7, 0.7], [None, None]), 32)
    assert row.endswith("| no same-budget control run yet | cannot tell (no same-budget control run) |")
    assert qualify("holds") == "holds, against a baseline not shown to have converged"
    assert qualify("cannot tell") == "cannot tell"
    # the control within half a point of the baseline on three seeds: converged, nothing added
    (row,), qualify = convergence_finding("X", cols([0.80, 0.81, 0.79], [0.802, 0.812, 0.793]), 32)
    assert row.endswith("| holds |") and qualify("holds") == "holds"
    # seeds that disagree (one control far above, one far below): cannot tell, nothing added
    (row,), qualify = convergence_finding("X", cols([0.74, 0.76, 0.76], [0.80, 0.69, 0.78]), 32)
    assert row.endswith("| cannot tell |") and qualify("holds") == "holds, against a baseline not shown to have converged"
    # a seed without its control is left out, not counted as zero gain
    (row,), _ = convergence_finding("X", cols([0.62, 0.63, 0.60], [0.67, None, 0.66]), 128)
    assert "+5.50 ± 0.71 (+5.00 to +6.00, 2 seeds)" in row and row.endswith("| does not hold |")


def test_the_compute_line_says_which_wall_times_were_corrected_and_that_the_total_is_then_a_lower_bound() -> None:
    plain = {"wall_time_s": 3600.0}
    assert report.compute_line([plain]).endswith("deployment checks not included).")
    fixed = {"wall_time_s": 1800.0, "wall_time_correction": {"reported_s": 3600.0, "subtracted_s": 1800.0,
                                                             "lower_bound": False}}
    resumed = {"wall_time_s": 1800.0, "wall_time_correction": {"reported_s": 5400.0, "subtracted_s": 3600.0,
                                                               "lower_bound": True}}
    line = report.compute_line([plain, fixed, resumed])
    assert "the 3 runs on this page trained for 2.0 h" in line
    assert "2 summaries were written while the run clock counted" in line and "(1.0 h instead of 2.5 h" in line
    assert line.endswith("1 of them, resumed runs, lack their earlier processes' time: the total is a lower bound.")
    assert report.compute_line([plain, fixed]).endswith("`wall_time_correction` in each).")


def test_a_run_found_in_two_folders_counts_once_with_its_newest_summary(tmp_path: Path) -> None:
    """A summary corrected in logs/ after its copy was archived is the one the page shows, whichever folder
    comes first on the command line."""
    import os

    archive, logs = tmp_path / "archive", tmp_path / "logs"
    write_run(archive, "c0", control(0, 0.80) | {"wall_time_s": 7200.0})
    write_run(logs, "c0", control(0, 0.80) | {"wall_time_s": 3600.0})
    old, new = (root / "tinyml-pruning" / "c0" / "summary.json" for root in (archive, logs))
    os.utime(old, (1_000_000, 1_000_000))
    os.utime(new, (2_000_000, 2_000_000))
    for order in ([logs, archive], [archive, logs]):
        out = report.main(["--runs", *map(str, order), "--out", str(tmp_path / "docs" / "R.md"), "--latency_runs", "0"])
        assert "the 1 runs on this page trained for 1.0 h" in out.read_text()
