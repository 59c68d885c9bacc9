"""The firmware bundle and its Cortex-M build: generated from a small int8 net, built against TFLite Micro
with CMSIS-NN, run in QEMU (emulated Cortex-M4); its int8 output equals the host TFLM interpreter's and
its instruction count repeats to the instruction.

The TFLM library is built once per session (and cached across sessions, keyed on the source archive's
SHA-256 and the core). Without the toolchain or the source archive the emulated tests skip saying what
is missing; with ``REQUIRE_REAL_DATA=1`` (CI) they fail instead."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_modules.deploy import cortexm
from lightning_modules.deploy.firmware import arena_with_margin, c_array, resolver_method
from lightning_modules.deploy.mcu_latency import MLPERF_TINY_VWW, latency_ms
from lightning_modules.models.mobilenet_v1 import MobileNetV1
from tests.conftest import REPO_ROOT
from tests.helpers.weights import trained_like
from tests.test_tflite import tflite_installed

ARCH = "cortex-m4"


def _require(message: str) -> None:
    if os.environ.get("REQUIRE_REAL_DATA") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def tflm_library() -> cortexm.TflmLibrary:
    """TFLM + CMSIS-NN for the Cortex-M4, built on first use in this session (or read from the cache)."""
    missing = cortexm.missing_toolchain()
    if missing:
        _require(f"Cortex-M toolchain incomplete: {'; '.join(missing)}")
    return cortexm.tflm_library(ARCH)


@pytest.fixture(scope="module")
def tiny_tflite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MobileNetV1 (stride-2 convs with an explicit PAD, depthwise, MEAN, FC) exported fully int8."""
    tflite_installed()
    from lightning_modules.deploy.tflite import export_int8_tflite

    torch.manual_seed(0)
    net = trained_like(MobileNetV1(num_classes=5, channels=[8, 16, 24], num_blocks=2, head_channels=(16,)))
    calibration = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    return export_int8_tflite(net, tmp_path_factory.mktemp("fw") / "tiny.tflite", calibration, 32)


# ------------------------------------------------------------------------------------------ generation
def test_resolver_methods_are_tflm_s() -> None:
    """Every builtin op TFLM's MicroMutableOpResolver registers maps to the method we generate."""
    archive = cortexm.default_bundle()
    if not archive.is_file():
        _require(f"TFLM source archive not found at {archive}")
    with tarfile.open(archive) as tar:
        header = tar.extractfile("tflite-micro/tensorflow/lite/micro/micro_mutable_op_resolver.h").read().decode()
    pairs = re.findall(r"TfLiteStatus (Add\w+)\((?:(?!TfLiteStatus ).)*?AddBuiltin\(BuiltinOperator_(\w+),", header,
                       flags=re.S)
    assert len(pairs) > 80
    assert {op: resolver_method(op) for _, op in pairs} == {op: method for method, op in pairs}


def test_c_array_and_arena_margin() -> None:
    text = c_array("g_x", bytes([0, 1, 255]))
    assert "alignas(16) const unsigned char g_x[3]" in text and "0x00, 0x01, 0xff" in text
    assert "const int8_t g_y[2] = {\n  -128, 127\n}" in c_array("g_y", [-128, 127], "int8_t")
    assert arena_with_margin(1000, 0.10) == 1104 and arena_with_margin(1000, 0.0) == 1008
    with pytest.raises(ValueError):
        arena_with_margin(1000, -0.1)


def test_latency_is_instructions_times_the_calibrated_cpi() -> None:
    cal = MLPERF_TINY_VWW
    assert cal.instructions > 0 and cal.clock_mhz == 120.0
    assert latency_ms(cal.instructions, cal.clock_mhz) == pytest.approx(cal.published_ms)
    assert latency_ms(2 * cal.instructions, 2 * cal.clock_mhz) == pytest.approx(cal.published_ms)


def test_a_file_that_is_not_tflite_is_one_error_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a model at all")
    done = subprocess.run([sys.executable, "experiments/firmware.py", "--tflite", str(bad), "--out",
                           str(tmp_path / "fw")], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"error: {bad} is not a TFLite flatbuffer (no TFL3 identifier)"]
    assert not (tmp_path / "fw").exists()


# ------------------------------------------------------------------------------------- emulated target
@pytest.fixture(scope="module")
def emulated(tflm_library: cortexm.TflmLibrary, tiny_tflite: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The CLI's full path on the tiny net: bundle, Cortex-M4 build, two QEMU runs."""
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    done = subprocess.run([sys.executable, "experiments/firmware.py", "--tflite", str(tiny_tflite), "--out", str(out),
                           "--run", "--arch", ARCH, "--repeat", "2", "--timeout_s", "300"],
                          cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return {"out": out, "record": json.loads((out / "firmware.json").read_text()), "stdout": done.stdout}


def test_bundle_holds_what_a_board_project_needs(emulated: dict) -> None:
    out, record = emulated["out"], emulated["record"]
    for name in ("main.cc", "model_data.cc", "model_data.h", "op_resolver.h", "test_image.cc", "test_image.h"):
        assert (out / name).is_file(), name
    resolver = (out / "op_resolver.h").read_text()
    assert f"MicroMutableOpResolver<{len(record['ops'])}>" in resolver
    assert sorted(re.findall(r"resolver\.(Add\w+)\(\)", resolver)) == sorted(record["resolver"].values())
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"} <= set(record["ops"])
    model = (out / "model.tflite").read_bytes()
    assert f"g_model_data[{len(model)}]" in (out / "model_data.cc").read_text()
    assert f"kTensorArenaSize = {record['arena_size_bytes']};" in (out / "model_data.h").read_text()


def test_firmware_output_equals_the_host_interpreter(emulated: dict) -> None:
    """The int8 outputs printed by the emulated Cortex-M4 (CMSIS-NN kernels) equal those of the host
    TFLM interpreter (reference kernels) on the same quantised input, computed here afresh."""
    from lightning_modules.deploy.firmware import host_output, input_image
    from lightning_modules.deploy.tflm import interpreter, quantize_input

    out, target = emulated["out"], emulated["record"]["target"]
    model = (out / "model.tflite").read_bytes()
    details = interpreter(model).get_input_details(0)
    image = quantize_input(input_image(details)[0], details)
    host = host_output(model, image)
    assert target["outputs"] == host.tolist()
    assert target["class"] == int(np.argmax(host)) and target["host_output"] == "equal"
    # the 32-bit target's arena fits the generated size, and is below the 64-bit host plan
    plan = emulated["record"]["arena_plan"]["arena_bytes"]
    assert 0 < target["arena_used_bytes"] <= plan <= target["arena_size_bytes"]
    assert target["flash_bytes"] > len(model) and target["ram_bytes"] >= target["arena_size_bytes"]


def test_instruction_count_repeats_to_the_instruction(emulated: dict, tflm_library: cortexm.TflmLibrary) -> None:
    firmware = cortexm.build_firmware(emulated["out"], tflm_library)
    counts = [cortexm.run_firmware(firmware, ARCH)["instructions"] for _ in range(2)]
    assert counts[0] == counts[1] == emulated["record"]["target"]["instructions"] > 10_000
    assert emulated["record"]["target"]["latency_ms_estimate"] == pytest.approx(latency_ms(counts[0], 120.0))


def test_a_checkpoint_becomes_a_bundle_with_its_first_test_image(tmp_path: Path) -> None:
    """``--ckpt``: the checkpoint's net exported fully int8 (calibrated on the data's training images) and
    bundled with the first test image, whose expected output is the host interpreter's."""
    tflite_installed()
    from experiments import firmware
    from lightning_modules.image_classifier import ImageClassifier
    from tests.helpers import fake_data
    from tests.helpers.weights import save_checkpoint

    root = fake_data.make_image_folder(tmp_path / "cifar", {"train": 4, "test": 2})
    module = ImageClassifier(num_classes=3, width_mult=0.25)
    trained_like(module.net)
    ckpt = save_checkpoint(module, tmp_path / "net.ckpt")
    record = firmware.main(["--ckpt", str(ckpt), "--data_root", str(root), "--calib_images", "8",
                            "--out", str(tmp_path / "bundle")])
    assert record["test_image"] == "given image" and (tmp_path / "bundle.tflite").is_file()
    assert record["model_bytes"] == (tmp_path / "bundle.tflite").stat().st_size
    assert json.loads((tmp_path / "bundle" / "firmware.json").read_text())["expected_output"] == record["expected_output"]
