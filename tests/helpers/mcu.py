"""The Cortex-M toolchain and small int8 models for the firmware tests (skip, or fail with
``REQUIRE_REAL_DATA=1``, when the toolchain, the TFLM sources or the ``tflite`` extra are missing)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_modules.deploy import cortexm
from lightning_modules.deploy.tflite_file import MissingDependency, require_tflite
from lightning_modules.models.mobilenet_v1 import MobileNetV1
from tests.helpers.weights import trained_like


def require(message: str) -> None:
    """Skip with ``message``, or fail with it when ``REQUIRE_REAL_DATA=1`` (CI)."""
    if os.environ.get("REQUIRE_REAL_DATA") == "1":
        pytest.fail(message)
    pytest.skip(message)


def require_tflite_extra() -> None:
    try:
        require_tflite()
    except MissingDependency as err:
        pytest.skip(f"optional dependency group not installed: {err}")


def library_or_skip(arch: str = "cortex-m4") -> cortexm.TflmLibrary:
    """TFLM + CMSIS-NN for ``arch`` (built on first use, then read from the cache)."""
    missing = cortexm.missing_toolchain()
    if missing:
        require(f"Cortex-M toolchain incomplete: {'; '.join(missing)}")
    return cortexm.tflm_library(arch)


def int8_mobilenet(path: Path, channels: list[int], num_blocks: int, image_size: int = 32,
                   head_channels: tuple[int, ...] = ()) -> Path:
    """A MobileNetV1 with O(1) outputs (:func:`trained_like`) exported fully int8 to ``path``."""
    require_tflite_extra()
    from lightning_modules.deploy.tflite import export_int8_tflite

    torch.manual_seed(0)
    net = trained_like(MobileNetV1(num_classes=5, channels=channels, num_blocks=num_blocks,
                                   head_channels=head_channels))
    calibration = np.random.default_rng(0).standard_normal((16, 3, image_size, image_size)).astype(np.float32)
    return export_int8_tflite(net, path, calibration, image_size)
