"""Large models in the firmware bundle: a flatbuffer over the ``.incbin`` threshold is included by the
assembler instead of written out as a C array, builds, runs in QEMU (emulated Cortex-M4) and gives the
host TFLM interpreter's int8 output; a model or firmware larger than the linker script's flash is one
error naming both sizes. Skips without the toolchain as :mod:`tests.test_firmware` does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lightning_modules.deploy import cortexm
from lightning_modules.deploy.firmware import INCBIN_ABOVE, MCU_FILES, write_bundle
from tests.helpers.mcu import int8_mobilenet, library_or_skip

ARCH = "cortex-m4"


@pytest.fixture(scope="module")
def tflm_library() -> cortexm.TflmLibrary:
    return library_or_skip(ARCH)


@pytest.fixture(scope="module")
def tiny_tflite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MobileNetV1 (tens of KB int8)."""
    return int8_mobilenet(tmp_path_factory.mktemp("tiny") / "tiny.tflite", [8, 16, 24], 2, head_channels=(16,))


@pytest.fixture(scope="module")
def wide_tflite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-block MobileNetV1 whose 576 → 576 pointwise conv alone holds 332 K int8 weights, at 16 px."""
    return int8_mobilenet(tmp_path_factory.mktemp("wide") / "wide.tflite", [8, 576, 576], 2, image_size=16)


def test_a_large_model_is_included_by_the_assembler_and_runs(wide_tflite: Path, tflm_library: cortexm.TflmLibrary,
                                                             tmp_path: Path) -> None:
    model = wide_tflite.read_bytes()
    assert len(model) > INCBIN_ABOVE
    record = write_bundle(wide_tflite, tmp_path / "bundle")
    assert record["model_embedding"] == "incbin"
    source = (tmp_path / "bundle" / "model_data.cc").read_text()
    assert '.incbin \\"model.tflite\\"' in source and len(source) < 4096  # no C array of the model
    firmware = cortexm.build_firmware(tmp_path / "bundle", tflm_library)
    assert firmware.symbols["g_model_data"] % 16 == 0
    assert firmware.flash > len(model)
    run = cortexm.run_firmware(firmware, ARCH)
    assert run["host_output"] == "equal"
    assert run["outputs"] == record["expected_output"]  # the host TFLM interpreter's int8 output
    assert run["class"] == record["expected_class"] and run["instructions"] > 0


def test_the_threshold_chooses_the_embedding_and_both_give_the_same_firmware(
        tiny_tflite: Path, tflm_library: cortexm.TflmLibrary, tmp_path: Path) -> None:
    """The same small model as a C array and (threshold lowered) with ``.incbin``: same output on the
    target, same flash to within the alignment padding."""
    size = tiny_tflite.stat().st_size
    built = {}
    for name, above in (("array", INCBIN_ABOVE), ("incbin", 0)):
        record = write_bundle(tiny_tflite, tmp_path / name, incbin_above=above)
        assert record["model_embedding"] == ("c_array" if name == "array" else "incbin")
        firmware = cortexm.build_firmware(tmp_path / name, tflm_library)
        run = cortexm.run_firmware(firmware, ARCH)
        assert run["outputs"] == record["expected_output"] and run["host_output"] == "equal"
        built[name] = (firmware, run)
    assert f"g_model_data[{size}]" in (tmp_path / "array" / "model_data.cc").read_text()
    assert abs(built["array"][0].flash - built["incbin"][0].flash) <= 32
    assert built["array"][1]["instructions"] == built["incbin"][1]["instructions"]


def _script_with_flash(tmp_path: Path, length: str) -> Path:
    script = tmp_path / "small_flash.ld"
    text = (MCU_FILES / "mps2.ld").read_text()
    script.write_text(re.sub(r"(FLASH \(rx\)\s*:\s*ORIGIN = 0x00000000, LENGTH = )4M", rf"\g<1>{length}", text))
    assert cortexm.flash_length(script) != cortexm.flash_length(MCU_FILES / "mps2.ld")
    return script


def test_a_model_larger_than_the_flash_is_one_error_with_both_sizes(
        tiny_tflite: Path, tflm_library: cortexm.TflmLibrary, tmp_path: Path) -> None:
    assert cortexm.flash_length(MCU_FILES / "mps2.ld") == 4 << 20
    write_bundle(tiny_tflite, tmp_path / "bundle")
    size = tiny_tflite.stat().st_size
    script = _script_with_flash(tmp_path, "1K")
    with pytest.raises(cortexm.FirmwareTooLarge) as err:
        cortexm.build_firmware(tmp_path / "bundle", tflm_library, linker_script=script)
    assert str(err.value) == f"the model ({size:,} bytes) is larger than the flash of small_flash.ld (1,024 bytes)"


def test_a_firmware_larger_than_the_flash_is_one_error_with_both_sizes(
        tiny_tflite: Path, tflm_library: cortexm.TflmLibrary, tmp_path: Path) -> None:
    """The model fits the flash, the code with it does not: the linker's overflow, as one line."""
    write_bundle(tiny_tflite, tmp_path / "bundle")
    fits = cortexm.build_firmware(tmp_path / "bundle", tflm_library, out_dir=tmp_path / "fits")
    flash = (tiny_tflite.stat().st_size // 1024 + 1) * 1024
    assert flash < fits.flash
    with pytest.raises(cortexm.FirmwareTooLarge) as err:
        cortexm.build_firmware(tmp_path / "bundle", tflm_library, linker_script=_script_with_flash(tmp_path, f"{flash // 1024}K"))
    message = str(err.value)
    assert "\n" not in message and f"flash of small_flash.ld ({flash:,} bytes)" in message
    needed = int(re.search(r"the firmware \(([\d,]+) bytes", message).group(1).replace(",", ""))
    assert needed >= fits.flash - 64  # what the linker placed before giving up: about the whole firmware
