"""Fully-int8 TFLite export: PyTorch → ONNX (:func:`~lightning_modules.deploy.export.export_onnx`) →
TensorFlow → ``.tflite`` with onnx2tf (https://github.com/PINTO0309/onnx2tf) and the TFLite converter's
full-integer post-training quantisation: int8 weights with one scale per output channel, int8
activations, int8 input and output, activation ranges calibrated on representative images.

The converter lives in the optional ``tflite`` dependency group (``uv sync --extra tflite``); without it
:func:`require_tflite` raises :class:`MissingDependency` with the install command.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from lightning_modules.deploy.export import export_onnx
from lightning_modules.deploy.tflite_file import require_tflite
from lightning_modules.deploy.tflm_compat import preflight, tflm_friendly

#: onnx2tf checks its conversion on a sample-image file it downloads unless one with this name is in the
#: working directory; the export writes its own calibration images there, so nothing is downloaded.
ONNX2TF_SAMPLE_FILE: str = "calibration_image_sample_data_20x128x128x3_float32.npy"


def to_nhwc(images: np.ndarray) -> np.ndarray:
    """NCHW float batch → contiguous NHWC float32 (TFLite's layout)."""
    return np.ascontiguousarray(np.asarray(images, dtype=np.float32).transpose(0, 2, 3, 1))


def onnx_to_int8_tflite(onnx_path: str | Path, out_path: str | Path, calibration: np.ndarray,
                        timeout_s: float = 1800.0) -> Path:
    """Convert a float ONNX classifier (NCHW input named ``input``, batch 1) into a fully-int8 ``.tflite``.

    ``calibration``: representative images, normalised as the network expects, NCHW float. The
    conversion runs in a child process (TensorFlow stays out of this one; see :func:`_convert`) inside a
    temporary folder holding the calibration images and onnx2tf's self-check sample
    (:data:`ONNX2TF_SAMPLE_FILE`), so it works offline.
    """
    require_tflite(("onnx2tf", "tensorflow", "tf_keras", "ai_edge_litert", "onnx_graphsurgeon"))
    calibration = to_nhwc(calibration)
    if calibration.ndim != 4 or len(calibration) == 0:
        raise ValueError(f"calibration must be a non-empty NCHW batch, got shape {calibration.shape}")
    out_path = Path(out_path).resolve()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "model.onnx").write_bytes(Path(onnx_path).read_bytes())
        np.save(work / "calibration.npy", calibration)
        np.save(work / ONNX2TF_SAMPLE_FILE, calibration[:20])
        command = [sys.executable, "-m", "lightning_modules.deploy.tflite", "model.onnx", str(out_path),
                   "calibration.npy"]
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
               "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        out_path.unlink(missing_ok=True)
        done = subprocess.run(command, cwd=work, capture_output=True, text=True, env=env, timeout=timeout_s)
        if done.returncode != 0 or not out_path.is_file():
            tail = (done.stdout + done.stderr).strip()[-2000:]
            raise RuntimeError(f"int8 TFLite conversion failed (exit {done.returncode}) for {onnx_path}:\n{tail}")
    return out_path


def _convert(onnx_file: str, out_file: str, calibration_file: str) -> None:
    """Child-process side of :func:`onnx_to_int8_tflite` (run in the temporary folder): onnx2tf turns the
    ONNX graph into a TensorFlow SavedModel (NCHW → NHWC), then the TFLite converter quantises it with
    full-integer post-training quantisation (int8 builtins only, per-channel weights, int8 input/output),
    calibrated on the images in ``calibration_file``. One calibrated conversion, instead of the five
    variants onnx2tf's own ``-oiqt`` writes."""
    import onnx2tf
    import tensorflow as tf

    onnx2tf.convert(input_onnx_file_path=onnx_file, output_folder_path="saved_model", batch_size=1,
                    non_verbose=True, not_use_onnxsim=False)
    images = np.load(calibration_file)

    def representative() -> Any:
        for image in images:
            yield [image[None]]

    converter = tf.lite.TFLiteConverter.from_saved_model("saved_model")
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    Path(out_file).write_bytes(converter.convert())


def fold_constants(onnx_path: str | Path) -> Path:
    """Fold every subgraph of ``onnx_path`` computed from constants alone into initializers, in place
    (onnx-graphsurgeon's ``fold_constants``). PyTorch's exporter writes an ``F.pad`` as a chain of shape
    ops feeding ``Pad``; onnx2tf would transpose those pads as if they were NCHW data and pad the wrong
    axes. Folded, the ``Pad`` has constant pads onnx2tf converts correctly."""
    import onnx
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(onnx.load(str(onnx_path)))
    graph.fold_constants().cleanup()
    onnx.save(gs.export_onnx(graph), str(onnx_path))
    return Path(onnx_path)


def export_int8_tflite(model: nn.Module, out_path: str | Path, calibration: np.ndarray,
                       image_size: int, in_chans: int = 3, check: bool = True) -> Path:
    """Export ``model`` (eval mode, BatchNorm folded by the ONNX export) to a fully-int8 ``.tflite``.

    The export works on :func:`~lightning_modules.deploy.tflm_compat.tflm_friendly`'s copy (hard-sigmoid
    and padded max-pool rewritten into equal forms TFLM runs). With ``check`` the result passes
    :func:`~lightning_modules.deploy.tflm_compat.preflight` (every op has a TFLM kernel, every scale is
    sane) or raises :class:`~lightning_modules.deploy.tflm_compat.NotDeployable` naming the op and layer,
    leaving no ``.tflite`` behind."""

    require_tflite(("onnx2tf",))
    net, _ = tflm_friendly(model, image_size, in_chans)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = fold_constants(export_onnx(net, Path(tmp) / "model.onnx", image_size, in_chans=in_chans))
        path = onnx_to_int8_tflite(onnx_path, out_path, calibration)
        if check:
            try:
                preflight(path, onnx_path)
            except Exception:
                path.unlink(missing_ok=True)
                raise
        return path


if __name__ == "__main__":
    _convert(*sys.argv[1:4])
