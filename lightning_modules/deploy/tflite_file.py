"""The optional TFLite packages and the ``.tflite`` flatbuffer read as data: whether the ``tflite`` extra is
installed (:func:`require_tflite`, one line naming what is missing and how to install it), the model's
bytes, its parsed schema objects, its operators by name and its structure. The bottom of the deployment
modules: the converter (:mod:`~lightning_modules.deploy.tflite`), the op-support preflight
(:mod:`~lightning_modules.deploy.tflm_compat`), the interpreter (:mod:`~lightning_modules.deploy.tflm`)
and the memory plan (:mod:`~lightning_modules.deploy.tflm_plan`) all read models through it.
"""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Import name → distribution of every package the ``tflite`` extra brings.
TFLITE_MODULES: dict[str, str] = {
    "onnx2tf": "onnx2tf",
    "tensorflow": "tensorflow",
    "tf_keras": "tf-keras",
    "ai_edge_litert": "ai-edge-litert",
    "onnx_graphsurgeon": "onnx-graphsurgeon",
    "tflite_micro": "tflite-micro",
}
INSTALL_HINT: str = "uv sync --extra tflite   (pip: pip install -e '.[tflite]')"

class MissingDependency(RuntimeError):
    """An optional package is not installed; the message says which and how to install it."""


def _installed(module: str) -> bool:
    if module in sys.modules:  # an entry of None means "import fails" (how tests hide a package)
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_tflite(modules: Sequence[str] = tuple(TFLITE_MODULES)) -> None:
    """Raise :class:`MissingDependency` (one line: what is missing, how to install) unless every module
    of the ``tflite`` extra in ``modules`` can be imported."""
    missing = [TFLITE_MODULES.get(m, m) for m in modules if not _installed(m)]
    if missing:
        raise MissingDependency(f"int8 TFLite export / TFLite Micro needs {', '.join(missing)}: {INSTALL_HINT}")


def tflm_runtime() -> Any:
    """The ``tflite_micro`` runtime module (:class:`MissingDependency` when it is not installed)."""
    require_tflite(("tflite_micro",))
    from tflite_micro.python.tflite_micro import runtime

    return runtime


def read_model(model: bytes | str | Path) -> bytes:
    """The flatbuffer's bytes (from bytes or a path)."""
    return bytes(model) if isinstance(model, bytes | bytearray) else Path(model).read_bytes()


def parse_model(model: bytes | str | Path) -> Any:
    """The ``.tflite`` flatbuffer as TFLM's Python schema objects (``ModelT``)."""
    return tflm_runtime().convert_bytearray_to_object(bytearray(read_model(model)))


def builtin_names(graph: Any, subgraph: int = 0) -> list[str]:
    """The builtin name (``CONV_2D``, …) of every operator of a parsed model's subgraph, in order."""
    runtime = tflm_runtime()
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    return [names[runtime.get_builtin_code_from_operator_code(graph.operatorCodes[op.opcodeIndex])]
            for op in graph.subgraphs[subgraph].operators]


def model_structure(model: bytes | str | Path) -> dict[str, Any]:
    """Ops, tensors and quantisation of a ``.tflite``: op counts by name, tensor count, input/output
    dtypes, and whether every conv/depthwise/FC weight is int8 with one scale per output channel."""
    runtime = tflm_runtime()
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
