"""A firmware bundle for one int8 ``.tflite``: the C/C++ sources a board project needs to run the net with
TensorFlow Lite Micro.

The bundle (one folder, no build system of its own):

* ``model_data.h`` / ``model_data.cc`` — the flatbuffer as a 16-byte aligned C array, its length, and
  ``kTensorArenaSize``: the arena TFLM's memory plan needs for this model (the host interpreter's
  allocation report, 64-bit build, which is larger than a 32-bit target's) plus a stated margin. A model
  over :data:`INCBIN_ABOVE` bytes is not written out as a C array (a 3.4 MB model is 21 MB of C): its
  ``model_data.cc`` includes ``model.tflite`` with the assembler's ``.incbin`` into a 16-byte aligned
  ``g_model_data`` in ``.rodata``, and the build passes the bundle folder to the assembler
  (``-Wa,-I<bundle>``);
* ``op_resolver.h`` — ``MicroMutableOpResolver<N>`` with exactly the builtin ops the model's operator codes
  name, registered by ``RegisterOps``;
* ``test_image.h`` / ``test_image.cc`` — one test image quantised with the model's input scale and zero
  point, and the int8 output the host TFLM interpreter gives for it;
* ``main.cc`` — runs one inference and prints the class, the int8 outputs, whether they equal the host's,
  and ``arena_used_bytes()``;
* ``bundle.json`` — what was generated from what (ops, arena plan and margin, input quantisation, outputs).

Hand-written generation: TFLM's own ``generate_cc_arrays.py`` lives in its source tree (not in the
``tflite-micro`` package) and writes no op resolver, so the few lines of C are produced here.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_modules.deploy.tflite_file import model_structure, read_model
from lightning_modules.deploy.tflm import interpreter, quantize_input, tflm_arena

#: Fraction added to the host plan's arena for ``kTensorArenaSize``. The 64-bit host build already
#: over-states a 32-bit target's arena (TFLM's structs hold pointers); the margin covers the arena's
#: start alignment and kernels whose scratch differs between the reference and CMSIS-NN builds.
ARENA_MARGIN: float = 0.10

#: Models larger than this (bytes) are embedded with ``.incbin`` rather than as a C array.
INCBIN_ABOVE: int = 256 * 1024

#: Source files of the bundle besides the generated ones (copied from ``mcu_files/``).
MCU_FILES: Path = Path(__file__).resolve().parent / "mcu_files"

#: ``MicroMutableOpResolver`` method of builtin ops whose name is not the op name in CamelCase
#: (checked against TFLM's ``micro_mutable_op_resolver.h`` by the tests).
_METHOD_EXCEPTIONS: dict[str, str] = {
    "PADV2": "PadV2",
    "L2_NORMALIZATION": "L2Normalization",
    "L2_POOL_2D": "L2Pool2D",
    "LOG_SOFTMAX": "LogSoftmax",
    "SQUARED_DIFFERENCE": "SquaredDifference",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "UnidirectionalSequenceLSTM",
    "BATCH_MATMUL": "BatchMatMul",
    "TRANSPOSE_CONV": "TransposeConv",
    "RESIZE_NEAREST_NEIGHBOR": "ResizeNearestNeighbor",
    "RESIZE_BILINEAR": "ResizeBilinear",
    "SPACE_TO_BATCH_ND": "SpaceToBatchNd",
    "BATCH_TO_SPACE_ND": "BatchToSpaceNd",
    "READ_VARIABLE": "ReadVariable",
    "CUMSUM": "CumSum",
}


class FirmwareError(RuntimeError):
    """The bundle cannot be generated for this model; the message says why."""


def resolver_method(op: str) -> str:
    """``MicroMutableOpResolver`` method registering builtin ``op`` (``CONV_2D`` → ``AddConv2D``)."""
    if op in _METHOD_EXCEPTIONS:
        return "Add" + _METHOD_EXCEPTIONS[op]
    parts = op.split("_")
    return "Add" + "".join(p if re.fullmatch(r"\d+D", p) else p.capitalize() for p in parts)


def c_array(name: str, data: bytes | Sequence[int], ctype: str = "unsigned char", per_line: int = 16) -> str:
    """``data`` as a C array definition, 16-byte aligned (flatbuffers and int8 tensors want it)."""
    values = [f"{b:#04x}" if ctype == "unsigned char" else str(b) for b in data]
    rows = [", ".join(values[i:i + per_line]) for i in range(0, len(values), per_line)]
    body = ",\n  ".join(rows)
    return f"alignas(16) const {ctype} {name}[{len(values)}] = {{\n  {body}\n}};\n"


def incbin_source(name: str, file_name: str, size: int) -> str:
    """Inline assembly defining ``name`` as the bytes of ``file_name`` (found on the assembler's include
    path), 16-byte aligned in its own ``.rodata`` section so ``--gc-sections`` keeps it only when used,
    and ``name_len`` = ``size``. GNU as syntax for ARM (``%progbits``); the symbol is a plain C++
    global (namespace-scope variables are not mangled)."""
    return ("// The flatbuffer is model.tflite itself, included by the assembler: compile with the bundle\n"
            "// folder on the assembler's include path (GCC: -Wa,-I<bundle folder>).\n"
            "__asm__(\n"
            f'    "  .section .rodata.{name},\\"a\\",%progbits\\n"\n'
            f'    "  .global {name}\\n"\n'
            f'    "  .type {name}, %object\\n"\n'
            '    "  .balign 16\\n"\n'
            f'    "{name}:\\n"\n'
            f'    "  .incbin \\"{file_name}\\"\\n"\n'
            f'    "  .size {name}, . - {name}\\n"\n'
            '    "  .previous\\n");\n'
            f"const unsigned int {name}_len = {size};\n")


def arena_with_margin(plan_bytes: int, margin: float = ARENA_MARGIN, align: int = 16) -> int:
    """``kTensorArenaSize``: the planned arena × (1 + margin), rounded up to ``align`` bytes."""
    if margin < 0:
        raise ValueError(f"arena margin must be >= 0, got {margin}")
    return int(math.ceil(plan_bytes * (1.0 + margin) / align) * align)


def input_image(details: dict[str, Any], image: np.ndarray | None = None, seed: int = 0) -> tuple[np.ndarray, str]:
    """A float NHWC image of the model's input shape: ``image`` (normalised as the net expects; NCHW, CHW
    or HWC) or, when ``None``, values drawn uniformly (``seed``) from the float range the int8 input
    represents (the calibrated input range, whatever the net's normalisation)."""
    shape = tuple(int(s) for s in details["shape"])  # (1, H, W, C)
    if image is None:
        quant = details["quantization_parameters"]
        scale, zero = float(quant["scales"][0]), int(quant["zero_points"][0])
        low, high = (-128 - zero) * scale, (127 - zero) * scale
        values = np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)
        return values, f"synthetic: uniform over the input's range [{low:.4g}, {high:.4g}], seed {seed}"
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 4:
        array = array[0]
    if array.shape == (shape[3], shape[1], shape[2]) and array.shape != shape[1:]:
        array = array.transpose(1, 2, 0)
    if array.shape != shape[1:]:
        raise FirmwareError(f"test image shape {tuple(np.asarray(image).shape)} does not match the model's "
                            f"input {shape} (NHWC)")
    return array[None], "given image"


def host_output(model: bytes, int8_image: np.ndarray) -> np.ndarray:
    """The int8 output of the host TFLM interpreter for one already-quantised input."""
    interp = interpreter(model)
    interp.set_input(int8_image, 0)
    interp.invoke()
    return np.asarray(interp.get_output(0)).reshape(-1).copy()


def op_resolver_header(ops: dict[str, int]) -> str:
    """``op_resolver.h``: a resolver with room for exactly the model's distinct ops."""
    unknown = [op for op in ops if op == "CUSTOM" or not op.isupper()]
    if unknown:
        raise FirmwareError(f"the model uses custom ops {unknown}: the bundle registers builtin ops only")
    lines = ["// Generated: the builtin ops of model.tflite, from its operator codes (op: uses).",
             "#pragma once", "", '#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"', "",
             f"using OpResolver = tflite::MicroMutableOpResolver<{len(ops)}>;", "",
             "inline TfLiteStatus RegisterOps(OpResolver& resolver) {"]
    for op, uses in sorted(ops.items()):
        lines.append(f"  if (resolver.{resolver_method(op)}() != kTfLiteOk) return kTfLiteError;  // {op}: {uses}")
    lines += ["  return kTfLiteOk;", "}", ""]
    return "\n".join(lines)


def _sources(model: bytes, arena_size: int, plan: dict[str, Any], margin: float, image: np.ndarray,
             expected: np.ndarray, incbin: bool = False) -> dict[str, str]:
    """Every generated file's text (the model as a C array, or as ``.incbin`` of ``model.tflite``)."""
    head = "// Generated by experiments/firmware.py; do not edit.\n"
    model_cc = (incbin_source("g_model_data", "model.tflite", len(model)) if incbin
                else c_array("g_model_data", model) + f"const unsigned int g_model_data_len = {len(model)};\n")
    return {
        "model_data.h": head + "#pragma once\n\n"
        f"// model.tflite: {len(model)} bytes, sha256 {hashlib.sha256(model).hexdigest()}\n"
        "extern const unsigned char g_model_data[];\nextern const unsigned int g_model_data_len;\n\n"
        f"// Tensor arena: TFLM's plan {plan['arena_bytes']} B (host interpreter, 64-bit build: head "
        f"{plan['arena_head_bytes']} + tail {plan['arena_tail_bytes']}) + {margin:.0%} margin, 16-byte aligned.\n"
        f"constexpr int kTensorArenaSize = {arena_size};\n",
        "model_data.cc": head + '#include "model_data.h"\n\n' + model_cc,
        "test_image.h": head + "#pragma once\n#include <cstdint>\n\n"
        f"constexpr int kInputCount = {image.size};\nconstexpr int kOutputCount = {expected.size};\n"
        f"constexpr int kExpectedClass = {int(np.argmax(expected))};\n"
        "extern const int8_t g_test_image[kInputCount];       // NHWC, quantised with the input's scale / zero point\n"
        "extern const int8_t g_expected_output[kOutputCount];  // the host TFLM interpreter's int8 output\n",
        "test_image.cc": head + '#include "test_image.h"\n\n'
        + c_array("g_test_image", image.reshape(-1).astype(np.int8).tolist(), "int8_t", 24)
        + c_array("g_expected_output", expected.astype(np.int8).tolist(), "int8_t", 24),
    }


def write_bundle(model: bytes | str | Path, out_dir: str | Path, image: np.ndarray | None = None,
                 margin: float = ARENA_MARGIN, seed: int = 0, incbin_above: int = INCBIN_ABOVE) -> dict[str, Any]:
    """Write the firmware bundle of ``model`` into ``out_dir`` (replaced as a whole only once every file
    is written) and return its ``bundle.json`` record. A model of more than ``incbin_above`` bytes is
    embedded with ``.incbin`` (``model_embedding``: ``incbin``), a smaller one as a C array."""
    data = read_model(model)
    if data[4:8] != b"TFL3":
        raise FirmwareError(f"{model if not isinstance(model, bytes) else 'the model'} is not a TFLite flatbuffer "
                            "(no TFL3 identifier)")
    structure = model_structure(data)
    if structure["input_dtype"] != "INT8" or structure["output_dtype"] != "INT8":
        raise FirmwareError(f"the bundle needs an int8 input and output, the model has "
                            f"{structure['input_dtype']} / {structure['output_dtype']}")
    try:  # the host interpreter registers every TFLM op: a model it cannot run has no firmware either
        details = interpreter(data).get_input_details(0)
        float_image, source = input_image(details, image, seed)
        int8_image = quantize_input(float_image, details)
        expected = host_output(data, int8_image)
    except (RuntimeError, ValueError) as err:
        if isinstance(err, FirmwareError):
            raise
        raise FirmwareError(f"the host TFLite Micro interpreter cannot run the model: {err}") from err
    plan = tflm_arena(data)
    arena_size = arena_with_margin(plan["arena_bytes"], margin)
    quant = details["quantization_parameters"]
    record = {
        "model_bytes": len(data),
        "model_sha256": hashlib.sha256(data).hexdigest(),
        "model_embedding": "incbin" if len(data) > incbin_above else "c_array",
        "ops": structure["ops"],
        "resolver": {op: resolver_method(op) for op in sorted(structure["ops"])},
        "arena_plan": {k: plan[k] for k in ("arena_bytes", "arena_head_bytes", "arena_tail_bytes")},
        "arena_margin": margin,
        "arena_size_bytes": arena_size,
        "input_shape": [int(s) for s in details["shape"]],
        "input_scale": float(quant["scales"][0]),
        "input_zero_point": int(quant["zero_points"][0]),
        "test_image": source,
        "expected_output": [int(v) for v in expected],
        "expected_class": int(np.argmax(expected)),
    }
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for name, text in {**_sources(data, arena_size, plan, margin, int8_image, expected,
                                    record["model_embedding"] == "incbin"),
                           "op_resolver.h": op_resolver_header(structure["ops"])}.items():
            (staging / name).write_text(text)
        shutil.copy(MCU_FILES / "main.cc", staging / "main.cc")
        (staging / "model.tflite").write_bytes(data)
        (staging / "bundle.json").write_text(json.dumps(record, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return record


def bundle_sources(bundle_dir: str | Path) -> Sequence[Path]:
    """The bundle's C++ translation units."""
    return [Path(bundle_dir) / name for name in ("main.cc", "model_data.cc", "test_image.cc")]
