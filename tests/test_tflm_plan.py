"""TFLite Micro's memory plan and the arena/flash estimator, held to the real interpreter.

The grid: MobileNetV1 at widths {0.25, 0.35, 0.5, 1.0} × {32, 64, 96, 128} px, odd channel counts and
sizes, cuts after blocks {3, 6, 10}, and timm networks (mobilenetv3_small_050, resnet10t,
efficientnet_b0, whole and cut). None of these was used to set the estimator's constants (those come
from the interpreter's sources and from networks outside the grid: ``tflm_plan.FIXED_BYTES``,
``tflite_flash.FLASH_BYTES``). Weights are random (memory does not depend on them) and calibration uses
two random images. A representative subset runs in CI; the rest of the grid is marked ``slow`` and runs
with ``TFLM_FULL_GRID=1``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lightning_modules.backbones.timm import timm_network
from lightning_modules.deploy.tflm_plan import PlanBuffer, greedy_offsets, greedy_plan, planner_order
from lightning_modules.models.mobilenet_v1 import MobileNetV1
from tests.helpers.weights import trained_like
from tests.test_tflite import tflite_installed

TOLERANCE = 0.01  # arena and flash: estimate within 1 % of TFLM's figure
#: Flash of a model under 8 KB (one block): its tensor names lack the converter's ``_<index>`` suffixes
#: that the fitted mean name lengths include, about 100 B of a 5 KB file.
TINY_FLASH_BYTES, TINY_FLASH_TOLERANCE = 8 * 1024, 0.02


# ------------------------------------------------------------------------------------ planner maths
def test_equal_sizes_place_the_later_buffer_first() -> None:
    # TFLM copies buffers back to front and sorts them stably by size: among equal sizes the later first
    assert planner_order([16, 32, 16, 16]) == [1, 3, 2, 0]
    # b0 and b1 (equal sizes) overlap in time; b1 is placed first (offset 0), b0 after it
    assert greedy_offsets([PlanBuffer(64, 0, 1), PlanBuffer(64, 1, 2)]) == [64, 0]


def test_tie_order_decides_the_peak() -> None:
    # Order b2, b1, b3, b0 (ties: later first). b2 at 0; b1 (alive with b2) at 48; b3 (alive with b1 only)
    # at 0; b0 (alive with b3 at 0 and b1 at 48: the 16-byte gap is too small) at 96: 128 B. Placing
    # equal sizes earliest first would give 112 B, which is not what TFLM allocates.
    buffers = [PlanBuffer(32, 1, 2), PlanBuffer(48, 0, 4), PlanBuffer(48, 3, 3), PlanBuffer(32, 1, 1)]
    assert greedy_offsets(buffers) == [96, 48, 0, 0]
    assert greedy_plan(buffers) == 128


def test_greedy_plan_reuses_dead_buffers_and_aligns() -> None:
    assert greedy_plan([(100, 0, 0), (60, 0, 1), (100, 1, 1)]) == 112 + 64
    assert greedy_plan([(16, 0, 2), (16, 0, 2), (32, 0, 2)]) == 64
    assert greedy_plan([]) == 0


# ------------------------------------------------------------------------------------- the grid
def mnv1(width: float = 1.0, blocks: int = 13, **kw) -> Callable[[], nn.Module]:
    return lambda: MobileNetV1(num_classes=10, width_mult=width, num_blocks=blocks, **kw)


def timm_net(name: str, cut: int | None = None) -> Callable[[], nn.Module]:
    return functools.partial(timm_network, name, 10, cut)


ODD = [7, 13, 21, 19, 37, 45]  # stem + 5 blocks, odd widths
GRID: dict[str, tuple[Callable[[], nn.Module], int]] = {
    **{f"mnv1_w{w:g}_{s}px": (mnv1(w), s) for w in (0.25, 0.35, 0.5, 1.0) for s in (32, 64, 96, 128)},
    "mnv1_1block_w0.25_32px": (mnv1(0.25, 1), 32),
    "mnv1_odd_channels_45px": (mnv1(channels=ODD, blocks=5), 45),
    "mnv1_odd_channels_head_77px": (mnv1(channels=ODD, blocks=5, head_channels=(29, 11)), 77),
    **{f"mnv1_w0.5_cut{k}_64px": (mnv1(0.5, k, head_channels=(64, 32)), 64) for k in (3, 6, 10)},
    "mobilenetv3_small_050_64px": (timm_net("mobilenetv3_small_050"), 64),
    "mobilenetv3_small_050_cut4_64px": (timm_net("mobilenetv3_small_050", 4), 64),
    "resnet10t_64px": (timm_net("resnet10t"), 64),
    "resnet10t_cut2_64px": (timm_net("resnet10t", 2), 64),
    "efficientnet_b0_64px": (timm_net("efficientnet_b0"), 64),
    "efficientnet_b0_cut6_64px": (timm_net("efficientnet_b0", 6), 64),
}
#: Run in CI (every family, a tie case, odd shapes, a cut); the rest of GRID is marked slow.
CI_CASES = ("mnv1_1block_w0.25_32px", "mnv1_w0.35_64px", "mnv1_odd_channels_45px", "mnv1_w0.5_cut6_64px",
            "mobilenetv3_small_050_cut4_64px", "resnet10t_cut2_64px")


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], dict]:
    """Convert a grid case once per test session: its net, size, ``.tflite`` path and TFLM's arena.
    ``TFLM_GRID_CACHE=DIR`` keeps the conversions in DIR across local runs (``<case>.tflite``; empty the
    folder after changing the export)."""
    cache: dict[str, dict] = {}
    keep = os.environ.get("TFLM_GRID_CACHE")

    def get(case: str) -> dict:
        if case not in cache:
            from lightning_modules.deploy.tflite import export_int8_tflite
            from lightning_modules.deploy.tflm import tflm_arena

            build, size = GRID[case]
            torch.manual_seed(0)
            net = trained_like(build())
            folder = Path(keep) if keep else tmp_path_factory.mktemp("grid")
            path = folder / f"{case}.tflite"
            if not path.is_file():
                calibration = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
                export_int8_tflite(net, path, calibration, size)
            cache[case] = {"net": net, "size": size, "path": path, "tflm": tflm_arena(path)}
        return cache[case]

    return get


def _cases() -> list:
    # the rest of the grid converts 22 more nets (minutes each on two cores): opt in with TFLM_FULL_GRID=1
    full = pytest.mark.skipif(not os.environ.get("TFLM_FULL_GRID"), reason="full TFLM grid: set TFLM_FULL_GRID=1")
    return [pytest.param(c, id=c, marks=() if c in CI_CASES else (pytest.mark.slow, full)) for c in GRID]


@pytest.mark.parametrize("case", _cases())
def test_estimate_matches_tflm(case: str, converted: Callable[[str], dict]) -> None:
    """From the PyTorch network alone: arena and flash within 1 % of what TFLM allocates and the
    ``.tflite`` weighs; the activation plan (head) to the byte."""
    tflite_installed()
    from lightning_modules.deploy.tflm_estimate import estimate_tflm

    got = converted(case)
    tflm, path = got["tflm"], Path(got["path"])
    est = estimate_tflm(got["net"], got["size"])
    assert est["arena_head_bytes"] == tflm["arena_head_bytes"], (case, est, tflm)
    assert abs(est["arena_bytes"] / tflm["arena_bytes"] - 1) <= TOLERANCE, (case, est, tflm)
    size = path.stat().st_size
    flash_tolerance = TOLERANCE if size >= TINY_FLASH_BYTES else TINY_FLASH_TOLERANCE
    assert abs(est["flash_bytes"] / size - 1) <= flash_tolerance, (case, est, size)


@pytest.mark.parametrize("case", _cases())
def test_plan_of_the_converted_model_matches_tflm(case: str, converted: Callable[[str], dict]) -> None:
    """From the ``.tflite``: the head to the byte, the whole arena within 0.1 %."""
    tflite_installed()
    from lightning_modules.deploy.tflm_plan import plan_tflite

    got = converted(case)
    plan, tflm = plan_tflite(got["path"]), got["tflm"]
    assert plan["arena_head_bytes"] == tflm["arena_head_bytes"], (case, plan, tflm)
    assert abs(plan["arena_bytes"] / tflm["arena_bytes"] - 1) <= 0.001, (case, plan, tflm)
    assert plan["flash_bytes"] == Path(got["path"]).stat().st_size


@pytest.mark.parametrize("case", _cases())
def test_predicted_tensor_kinds_are_the_converted_models(case: str, converted: Callable[[str], dict]) -> None:
    """The flash estimate prices each tensor's name by the op writing it: the predicted graph has, kind by
    kind, as many tensors as the ``.tflite``."""
    tflite_installed()
    from collections import Counter

    from experiments.bench.fit_tflite_flash import measured_names
    from lightning_modules.deploy.tflite_flash import tensor_kinds
    from lightning_modules.deploy.tflm_estimate import network_graph

    got = converted(case)
    predicted = Counter(tensor_kinds(network_graph(got["net"], got["size"])))
    real = Counter({kind: len(sizes) for kind, sizes in measured_names(Path(got["path"])).items()})
    assert predicted == real, case


def test_flatbuffer_strings_and_buffers_take_their_prefix_and_alignment() -> None:
    from lightning_modules.deploy.tflite_flash import buffer_padding, stored_name_bytes

    # a name: 4-byte length, the characters, a terminating zero, padded to 4 bytes
    assert [stored_name_bytes(n) for n in (0, 2, 3, 4, 7, 8)] == [8, 8, 8, 12, 12, 16]
    # a constant buffer: 4-byte length, its data starting on 16 bytes
    assert [buffer_padding(n) for n in (8, 12, 16, 28, 29)] == [8, 4, 16, 4, 19]
