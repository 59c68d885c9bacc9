"""The Cortex-M instruction-count model (:mod:`lightning_modules.deploy.mcu_cost`): its work terms on a
small hand-built network, held to the formulas and to PyTorch's own convolution; and its prediction held
to the emulated count of real firmware for a network outside the fit (converted, built against TFLM +
CMSIS-NN and run in QEMU here). The emulated test skips as ``tests/test_firmware.py``'s do when the
toolchain or the converter is missing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.deploy import cortexm
from lightning_modules.deploy.mcu_cost import (
    COEFFICIENTS,
    GRAPH_TERMS,
    coefficients,
    op_features,
    op_instructions,
    op_terms,
    predict_graph_instructions,
    predict_instructions,
)
from lightning_modules.deploy.tflm_estimate import network_graph, same_padding
from tests.test_firmware import ARCH, tflm_library  # noqa: F401  (the session's TFLM library fixture)
from tests.test_tflite import tflite_installed

#: Largest |predicted / emulated − 1| on a network outside the fit. The held-out networks of the fit are
#: within 0.3 % (``mcu_cost.FIT_NOTES``); the margin covers kernels whose branches depend on the values.
TOLERANCE = 0.02
SIZE = 10


class Tiny(nn.Module):
    """Stem 3×3 (27-element columns: six groups of four and three left over), a depthwise 3×3 on 10
    channels (two left over), a 1×1 convolution from them, pooling, FC; padding 1 everywhere, which is
    TensorFlow's SAME at stride 1 (the kernels pad, no PAD op)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 10, 3, padding=1, bias=False), nn.BatchNorm2d(10), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(10, 10, 3, padding=1, groups=10, bias=False), nn.BatchNorm2d(10),
                                nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(10, 6, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU())
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pw(self.dw(self.stem(x))).mean((2, 3)))


@pytest.fixture(scope="module")
def tiny_graph():
    return network_graph(Tiny().eval(), SIZE)


def test_terms_are_the_kernels_work(tiny_graph) -> None:
    ops = {op.kind: op for op in tiny_graph.plan.ops if op.kind != "CONV_2D"}
    stem, pw = [op for op in tiny_graph.plan.ops if op.kind == "CONV_2D"]
    s = op_terms(stem)
    assert s["CONV_2D:kxk_macs"] + s["CONV_2D:kxk_tail_macs"] + s["CONV_2D:kxk_odd_macs"] == SIZE * SIZE * 10 * 27
    assert s["CONV_2D:kxk_tail_macs"] == SIZE * SIZE * 10 * 3 and s["CONV_2D:kxk_out"] == SIZE * SIZE * 10
    assert s["CONV_2D:kxk_im2col"] == SIZE * SIZE * 27 and s["CONV_2D:kxk_op"] == 1
    p = op_terms(pw)
    assert p["CONV_2D:1x1_macs4"] == SIZE * SIZE * 6 * 8 and p["CONV_2D:1x1_tail_macs"] == SIZE * SIZE * 6 * 2
    assert p["CONV_2D:1x1_macs16"] == p["CONV_2D:1x1_odd_pixel_macs"] == p["CONV_2D:1x1_odd_channel_macs"] == 0
    assert p["CONV_2D:1x1_weights"] == 10 * 6
    assert op_terms(ops["FULLY_CONNECTED"])["FULLY_CONNECTED:macs"] == 6 * 5
    assert op_terms(ops["MEAN"])["MEAN:in"] == 6 * SIZE * SIZE
    assert [op.kind for op in tiny_graph.plan.ops] == ["CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "MEAN",
                                                       "FULLY_CONNECTED"]


def _taps_by_torch(size: int, kernel: int, stride: int, before: int, after: int) -> int:
    """Kernel positions inside the input over all outputs: a convolution of ones over ones, zero-padded."""
    ones = F.pad(torch.ones(1, 1, size, size), (before, after, before, after))
    return int(F.conv2d(ones, torch.ones(1, 1, kernel, kernel), stride=stride).sum())


def test_depthwise_taps_skip_the_padding(tiny_graph) -> None:
    """The 3×3 depthwise kernel skips taps in the padding: its terms count the taps inside the input,
    as a convolution of ones with the same padding does."""
    dw = next(op for op in tiny_graph.plan.ops if op.kind == "DEPTHWISE_CONV_2D")
    terms = op_terms(dw)
    taps = _taps_by_torch(SIZE, 3, 1, 1, 1)
    assert taps < SIZE * SIZE * 9
    assert terms["DEPTHWISE_CONV_2D:3x3_taps"] == 8 * taps and terms["DEPTHWISE_CONV_2D:3x3_tail_taps"] == 2 * taps
    assert terms["DEPTHWISE_CONV_2D:3x3_pixels"] == SIZE * SIZE


@pytest.mark.parametrize("size,kernel,stride", [(10, 3, 2), (11, 3, 2), (7, 5, 1), (9, 5, 2), (8, 1, 2), (6, 7, 2)])
def test_valid_taps_under_same_padding(size: int, kernel: int, stride: int) -> None:
    from lightning_modules.deploy.mcu_cost import _valid_taps

    before, after = same_padding(size, kernel, stride)
    out = math.ceil(size / stride)
    assert _valid_taps(size, out, kernel, stride) ** 2 == _taps_by_torch(size, kernel, stride, before, after)
    valid_out = (size - kernel) // stride + 1  # VALID (an explicit PAD before the op): every tap inside
    if valid_out > 0:
        assert _valid_taps(size, valid_out, kernel, stride) == valid_out * kernel


def test_graph_features_and_prediction_add_up(tiny_graph) -> None:
    features = op_features(tiny_graph)
    assert features[GRAPH_TERMS[0]] == len(tiny_graph.plan.ops) and features[GRAPH_TERMS[1]] == 1
    assert features["CONV_2D:1x1_op"] == features["CONV_2D:kxk_op"] == 1
    if not COEFFICIENTS:
        pytest.skip("no fitted table")
    table = coefficients(ARCH)
    per_op = op_instructions(tiny_graph, ARCH)
    expected = sum(per_op) + table[GRAPH_TERMS[0]] * len(per_op) + table[GRAPH_TERMS[1]]
    assert predict_graph_instructions(tiny_graph, ARCH) == round(expected)
    assert all(n > 0 for n in per_op)


def test_a_core_without_a_table_is_an_error() -> None:
    with pytest.raises(ValueError, match="no instruction-count table for cortex-m55.*fit_mcu_cost.py --arch"):
        coefficients("cortex-m55")
    with pytest.raises(ValueError, match="cortex-m55"):
        predict_instructions(Tiny(), SIZE, arch="cortex-m55")


def test_more_work_predicts_more_instructions() -> None:
    from lightning_modules.models.mobilenet_v1 import MobileNetV1

    if ARCH not in COEFFICIENTS:
        pytest.skip("no fitted table")
    counts = [predict_instructions(MobileNetV1(num_classes=10, width_mult=w).eval(), 32) for w in (0.25, 0.5)]
    assert 0 < counts[0] < counts[1]


# ------------------------------------------------------------------------------------- emulated target
def test_prediction_is_within_tolerance_of_the_emulated_firmware(
        tflm_library: cortexm.TflmLibrary, tmp_path: Path) -> None:  # noqa: F811
    """A one-shot-pruned MobileNetV1 cut after block 4 (odd widths 13, 26, 51, 51, 102), which the fit
    never saw: predicted from the PyTorch network within :data:`TOLERANCE` of the instructions the
    deployed firmware executes in QEMU."""
    tflite_installed()
    from experiments.bench.fit_mcu_cost import NETS, build_net
    from lightning_modules.deploy.firmware import write_bundle
    from lightning_modules.deploy.tflite import export_int8_tflite

    name = "mnv1_pruned0.6_cut4_32px"
    assert NETS[name].held_out and NETS[name].image_size == 32
    net = build_net(name)
    calibration = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    tflite = export_int8_tflite(net, tmp_path / "net.tflite", calibration, 32)
    write_bundle(tflite, tmp_path / "bundle")
    run = cortexm.run_firmware(cortexm.build_firmware(tmp_path / "bundle", tflm_library), ARCH)
    predicted = predict_instructions(net, 32, arch=ARCH)
    error = predicted / run["instructions"] - 1
    assert math.isfinite(error) and abs(error) <= TOLERANCE, (predicted, run["instructions"], f"{error:+.2%}")
