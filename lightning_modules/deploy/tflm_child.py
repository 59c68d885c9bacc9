"""The process the TFLite Micro interpreter runs in (``python -m lightning_modules.deploy.tflm_child
MODEL``): an interpreter that aborts (``TFLITE_ABORT``, a failed ``TF_LITE_ENSURE`` in a kernel) ends
this process, never the caller's; :class:`~lightning_modules.deploy.tflm.TflmProcess` turns that into
an error naming the op.

Protocol on stdin/stdout, one request at a time: a JSON line (``{"cmd": "predict", "nbytes": N}``
followed by N bytes of an ``np.save``'d int8 NHWC batch → ``{"nbytes": M}`` and M bytes of the int8
outputs; ``{"cmd": "arena"}`` → a JSON line
with the interpreter's allocation report; ``{"cmd": "details"}`` → a JSON line with the input/output
quantisation). Progress (``op N``) is not reported by TFLM's Python API; the C++ interpreter's own
messages go to stderr, which the parent reads after a crash. Imports numpy and tflite-micro only.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile
from typing import Any, BinaryIO

import numpy as np


def _details(d: dict[str, Any]) -> dict[str, Any]:
    q = d["quantization_parameters"]
    return {"shape": [int(s) for s in d["shape"]], "dtype": np.dtype(d["dtype"]).name,
            "scale": float(q["scales"][0]), "zero_point": int(q["zero_points"][0])}


def _report(interp: Any) -> str:
    """What ``print_allocations`` writes to file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            interp.print_allocations()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        return sink.read().decode(errors="replace")


def serve(model_path: str, arena_size: int, inp: BinaryIO, out: BinaryIO) -> None:
    from tflite_micro.python.tflite_micro import runtime

    data = open(model_path, "rb").read()
    interp = runtime.Interpreter.from_bytes(data, arena_size=arena_size)
    input_details, output_details = interp.get_input_details(0), interp.get_output_details(0)
    while True:
        line = inp.readline()
        if not line:
            return
        header = json.loads(line)
        cmd = header["cmd"]
        if cmd == "predict":
            batch = np.load(io.BytesIO(inp.read(header["nbytes"])), allow_pickle=False)
            rows = []
            for image in batch:
                interp.set_input(image[None], 0)
                interp.invoke()
                rows.append(np.array(interp.get_output(0)).reshape(-1))
            blob = io.BytesIO()
            np.save(blob, np.stack(rows) if rows else np.zeros((0, 0), np.int8), allow_pickle=False)
            out.write((json.dumps({"nbytes": blob.tell()}) + "\n").encode() + blob.getvalue())
        elif cmd == "arena":
            interp.set_input(np.zeros(input_details["shape"], dtype=input_details["dtype"]), 0)
            interp.invoke()
            out.write((json.dumps({"report": _report(interp)}) + "\n").encode())
        elif cmd == "details":
            out.write((json.dumps({"input": _details(input_details), "output": _details(output_details)})
                       + "\n").encode())
        else:
            out.write((json.dumps({"error": f"unknown command {cmd}"}) + "\n").encode())
        out.flush()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), sys.stdin.buffer, sys.stdout.buffer)
