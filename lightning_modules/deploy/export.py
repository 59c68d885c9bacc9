"""ONNX export, check, int8 quantisation and accuracy of exported networks.

Export uses ``torch.onnx.export``; inference and static int8 quantisation use onnxruntime
(https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html): QDQ format, per-channel
symmetric int8 weights, int8 activations calibrated by min/max over real images.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

#: Names of the graph's input and output.
INPUT_NAME: str = "input"
OUTPUT_NAME: str = "logits"


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def export_onnx(
    model: nn.Module, path: str | Path, image_size: int = 224, opset: int = 17, in_chans: int = 3
) -> Path:
    """Export ``model`` in eval mode to ONNX at ``path`` with a dynamic batch axis; returns the path.

    Uses the TorchScript-based exporter (``dynamo=False``): it needs no extra package, while the
    ``torch.export``-based one needs ``onnxscript``, which this project does not depend on. In eval mode
    that exporter folds BatchNorm into the preceding convolution.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = copy.deepcopy(model).eval()  # the caller's model keeps its mode, memory format and hooks
    dummy = torch.zeros(1, in_chans, image_size, image_size, device=_device(net))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter announces its deprecation
        torch.onnx.export(
            net,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    return path


def onnx_session(path: str | Path, threads: int | None = None) -> ort.InferenceSession:
    """An onnxruntime CPU ``InferenceSession`` (``threads``: intra-op threads; ``None``: its default)."""
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session: ort.InferenceSession, images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Outputs of the session's first output for a float batch (NCHW)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(images, dtype=np.float32)}
    return session.run(None, feed)[0]


@torch.no_grad()
def check_onnx(
    model: nn.Module, path: str | Path, image_size: int = 224, batch: int = 2, in_chans: int = 3, seed: int = 0
) -> float:
    """Largest absolute difference between PyTorch (eval mode) and onnxruntime outputs on random input."""
    x = torch.randn(batch, in_chans, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    was_training = model.training
    model.eval()
    try:
        expected = model(x.to(_device(model))).float().cpu().numpy()
    finally:
        model.train(was_training)
    actual = run_onnx(onnx_session(path), x)
    return float(np.abs(actual - expected).max())


class ArrayCalibrationReader(CalibrationDataReader):
    """onnxruntime calibration reader over float batches (one ``get_next`` per batch)."""

    def __init__(self, input_name: str, batches: Iterable[np.ndarray]) -> None:
        self.input_name = input_name
        self.batches: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        if batch is None:
            return None
        if isinstance(batch, torch.Tensor):
            batch = batch.detach().cpu().numpy()
        return {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}


def quantize_int8(
    onnx_path: str | Path, out_path: str | Path, calibration: Iterable[np.ndarray], per_channel: bool = True,
    preprocess: bool = True,
) -> Path:
    """Static int8 quantisation of a float ONNX model with onnxruntime; returns ``out_path``.

    ``calibration`` yields float NCHW batches (e.g. normalised training images); activation ranges are
    their min/max. QDQ format, int8 weights (per output channel) and activations. ``preprocess`` first
    runs onnxruntime's recommended shape inference and graph optimisation (``quant_pre_process``).
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(onnx_path)
        if preprocess:
            source = Path(tmp) / "preprocessed.onnx"
            quant_pre_process(str(onnx_path), str(source))
        input_name = onnx_session(source).get_inputs()[0].name
        quantize_static(
            str(source),
            str(out_path),
            ArrayCalibrationReader(input_name, calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
        )
    return out_path


def onnx_accuracy(onnx_path: str | Path, dataloader: Iterable[Any], threads: int | None = None) -> float:
    """Top-1 accuracy of an ONNX classifier over ``(images, labels)`` float batches."""
    session = onnx_session(onnx_path, threads)
    return top1_accuracy(lambda images: run_onnx(session, images), dataloader, "onnx_accuracy")[0]


def top1_accuracy(predict: Callable[[Any], np.ndarray], batches: Iterable[Any], who: str) -> tuple[float, int]:
    """Top-1 accuracy of ``predict`` (images → logits) over ``(images, labels)`` batches, and the image count."""
    correct = total = 0
    for images, labels in batches:
        predicted = predict(images).argmax(axis=1)
        labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        correct += int((predicted == labels).sum())
        total += len(labels)
    if total == 0:
        raise ValueError(f"{who}: no images")
    return correct / total, total
