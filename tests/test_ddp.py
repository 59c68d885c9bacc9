"""Two-process DDP (CPU, gloo) through the experiment CLIs: every rank trains the same pruned network.

Each case runs ``python -m experiments.<script> --trainer.strategy ddp --trainer.devices 2`` as a real
subprocess (Lightning starts the second rank by running the same command again) on a tiny generated
image folder, with :class:`tests.helpers.rank_digest.RankDigest` writing each rank's architecture and weight
hashes. After ``fit`` both ranks must hold the same architecture, bit-identical parameters, the same
parameters and buffers on entering their last training step, and the structure the method promises.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from experiments import train
from lightning_modules.backbones.mobilenet_v1 import mobilenet_cut_arch
from lightning_modules.image_classifier import ImageClassifier
from lightning_modules.models.aux_heads import HEAD_PRESETS
from lightning_modules.models.mobilenet_v1 import mobilenet_v1_channels
from lightning_modules.pruning.width import keep_count
from tests.helpers.fake_data import CIFAR_CLASSES, make_image_folder
from tests.helpers.weights import save_checkpoint

REPO_ROOT = Path(__file__).resolve().parent.parent
WIDTH_MULT = 0.25
FULL = mobilenet_v1_channels(WIDTH_MULT)
CRITERIA = ["random", "l1_norm", "l2_norm", "fpgm", "hrank", "bn_scale"]

pytestmark = pytest.mark.slow


def common_args(data: Path, out: Path) -> list[str]:
    """3 classes × 8 training images, batch 6: two training batches per rank and epoch."""
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger",
              "init_args": {"save_dir": str(out), "name": "", "version": "run"}}
    return [
        "--data", "datamodules.ImageFolderDataModule",
        "--data.root", str(data), "--data.image_size", "32", "--data.batch_size", "6", "--model.width_mult", str(WIDTH_MULT),
        "--trainer.logger", json.dumps(logger),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.accelerator", "cpu",
    ]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data"), {"train": 8, "test": 4}, CIFAR_CLASSES[:3])


@pytest.fixture(scope="module")
def baseline_ckpt(data: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A MobileNetV1-0.25 trained for one epoch on one process (the width runs start from it)."""
    out = tmp_path_factory.mktemp("baseline")
    summary = json.loads(train.main([*common_args(data, out), "--trainer.max_epochs", "1"]).read_text())
    return summary["last_checkpoint"]


def run_ddp(script: str, data: Path, out: Path, *args: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run ``experiments/<script>.py`` on two CPU processes; return rank 0's digest and ``summary.json``
    after checking that both ranks ended with the same network."""
    command = [sys.executable, "-m", f"experiments.{script}", *common_args(data, out),
               "--trainer.strategy", "ddp", "--trainer.devices", "2", *args,
               "--trainer.callbacks+=tests.helpers.rank_digest.RankDigest", "--trainer.callbacks.out_dir", str(out / "ranks")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    ranks = [json.loads((out / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["arch"] == ranks[1]["arch"]
    assert ranks[0]["shapes"] == ranks[1]["shapes"]
    assert ranks[0]["forward_step"] == ranks[1]["forward_step"] == ranks[0]["global_step"] - 1
    assert ranks[0]["forward_state_sha256"] == ranks[1]["forward_state_sha256"], "ranks trained different nets"
    assert ranks[0]["params_sha256"] == ranks[1]["params_sha256"], "ranks' weights drifted apart"
    summary = json.loads((out / "run" / "summary.json").read_text())
    assert summary["arch"] == ranks[0]["arch"]  # the rank-0 summary describes what every rank trained
    assert "untested" not in done.stderr
    return ranks[0], summary | {"rank1_metrics": ranks[1]["metrics"]}


def width_run(data: Path, out: Path, baseline: str, max_epochs: int, *callbacks: str) -> tuple[dict, dict]:
    return run_ddp("width_prune", data, out, "--baseline_ckpt", baseline, "--trainer.max_epochs", str(max_epochs),
                   *callbacks)


def per_layer(sparsity: float) -> list[int]:
    return [keep_count(c, sparsity) for c in FULL]


def test_depth_cut_and_sweep(data: Path, tmp_path: Path) -> None:
    """Baseline (epoch 0), sweep (epoch 1), automatic cut + fine-tune (epoch 2)."""
    rank0, summary = run_ddp("depth_prune", data, tmp_path, "--trainer.max_epochs", "3", "--sweep.start_epoch", "1",
                             "--sweep.epochs", "1", "--prune.epoch", "2", "--prune.block", "null",
                             # any cut qualifies, so the rule's smallest net is a real cut on any seed (a 1-epoch
                             # baseline's heads may all miss one point, and a fallback to the last cut is an error)
                             "--prune.tolerance", "1.0")
    cut = summary["chosen_cut"]
    heads = [k for k in range(len(FULL)) if f"val/aux_{k}/acc" in rank0["metrics"]]
    assert heads == list(range(len(FULL)))
    for k in heads:  # reduced over both ranks' halves of the validation set: the same on each rank
        assert rank0["metrics"][f"val/aux_{k}/acc"] == summary["rank1_metrics"][f"val/aux_{k}/acc"]
    assert [row["acc"] for row in summary["sweep"]] == [rank0["metrics"][f"val/aux_{k}/acc"] for k in heads]
    expected = mobilenet_cut_arch(rank0["arch"] | {"channels": FULL}, cut, HEAD_PRESETS["replication"])
    assert summary["arch"]["channels"] == expected["channels"] == FULL[: cut + 1]
    assert summary["arch"]["num_blocks"] == cut
    assert summary["arch"]["head_channels"] == list(HEAD_PRESETS["replication"])


@pytest.mark.parametrize("criterion", CRITERIA)
def test_one_shot(criterion: str, data: Path, baseline_ckpt: str, tmp_path: Path) -> None:
    """Prune at the start of epoch 1 (after an epoch of DDP training), fine-tune epoch 1."""
    _, summary = width_run(data, tmp_path, baseline_ckpt, 2, "--trainer.callbacks+=callbacks.OneShotPrune",
                           "--trainer.callbacks.epoch", "1", "--trainer.callbacks.criterion", criterion,
                           "--trainer.callbacks.sparsity", "0.5")
    assert summary["width"]["done"] and summary["criterion"] == criterion
    assert summary["arch"]["channels"] == per_layer(0.5)


def test_one_shot_with_distillation(data: Path, baseline_ckpt: str, tmp_path: Path) -> None:
    _, summary = width_run(data, tmp_path, baseline_ckpt, 2, "--trainer.callbacks+=callbacks.OneShotPrune",
                           "--trainer.callbacks.epoch", "1", "--trainer.callbacks.sparsity", "0.75",
                           "--trainer.callbacks+=callbacks.Distillation", "--trainer.callbacks.start_epoch", "1")
    assert summary["distillation"] and summary["arch"]["channels"] == per_layer(0.75)
    assert "train/distill_kl" in summary["metrics"]


def test_bn_slimming(data: Path, baseline_ckpt: str, tmp_path: Path) -> None:
    """L1 on γ during epoch 0, one global |γ| threshold at epoch 1 (no layer loses more than 80 %)."""
    _, summary = width_run(data, tmp_path, baseline_ckpt, 2, "--trainer.callbacks+=callbacks.BNSlimming",
                           "--trainer.callbacks.prune_epoch", "1", "--trainer.callbacks.sparsity", "0.5")
    channels = summary["arch"]["channels"]
    assert summary["width"]["done"]
    assert sum(channels) == pytest.approx(sum(FULL) * 0.5, abs=len(FULL))
    assert all(c >= math.ceil(0.2 * f) for c, f in zip(channels, FULL, strict=True))


def test_admm(data: Path, baseline_ckpt: str, tmp_path: Path) -> None:
    """ADMM from epoch 0, a Z/U update at epoch 1, the hard prune at epoch 2."""
    _, summary = width_run(data, tmp_path, baseline_ckpt, 3, "--trainer.callbacks+=callbacks.ADMMPrune",
                           "--trainer.callbacks.admm_epoch", "1", "--trainer.callbacks.prune_epoch", "2",
                           "--trainer.callbacks.sparsity", "0.5")
    assert summary["width"]["result"]["updates"] >= 1 and summary["arch"]["channels"] == per_layer(0.5)


def test_gradual(data: Path, baseline_ckpt: str, tmp_path: Path) -> None:
    """AGP: structural prunes at epochs 1 (a new LR stage) and 2 (the optimiser rebuilt inside that stage)."""
    _, summary = width_run(data, tmp_path, baseline_ckpt, 3, "--trainer.callbacks+=callbacks.GradualPrune",
                           "--trainer.callbacks.start_epoch", "1", "--trainer.callbacks.num_steps", "1",
                           "--trainer.callbacks.interval", "1", "--trainer.callbacks.initial_sparsity", "0.25",
                           "--trainer.callbacks.final_sparsity", "0.5")
    steps = summary["width"]["result"]["steps"]
    assert [step["epoch"] for step in steps] == [1, 2]
    assert steps[0]["arch"]["channels"] == per_layer(0.25)
    assert summary["arch"]["channels"] == per_layer(0.5)


def test_resrep(data: Path, baseline_ckpt: str, tmp_path: Path) -> None:
    """Compactors from epoch 1 (masks updated every step), merged and sliced at epoch 2."""
    _, summary = width_run(data, tmp_path, baseline_ckpt, 3, "--trainer.callbacks+=callbacks.RepPrune",
                           "--trainer.callbacks.start_epoch", "1", "--trainer.callbacks.prune_epoch", "2",
                           "--trainer.callbacks.mask_interval", "1", "--trainer.callbacks.ramp_updates", "2",
                           "--trainer.callbacks.sparsity", "0.5")
    result = summary["width"]["result"]
    assert result["mask_updates"] >= 1 and not summary["arch"].get("compactors")
    assert summary["arch"]["channels"] == per_layer(0.5)


def test_resrep_on_a_timm_network(data: Path, tmp_path: Path) -> None:
    """resnet10t: compactors shared by coupled channels put in at epoch 1, merged and sliced at epoch 2."""
    baseline = save_checkpoint(ImageClassifier(backbone="resnet10t", num_classes=3), tmp_path / "base.ckpt")
    _, summary = width_run(data, tmp_path, str(baseline), 3, "--model.backbone", "resnet10t",
                           "--model.width_mult", "1.0", "--trainer.callbacks+=callbacks.RepPrune",
                           "--trainer.callbacks.start_epoch", "1", "--trainer.callbacks.prune_epoch", "2",
                           "--trainer.callbacks.mask_interval", "1", "--trainer.callbacks.ramp_updates", "2",
                           "--trainer.callbacks.sparsity", "0.5")
    structure = summary["arch"]["structure"]
    assert summary["width"]["done"] and structure["layers"] and "compactors" not in structure
    assert structure["layers"]["layer1.0.conv1"]["shapes"]["weight"][:2] == [32, 32]  # 64 → 32, in and out


def _different_networks(rank: int, init_file: str, errors: Any) -> None:
    import torch.distributed as dist
    from torch import nn

    from callbacks.stages import check_same_structure

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        check_same_structure(SimpleNamespace(world_size=2), nn.Linear(4, 4 + rank))  # rank 1 pruned differently
    except RuntimeError as err:
        errors.put((rank, str(err)))
    finally:
        dist.destroy_process_group()


def test_ranks_holding_different_networks_stop_with_a_clear_error(tmp_path: Path) -> None:
    context = mp.get_context("fork")
    errors = context.Queue()
    processes = [context.Process(target=_different_networks, args=(r, str(tmp_path / "pg"), errors)) for r in (0, 1)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=120)
    messages = dict(errors.get(timeout=60) for _ in range(2))
    assert sorted(messages) == [0, 1]  # every rank stops, none waits for the others in a collective
    for message in messages.values():
        assert "ranks [1] hold a different network than rank 0" in message and "('weight', (5, 4))" in message
