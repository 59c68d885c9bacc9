"""The results page from a fresh clone: no machine paths, and every reproduce line names files that exist
in the repository or are written by an earlier line."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from experiments.reports import results as report
from experiments.reports.reproduce import (
    checkpoint_producer,
    make_portable,
    memory_format_of,
    portable,
    portable_path,
    reproduce_script,
    seed_spread,
)

REPO = Path(__file__).resolve().parent.parent
ABSOLUTE = re.compile(r"(?<![\w.~:/-])/(work|root|home|tmp|Users|mnt|data)\b")


def test_portable_paths() -> None:
    assert portable_path("/work/main/logs/tinyml-pruning/ab/checkpoints/best-epoch=015.ckpt") == \
        "logs/tinyml-pruning/ab/checkpoints/best-epoch=015.ckpt"
    assert portable_path("/srv/x/shared/data/cifar10-jpg.tar.gz") == "../shared/data/cifar10-jpg.tar.gz"
    assert portable_path("/tmp/pytest-1/run") == "run"
    assert portable_path("logs/a") == "logs/a"
    text = "see https://wandb.ai/x/y, ratio 64/32 and the file /home/u/repo/logs/p/r/summary.json"
    assert portable(text) == "see https://wandb.ai/x/y, ratio 64/32 and the file logs/p/r/summary.json"
    assert checkpoint_producer("/a/logs/proj/run1/checkpoints/baseline.ckpt") == ("proj", "run1", "baseline.ckpt")
    assert checkpoint_producer("elsewhere/x.ckpt") is None


def test_memory_format_of_a_run(tmp_path: Path) -> None:
    """From the summary when it says, else from the run's saved config; an old config without the key is NCHW."""
    assert memory_format_of({"channels_last": True}) == "NHWC"
    assert memory_format_of({"channels_last": False, "_path": "x"}) == "NCHW"
    for value, expected in ((True, "NHWC"), (False, "NCHW"), (None, "NCHW")):
        run = tmp_path / str(value)
        run.mkdir()
        model = {"lr": 0.1} if value is None else {"lr": 0.1, "channels_last": value}
        (run / "config.yaml").write_text(yaml.safe_dump({"model": model}))
        assert memory_format_of({"_path": str(run / "summary.json")}) == expected
    assert memory_format_of({"_path": str(tmp_path / "missing" / "summary.json")}) == "NCHW"
    rows = [{"channels_last": False, "schedule_span": "stage"}, {"channels_last": True, "schedule_span": "stage"},
            {"channels_last": True, "schedule_span": "fit"}]
    assert [report.layout_note(r) for r in rows] == [", NCHW", "", ", whole-fit"]


def test_seed_spread() -> None:
    assert seed_spread([0.7904]) == "79.04"
    assert seed_spread([0.7904, 0.7816, None]) == "78.60 (78.16–79.04, 2 seeds)"
    assert seed_spread([None]) == "—"


def write_run(root: Path, rid: str, stage: str, baseline: str | None = None, seed: int = 0) -> dict:
    folder = root / rid
    folder.mkdir(parents=True)
    summary = {"stage": stage, "epochs": 2, "data_root": "/data/sets/cifar10-jpg.tar.gz",
               "best_checkpoint": f"/home/u/repo/logs/proj/{rid}/checkpoints/best-epoch=001.ckpt"}
    (folder / "summary.json").write_text(json.dumps(summary))
    config = {"seed_everything": seed, "trainer": {"logger": {"init_args": {"save_dir": "/home/u/repo/logs"}}},
              "baseline_ckpt": baseline}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return {**summary, "_path": folder / "summary.json"}


def test_reproduce_script_sets_each_baseline_after_the_run_that_writes_it(tmp_path: Path) -> None:
    runs = [
        write_run(tmp_path, "width1", "width_prune", "/home/u/repo/logs/proj/base/checkpoints/best-epoch=015.ckpt"),
        write_run(tmp_path, "cut1", "depth_prune", "/home/u/repo/logs/proj/depth/checkpoints/baseline.ckpt"),
        write_run(tmp_path, "depth", "depth_prune"),
        write_run(tmp_path, "base", "baseline"),
    ]
    for run in runs:
        make_portable(run["_path"].parent)
        text = run["_path"].read_text() + (run["_path"].parent / "config.yaml").read_text()
        assert not ABSOLUTE.search(text), text
    lines = reproduce_script(runs, "docs/runs")
    script = "\n".join(lines)
    assert not ABSOLUTE.search(script)
    commands = [line for line in lines if line.startswith("uv run")]
    order = [re.search(r"init_args.id (\S+)", c)[1] for c in commands]
    assert order.index("base") < order.index("width1") and order.index("depth") < order.index("cut1")
    assert "BASELINE=$(ls logs/proj/base/checkpoints/best-*.ckpt)" in script  # epoch in the name may differ
    assert "BASELINE=logs/proj/depth/checkpoints/baseline.ckpt" in script
    assert all("--baseline_ckpt $BASELINE" in c for c in commands if "width1" in c or "cut1" in c)


@pytest.mark.slow
def test_generated_page_has_no_machine_paths_and_runnable_rows(tmp_path: Path) -> None:
    """The page generated from the archived runs: no absolute path, every ``--config`` file exists in the
    repository, every ``$BASELINE`` is set by an earlier line."""
    docs = tmp_path / "docs"
    shutil.copytree(REPO / "docs" / "runs", docs / "runs")
    out = report.main(["--runs", str(docs / "runs"), "--out", str(docs / "RESULTS.md"), "--latency_runs", "0"])
    text = out.read_text()
    assert not ABSOLUTE.search(text), ABSOLUTE.search(text)
    for path in docs.rglob("*"):
        if path.suffix in (".json", ".yaml"):
            assert not ABSOLUTE.search(path.read_text()), path
    block = text[text.index("```bash"):]
    block = block[: block.index("```", 3)]
    defined = False
    for line in block.splitlines():
        defined |= line.startswith("BASELINE=")
        if line.startswith("uv run"):
            config = re.search(r"--config (\S+)", line)[1]
            assert (tmp_path / config).is_file(), config
            assert "$BASELINE" not in line or defined
