"""The experiment CLIs driven in-process on real CIFAR-10: training, exact resume, the depth pipeline."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from callbacks.epoch_log import read_epochs
from experiments import depth_prune, train
from experiments.reports import results as report
from experiments.reports.curves import plot_curves
from lightning_modules.image_classifier import ImageClassifier
from tests.helpers.cli_args import STOP_AFTER, pipeline_args, tiny_args
from tests.helpers.weights import assert_same_weights, load_weights


def test_fast_dev_run_on_real_cifar10(real_data_dir: Path, tmp_path: Path) -> None:
    summary_path = train.main([
        "--data.root", str(real_data_dir / "cifar10-jpg.tar.gz"),
        "--trainer.fast_dev_run", "true",
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false",
    ])
    summary = json.loads(Path(summary_path).read_text())
    assert summary["params"] == 3_217_226
    assert 0.0 <= summary["metrics"]["test/acc"] <= 1.0
    assert summary["data_root"].endswith("cifar10-jpg.tar.gz")


def test_resume_reproduces_uninterrupted_training(real_data_dir: Path, tmp_path: Path) -> None:
    args = tiny_args(real_data_dir, tmp_path / "logs")
    started = time.time()
    straight = json.loads(train.main([*args, "--trainer.max_epochs", "2"]).read_text())
    # one process: its wall time is at most the call's, though testing restored the best checkpoint's clock
    assert 0 < straight["wall_time_s"] <= time.time() - started + 0.1

    # the same 2-epoch job, killed after its first epoch
    first = json.loads(train.main([*args, "--trainer.max_epochs", "2", *STOP_AFTER, "0"]).read_text())
    assert first["epochs"] == 1
    first_weights = load_weights(first["last_checkpoint"])  # the resumed run overwrites this file
    clock = torch.load(first["last_checkpoint"], weights_only=True)["callbacks"]["RunClock"]
    run_id = Path(first["last_checkpoint"]).parent.parent.name
    started = time.time()
    resumed = json.loads(train.main([
        *args, "--trainer.max_epochs", "2", "--ckpt_path", first["last_checkpoint"],
        "--trainer.logger.init_args.id", run_id,
    ]).read_text())

    assert resumed["epochs"] == straight["epochs"] == 2
    assert Path(resumed["last_checkpoint"]).parent.parent.name == run_id  # the same W&B run continues
    assert_same_weights(load_weights(straight["last_checkpoint"]), load_weights(resumed["last_checkpoint"]))
    assert resumed["metrics"]["test/acc"] == pytest.approx(straight["metrics"]["test/acc"])
    # its wall time counts the killed process's time up to the checkpoint it resumed from
    assert 0 < clock["seconds"] <= resumed["wall_time_s"] <= clock["seconds"] + time.time() - started + 0.1
    # the learning curve of the resumed run has one row per epoch, equal to the uninterrupted run's
    curve = read_epochs(Path(resumed["last_checkpoint"]).parent.parent / "epochs.csv")
    straight_curve = read_epochs(Path(straight["last_checkpoint"]).parent.parent / "epochs.csv")
    assert [r["epoch"] for r in curve] == [0, 1] and [r["stage"] for r in curve] == ["baseline"] * 2
    assert [r["val_acc"] for r in curve] == pytest.approx([r["val_acc"] for r in straight_curve])
    # and the first stage alone really differs from two epochs (the comparison can fail)
    with pytest.raises(AssertionError):
        assert_same_weights(first_weights, load_weights(straight["last_checkpoint"]))




def test_depth_pipeline_kill_after_cut_and_resume(real_data_dir: Path, tmp_path: Path) -> None:
    args = pipeline_args(real_data_dir, tmp_path / "logs")
    straight = json.loads(depth_prune.main(args).read_text())

    assert straight["chosen_cut"] == 6
    assert len(straight["sweep"]) == 14
    assert straight["pruned"]["params"] < straight["baseline"]["params"]
    assert straight["pruned"]["macs"] < straight["baseline"]["macs"]
    run_dir = Path(straight["last_checkpoint"]).parent.parent
    for name in ("depth_sweep.csv", "depth_sweep.json", "depth_sweep.png", "config.yaml", "epochs.csv"):
        assert (run_dir / name).is_file(), name
    curve = read_epochs(run_dir / "epochs.csv")
    assert [(r["epoch"], r["stage"]) for r in curve] == [(0, "baseline"), (1, "sweep"), (2, "after DepthPrune"),
                                                         (3, "after DepthPrune")]
    # every row has its accuracy and learning rate; a stage's schedule may end at its floor (the sweep's
    # one-epoch cosine does), the fine-tuning restarts from its peak
    assert all(r["val_acc"] is not None and r["lr"] is not None and r["lr"] >= 0 for r in curve)
    assert curve[2]["lr"] > curve[3]["lr"] > 0
    assert plot_curves(curve, tmp_path / "curve.png").stat().st_size > 0

    killed = json.loads(depth_prune.main([*args, *STOP_AFTER, "2"]).read_text())
    assert killed["epochs"] == 3 and killed["chosen_cut"] == 6  # stopped right after the first cut epoch
    resumed = json.loads(depth_prune.main([*args, "--ckpt_path", killed["last_checkpoint"]]).read_text())
    assert_same_weights(load_weights(straight["last_checkpoint"]), load_weights(resumed["last_checkpoint"]))

    # load_from_checkpoint rebuilds the cut network, and it scores what the summary says
    model = ImageClassifier.load_from_checkpoint(straight["best_checkpoint"], map_location="cpu")
    assert model.hparams.num_blocks == 6 and len(model.net.blocks) == 6
    assert sum(p.numel() for p in model.net.parameters()) == straight["pruned"]["params"]
    from datamodules import CIFAR10DataModule

    data = CIFAR10DataModule(root=str(real_data_dir / "cifar10-jpg.tar.gz"), train_subset=256,
                             eval_subset=128, batch_size=64)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    acc = trainer.test(model, data, verbose=False)[0]["test/acc"]
    assert acc == pytest.approx(straight["pruned"]["acc"])


def test_missing_data_root_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "cifar.tar.gz"
    with pytest.raises(SystemExit) as exc:
        train.main(["--data.root", str(missing), "--trainer.fast_dev_run", "true",
                    "--trainer.default_root_dir", str(tmp_path)])
    assert str(missing) in str(exc.value.code)


def test_num_classes_comes_from_the_data_not_the_command_line(real_data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:  # linked from data.num_classes: not an argument of its own
        train.main([*tiny_args(real_data_dir, tmp_path), "--model.num_classes", "7",
                    "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path)])
    assert exc.value.code != 0


def test_depth_prune_from_baseline_checkpoint_with_random_init(real_data_dir: Path, tmp_path: Path) -> None:
    args = pipeline_args(real_data_dir, tmp_path / "logs")
    full = json.loads(depth_prune.main(args).read_text())
    baseline = full["baseline_checkpoint"]
    assert Path(baseline).is_file()
    assert ImageClassifier.load_from_checkpoint(baseline, map_location="cpu").hparams.num_blocks == 13

    summary = json.loads(depth_prune.main([
        *args, "--baseline_ckpt", baseline, "--sweep.epochs", "0", "--prune.init", "random",
        "--prune.head", "[16, 8]",
    ]).read_text())
    assert summary["init"] == "random" and summary["chosen_cut"] == 6 and summary["sweep"] == []
    assert summary["epochs"] == 2  # the baseline and sweep stages are skipped: only fine-tuning ran
    assert summary["pruned"]["params"] == full["pruned"]["params"]

    with pytest.raises(SystemExit, match="architecture"):
        depth_prune.main([*args, "--baseline_ckpt", baseline, "--model.width_mult", "0.5"])

    # the results page is generated from these two runs' summaries
    out = report.main(["--runs", str(tmp_path / "logs"), "--out", str(tmp_path / "docs" / "RESULTS.md")])
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| CIFAR10 | 32 |")]
    # both rows name the length of the baseline they were cut from (the random-init run: its checkpoint's)
    assert len(rows) == 2 and any("| original, 1-epoch baseline |" in r for r in rows) \
        and any("| random, 1-epoch baseline |" in r for r in rows), rows
    assert f"{100 * full['pruned']['acc']:.2f}" in text and f"{100 * summary['pruned']['acc']:.2f}" in text
    assert text.count("← chosen") == 1  # one sweep table (the random-init run had no sweep)
    # the one sweep's figure, named by its run (several runs of one dataset and size each get their own)
    assert [p.name for p in (tmp_path / "docs" / "figures").glob("depth_sweep_*.png")] == \
        [f"depth_sweep_cifar10_32_{full['last_checkpoint'].split('/')[-3]}.png"]
    archived = sorted((tmp_path / "docs" / "runs").glob("*/summary.json"))
    assert len(archived) == 2  # the page can be regenerated from the archived copies alone
    again = report.main(["--runs", str(tmp_path / "docs" / "runs"), "--out", str(tmp_path / "again.md"),
                         "--latency_runs", "0"])
    assert [r for r in again.read_text().splitlines() if r.startswith("| CIFAR10 | 32 |")] == rows
    assert (tmp_path / "docs" / "figures" / "accuracy_vs_cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    budget = summary["pruned"]["budget"]
    assert budget["params"] == summary["pruned"]["params"] and 0 < budget["flash_int8"] < budget["flash_fp32"]
    assert f"{full['pruned']['budget']['flash_int8'] / 1024:,.0f}" in text


def test_depth_pipeline_with_distillation_from_the_unpruned_net(real_data_dir: Path, tmp_path: Path) -> None:
    args = pipeline_args(real_data_dir, tmp_path / "logs")
    summary = json.loads(depth_prune.main([
        *args, "--trainer.callbacks+=callbacks.Distillation", "--trainer.callbacks.start_epoch", "2",
    ]).read_text())
    assert summary["chosen_cut"] == 6
    assert summary["metrics"]["train/distill_kl"] > 0  # the fine-tuning loss had the teacher's KL term
    state = torch.load(summary["last_checkpoint"], map_location="cpu", weights_only=True)["callbacks"]
    teacher = next(v for k, v in state.items() if k.startswith("Distillation"))
    assert teacher["teacher_arch"]["num_blocks"] == 13  # the teacher is the unpruned network
