"""Run an int8 ``.tflite`` in TensorFlow Lite Micro on the host (the ``tflite-micro`` package builds the
real TFLM interpreter with its reference kernels): predictions, accuracy, the tensor arena the
interpreter allocates and the model's structure (ops, tensors, quantisation).

TFLM's arena: a *head* holding the non-persistent buffers (activations and kernel scratch, placed by its
greedy memory planner) and a *tail* of persistent allocations (tensor structs, per-channel quantisation
data of the kernels, node structs). The interpreter prints them (``RecordingMicroAllocator``) on request;
:func:`tflm_arena` reads that report.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_modules.deploy.export import top1_accuracy
from lightning_modules.deploy.tflite import require_tflite, to_nhwc

_TOTAL = re.compile(r"Arena allocation (total|head|tail) (\d+) bytes")
_CATEGORY = re.compile(r"'([^']+)' used (\d+) bytes")


def _runtime() -> Any:
    require_tflite(("tflite_micro",))
    from tflite_micro.python.tflite_micro import runtime

    return runtime


def read_model(model: bytes | str | Path) -> bytes:
    """The flatbuffer's bytes (from bytes or a path)."""
    return bytes(model) if isinstance(model, bytes | bytearray) else Path(model).read_bytes()


def interpreter(model: bytes | str | Path, arena_size: int | None = None) -> Any:
    """A TFLM interpreter over the model (``arena_size`` bytes; default: 10 × the model size + 64 KiB)."""
    data = read_model(model)
    return _runtime().Interpreter.from_bytes(data, arena_size=arena_size or 10 * len(data) + 65536)


def _capture_fd2(func: Any) -> str:
    """What ``func()`` writes to file descriptor 2 (the C++ interpreter prints there, past Python)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            func()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        return sink.read().decode(errors="replace")


def tflm_arena(model: bytes | str | Path) -> dict[str, Any]:
    """The tensor arena TFLM allocates for the model, after one inference on a zero input:
    ``{"arena_bytes", "arena_head_bytes", "arena_tail_bytes", "arena_categories": {name: bytes}}``."""
    interp = interpreter(model)
    details = interp.get_input_details(0)
    interp.set_input(np.zeros(details["shape"], dtype=details["dtype"]), 0)
    interp.invoke()
    report = _capture_fd2(interp.print_allocations)
    totals = {kind: int(n) for kind, n in _TOTAL.findall(report)}
    if "total" not in totals:
        raise RuntimeError(f"TFLM printed no arena report:\n{report[-1000:]}")
    return {
        "arena_bytes": totals["total"],
        "arena_head_bytes": totals.get("head", 0),
        "arena_tail_bytes": totals.get("tail", 0),
        "arena_categories": {name: int(n) for name, n in _CATEGORY.findall(report)},
    }


def quantize_input(images: np.ndarray, details: dict[str, Any]) -> np.ndarray:
    """Float NHWC images → the int8 input tensor's values (its scale and zero point)."""
    quant = details["quantization_parameters"]
    scale, zero = float(quant["scales"][0]), int(quant["zero_points"][0])
    info = np.iinfo(details["dtype"])
    return np.clip(np.round(images / scale) + zero, info.min, info.max).astype(details["dtype"])


def dequantize_output(values: np.ndarray, details: dict[str, Any]) -> np.ndarray:
    quant = details["quantization_parameters"]
    return (values.astype(np.float32) - int(quant["zero_points"][0])) * float(quant["scales"][0])


def tflm_predict(model: bytes | str | Path, images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Dequantised logits of TFLM over normalised NCHW float images (one inference per image)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    interp = interpreter(model)
    inp, out = interp.get_input_details(0), interp.get_output_details(0)
    rows = []
    for image in quantize_input(to_nhwc(images), inp):
        interp.set_input(image[None], 0)
        interp.invoke()
        rows.append(dequantize_output(interp.get_output(0), out).reshape(-1))
    return np.stack(rows)


def tflm_accuracy(model: bytes | str | Path, batches: Iterable[tuple[Any, Any]]) -> tuple[float, int]:
    """Top-1 accuracy of the int8 model in TFLM over ``(images, labels)`` batches, and the image count."""
    data = read_model(model)
    return top1_accuracy(lambda images: tflm_predict(data, images), batches, "tflm_accuracy")


def parse_model(model: bytes | str | Path) -> Any:
    """The ``.tflite`` flatbuffer as TFLM's Python schema objects (``ModelT``)."""
    return _runtime().convert_bytearray_to_object(bytearray(read_model(model)))


def builtin_names(graph: Any, subgraph: int = 0) -> list[str]:
    """The builtin name (``CONV_2D``, …) of every operator of a parsed model's subgraph, in order."""
    runtime = _runtime()
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    return [names[runtime.get_builtin_code_from_operator_code(graph.operatorCodes[op.opcodeIndex])]
            for op in graph.subgraphs[subgraph].operators]


def model_structure(model: bytes | str | Path) -> dict[str, Any]:
    """Ops, tensors and quantisation of a ``.tflite``: op counts by name, tensor count, input/output
    dtypes, and whether every conv/depthwise/FC weight is int8 with one scale per output channel."""
    runtime = _runtime()
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    data = read_model(model)
    graph = runtime.convert_bytearray_to_object(bytearray(data))
    sub = graph.subgraphs[0]
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    ops: Counter[str] = Counter()
    per_channel = True
    for op in sub.operators:
        name = names[runtime.get_builtin_code_from_operator_code(graph.operatorCodes[op.opcodeIndex])]
        ops[name] += 1
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            weight = sub.tensors[op.inputs[1]]
            channels = weight.shape[3] if name == "DEPTHWISE_CONV_2D" else weight.shape[0]
            scales = weight.quantization.scale if weight.quantization is not None else None
            per_channel &= types[weight.type] == "INT8" and scales is not None and (
                len(scales) == channels or name == "FULLY_CONNECTED")
    return {
        "ops": dict(ops),
        "tensors": len(sub.tensors),
        "input_dtype": types[sub.tensors[sub.inputs[0]].type],
        "output_dtype": types[sub.tensors[sub.outputs[0]].type],
        "int8_per_channel_weights": bool(per_channel),
        "flash_bytes": len(data),
    }
