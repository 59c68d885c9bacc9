"""experiments/width_prune.py driven in-process on real CIFAR-10 (small subsets): every CPU-scale row of
the width tables runs its full schedule, stateful methods resume exactly, the ImageNet rows run on a
generated 1000-class ImageFolder, and the depth pipeline takes a width stage after the cut."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from experiments import depth_prune, train, width_prune
from experiments.reports import results as report
from lightning_modules.image_classifier import ImageClassifier
from lightning_modules.models.mobilenet_v1 import mobilenet_v1_channels
from lightning_modules.pruning.width import keep_count
from tests.helpers.cli_args import STOP_AFTER, tiny_args
from tests.helpers.fake_data import write_image
from tests.helpers.weights import assert_same_weights, load_weights

CONFIGS = Path(__file__).resolve().parent.parent / "experiments" / "configs"
CPU_ROWS = sorted((CONFIGS / "width" / "cifar10_32").glob("*.yaml"))
STATEFUL_ROWS = ["w050_bn_slimming", "w025_admm_l2", "w025_gradual_l2", "w025_resrep_l2_distill"]


def full_width_args(real_data_dir: Path, out: Path) -> list[str]:
    return [*tiny_args(real_data_dir, out), "--model.width_mult", "1.0"]


@pytest.fixture(scope="module")
def baseline_ckpt(real_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A MobileNetV1-1.0 trained for one epoch on 256 real CIFAR-10 images by experiments/train.py."""
    out = tmp_path_factory.mktemp("baseline")
    summary = json.loads(train.main([*full_width_args(real_data_dir, out), "--trainer.max_epochs", "1"]).read_text())
    return summary["last_checkpoint"]


def run_row(config: Path, real_data_dir: Path, out: Path, baseline: str, *extra: str) -> dict:
    args = ["--config", str(config), *full_width_args(real_data_dir, out), "--baseline_ckpt", baseline, *extra]
    return json.loads(width_prune.main(args).read_text())


def callback_args(config: Path) -> dict:
    return yaml.safe_load(config.read_text())["trainer"]["callbacks"][0]["init_args"]


@pytest.mark.slow
@pytest.mark.parametrize("config", CPU_ROWS, ids=lambda p: p.stem)
def test_every_cpu_scale_row_runs_its_schedule(config: Path, real_data_dir: Path, baseline_ckpt: str,
                                               tmp_path: Path) -> None:
    summary = run_row(config, real_data_dir, tmp_path, baseline_ckpt)
    args = callback_args(config)
    sparsity = args.get("sparsity", args.get("final_sparsity"))
    assert summary["sparsity"] == sparsity and summary["criterion"] == args.get("criterion", "bn_scale")
    assert summary["epochs"] == yaml.safe_load(config.read_text())["trainer"]["max_epochs"]
    assert summary["distillation"] == ("distill" in config.stem)
    assert 0.0 <= summary["acc_before"] <= 1.0 and 0.0 <= summary["acc_after"] <= 1.0
    channels = summary["arch"]["channels"]
    full = mobilenet_v1_channels(1.0)
    assert summary["params"] < summary["baseline"]["params"] and summary["macs"] < summary["baseline"]["macs"]
    if summary["method"] == "bn_slimming":  # one global threshold: the layers lose different fractions
        assert sum(channels) == pytest.approx(sum(full) * (1 - sparsity), abs=len(full))
        assert summary["flops_preserve_rate"] < 0.9
        assert all(c >= math.ceil(0.2 * f) for c, f in zip(channels, full, strict=True))  # max_pruning_ratio 0.8
    else:  # every layer keeps its share of the original channels
        assert channels == [keep_count(c, sparsity) for c in full]
        assert summary["flops_preserve_rate"] == pytest.approx(0.263 if sparsity == 0.5 else 0.072, abs=0.01)
    assert not summary["arch"].get("compactors", False)
    model = ImageClassifier.load_from_checkpoint(summary["best_checkpoint"], map_location="cpu")
    assert model.arch == summary["arch"]
    assert sum(p.numel() for p in model.net.parameters()) == summary["params"]


@pytest.mark.slow
@pytest.mark.parametrize("row", STATEFUL_ROWS)
def test_killed_mid_method_and_resumed_equals_uninterrupted(row: str, real_data_dir: Path, baseline_ckpt: str,
                                                            tmp_path: Path) -> None:
    config = CONFIGS / "width" / "cifar10_32" / f"{row}.yaml"
    straight = run_row(config, real_data_dir, tmp_path / "a", baseline_ckpt)
    with pytest.raises(SystemExit, match="no summary was written"):  # stopped before its prune: not a result
        run_row(config, real_data_dir, tmp_path / "b", baseline_ckpt, *STOP_AFTER, "1")
    assert not list((tmp_path / "b").rglob("summary.json"))
    last = str(next((tmp_path / "b").rglob("last.ckpt")))
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 1
    resumed = run_row(config, real_data_dir, tmp_path / "b", baseline_ckpt, "--ckpt_path", last)
    assert resumed["arch"] == straight["arch"]
    assert_same_weights(load_weights(straight["last_checkpoint"]), load_weights(resumed["last_checkpoint"]))
    assert resumed["acc_after"] == pytest.approx(straight["acc_after"])


def test_width_prune_errors_are_clear(real_data_dir: Path, baseline_ckpt: str, tmp_path: Path) -> None:
    row = CONFIGS / "width" / "cifar10_32" / "w050_oneshot_l2.yaml"
    with pytest.raises(SystemExit, match="--baseline_ckpt is required"):
        width_prune.main(["--config", str(row), *full_width_args(real_data_dir, tmp_path)])
    with pytest.raises(SystemExit, match="max_epochs"):
        run_row(CONFIGS / "width" / "cifar10_32" / "w025_admm_l2.yaml", real_data_dir, tmp_path, baseline_ckpt,
                "--trainer.max_epochs", "3")
    with pytest.raises(SystemExit, match="exactly one pruning callback"):
        run_row(row, real_data_dir, tmp_path, baseline_ckpt, "--trainer.callbacks+=callbacks.gradual_prune.GradualPrune")
    with pytest.raises(SystemExit, match="architecture"):
        run_row(row, real_data_dir, tmp_path, baseline_ckpt, "--model.width_mult", "0.5")


def test_report_tabulates_width_runs(real_data_dir: Path, baseline_ckpt: str, tmp_path: Path) -> None:
    rows = [CONFIGS / "width" / "cifar10_32" / f"{r}.yaml" for r in ("w050_oneshot_l1", "w025_oneshot_l2_distill")]
    summaries = [run_row(r, real_data_dir, tmp_path / "logs", baseline_ckpt, "--trainer.max_epochs", "1")
                 for r in rows]
    out = report.main(["--runs", str(tmp_path / "logs"), "--out", str(tmp_path / "docs" / "RESULTS.md"),
                       "--latency_runs", "0"])
    text = out.read_text()
    table = [line for line in text.splitlines() if line.startswith("| MBv1-")]
    assert len(table) == 2
    assert table[0].startswith("| MBv1-0.5 | oneshot | l1_norm |") and "| 94.52 |" in table[0]
    assert table[1].startswith("| MBv1-0.25 | oneshot | l2_norm | yes |") and "| 93.48 |" in table[1]
    for summary, line in zip(summaries, table, strict=True):
        assert f"| {100 * summary['acc_after']:.2f} |" in line and f"{summary['params']:,}" in line
    # one table per baseline and length: both rows under the heading of the checkpoint they started from
    run = Path(baseline_ckpt).parent.parent.name
    assert text.count("### CIFAR10 @32 px — from baseline") == 1 and f"from baseline `{run}` (" in text
    assert (tmp_path / "docs" / "figures" / f"width_cifar10_32_{run}_1ep.png").read_bytes()[:4] == b"\x89PNG"
    # a longer run of a row already run is a table of its own, and the shorter row stays where it was
    longer = run_row(rows[0], real_data_dir, tmp_path / "logs", baseline_ckpt, "--trainer.max_epochs", "2")
    text = report.main(["--runs", str(tmp_path / "logs"), "--out", str(tmp_path / "docs" / "RESULTS.md"),
                        "--latency_runs", "0"]).read_text()
    assert text.count("### CIFAR10 @32 px — from baseline") == 2
    one, two = text.index("1-epoch runs"), text.index("2-epoch runs")
    assert f"| {100 * summaries[0]['acc_after']:.2f} |" in text[one:two]
    assert f"| {100 * longer['acc_after']:.2f} |" in text[two:]
    assert (tmp_path / "docs" / "figures" / f"width_cifar10_32_{run}_2ep.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_imagenet_rows_on_a_generated_1000_class_folder(tmp_path: Path) -> None:
    wnids = [f"n{i:08d}" for i in range(1000)]
    root = tmp_path / "imagenet"
    for i, wnid in enumerate(wnids):  # one image per class and split, 10 colours in turn
        for split in ("train", "val"):
            write_image(root / split / wnid / f"{wnid}_0.JPEG", i % 10)
    common = ["--data.root", str(root), "--data.image_size", "32", "--data.batch_size", "64",
              "--data.num_workers", "0", "--trainer.precision", "32", "--trainer.accelerator", "cpu",
              "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2",
              "--trainer.limit_test_batches", "2", "--trainer.enable_progress_bar", "false",
              "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")]
    base = json.loads(train.main(["--config", str(CONFIGS / "baseline_imagenet.yaml"), *common,
                                  "--trainer.max_epochs", "1"]).read_text())
    assert base["params"] == 4_231_976 and "test/top5" in base["metrics"]
    for config in sorted((CONFIGS / "width" / "imagenet").glob("*.yaml")):
        args = callback_args(config)
        last = args.get("start_epoch", 0) + args.get("num_steps", 0) * args.get("interval", 0)
        summary = json.loads(width_prune.main([
            "--config", str(config), *common, "--baseline_ckpt", base["last_checkpoint"],
            "--trainer.max_epochs", str(last + 1)]).read_text())
        sparsity = args.get("sparsity", args.get("final_sparsity"))
        assert summary["arch"]["channels"] == [keep_count(c, sparsity) for c in mobilenet_v1_channels(1.0)]
        assert summary["arch"]["num_classes"] == 1000 and "test/top5" in summary["metrics"]


@pytest.mark.slow
def test_depth_then_width_in_one_pipeline_with_resume(real_data_dir: Path, tmp_path: Path) -> None:
    args = ["--config", str(CONFIGS / "depth_cifar10_32_width.yaml"), *tiny_args(real_data_dir, tmp_path / "logs"),
            "--trainer.max_epochs", "5", "--sweep.start_epoch", "1", "--sweep.epochs", "1",
            "--prune.epoch", "2", "--prune.block", "6", "--sweep.head", "[16, 8]", "--trainer.callbacks.epoch", "3"]
    straight = json.loads(depth_prune.main(args).read_text())
    depth, width = straight["stages"]
    assert depth["stage"] == "depth" and depth["cut"] == 6 and width["stage"] == "width"
    assert width["method"] == "oneshot" and width["criterion"] == "l2_norm"
    assert width["params"] < depth["params"] and width["macs"] < depth["macs"]
    assert 0.0 <= depth["val_acc"] <= 1.0 and width["test_acc"] == straight["pruned"]["acc"]
    cut_channels = mobilenet_v1_channels(0.25)[:7]
    assert straight["arch"]["channels"] == [keep_count(c, 0.5) for c in cut_channels]
    assert straight["arch"]["head_channels"] == [8, 4]  # the head's blocks are thinned too

    with pytest.raises(SystemExit, match="after the cut"):
        depth_prune.main([*args, "--trainer.callbacks.epoch", "2"])
    killed = json.loads(depth_prune.main([*args, *STOP_AFTER, "3"]).read_text())
    assert killed["arch"] == straight["arch"]
    resumed = json.loads(depth_prune.main([*args, "--ckpt_path", killed["last_checkpoint"]]).read_text())
    assert_same_weights(load_weights(straight["last_checkpoint"]), load_weights(resumed["last_checkpoint"]))
    state = torch.load(straight["last_checkpoint"], map_location="cpu", weights_only=True)
    assert state["hyper_parameters"]["channels"] == straight["arch"]["channels"]
