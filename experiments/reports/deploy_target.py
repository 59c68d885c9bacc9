"""The deployment report's firmware part: each net as Cortex-M firmware (bundle with the first test image,
build, one run in QEMU) with the figures the RESULTS table shows.

Firmware figures (:mod:`lightning_modules.deploy.cortexm`): text / data / bss from ``arm-none-eabi-size``,
flash = text + data, RAM = data + bss (tensor arena included); the arena TFLM used on the 32-bit target;
instructions of one inference counted in QEMU; the latency they give at the clock with the cycles per
instruction calibrated on MLPerf Tiny VWW (:mod:`lightning_modules.deploy.mcu_latency`), an estimate whose
ratios between nets are the instruction counts' ratios.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from datamodules.batches import float_batches
from experiments.reports.format import MISSING, kb
from lightning_modules.deploy.cortexm import BOARDS
from lightning_modules.deploy.firmware import ARENA_MARGIN
from lightning_modules.deploy.mcu_latency import MLPERF_TINY_VWW
from lightning_modules.deploy.verify import verify_firmware

#: de Leon & Atienza, *Depth Pruning with Auxiliary Networks for TinyML*, ICASSP 2022 (arXiv:2204.10546):
#: the VWW MobileNetV1 before and after the cut at block 6, deployed on an RP2040 (Cortex-M0+): model
#: size 336 → 71 KB, latency 904 → 551 ms (the abstract's "4.7× smaller, 1.6× faster").
PAPER_RP2040: dict[str, tuple[float, float]] = {"flash_kb": (336.0, 71.0), "latency_ms": (904.0, 551.0)}

def first_test_image(data: Any) -> np.ndarray:
    """The first test image of a set-up datamodule, normalised as the net sees it (CHW)."""
    return next(float_batches(data, "test", 1))[0][0].numpy()


def firmware_row(tflite_path: str | Path, out_dir: str | Path, image: np.ndarray | None = None,
                 arch: str = "cortex-m4", clock_mhz: float = MLPERF_TINY_VWW.clock_mhz,
                 margin: float = ARENA_MARGIN) -> dict[str, Any]:
    """The row's firmware figures: ``tflite_path``'s bundle (test ``image`` embedded) written into
    ``out_dir``, built for ``arch`` and run twice in QEMU by :func:`~lightning_modules.deploy.verify.
    verify_firmware` (the target's int8 output must equal the host interpreter's, the two counts each
    other; :class:`FirmwareRunError` otherwise)."""
    record = verify_firmware(tflite_path, out_dir, image=image, arch=arch, clock_mhz=clock_mhz, margin=margin)
    target = record["target"]
    return {**{k: v for k, v in target.items() if k != "calibration"}, "bundle": str(out_dir),
            "model_embedding": record["model_embedding"], "arena_size_bytes": record["arena_size_bytes"],
            "cycles_per_instruction": MLPERF_TINY_VWW.cycles_per_instruction}


# ------------------------------------------------------------------------------------ report sections
def firmware_table(rows: dict[str, dict[str, Any]]) -> list[str]:
    """One line per net that has firmware figures (``row["firmware"]``); empty when none has."""
    nets = {name: r["firmware"] for name, r in rows.items() if r.get("firmware")}
    built = [f for f in nets.values() if "error" not in f]
    if not built:
        return []
    first = built[0]
    lines = [f"| net | text KB | data KB | bss KB | flash KB (text + data) | RAM KB (data + bss) "
             f"| arena used on target KB | instructions / inference (M) | est. ms @ {first['clock_mhz']:g} MHz |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, f in nets.items():
        if "error" in f:  # did not fit the target: the reason follows the table
            lines.append(f"| {name} |" + f" {MISSING} |" * 8)
            continue
        lines.append(f"| {name} | {kb(f['text_bytes'], 1)} | {kb(f['data_bytes'], 1)} | {kb(f['bss_bytes'], 1)} "
                     f"| {kb(f['flash_bytes'], 1)} | {kb(f['ram_bytes'], 1)} | {kb(f['arena_used_bytes'], 1)} "
                     f"| {f['instructions'] / 1e6:,.2f} | {f['latency_ms_estimate']:,.1f} |")
    return lines


def paper_comparison(rows: dict[str, dict[str, Any]], baseline: str = "baseline", cut: str = "cut6") -> list[str]:
    """The paper's comparison on our nets: flash and latency of ``cut`` over ``baseline`` as ratios, beside
    the paper's RP2040 figures; empty unless both nets have firmware figures."""
    before, after = (rows.get(baseline, {}).get("firmware"), rows.get(cut, {}).get("firmware"))
    if not before or not after or "error" in before or "error" in after:
        return []
    flash = after["flash_bytes"] / before["flash_bytes"]
    latency = after["latency_ms_estimate"] / before["latency_ms_estimate"]
    (p_flash0, p_flash1), (p_ms0, p_ms1) = PAPER_RP2040["flash_kb"], PAPER_RP2040["latency_ms"]
    return [f"{cut} vs {baseline} on the {after['arch']}: flash {kb(before['flash_bytes'])} → {kb(after['flash_bytes'])} KB "
            f"(× {flash:.3f}, {1 / flash:.1f}× smaller), estimated latency {before['latency_ms_estimate']:,.0f} → "
            f"{after['latency_ms_estimate']:,.0f} ms (× {latency:.3f}, {1 / latency:.2f}× faster). The paper "
            f"(de Leon & Atienza 2022, arXiv:2204.10546; VWW on an RP2040, Cortex-M0+): {p_flash0:g} → {p_flash1:g} KB "
            f"(× {p_flash1 / p_flash0:.3f}), {p_ms0:g} → {p_ms1:g} ms (× {p_ms1 / p_ms0:.3f})."]


def firmware_section(doc: dict[str, Any]) -> list[str]:
    """The firmware lines of one deployment JSON (table, the paper comparison, how the figures were
    made); empty when the report ran without ``--firmware``."""
    table = firmware_table(doc["nets"])
    if not table:
        return []
    f = next(r["firmware"] for r in doc["nets"].values() if r.get("firmware") and "error" not in r["firmware"])
    lines = [f"Firmware ({f['arch']}, TFLM + CMSIS-NN, emulated by QEMU's {BOARDS[f['arch']]}; each net's first test image; its int8 "
             "output equals the host interpreter's): text / data / bss from `arm-none-eabi-size`; instructions "
             f"counted in QEMU; latency = instructions × {f['cycles_per_instruction']:.2f} cycles per instruction "
             f"(MLPerf Tiny VWW on a Cortex-M4 at 120 MHz, see docs/deployment.md) / {f['clock_mhz']:g} MHz, an "
             "estimate.", "", *table, ""]
    unfit = [f"- {name}: {r['firmware']['error']}." for name, r in doc["nets"].items()
             if r.get("firmware") and "error" in r["firmware"]]
    lines += unfit + [""] if unfit else []
    comparison = paper_comparison(doc["nets"])
    return lines + (comparison + [""] if comparison else [])


def firmware_line(name: str, f: dict[str, Any]) -> str:
    """One progress line of a net's firmware figures."""
    used = MISSING if f.get("arena_used_bytes") is None else f"{f['arena_used_bytes']:,}"
    return (f"{name}: firmware {f['arch']}: flash {f['flash_bytes']:,} B (text {f['text_bytes']:,} + data "
            f"{f['data_bytes']:,}), RAM {f['ram_bytes']:,} B, arena used {used} B, {f['instructions']:,} "
            f"instructions, est. {f['latency_ms_estimate']:.1f} ms at {f['clock_mhz']:g} MHz")
