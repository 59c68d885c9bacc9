"""``experiments/reports/deploy.py --firmware`` end to end on two tiny real runs trained on an Imagenette-
layout folder at 40 px (not CIFAR-10, not 32 px: the report reads both from the checkpoints): int8 export,
TFLM accuracy, then each net as firmware built against TFLM + CMSIS-NN and run in QEMU (emulated
Cortex-M4). The row's footprint is the linker's, the target's output is the host interpreter's, and the
RESULTS section has the firmware table and the cut6 / baseline comparison. Skips without the toolchain or
the ``tflite`` extra, as :mod:`tests.test_firmware` does."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from experiments import train
from experiments.reports import deploy
from lightning_modules.deploy.mcu_latency import latency_ms
from tests.helpers import fake_data
from tests.helpers.mcu import library_or_skip, require_tflite_extra

IMAGE_SIZE = 40
CLOCK_MHZ = 80.0


def _train(data: Path, out: Path, run_id: str, *extra: str) -> Path:
    """One epoch of a MobileNetV1-0.25 with the experiment CLI (which saves the datamodule's class path)."""
    summary = train.main([
        "--data", "datamodules.ImagenetteDataModule", "--data.root", str(data), "--data.image_size", str(IMAGE_SIZE),
        "--data.batch_size", "6", "--data.num_workers", "0", "--model.width_mult", "0.25", *extra,
        "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(out),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.logger.init_args.id", run_id])
    return summary.parent / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    require_tflite_extra()
    library_or_skip("cortex-m4")  # built (or read from the cache) before the timed part starts
    tmp = tmp_path_factory.mktemp("deploy-fw")
    data = fake_data.make_imagenette_folder(tmp / "src", n_train=6, n_val=2).parent
    baseline = _train(data, tmp / "runs", "base")
    cut = _train(data, tmp / "runs", "cut", "--model.num_blocks", "6", "--model.head_channels", "[16]")
    out = tmp / "docs" / "deploy_imagenette_40.json"
    doc = deploy.main(["--net", f"baseline={baseline}", "--net", f"cut6={cut}", "--calib_images", "8",
                       "--out_dir", str(tmp / "deploy"), "--out", str(out), "--firmware", "--arch", "cortex-m4",
                       "--clock_mhz", str(CLOCK_MHZ)])
    return {"doc": doc, "json": out, "tmp": tmp}


def test_the_report_reads_data_and_size_from_the_checkpoints(report: dict) -> None:
    for name, row in report["doc"]["nets"].items():
        assert row["dataset"] == "ImagenetteDataModule" and row["image_size"] == IMAGE_SIZE, name
        assert row["eval_images"] == 6  # the val split: 3 classes × 2
        bundle = json.loads((Path(row["firmware"]["bundle"]) / "bundle.json").read_text())
        assert bundle["input_shape"] == [1, IMAGE_SIZE, IMAGE_SIZE, 3]
    assert json.loads(report["json"].read_text())["nets"].keys() == {"baseline", "cut6"}


def test_firmware_figures_are_the_linker_s_and_the_target_s(report: dict) -> None:
    for name, row in report["doc"]["nets"].items():
        f = row["firmware"]
        elf = Path(f["bundle"]) / "build-cortex-m4" / "firmware.elf"
        sizes = subprocess.run(["arm-none-eabi-size", "-B", str(elf)], capture_output=True, text=True,
                               check=True).stdout.splitlines()[1].split()
        assert [f["text_bytes"], f["data_bytes"], f["bss_bytes"]] == [int(s) for s in sizes[:3]], name
        assert f["flash_bytes"] == f["text_bytes"] + f["data_bytes"] > row["flash_bytes"]  # holds the .tflite
        assert f["ram_bytes"] == f["data_bytes"] + f["bss_bytes"] >= f["arena_size_bytes"]
        assert 0 < f["arena_used_bytes"] <= f["arena_size_bytes"]
        assert f["instructions"] > 0 and f["latency_ms_estimate"] == pytest.approx(latency_ms(f["instructions"], CLOCK_MHZ))
        assert f["host_output"] == "equal"


def test_the_target_output_is_the_host_interpreter_s_on_the_first_test_image(report: dict) -> None:
    """Recomputed here: the first test image of the checkpoint's datamodule, quantised, through the host
    TFLM interpreter, against the outputs the emulated Cortex-M4 printed."""
    from experiments.reports.deploy_target import first_test_image
    from experiments.run.checkpoint_io import checkpoint_datamodule
    from lightning_modules.deploy.firmware import host_output, input_image
    from lightning_modules.deploy.tflm import interpreter, quantize_input

    for name, row in report["doc"]["nets"].items():
        data = checkpoint_datamodule(row["checkpoint"], batch_size=4, num_workers=0)
        data.setup("test")
        model = Path(row["tflite_path"]).read_bytes()
        details = interpreter(model).get_input_details(0)
        image = quantize_input(input_image(details, first_test_image(data))[0], details)
        host = host_output(model, image)
        assert row["firmware"]["outputs"] == host.tolist(), name
        assert row["firmware"]["class"] == int(np.argmax(host))


def test_results_section_has_the_firmware_table_and_the_paper_comparison(report: dict) -> None:
    nets = report["doc"]["nets"]
    lines = deploy.deployment_sections(report["json"].parent)
    text = "\n".join(lines)
    assert "| net | text KB | data KB | bss KB | flash KB (text + data)" in text
    assert f"est. ms @ {CLOCK_MHZ:g} MHz" in text
    for name in nets:
        assert sum(line.startswith(f"| {name} |") for line in lines) == 2  # the TFLM table and the firmware one
    flash = nets["cut6"]["firmware"]["flash_bytes"] / nets["baseline"]["firmware"]["flash_bytes"]
    latency = nets["cut6"]["firmware"]["instructions"] / nets["baseline"]["firmware"]["instructions"]
    comparison = [line for line in lines if line.startswith("cut6 vs baseline")]
    assert len(comparison) == 1
    assert f"(× {flash:.3f}," in comparison[0] and f"(× {latency:.3f}," in comparison[0]
    assert "arXiv:2204.10546" in comparison[0] and "336 → 71 KB" in comparison[0]


def test_a_net_too_large_for_the_flash_is_a_row_of_dashes_and_its_reason() -> None:
    """A net whose model exceeds the linker script's flash is a result of the report, not a failure: its
    firmware row holds only the reason, the table shows dashes and the reason follows it; the paper
    comparison needs both nets built."""
    from experiments.reports.deploy_target import firmware_section

    built = {"arch": "cortex-m4", "text_bytes": 300_000, "data_bytes": 2_048, "bss_bytes": 40_960,
             "flash_bytes": 302_048, "ram_bytes": 43_008, "arena_used_bytes": 30_720, "instructions": 4_000_000,
             "clock_mhz": 120.0, "latency_ms_estimate": 101.0, "cycles_per_instruction": 3.03}
    reason = "the model (5,015,920 bytes) is larger than the flash of mps2.ld (4,194,304 bytes)"
    doc = {"nets": {"baseline": {"firmware": {"arch": "cortex-m4", "error": reason}}, "cut6": {"firmware": built}}}
    lines = firmware_section(doc)
    assert "| baseline | — | — | — | — | — | — | — | — |" in lines
    assert f"- baseline: {reason}." in lines
    assert "| cut6 | 293.0 | 2.0 | 40.0 | 295.0 | 42.0 | 30.0 | 4.00 | 101.0 |" in lines
    assert not [line for line in lines if line.startswith("cut6 vs baseline")]
