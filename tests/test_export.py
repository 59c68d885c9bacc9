"""ONNX export and check, int8 quantisation, ONNX accuracy, and the profiling CLI on a checkpoint."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from experiments.bench import profile_model
from lightning_modules.deploy.export import (
    check_onnx,
    export_onnx,
    onnx_accuracy,
    onnx_session,
    quantize_int8,
    run_onnx,
)
from lightning_modules.deploy.profiling import count_macs, count_params, flash_size
from lightning_modules.image_classifier import ImageClassifier
from lightning_modules.models.mobilenet_v1 import MobileNetV1
from tests.helpers.weights import trained_like

IMAGE_SIZE = 32
#: Irregular widths, as channel pruning of a width-0.25 MobileNetV1 leaves them (stem + 13 blocks).
PRUNED_CHANNELS = [8, 16, 24, 24, 40, 48, 64, 56, 72, 64, 80, 96, 128, 120]


pytestmark = pytest.mark.usefixtures("one_thread")


NETS = {
    "unpruned": lambda: MobileNetV1(num_classes=10),
    "depth_cut6_head64_32": lambda: MobileNetV1(num_classes=10, num_blocks=6, head_channels=(64, 32)),
    "channel_pruned": lambda: MobileNetV1(num_classes=10, channels=PRUNED_CHANNELS),
}


@pytest.mark.parametrize("name", list(NETS))
def test_onnx_round_trip(name: str, tmp_path: Path) -> None:
    net = trained_like(NETS[name]())
    path = export_onnx(net, tmp_path / f"{name}.onnx", IMAGE_SIZE)
    assert net(torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)).abs().max() > 0.1  # outputs are not all ~0
    assert check_onnx(net, path, IMAGE_SIZE, batch=3) < 1e-4  # exported at batch 1: the batch axis is dynamic
    with torch.no_grad():  # a network that differs from the exported one is caught
        net.head.fc.bias.add_(1.0)
    assert check_onnx(net, path, IMAGE_SIZE) > 0.5


def test_export_keeps_the_model_mode(tmp_path: Path) -> None:
    net = MobileNetV1(num_classes=10, width_mult=0.25)
    export_onnx(net, tmp_path / "a.onnx", IMAGE_SIZE)
    assert net.training


def test_int8_quantisation_is_smaller_and_runs(tmp_path: Path) -> None:
    net = trained_like(MobileNetV1(num_classes=10, width_mult=0.25))
    fp32 = export_onnx(net, tmp_path / "net.onnx", IMAGE_SIZE)
    rng = np.random.default_rng(0)
    calibration = (rng.standard_normal((4, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32) for _ in range(4))
    int8 = quantize_int8(fp32, tmp_path / "net.int8.onnx", calibration)
    # int8 weights take a quarter of float32; per-channel scales and zero points, int32 biases and their
    # scales add the rest (~0.36 of the float file for this small network)
    assert int8.stat().st_size < 0.4 * fp32.stat().st_size
    # the float file holds float32 weights of every stored (BN-folded) layer
    assert fp32.stat().st_size >= flash_size(net, 4)
    x = rng.standard_normal((2, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    out = run_onnx(onnx_session(int8), x)
    assert out.shape == (2, 10) and np.isfinite(out).all()
    reference = run_onnx(onnx_session(fp32), x)
    assert np.corrcoef(out.ravel(), reference.ravel())[0, 1] > 0.9  # quantised, not broken


def test_onnx_accuracy_equals_pytorch_accuracy(tmp_path: Path) -> None:
    net = trained_like(MobileNetV1(num_classes=10, width_mult=0.25))
    path = export_onnx(net, tmp_path / "net.onnx", IMAGE_SIZE)
    images = torch.randn(24, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        predicted = net(images).argmax(1)
    labels = torch.where(torch.arange(24) < 9, predicted, (predicted + 1) % 10)  # PyTorch accuracy 9/24
    loader = DataLoader(TensorDataset(images, labels), batch_size=8)
    assert onnx_accuracy(path, loader) == pytest.approx(9 / 24)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageClassifier checkpoint after one training step on random images."""
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    model = ImageClassifier(num_classes=10, width_mult=0.25)
    data = TensorDataset(torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE), torch.randint(0, 10, (4,)))
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(model, DataLoader(data, batch_size=4))
    trainer.save_checkpoint(path)
    return path


def test_profile_main_on_a_checkpoint(checkpoint: Path, tmp_path: Path) -> None:
    onnx_out, json_out = tmp_path / "net.onnx", tmp_path / "profile.json"
    results = profile_model.main(["--ckpt", str(checkpoint), "--image_size", str(IMAGE_SIZE),
                            "--onnx", str(onnx_out), "--out", str(json_out)])
    net = ImageClassifier.load_from_checkpoint(checkpoint, map_location="cpu").net
    assert results["params"] == count_params(net)
    assert results["macs"] == count_macs(net, IMAGE_SIZE)
    assert results["flash_int8"] == flash_size(net, 1) < results["flash_fp32"]
    assert results["peak_ram_fp32"] == 4 * results["peak_ram_int8"] > 0
    assert results["arch"]["width_mult"] == 0.25 and results["arch"]["num_classes"] == 10
    assert results["onnx_max_abs_diff"] < 1e-4
    assert onnx_out.is_file() and results["onnx_bytes"] == onnx_out.stat().st_size
    assert json.loads(json_out.read_text())["macs"] == results["macs"]


def test_profile_main_from_architecture_args() -> None:
    results = profile_model.main(["--num_blocks", "6", "--head_channels", "64", "32", "--image_size", "32"])
    expected = MobileNetV1(num_classes=10, num_blocks=6, head_channels=(64, 32))
    assert results["params"] == count_params(expected)
    assert "onnx_bytes" not in results and "latency_torch_ms" not in results


def test_no_experiment_script_shadows_a_standard_library_module() -> None:
    # ``python experiments/<dir>/<script>.py`` puts that folder first on sys.path: an ``experiments/bench/profile.py``
    # would be imported by cProfile (through torch._dynamo) instead of the standard library's profile.
    experiments = Path(profile_model.__file__).parent.parent
    names = {p.stem for p in experiments.rglob("*.py")} | {p.name for p in experiments.iterdir() if p.is_dir()}
    assert {"profile_model", "depth_prune", "results"} <= names
    assert not names & set(sys.stdlib_module_names)


@pytest.mark.slow
def test_profile_int8_on_real_cifar10(real_data_dir: Path, checkpoint: Path, tmp_path: Path) -> None:
    results = profile_model.main(["--ckpt", str(checkpoint), "--image_size", str(IMAGE_SIZE), "--int8",
                            "--data_root", str(real_data_dir / "cifar10-jpg.tar.gz"),
                            "--calib_images", "32", "--eval_images", "100", "--onnx", str(tmp_path / "n.onnx")])
    assert results["eval_images"] == 100
    assert 0.0 <= results["acc_int8_onnx"] <= 1.0 and 0.0 <= results["acc_fp32_onnx"] <= 1.0
    assert results["onnx_int8_bytes"] < 0.4 * results["onnx_bytes"]
    assert Path(results["onnx_int8_path"]).is_file()
