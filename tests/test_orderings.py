"""The width orderings' verdicts: one seed decides only beyond the margin, several seeds by their spread."""

from __future__ import annotations

import pytest

from experiments.reports.orderings import (
    ONE_SEED_MARGIN,
    decide,
    ordering_rows,
    orderings_finding,
    orderings_section,
)


def summary(sparsity: float, method: str, criterion: str, acc: float, distill: bool = False) -> dict:
    return {"stage": "width_prune", "sparsity": sparsity, "method": method, "criterion": criterion,
            "distillation": distill, "acc_after": acc}


def test_one_seed_decides_only_beyond_the_margin() -> None:
    assert decide([0.70], [0.70 + (ONE_SEED_MARGIN + 0.5) / 100])[2] == "holds (1 seed)"
    assert decide([0.70], [0.70 - (ONE_SEED_MARGIN + 0.5) / 100])[2] == "does not hold (1 seed)"
    diff, half, verdict = decide([0.70], [0.705])
    assert diff == pytest.approx(0.5) and half is None and verdict.startswith("cannot tell")


def test_seeds_decide_by_two_standard_errors() -> None:
    diff, half, verdict = decide([0.70, 0.71, 0.69], [0.73, 0.74, 0.72])
    assert diff == pytest.approx(3.0) and half == pytest.approx(2 * (2 / 3) ** 0.5) and verdict == "holds"
    # the same means with a wide spread cannot tell
    assert decide([0.60, 0.80], [0.63, 0.83])[2] == "cannot tell"


def test_rows_pair_the_settings_that_were_run() -> None:
    rows = [summary(0.5, "oneshot", "random", 0.60), summary(0.5, "oneshot", "l2_norm", 0.70),
            summary(0.5, "oneshot", "hrank", 0.605), summary(0.75, "gradual", "l2_norm", 0.5)]
    found = ordering_rows(rows)
    assert [(r["ordering"], r["verdict"]) for r in found] == [
        ("random < norm-based", "holds (1 seed)"), ("HRank > random", "cannot tell (within 1 point, 1 seed)")]
    assert found[0]["published"] == pytest.approx(94.59 - 94.04)
    line = orderings_finding(rows, "logs/tinyml-pruning/p32s0/checkpoints/baseline.ckpt")
    assert "2 of 12 pairs" in line and "`p32s0`" in line and "1 hold, 0 do not, 1 cannot tell" in line


def test_the_finding_reads_the_best_trained_baseline_among_the_tables_that_run_the_most_pairs() -> None:
    """A table from a longer-trained baseline replaces one from a shorter baseline once it runs as many
    ordering pairs, even with fewer seeds; with fewer pairs it does not."""
    from experiments.reports.results import width_finding

    def run(baseline: str, acc_before: float, seed: int, *setting) -> dict:
        return summary(*setting) | {"dataset": "CIFAR10", "image_size": 32, "schedule_span": "stage", "seed": seed,
                                    "acc_before": acc_before,
                                    "baseline": {"checkpoint": f"logs/tinyml-pruning/{baseline}/checkpoints/baseline.ckpt"}}

    pair = [(0.5, "oneshot", "random", 0.60), (0.5, "oneshot", "l1_norm", 0.63)]
    short = [run("short", 0.74, seed, *s) for seed in (0, 1) for s in pair]
    long_one_pair = [run("long", 0.83, 0, *s) for s in pair]
    assert "`long`, 83.00 %" in width_finding(short + long_one_pair)[0]
    both = [*pair, (0.75, "oneshot", "l2_norm", 0.50), (0.75, "gradual", "l2_norm", 0.53)]
    short_two_pairs = [run("short", 0.74, seed, *s) for seed in (0, 1) for s in both]
    line, *more = width_finding(short_two_pairs + long_one_pair)
    assert "`short`, 74.00 %" in line and "2 of 12 pairs" in line and not more


def test_a_longer_fine_tune_from_the_same_baseline_is_a_row_of_its_own_under_the_finding() -> None:
    """Rows of one length form one table: a longer fine-tune of a few rows neither replaces the shorter
    rows nor mixes with them, and the Findings add its verdicts under the fuller table's."""
    from experiments.reports.results import width_finding
    from experiments.reports.width import width_groups, width_rows

    def run(epochs: int, *setting) -> dict:
        return summary(*setting) | {"dataset": "CIFAR10", "image_size": 32, "schedule_span": "stage", "seed": 0,
                                    "acc_before": 0.83, "epochs": epochs,
                                    "baseline": {"checkpoint": "logs/tinyml-pruning/b/checkpoints/baseline.ckpt"}}

    six = [run(6, 0.5, "oneshot", "random", 0.60), run(6, 0.5, "oneshot", "l1_norm", 0.63),
           run(6, 0.75, "oneshot", "l2_norm", 0.50), run(6, 0.75, "gradual", "l2_norm", 0.53)]
    twenty = [run(20, 0.5, "oneshot", "random", 0.70), run(20, 0.5, "oneshot", "l1_norm", 0.695)]
    rows = width_rows(six + twenty)
    assert len(rows) == 6 and sorted(len(g) for g in width_groups(rows).values()) == [2, 4]
    first, second = width_finding(rows)
    assert "2 of 12 pairs" in first and "6-epoch runs" in first and "2 hold" in first
    assert second.startswith("| the same orderings after longer fine-tuning (20 epochs in all)")
    assert "1 of 12 pairs" in second and "0 hold, 0 do not, 1 cannot tell" in second


def test_one_seed_cannot_decide_within_the_seed_to_seed_change_the_table_itself_measured() -> None:
    """Two seeds of one setting 3 points apart: a one-seed pair 2 points apart no longer decides."""
    rows = [summary(0.5, "oneshot", "random", 0.78), summary(0.5, "oneshot", "random", 0.81),
            summary(0.5, "oneshot", "l1_norm", 0.815)]
    (found,) = ordering_rows(rows)
    assert found["margin"] == pytest.approx(3.0)
    assert found["verdict"] == "cannot tell (within 3.00 points, 1 seed)"
    assert ordering_rows(rows[1:])[0]["verdict"] == "cannot tell (within 1 point, 1 seed)"
    assert ordering_rows([rows[0], rows[2]])[0]["verdict"] == "holds (1 seed)"
    assert "at least 3.00 points (the largest change between the seeds of one setting in this table) decides" in "\n".join(
        orderings_section(rows, "p32s0"))
