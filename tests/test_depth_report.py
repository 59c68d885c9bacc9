"""Depth-pruning sweep report: cut selection rules, CSV/JSON/PNG outputs, console table, W&B logging."""

import csv
import json
import os
from pathlib import Path

import pytest

from lightning_modules.pruning.depth_cut import Baseline, CutPoint, choose_cut, knee_point, pareto_front
from lightning_modules.reporting.sweep import (
    CSV_COLUMNS,
    format_sweep_table,
    log_sweep_to_wandb,
    write_sweep_report,
)
from tests.helpers.sweep_rows import BASELINE, SWEEP


def test_pareto_front_excludes_dominated_rows() -> None:
    rows = [
        CutPoint(0, 100, 10, 0.50),
        CutPoint(1, 200, 20, 0.70),
        CutPoint(2, 300, 30, 0.60),  # dominated by cut 1 (fewer params, higher acc)
        CutPoint(3, 400, 40, 0.90),
        CutPoint(4, 400, 45, 0.85),  # same params as cut 3, lower acc
        CutPoint(5, 500, 50, 0.90),  # same acc as cut 3, more params
    ]
    assert [r.cut for r in pareto_front(rows)] == [0, 1, 3]
    assert [r.cut for r in pareto_front(SWEEP)] == [1, 3, 6]


def test_knee_of_l_shaped_curve_is_the_corner() -> None:
    # Accuracy climbs steeply up to 10k params, then barely moves over two decades.
    front = [
        CutPoint(0, 1_000, 1, 0.20),
        CutPoint(1, 3_000, 1, 0.60),
        CutPoint(2, 10_000, 1, 0.88),
        CutPoint(3, 100_000, 1, 0.90),
        CutPoint(4, 1_000_000, 1, 0.91),
    ]
    assert knee_point(front).cut == 2
    assert knee_point(list(reversed(front))).cut == 2


def test_knee_with_short_front_is_most_accurate() -> None:
    front = [CutPoint(0, 1_000, 1, 0.5), CutPoint(1, 5_000, 1, 0.8)]
    assert knee_point(front).cut == 1


def test_knee_rule_on_sweep() -> None:
    cut, reason = choose_cut(SWEEP, BASELINE, rule="knee")
    assert cut == 3
    assert "[1, 3, 6]" in reason and "knee" in reason


def test_tolerance_picks_smallest_qualifying_model() -> None:
    cut, reason = choose_cut(SWEEP, BASELINE)  # acc ≥ 75.50%: every cut qualifies
    assert cut == 1
    assert "11.5k" in reason and "76.23%" in reason
    # Floor at 80.00%: cuts 3, 6 and 9 qualify, 3 is the smallest.
    cut, _ = choose_cut(SWEEP, Baseline(BASELINE.params, BASELINE.macs, 0.81), tolerance=0.01)
    assert cut == 3
    # Floor at 81.10%: only cut 6 qualifies.
    cut, _ = choose_cut(SWEEP, Baseline(BASELINE.params, BASELINE.macs, 0.815), tolerance=0.004)
    assert cut == 6


def test_tolerance_falls_back_to_most_accurate() -> None:
    cut, reason = choose_cut(SWEEP, Baseline(BASELINE.params, BASELINE.macs, 0.90), tolerance=0.01)
    assert cut == 6
    assert "No cut reaches" in reason and "most accurate" in reason


def test_explicit_block_and_invalid_block() -> None:
    cut, reason = choose_cut(SWEEP, BASELINE, block=9, rule="knee")
    assert cut == 9 and "explicitly" in reason
    with pytest.raises(ValueError, match=r"cut 7 is not among .*\[1, 3, 5, 6, 9, 11\]"):
        choose_cut(SWEEP, BASELINE, block=7)


def test_invalid_inputs_rejected() -> None:
    with pytest.raises(ValueError, match="fraction"):
        CutPoint(0, 1, 1, 81.2)
    with pytest.raises(ValueError, match="at least one"):
        choose_cut([], BASELINE)
    with pytest.raises(ValueError, match="unknown rule"):
        choose_cut(SWEEP, BASELINE, rule="median")  # type: ignore[arg-type]


def test_csv_and_json_round_trip(tmp_path: Path) -> None:
    paths = write_sweep_report(SWEEP, BASELINE, chosen=3, out_dir=tmp_path / "report")
    assert set(paths) == {"csv", "json", "png"} and all(
        p.parent == tmp_path / "report" for p in paths.values()
    )
    by_cut = {r.cut: r for r in SWEEP}

    with paths["csv"].open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        csv_rows = list(reader)
    assert [int(r["cut"]) for r in csv_rows] == [1, 3, 5, 6, 9, 11]
    for rec in csv_rows:
        row = by_cut[int(rec["cut"])]
        assert int(rec["params"]) == row.params and int(rec["macs"]) == row.macs
        assert float(rec["acc"]) == pytest.approx(row.acc)
        assert float(rec["params_ratio"]) == pytest.approx(row.params / BASELINE.params)
        assert float(rec["macs_ratio"]) == pytest.approx(row.macs / BASELINE.macs)
        assert float(rec["acc_drop"]) == pytest.approx(BASELINE.acc - row.acc)
    assert float(csv_rows[1]["acc_drop"]) == pytest.approx(-0.0442)  # cut 3 beats the baseline

    data = json.loads(paths["json"].read_text())
    assert data["chosen_cut"] == 3
    assert data["baseline"] == {"params": 3_217_226, "macs": 567_700_000, "acc": 0.7650}
    assert len(data["rows"]) == len(SWEEP)
    for rec, csv_rec in zip(data["rows"], csv_rows, strict=True):
        row = by_cut[rec["cut"]]
        assert (rec["params"], rec["macs"], rec["acc"]) == (row.params, row.macs, row.acc)
        assert rec["params_ratio"] == pytest.approx(float(csv_rec["params_ratio"]))


def test_png_is_valid_and_non_trivial(tmp_path: Path) -> None:
    png = write_sweep_report(SWEEP, BASELINE, chosen=6, out_dir=tmp_path)["png"]
    blob = png.read_bytes()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(blob) > 20_000


def test_report_rejects_unknown_chosen_cut(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cut 4"):
        write_sweep_report(SWEEP, BASELINE, chosen=4, out_dir=tmp_path)


def test_format_sweep_table_marks_chosen_row() -> None:
    text = format_sweep_table(SWEEP, BASELINE, chosen=3)
    lines = text.splitlines()
    assert "params" in lines[0] and "MACs" in lines[0] and "acc %" in lines[0]
    marked = [line for line in lines if line.startswith("*") and "chosen" not in line]
    assert len(marked) == 1
    assert marked[0].split() == ["*", "3", "43,500", "9,800,000", "80.92", "+4.42"]
    assert any(line.split()[:2] == ["base", "3,217,226"] for line in lines)
    assert any(line.split() == ["1", "11,500", "4,100,000", "76.23", "-0.27"] for line in lines)


def test_wandb_logging_noop_for_none_and_dummy(tmp_path: Path) -> None:
    from lightning.pytorch.loggers.logger import DummyExperiment

    png = tmp_path / "missing.png"
    assert log_sweep_to_wandb(None, SWEEP, BASELINE, 3, png) is None
    assert log_sweep_to_wandb(DummyExperiment(), SWEEP, BASELINE, 3, png) is None
    assert log_sweep_to_wandb(object(), SWEEP, BASELINE, 3, png) is None


def test_wandb_logging_offline_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    png = write_sweep_report(SWEEP, BASELINE, chosen=3, out_dir=tmp_path / "report")["png"]
    run = wandb.init(mode="offline", dir=str(tmp_path), project="depth-report-test")
    try:
        log_sweep_to_wandb(run, SWEEP, BASELINE, 3, png)
        assert "depth_sweep/table" in run.summary.keys()
        assert "depth_sweep/plot" in run.summary.keys()
        run_files = Path(run.dir)
    finally:
        run.finish()
    media = {p.relative_to(run_files).as_posix() for p in run_files.rglob("*") if p.is_file()}
    assert any(m.startswith("media/table/depth_sweep/") for m in media), media
    assert any(m.startswith("media/images/depth_sweep/") and m.endswith(".png") for m in media), media
    table_file = next(run_files.glob("media/table/depth_sweep/*.table.json"))
    table = json.loads(table_file.read_text())
    assert table["columns"] == [*CSV_COLUMNS, "chosen"]
    assert [r[0] for r in table["data"]] == [1, 3, 5, 6, 9, 11]
    assert [r[-1] for r in table["data"]] == [False, True, False, False, False, False]
    assert any(f.endswith(".wandb") for f in os.listdir(run_files.parent))
