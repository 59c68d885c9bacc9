"""Every network deploys to TFLite Micro or is refused with the op and the layer: export-time rewrites
that compute the same function, the op/scale preflight, and an interpreter abort contained in a child
process."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from torch import nn

from lightning_modules.deploy.tflm_compat import HardSigmoidRelu6, ZeroPadMaxPool, bad_scales, tflm_friendly
from tests.helpers.weights import trained_like
from tests.test_tflite import tflite_installed


@pytest.mark.parametrize("name", ["mobilenetv3_small_050", "resnet10t"])
def test_rewrites_compute_the_same_function(name: str) -> None:
    torch.manual_seed(0)
    net = trained_like(timm.create_model(name, num_classes=10))
    friendly, changed = tflm_friendly(net, 64)
    kinds = {type(m) for m in friendly.modules()}
    assert changed and not any(isinstance(m, nn.Hardsigmoid) for m in friendly.modules())
    assert (HardSigmoidRelu6 in kinds) == (name == "mobilenetv3_small_050")
    assert (ZeroPadMaxPool in kinds) == (name == "resnet10t")
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(friendly(x), net(x), rtol=1e-5, atol=1e-5)
    assert any(isinstance(m, nn.Hardsigmoid) for m in net.modules()) == (name == "mobilenetv3_small_050")


def test_max_pool_after_a_signed_input_keeps_its_padding() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(3, 2, 1))  # conv output can be negative
    friendly, changed = tflm_friendly(net, 16)
    assert changed == [] and isinstance(friendly[1], nn.MaxPool2d)


def test_scale_check() -> None:
    assert bad_scales([0.02, 1e-6]) == []
    assert bad_scales([float("inf"), float("nan"), 0.0, -1.0, 1.3e36]) != []
    assert len(bad_scales([float("inf"), float("nan"), 0.0, -1.0, 1.3e36])) == 5


def test_interpreter_op_list_is_read_from_the_runtime() -> None:
    tflite_installed()
    from lightning_modules.deploy.tflm_compat import interpreter_ops

    ops = interpreter_ops()
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "HARD_SWISH", "LOGISTIC", "MUL", "ADD", "MEAN", "PAD"} <= ops
    assert "RELU_0_TO_1" not in ops


def _convert_raw(net: nn.Module, path: Path, size: int = 16) -> tuple[Path, Path]:
    """Convert without the rewrites or the preflight (what a network gives the converter as it is)."""
    from lightning_modules.deploy.export import export_onnx
    from lightning_modules.deploy.tflite import fold_constants, onnx_to_int8_tflite

    onnx_path = fold_constants(export_onnx(net, path.with_suffix(".onnx"), size))
    calibration = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    return onnx_to_int8_tflite(onnx_path, path, calibration), onnx_path


class _GateNet(nn.Module):
    """A squeeze-excite-like gate with hard-sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gate = nn.Hardsigmoid()
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = x * self.gate(x)
        return self.fc(x.mean((2, 3)))


def test_unsupported_op_is_refused_with_op_and_layer(tmp_path: Path) -> None:
    tflite_installed()
    from lightning_modules.deploy.tflite import export_int8_tflite
    from lightning_modules.deploy.tflm import TflmProcess
    from lightning_modules.deploy.tflm_compat import NotDeployable, preflight

    torch.manual_seed(0)
    net = _GateNet().eval()
    raw, onnx_path = _convert_raw(net, tmp_path / "raw.tflite")
    with pytest.raises(NotDeployable, match=r"op RELU_0_TO_1 \(layer gate, tensor .*no TFLite Micro kernel"):
        preflight(raw, onnx_path)
    # rewritten at export, the same network converts to supported ops, runs, and agrees with PyTorch
    path = export_int8_tflite(net, tmp_path / "net.tflite", np.random.default_rng(0).standard_normal(
        (8, 3, 16, 16)).astype(np.float32), 16)
    x = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with TflmProcess(path) as tflm, torch.no_grad():
        assert (tflm.predict(x).argmax(1) == net(x).argmax(1).numpy()).mean() >= 0.75


def test_interpreter_abort_is_an_error_naming_the_op(tmp_path: Path) -> None:
    """A padded max-pool on a signed input keeps PyTorch's −∞ padding: calibration gives the next
    convolution a scale of ~1e36 and the preflight refuses it. Whether the interpreter itself then aborts
    depends on its build, so the abort is made certain here: the child is killed with SIGABRT while it
    holds the model, and this process gets an InterpreterCrashed that says so and names the broken scale."""
    tflite_installed()
    from lightning_modules.deploy.tflm import InterpreterCrashed, TflmProcess
    from lightning_modules.deploy.tflm_compat import NotDeployable, preflight

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(3, 2, 1), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    raw, onnx_path = _convert_raw(net, tmp_path / "raw.tflite")
    with pytest.raises(NotDeployable, match=r"quantisation scale .*e\+3\d"):
        preflight(raw, onnx_path)
    with TflmProcess(raw) as tflm:
        os.kill(tflm.proc.pid, signal.SIGABRT)
        with pytest.raises(InterpreterCrashed, match=r"TFLite Micro interpreter failed .*SIGABRT.*quantisation scale"):
            tflm.arena()
