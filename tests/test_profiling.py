"""TinyML budget: peak activation RAM and flash against hand computations, MACs, latency helpers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from experiments.bench import latency as bench_latency
from lightning_modules.deploy.profiling import (
    ActivationTrace,
    count_macs,
    count_params,
    flash_size,
    measure_latency_torch,
    peak_activation_memory,
    peak_live_elements,
    tinyml_budget,
)
from lightning_modules.models.mobilenet_v1 import MobileNetV1

pytestmark = pytest.mark.usefixtures("one_thread")


def chain(relu_inplace: bool = True) -> nn.Sequential:
    """Conv(3→4, 3×3, pad 1, no bias) + BN + ReLU + Conv(4→2, 1×1, bias)."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=relu_inplace),
        nn.Conv2d(4, 2, 1),
    )


class SkipNet(nn.Module):
    """y = relu(conv1 x) [4 ch]; z = conv2 y [2 ch]; w = conv3 z [4 ch]; out = conv4(w + y) [2 ch]."""

    def __init__(self, skip: bool = True) -> None:
        super().__init__()
        self.skip = skip
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 2, 1)
        self.conv3 = nn.Conv2d(2, 4, 1)
        self.conv4 = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.conv1(x))
        w = self.conv3(self.conv2(y))
        return self.conv4(w + y if self.skip else w)


# ------------------------------------------------------------------------------------------ peak RAM
def test_peak_ram_of_a_chain_is_the_hand_computation() -> None:
    # 8×8 input, int8 (1 byte per element). Buffers: input 3·8·8 = 192; conv1 out 4·8·8 = 256 (BN folded
    # and ReLU in place: the same buffer); conv2 out 2·8·8 = 128.
    # conv1: 192 + 256 = 448; BN, ReLU: 256; conv2: 256 + 128 = 384 → peak 448.
    assert peak_activation_memory(chain(), image_size=8) == 448
    assert peak_activation_memory(chain(), image_size=8, bytes_per_element=4) == 4 * 448


def test_out_of_place_relu_is_a_second_buffer() -> None:
    # ReLU(inplace=False) writes a new 256-element buffer: at the ReLU 256 + 256 = 512 > 448.
    assert peak_activation_memory(chain(relu_inplace=False), image_size=8) == 512


def test_held_skip_tensor_raises_the_peak() -> None:
    # 8×8 input, int8. input 192; y 4·64 = 256 (ReLU in place); z 2·64 = 128; w 256; s = w + y 256; out 128.
    # With the skip: conv1 192+256 = 448; conv2 y+z = 384; conv3 y(held)+z+w = 640;
    #                add y+w+s = 768; conv4 s+out = 384 → 768.
    # Without it:    conv1 448; conv2 384; conv3 z+w = 384; conv4 w+out = 384 → 448.
    assert peak_activation_memory(SkipNet(skip=True), image_size=8) == 768
    assert peak_activation_memory(SkipNet(skip=False), image_size=8) == 448


def test_flatten_shares_its_input_buffer() -> None:
    # input 3·4·4 = 48; conv out 4·16 = 64; flatten: the same 64; fc out 10.
    # conv: 48 + 64 = 112; flatten: 64 (not 128); fc: 64 + 10 = 74 → 112.
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(), nn.Linear(64, 10))
    assert peak_activation_memory(net, image_size=4) == 112


def test_peak_live_elements_on_a_recorded_trace() -> None:
    # a (10) → op0 → b (20) → op1 → c (5); op2 reads a and c → d (1): a is held across op1.
    trace = ActivationTrace(
        sizes={1: 10, 2: 20, 3: 5, 4: 1},
        ops=[("f", [1], [2]), ("g", [2], [3]), ("h", [1, 3], [4])],
        inputs=[1],
        outputs=[4],
    )
    assert peak_live_elements(trace) == 10 + 20 + 5  # op1: a (held) + b + c


def test_peak_ram_of_mobilenet_v1() -> None:
    # 224 px, int8: the largest layer is block 1's pointwise conv, 32·112² in + 64·112² out
    # = 401,408 + 802,816 = 1,204,224 bytes.
    assert peak_activation_memory(MobileNetV1(num_classes=1000), image_size=224) == 1_204_224


# --------------------------------------------------------------------------------------------- flash
def test_flash_of_a_chain_is_the_hand_computation() -> None:
    # conv1: 4·3·3·3 = 108 weights, BN folded in → 4 biases; conv2: 2·4 = 8 weights + 2 biases.
    # int8: (108 + 4·4 scales + 4·4 biases) + (8 + 2·4 + 2·4) = 140 + 24 = 164.
    # fp32: (108 + 4)·4 + (8 + 2)·4 = 448 + 40 = 488.
    assert flash_size(chain(), bytes_per_weight=1) == 164
    assert flash_size(chain(), bytes_per_weight=4) == 488


def test_batchnorm_folding_adds_a_bias_and_stores_no_bn_parameters() -> None:
    conv_only = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False))
    conv_bn = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
    assert flash_size(conv_only, 1) == 108 + 4 * 4  # weights + scales, no bias
    assert flash_size(conv_bn, 1) == 108 + 4 * 4 + 4 * 4  # + the folded int32 bias
    assert flash_size(conv_bn, 4) == (108 + 4) * 4


def test_batchnorm_without_a_preceding_conv_is_stored_as_scale_and_shift() -> None:
    net = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 1, bias=False))
    assert flash_size(net, 1) == 2 * 3 * 4 + (12 + 4 * 4)


def test_flash_fp32_of_mobilenet_v1_is_params_with_bn_folded() -> None:
    net = MobileNetV1(num_classes=10, width_mult=0.25)
    bn_channels = sum(m.num_features for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    # each BN's 2 parameters per channel become 1 folded bias per channel
    assert flash_size(net, 4) == 4 * (count_params(net) - bn_channels)
    assert flash_size(net, 1) < flash_size(net, 4) / 3


# ------------------------------------------------------------------------------------- MACs, budget
def test_count_macs_mobilenet_v1_paper_value() -> None:
    assert count_macs(MobileNetV1(num_classes=1000), 224) == pytest.approx(568.7e6, abs=0.1e6)


def test_tinyml_budget_and_latency_helpers() -> None:
    net = MobileNetV1(num_classes=10, width_mult=0.25)
    budget = tinyml_budget(net, image_size=32, latency=True, warmup=1, runs=2)
    assert budget["params"] == count_params(net)
    assert budget["macs"] == count_macs(net, 32)
    assert budget["peak_ram_int8"] == peak_activation_memory(net, 32)
    assert budget["peak_ram_fp32"] == 4 * budget["peak_ram_int8"]
    assert budget["flash_int8"] == flash_size(net, 1) and budget["flash_fp32"] == flash_size(net, 4)
    assert budget["latency_torch_ms"] > 0 and budget["latency_onnx_ms"] > 0 and budget["threads"] == 1
    assert "latency_torch_ms" not in tinyml_budget(net, image_size=32)
    assert net.training  # the caller's mode is kept
    result = measure_latency_torch(net, image_size=16, threads=1, warmup=0, runs=3)
    assert result["runs"] == 3 and result["threads"] == 1 and result["p90_ms"] >= result["median_ms"] > 0


def test_bench_latency_quick_setting(tmp_path) -> None:
    out = tmp_path / "bench.json"
    rows = bench_latency.main(["--image_size", "32", "--warmup", "1", "--runs", "2", "--num_classes", "10",
                               "--out", str(out)])
    assert [r["name"] for r in rows] == list(bench_latency.benchmark_nets(10))
    assert rows[0]["mac_ratio"] == 1.0 and rows[0]["torch_speedup"] == 1.0
    assert all(r["mac_ratio"] > 1 for r in rows[1:])
    for r in rows:
        assert r["torch_efficiency"] == pytest.approx(r["torch_speedup"] / r["mac_ratio"])
        assert r["onnx_ms"] > 0 and isinstance(r["onnx_target_met"], bool)
    assert out.is_file()


def test_bench_latency_fused_columns_and_rounding_rows() -> None:
    from lightning_modules.models.mobilenet_v1 import BASE_CHANNELS

    nets = bench_latency.rounding_nets(10)
    assert list(nets) == ["sparsity_0.52_r1", "sparsity_0.52_r8", "sparsity_0.77_r1", "sparsity_0.77_r8"]
    assert all(c % 8 == 0 for c in nets["sparsity_0.77_r8"].channels)
    assert any(c % 8 for c in nets["sparsity_0.77_r1"].channels)  # the unrounded counts really are not
    assert len(nets["sparsity_0.52_r1"].channels) == len(BASE_CHANNELS)
    rows = bench_latency.main(["--image_size", "32", "--warmup", "0", "--runs", "1", "--num_classes", "10",
                               "--no_onnx", "--fused", "--rounding", "--only", "sparsity_0.77_r1", "sparsity_0.77_r8"])
    assert [r["name"] for r in rows] == ["mobilenet_v1_1.0", "sparsity_0.77_r1", "sparsity_0.77_r8"]
    for r in rows:
        assert r["torch_fused_ms"] > 0 and r["torch_fused_cl_ms"] > 0
        assert r["torch_fused_efficiency"] == pytest.approx(r["torch_fused_speedup"] / r["mac_ratio"])
    assert rows[1]["channels"] != rows[2]["channels"]
    with pytest.raises(SystemExit, match="no such rows"):
        bench_latency.main(["--no_onnx", "--only", "width_0.3"])
