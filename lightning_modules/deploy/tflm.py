"""Run an int8 ``.tflite`` in TensorFlow Lite Micro on the host (the ``tflite-micro`` package builds the
real TFLM interpreter with its reference kernels): predictions, accuracy, the tensor arena the
interpreter allocates and the model's structure (ops, tensors, quantisation).

TFLM's arena: a *head* holding the non-persistent buffers (activations and kernel scratch, placed by its
greedy memory planner) and a *tail* of persistent allocations (tensor structs, per-channel quantisation
data of the kernels, node structs). The interpreter prints them (``RecordingMicroAllocator``) on request;
:func:`tflm_arena` reads that report.

The interpreter runs in a child process (:class:`TflmProcess`): a kernel that aborts (``TFLITE_ABORT``)
would otherwise end the caller's process with no message; here it raises :class:`InterpreterCrashed`
naming the op and layer TFLM blamed.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_modules.deploy.errors import DeploymentError
from lightning_modules.deploy.export import top1_accuracy
from lightning_modules.deploy.tflite import to_nhwc
from lightning_modules.deploy.tflite_file import (
    builtin_names,
    parse_model,
    read_model,
    require_tflite,
    tflm_runtime,
)
from lightning_modules.deploy.tflm_compat import NotDeployable, preflight

_TOTAL = re.compile(r"Arena allocation (total|head|tail) (\d+) bytes")
_CATEGORY = re.compile(r"'([^']+)' used (\d+) bytes")


def interpreter(model: bytes | str | Path, arena_size: int | None = None) -> Any:
    """A TFLM interpreter over the model in *this* process (``arena_size`` bytes; default:
    :func:`default_arena_size`). An interpreter that aborts ends the process: use :class:`TflmProcess`
    for any model that has not been run before."""
    data = read_model(model)
    return tflm_runtime().Interpreter.from_bytes(data, arena_size=arena_size or default_arena_size(data))


def default_arena_size(data: bytes) -> int:
    """Arena handed to the interpreter: 10 × the model's size + 64 KiB (it reports what it used)."""
    return 10 * len(data) + 65536


class InterpreterCrashed(DeploymentError):
    """The TFLM interpreter failed or aborted; the message names the op and layer when TFLM said which."""


#: Kernel source file (as TFLM's messages name it) → the builtin op it implements.
_KERNEL_FILES: dict[str, str] = {
    "conv": "CONV_2D", "conv_common": "CONV_2D", "depthwise_conv": "DEPTHWISE_CONV_2D",
    "depthwise_conv_common": "DEPTHWISE_CONV_2D", "fully_connected": "FULLY_CONNECTED",
    "fully_connected_common": "FULLY_CONNECTED", "pad": "PAD", "pad_common": "PAD", "pooling": "MAX_POOL_2D",
    "pooling_common": "MAX_POOL_2D", "reduce": "MEAN", "reduce_common": "MEAN", "mul": "MUL", "mul_common": "MUL",
    "add": "ADD", "add_common": "ADD", "logistic": "LOGISTIC", "logistic_common": "LOGISTIC",
    "hard_swish": "HARD_SWISH", "hard_swish_common": "HARD_SWISH", "activations": "RELU", "quantize": "QUANTIZE",
    "softmax": "SOFTMAX", "softmax_common": "SOFTMAX", "reshape": "RESHAPE", "concatenation": "CONCATENATION",
}


def _suspect_op(log: str) -> str | None:
    """The op TFLM's messages blame: ``opcode 'X'``, or a kernel source file ``kernels/x.cc``."""
    named = re.findall(r"opcode '([A-Z0-9_]+)'", log)
    if named:
        return named[-1]
    files = re.findall(r"kernels/(?:[a-z_]+/)?([a-z_0-9]+)\.cc", log)
    return _KERNEL_FILES.get(files[-1]) if files else None


def _first_layer(model: bytes, op: str) -> str | None:
    """The output tensor name of the first ``op`` in the model (the converter names tensors after the
    layers that produced them)."""
    try:
        graph = parse_model(model)
        sub = graph.subgraphs[0]
        for node, kind in zip(sub.operators, builtin_names(graph), strict=True):
            if kind == op:
                name = sub.tensors[node.outputs[0]].name
                return name.decode(errors="replace") if isinstance(name, bytes) else str(name)
    except Exception:  # naming the layer is best effort: the error itself is still raised
        return None
    return None


def _static_diagnosis(model: bytes) -> str:
    """What :func:`~lightning_modules.deploy.tflm_compat.preflight` finds wrong with the model."""

    try:
        preflight(model)
    except NotDeployable as err:
        return str(err)
    except Exception as err:  # the diagnosis is best effort: the crash itself is still reported
        return f"the model could not be checked ({type(err).__name__})"
    return "every op has a kernel and every scale is sane"


def _last_message(log: str) -> str:
    lines = [ln.strip() for ln in log.splitlines() if ln.strip() and not ln.startswith((" ", "Traceback"))]
    return lines[-1][:300] if lines else "no message"


class TflmProcess:
    """The TFLM interpreter in a child process (:mod:`~lightning_modules.deploy.tflm_child`), so that
    an abort ends the child and surfaces here as :class:`InterpreterCrashed` (signal, TFLM's last
    message, the op and the layer it blames). Use as a context manager."""

    def __init__(self, model: bytes | str | Path, arena_size: int | None = None, timeout_s: float = 3600.0) -> None:
        require_tflite(("tflite_micro",))
        self.data = read_model(model)
        self.timeout_s = timeout_s
        self._dir = tempfile.TemporaryDirectory()
        path = Path(self._dir.name) / "model.tflite"
        path.write_bytes(self.data)
        self._log = open(Path(self._dir.name) / "stderr.txt", "w+b")  # noqa: SIM115 (closed in close())
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lightning_modules.deploy.tflm_child", str(path),
             str(arena_size or default_arena_size(self.data))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env)
        self.details = self._json({"cmd": "details"})

    def __enter__(self) -> TflmProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self._dir.cleanup()

    def _crashed(self, doing: str) -> InterpreterCrashed:
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.flush()
        self._log.seek(0)
        log = self._log.read().decode(errors="replace")
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
        op = _suspect_op(log)
        where = ""
        if op:
            layer = _first_layer(self.data, op)
            where = f" in op {op}" + (f" (layer {layer})" if layer else "")
        message = _last_message(log)
        diagnosis = _static_diagnosis(self.data)  # an abort prints nothing: say what the static checks find
        if not op or not diagnosis.startswith("every op"):
            message = f"{message}; {diagnosis}"
        return InterpreterCrashed(f"TFLite Micro interpreter failed while {doing}{where} ({how}): {message}")

    def _send(self, header: dict[str, Any], payload: np.ndarray | None = None) -> None:
        blob = io.BytesIO()
        if payload is not None:
            np.save(blob, payload, allow_pickle=False)
            header = {**header, "nbytes": blob.tell()}
        try:
            self.proc.stdin.write((json.dumps(header) + "\n").encode() + blob.getvalue())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as err:
            raise self._crashed("running an inference" if header["cmd"] == "predict" else header["cmd"]) from err

    def _json(self, header: dict[str, Any]) -> dict[str, Any]:
        self._send(header)
        line = self.proc.stdout.readline()
        if not line:
            raise self._crashed("loading the model" if header["cmd"] == "details" else header["cmd"])
        return json.loads(line)

    def predict_int8(self, images: np.ndarray) -> np.ndarray:
        """The int8 outputs for an int8 NHWC batch (one inference per image)."""
        self._send({"cmd": "predict"}, np.ascontiguousarray(images))
        line = self.proc.stdout.readline()
        if not line:
            raise self._crashed("running an inference")
        return np.load(io.BytesIO(self.proc.stdout.read(json.loads(line)["nbytes"])), allow_pickle=False)

    def predict(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """Dequantised logits over normalised NCHW float images."""
        if isinstance(images, torch.Tensor):
            images = images.detach().cpu().numpy()
        inp, out = self.details["input"], self.details["output"]
        values = self.predict_int8(quantize_input(to_nhwc(images), inp))
        return (values.astype(np.float32) - out["zero_point"]) * out["scale"]

    def arena(self) -> dict[str, Any]:
        """The arena report after one inference on a zero input (see :func:`tflm_arena`)."""
        report = self._json({"cmd": "arena"})["report"]
        totals = {kind: int(n) for kind, n in _TOTAL.findall(report)}
        if "total" not in totals:
            raise RuntimeError(f"TFLM printed no arena report:\n{report[-1000:]}")
        return {
            "arena_bytes": totals["total"],
            "arena_head_bytes": totals.get("head", 0),
            "arena_tail_bytes": totals.get("tail", 0),
            "arena_categories": {name: int(n) for name, n in _CATEGORY.findall(report)},
        }


def tflm_arena(model: bytes | str | Path) -> dict[str, Any]:
    """The tensor arena TFLM allocates for the model, after one inference on a zero input:
    ``{"arena_bytes", "arena_head_bytes", "arena_tail_bytes", "arena_categories": {name: bytes}}``.
    Runs in a :class:`TflmProcess`."""
    with TflmProcess(model) as proc:
        return proc.arena()


def quantize_input(images: np.ndarray, details: dict[str, Any]) -> np.ndarray:
    """Float NHWC images → the int8 input tensor's values (its scale and zero point)."""
    if "quantization_parameters" in details:
        quant = details["quantization_parameters"]
        scale, zero = float(quant["scales"][0]), int(quant["zero_points"][0])
    else:
        scale, zero = details["scale"], details["zero_point"]
    info = np.iinfo(details["dtype"])
    return np.clip(np.round(images / scale) + zero, info.min, info.max).astype(details["dtype"])


def dequantize_output(values: np.ndarray, details: dict[str, Any]) -> np.ndarray:
    quant = details["quantization_parameters"]
    return (values.astype(np.float32) - int(quant["zero_points"][0])) * float(quant["scales"][0])


def tflm_predict(model: bytes | str | Path, images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Dequantised logits of TFLM over normalised NCHW float images (one inference per image), in a
    :class:`TflmProcess`."""
    with TflmProcess(model) as proc:
        return proc.predict(images)


def tflm_accuracy(model: bytes | str | Path, batches: Iterable[tuple[Any, Any]]) -> tuple[float, int]:
    """Top-1 accuracy of the int8 model in TFLM over ``(images, labels)`` batches, and the image count."""
    with TflmProcess(model) as proc:
        return top1_accuracy(proc.predict, batches, "tflm_accuracy")
