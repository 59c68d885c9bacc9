"""Measure a trained net where it will run: fully int8 in the TFLite Micro interpreter on the host
(accuracy, arena, flash) and, as firmware, on an emulated Cortex-M core (output, instructions, linker
footprint). What the deployment report and the budget search hold their predictions against.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from datamodules.batches import float_batches
from lightning_modules.deploy.cortexm import (
    FirmwareRunError,
    build_firmware,
    firmware_figures,
    run_firmware,
    tflm_library,
)
from lightning_modules.deploy.firmware import ARENA_MARGIN, write_bundle
from lightning_modules.deploy.mcu_latency import MLPERF_TINY_VWW, latency_ms
from lightning_modules.deploy.profiling import tinyml_budget
from lightning_modules.deploy.tflite import export_int8_tflite
from lightning_modules.deploy.tflite_file import model_structure
from lightning_modules.deploy.tflm import TflmProcess
from lightning_modules.deploy.tflm_estimate import estimate_tflm


def deploy_net(net: nn.Module, data: Any, tflite_path: str | Path, calib_images: int = 256,
               eval_images: int | None = None) -> dict[str, Any]:
    """Export ``net`` fully int8 (calibrated on the first ``calib_images`` training images), run it in
    TFLM on ``eval_images`` test images (all: ``None``) and return measured and estimated figures."""
    net = net.eval().cpu()
    size = int(data.hparams.image_size)
    calibration = np.concatenate([x.numpy() for x, _ in float_batches(data, "train", calib_images)])
    path = export_int8_tflite(net, tflite_path, calibration, size)
    correct_fp32 = correct_int8 = agree = total = 0
    with TflmProcess(path) as tflm:  # an interpreter abort ends the child, not this run
        arena = tflm.arena()
        for images, labels in float_batches(data, "test", eval_images):
            with torch.no_grad():
                fp32 = net(images).argmax(1).numpy()
            int8 = tflm.predict(images).argmax(1)
            y = labels.numpy()
            correct_fp32 += int((fp32 == y).sum())
            correct_int8 += int((int8 == y).sum())
            agree += int((fp32 == int8).sum())
            total += len(y)
    estimate = estimate_tflm(net, size)
    old = tinyml_budget(net, size)
    row = {
        "tflite_path": str(path),
        "image_size": size,
        "calib_images": len(calibration),
        "eval_images": total,
        "fp32_acc": correct_fp32 / max(total, 1),
        "int8_acc": correct_int8 / max(total, 1),
        "argmax_agreement": agree / max(total, 1),
        **{k: arena[k] for k in ("arena_bytes", "arena_head_bytes", "arena_tail_bytes")},
        "flash_bytes": path.stat().st_size,
        "est_arena_bytes": estimate["arena_bytes"],
        "est_arena_head_bytes": estimate["arena_head_bytes"],
        "est_flash_bytes": estimate["flash_bytes"],
        "old_est_peak_ram_int8": old["peak_ram_int8"],
        "old_est_flash_int8": old["flash_int8"],
        "params": old["params"],
        "macs": old["macs"],
        "structure": model_structure(path),
    }
    row["arena_error"] = row["est_arena_bytes"] / row["arena_bytes"] - 1
    row["flash_error"] = row["est_flash_bytes"] / row["flash_bytes"] - 1
    row["old_arena_error"] = row["old_est_peak_ram_int8"] / row["arena_bytes"] - 1
    row["old_flash_error"] = row["old_est_flash_int8"] / row["flash_bytes"] - 1
    return row


def run_on_target(bundle: str | Path, expected_output: list[int], arch: str = "cortex-m4", repeat: int = 2,
                  clock_mhz: float = MLPERF_TINY_VWW.clock_mhz, timeout_s: float = 600.0) -> dict[str, Any]:
    """Build a firmware bundle for ``arch``, run it ``repeat`` times in QEMU, hold its int8 output to the
    host interpreter's (``expected_output``) and its instruction count to itself; the linker's footprint,
    the instructions of one inference and the latency they give at ``clock_mhz``."""
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    library = tflm_library(arch)
    firmware = build_firmware(bundle, library)
    runs = [run_firmware(firmware, arch, timeout_s=timeout_s) for _ in range(repeat)]
    first = runs[0]
    if first["outputs"] != expected_output:
        raise FirmwareRunError(f"the firmware's int8 output {first['outputs']} differs from the host TFLM "
                               f"interpreter's {expected_output}")
    counts = [r["instructions"] for r in runs]
    if len(set(counts)) != 1:
        raise FirmwareRunError(f"instruction counts differ between identical runs: {counts}")
    return {"arch": arch, **firmware_figures(firmware, first), "runs": len(runs), "clock_mhz": clock_mhz,
            "latency_ms_estimate": latency_ms(first["instructions"], clock_mhz),
            "calibration": MLPERF_TINY_VWW.as_dict(), "library_bundle_sha256": library.bundle_sha256}


def verify_firmware(tflite_path: str | Path, out_dir: str | Path, image: np.ndarray | None = None,
                    arch: str = "cortex-m4", clock_mhz: float = MLPERF_TINY_VWW.clock_mhz,
                    margin: float = ARENA_MARGIN, repeat: int = 2) -> dict[str, Any]:
    """The firmware bundle of an int8 ``.tflite`` (one embedded test ``image``) and its emulated run:
    the bundle's record with ``target`` = :func:`run_on_target`'s figures."""
    record = write_bundle(tflite_path, out_dir, image=image, margin=margin)
    record["target"] = run_on_target(out_dir, record["expected_output"], arch, repeat, clock_mhz)
    return record


def measure_on_target(tflite_path: str | Path, out_dir: str | Path, image: np.ndarray, arch: str = "cortex-m4",
                      clock_mhz: float = MLPERF_TINY_VWW.clock_mhz) -> dict[str, Any]:
    """:func:`verify_firmware` with ``image`` embedded, its record kept as ``firmware.json`` in the bundle;
    the figures a budget compares: instructions, latency at ``clock_mhz`` and the linker's footprint."""
    record = verify_firmware(tflite_path, out_dir, image=image, arch=arch, clock_mhz=clock_mhz)
    (Path(out_dir) / "firmware.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    target = record["target"]
    return {"instructions": target["instructions"], "latency_ms": target["latency_ms_estimate"],
            "firmware": {k: target[k] for k in ("arch", "flash_bytes", "ram_bytes", "text_bytes", "data_bytes",
                                                 "bss_bytes", "arena_used_bytes", "stack_used_bytes", "clock_mhz")},
            "firmware_dir": str(out_dir)}
