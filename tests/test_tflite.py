"""Fully-int8 TFLite export run in TFLite Micro, the TFLM estimators, the budget search, and the message
when the optional ``tflite`` dependencies are missing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lightning_modules.deploy.tflite_file import MissingDependency, require_tflite
from lightning_modules.deploy.tflm_estimate import (
    estimate_tflm,
    greedy_plan,
    needs_explicit_pad,
    same_padding,
)
from lightning_modules.models.mobilenet_v1 import MobileNetV1
from lightning_modules.pruning import budget
from tests.helpers import fake_data
from tests.helpers.weights import trained_like

IMAGE_SIZE = 32


def tflite_installed() -> None:
    try:
        require_tflite()
    except MissingDependency as err:
        pytest.skip(f"optional dependency group not installed: {err}")


# ----------------------------------------------------------------------------- export → TFLite Micro
@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny width-pruned, cut MobileNetV1 exported fully int8 from a fake CIFAR folder and run in TFLM."""
    tflite_installed()
    from datamodules import CIFAR10DataModule
    from lightning_modules.deploy.verify import deploy_net

    tmp = tmp_path_factory.mktemp("tflite")
    root = fake_data.make_image_folder(tmp / "cifar", {"train": 8, "test": 4})
    data = CIFAR10DataModule(root=str(root), image_size=IMAGE_SIZE, batch_size=8, num_workers=0)
    data.setup("fit")
    data.setup("test")
    torch.manual_seed(0)
    net = trained_like(MobileNetV1(num_classes=3, channels=[8, 16, 24, 24, 40], num_blocks=4, head_channels=(16,)))
    row = deploy_net(net, data, tmp / "net.tflite", calib_images=16, eval_images=None)
    return {"net": net, "row": row, "path": tmp / "net.tflite"}


def test_tflm_argmax_agrees_with_fp32(deployed: dict) -> None:
    from lightning_modules.deploy.tflm import tflm_predict

    x = torch.randn(24, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = deployed["net"](x).argmax(1).numpy()
    got = tflm_predict(deployed["path"], x).argmax(1)
    assert (got == expected).mean() >= 0.75, (got, expected)


def test_fully_int8_with_per_channel_weights(deployed: dict) -> None:
    structure = deployed["row"]["structure"]
    assert structure["input_dtype"] == "INT8" and structure["output_dtype"] == "INT8"
    assert structure["int8_per_channel_weights"]
    assert structure["ops"]["DEPTHWISE_CONV_2D"] == 5  # 4 blocks + the head's depthwise-separable block


def test_arena_and_flash_are_what_the_report_writes(deployed: dict, tmp_path: Path) -> None:
    from lightning_modules.deploy.tflm import tflm_arena

    row, path = deployed["row"], deployed["path"]
    assert isinstance(row["arena_bytes"], int) and row["arena_bytes"] > 0
    assert isinstance(row["flash_bytes"], int) and row["flash_bytes"] > 0
    assert row["flash_bytes"] == path.stat().st_size
    assert row["arena_bytes"] == tflm_arena(path)["arena_bytes"]  # read back from the interpreter again
    assert row["arena_bytes"] == row["arena_head_bytes"] + row["arena_tail_bytes"]
    written = json.loads(json.dumps(row, default=str))
    assert written["arena_bytes"] == row["arena_bytes"] and written["flash_bytes"] == row["flash_bytes"]
    assert row["eval_images"] == 12 and 0.0 <= row["int8_acc"] <= 1.0


def test_estimates_within_one_percent_of_tflm(deployed: dict) -> None:
    row = deployed["row"]
    assert abs(row["arena_error"]) <= 0.01, row
    # flash: 1 %; 2 % under 8 KB, where names without index suffixes weigh more (tests/test_tflm_plan.py)
    assert abs(row["flash_error"]) <= (0.01 if row["flash_bytes"] >= 8 * 1024 else 0.02), row
    assert row["est_arena_head_bytes"] == row["arena_head_bytes"]  # the planner model is exact


# ------------------------------------------------------------------------------------ estimator maths
def test_same_padding_and_explicit_pad() -> None:
    assert same_padding(32, 3, 2) == (0, 1) and same_padding(32, 3, 1) == (1, 1)
    assert needs_explicit_pad(nn.Conv2d(3, 8, 3, stride=2, padding=1), 32, 32)  # PyTorch 1+1, SAME 0+1
    assert not needs_explicit_pad(nn.Conv2d(3, 8, 3, stride=1, padding=1), 32, 32)
    assert not needs_explicit_pad(nn.Conv2d(3, 8, 3, stride=2, padding=1), 33, 33)  # odd: SAME is 1+1
    assert not needs_explicit_pad(nn.Conv2d(3, 8, 1), 32, 32)


def test_greedy_plan_reuses_dead_buffers() -> None:
    # a chain a → b → c: a and c never live together, so c reuses a's place
    assert greedy_plan([(100, 0, 0), (60, 0, 1), (100, 1, 1)]) == 112 + 64
    # all alive at once: the sum of the aligned sizes
    assert greedy_plan([(16, 0, 2), (16, 0, 2), (32, 0, 2)]) == 64


def test_estimate_of_a_chain_counts_the_pad_buffer() -> None:
    net = MobileNetV1(num_classes=10, width_mult=0.25, num_blocks=1)
    # int8 buffers: input 3072, its padded copy 3×34×34 = 3468 (→ 3472), stem 8×16×16 = 2048,
    # depthwise 2048, pointwise 16×16×16 = 4096, then the MEAN's scratch. Largest first: pw@0, pad@0,
    # input@3472; stem and depthwise tie at 2048 and TFLM places the later one (depthwise) first: it
    # clashes with pw [0, 4096) → @4096; the stem clashes with pad [0, 3472), input [3472, 6544) and
    # depthwise [4096, 6144) → @6144: head 8192, what TFLM reports (tests/test_tflm_plan.py holds this
    # net to the interpreter).
    assert estimate_tflm(net, 32)["arena_head_bytes"] == 8192


# ------------------------------------------------------------------------------------- budget search
def toy(cut: int, width: float, flash_kb: float, ram_kb: float, acc: float, macs: int = 1000) -> budget.Candidate:
    return budget.Candidate(cut=cut, width=width, image_size=32, flash_bytes=int(flash_kb * budget.KB),
                     ram_bytes=int(ram_kb * budget.KB), macs=macs, acc=acc)


TOYS = [
    toy(13, 1.0, 800, 90, 0.80),   # best but too big
    toy(6, 1.0, 300, 60, 0.78),    # flash over 256
    toy(6, 0.5, 120, 40, 0.74),    # fits: the answer
    toy(3, 0.5, 60, 30, 0.70),     # fits, less accurate
    toy(13, 0.25, 90, 70, 0.76),   # RAM over 64
]


def test_budget_choice_picks_the_most_accurate_fitting_candidate() -> None:
    chosen = budget.choose(TOYS, budget.Budget(flash_kb=256, ram_kb=64))
    assert (chosen.cut, chosen.width) == (6, 0.5)
    assert (budget.choose(TOYS, budget.Budget(flash_kb=100, ram_kb=64)).cut, budget.choose(TOYS, budget.Budget(flash_kb=100, ram_kb=64)).width) \
        == (3, 0.5)
    assert budget.choose(TOYS, budget.Budget(flash_kb=1000, ram_kb=100)).cut == 13
    # a MACs limit removes the otherwise best candidate
    limited = [toy(6, 0.5, 120, 40, 0.74, macs=5000), toy(3, 0.5, 60, 30, 0.70, macs=1000)]
    assert budget.choose(limited, budget.Budget(flash_kb=256, ram_kb=64, macs=2000)).cut == 3


def test_impossible_budget_names_what_the_smallest_candidate_needs() -> None:
    with pytest.raises(budget.NothingFits, match=r"smallest, cut3_w0.5_32px, needs flash 60.0 KB \(limit 10 KB\), "
                                          r"RAM 30.0 KB \(limit 8 KB\)"):
        budget.choose(TOYS, budget.Budget(flash_kb=10, ram_kb=8))


def test_budget_validation_and_proxy_maths() -> None:
    with pytest.raises(ValueError, match="flash_kb must be positive"):
        budget.Budget(flash_kb=0, ram_kb=64)
    with pytest.raises(ValueError, match=r"width ratios must be in \(0, 1\]"):
        budget.grid([1], [1.5], [32])
    assert len(budget.grid([1, 2, 3], [1.0, 0.5], [32])) == 6
    assert budget.combined_accuracy(0.7, 0.6, 0.8) == pytest.approx(0.525)
    assert budget.overshoot(TOYS[1], budget.Budget(flash_kb=300, ram_kb=60)) == {"flash": 1.0, "ram": 1.0}


def test_fit_budget_refuses_an_impossible_budget_before_training(tmp_path: Path, capsys) -> None:
    tflite_installed()
    from experiments import fit_budget

    root = fake_data.make_image_folder(tmp_path / "cifar", {"train": 2, "test": 1})
    args = ["--baseline_ckpt", str(tmp_path / "never_read.ckpt"), "--budget.flash_kb", "4", "--budget.ram_kb", "2",
            "--search.cuts", "[1, 2]", "--search.widths", "[0.5]", "--data.root", str(root),
            "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)]
    with pytest.raises(SystemExit, match=r"no candidate fits the budget; the smallest, cut1_w0.5_32px, needs"):
        fit_budget.main(args)
    assert not (tmp_path / "never_read.ckpt").exists()


# ------------------------------------------------------------------------------- missing dependency
def test_missing_optional_dependency_gives_one_clear_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from lightning_modules.deploy.tflite import export_int8_tflite

    monkeypatch.setitem(sys.modules, "onnx2tf", None)  # `import onnx2tf` now fails
    with pytest.raises(MissingDependency, match=r"needs onnx2tf: uv sync --extra tflite"):
        require_tflite()
    with pytest.raises(MissingDependency, match="uv sync --extra tflite"):
        export_int8_tflite(MobileNetV1(num_classes=3, num_blocks=1), tmp_path / "m.tflite",
                           np.zeros((1, 3, 32, 32), np.float32), 32)
    assert not (tmp_path / "m.tflite").exists()
    from experiments import fit_budget

    with pytest.raises(SystemExit, match=r"^error: int8 TFLite export / TFLite Micro needs onnx2tf: uv sync"):
        fit_budget.main(["--budget.flash_kb", "256", "--budget.ram_kb", "64"])


# ----------------------------------------------------------------------------------- fit_budget run
@pytest.mark.slow
def test_fit_budget_end_to_end_fits_in_tflm(tmp_path: Path) -> None:
    """Baseline → sweep → budget choice → cut + width → int8 export → TFLM, on a tiny fake CIFAR folder:
    the chosen candidate is within the budget, TFLM's measured figures are what summary.json holds."""
    tflite_installed()
    from experiments import fit_budget, train
    from lightning_modules.deploy.tflm import tflm_arena

    root = fake_data.make_image_folder(tmp_path / "cifar", {"train": 16, "test": 4})
    common = ["--data.root", str(root), "--data.batch_size", "16", "--model.width_mult", "0.25", "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
              "--trainer.accelerator", "cpu"]
    base = json.loads(train.main([*common, "--trainer.max_epochs", "1"]).read_text())
    summary = json.loads(fit_budget.main([
        *common, "--baseline_ckpt", base["last_checkpoint"], "--budget.flash_kb", "200", "--budget.ram_kb", "64",
        "--search.cuts", "[2, 4, 13]", "--search.widths", "[1.0, 0.5]", "--search.proxy_steps", "2",
        "--search.proxy_images", "8", "--deploy.calib_images", "16"]).read_text())
    result = summary["fit_budget"]
    chosen, measured = result["chosen"], result["measured"]
    assert chosen["flash_bytes"] <= 200 * budget.KB and chosen["ram_bytes"] <= 64 * budget.KB
    assert [c["name"] for c in result["candidates"]] == [f"cut{k}_w{w:g}_32px" for k in (2, 4, 13) for w in (1.0, 0.5)]
    assert all(c["acc"] is not None for c in result["candidates"])
    tflite = Path(measured["tflite_path"])
    assert measured["flash_bytes"] == tflite.stat().st_size
    assert measured["arena_bytes"] == tflm_arena(tflite)["arena_bytes"]
    assert result["fits_measured"] == (measured["flash_bytes"] <= 200 * budget.KB and measured["arena_bytes"] <= 64 * budget.KB)
    assert summary["arch"]["num_blocks"] == chosen["cut"]
    assert (tflite.parent / "fit_budget.png").is_file()
