"""The size of an int8 ``.tflite`` predicted from its TFLite graph
(:class:`~lightning_modules.deploy.tflm_plan.PredictedGraph`).

The file is the constants (each buffer with its 4-byte length, its data on 16 bytes), their per-channel
quantisation parameters, a table entry per tensor, each tensor's name and a fixed part (header, operator
codes and table, signature, metadata). The converter names a tensor after the TensorFlow ops fused into it,
so names are priced by the op kind writing the tensor.
"""

from __future__ import annotations

from lightning_modules.deploy.tflm_plan import PredictedGraph

__all__ = ["FLASH_BYTES", "NAME_BYTES", "buffer_padding", "predicted_flash", "stored_name_bytes", "tensor_kinds"]

#: Flatbuffer bytes beyond the stored numbers and the tensor names (:data:`NAME_BYTES`).
FLASH_BYTES: dict[str, float] = {
    "per_channel": 12,          # float32 scale + int64 zero point per channel of a quantised tensor
    "activation_tensor": 71.06, # tensor table entry: shape vector, type, quantisation table
    "const_tensor": 132.21,     # the same, plus its buffer entry and data offset
    "fixed": 596.66,            # model header, operator codes and table, signature, metadata
}
#: Mean stored bytes of a tensor's name (length prefix, characters, terminator, padded to 4 B) by the op
#: kind writing it. The converter names a tensor after the TensorFlow ops fused into it: a convolution
#: with its bias and activation takes 60-90 characters, a squeeze-excite multiply about 30.
NAME_BYTES: dict[str, float] = {
    "ADD": 36.4, "AVERAGE_POOL_2D": 44.0, "CONV_2D": 92.1, "DEPTHWISE_CONV_2D": 113.3, "FULLY_CONNECTED": 24.0,
    "HARD_SWISH": 140.0, "LOGISTIC": 39.8, "MAX_POOL_2D": 40.0, "MEAN": 38.5, "MUL": 37.9, "PAD": 35.3,
    "const": 68.4, "input": 28.0,
    "other": 79.6,  # a kind no fit network has: the mean over all activation tensors
}
# Both tables: experiments/bench/fit_tflite_flash.py, on eleven networks none of which is a case of
# tests/test_tflm_plan.py's grid (MobileNetV1 at widths 0.25-1.0, 24-96 px, 1 block to whole, odd widths;
# mobilenetv3_small_050, efficientnet_b0 cut 4, resnet10t cut 2; 7 KB to 1 MB). Residuals: -0.13 to
# +0.11 % on the fit, -0.27 to +0.75 % on its eight held-out networks; on the grid -0.15 to +0.75 %,
# except a 5 KB one-block network (+1.6 %: its names lack the "_<index>" suffixes of larger graphs).


def buffer_padding(nbytes: int) -> int:
    """Bytes a constant buffer of ``nbytes`` takes beyond its data: the flatbuffer's 4-byte length and the
    padding that starts every buffer's data on 16 bytes (``force_align: 16`` in TFLite's schema)."""
    return -(-(nbytes + 4) // 16) * 16 - nbytes


def stored_name_bytes(chars: int) -> int:
    """Flatbuffer bytes of a string of ``chars`` characters: length prefix, terminator, 4-byte padding."""
    return 4 + -(-(chars + 1) // 4) * 4


def tensor_kinds(graph: PredictedGraph) -> list[str]:
    """The kind of every tensor of the predicted ``.tflite``: ``input``, the op kind writing each
    activation, ``const`` for each constant (the keys of :data:`NAME_BYTES`)."""
    written = {t: op.kind for op in graph.plan.ops for t in op.outputs}
    return [written.get(t, "input") for t in range(len(graph.plan.tensor_bytes))] + ["const"] * graph.const_tensors


def predicted_flash(graph: PredictedGraph, flash: dict[str, float] | None = None,
                    names: dict[str, float] | None = None) -> int:
    """The ``.tflite``'s bytes: constants, per-channel parameters, the flatbuffer's tables and the tensor
    names (``flash`` / ``names``: other tables than :data:`FLASH_BYTES` / :data:`NAME_BYTES`, for a fit)."""
    f, n = flash or FLASH_BYTES, names or NAME_BYTES
    activations = len(graph.plan.tensor_bytes)
    return int(round(graph.const_bytes + f["per_channel"] * (graph.quant_channels + activations)
                     + f["activation_tensor"] * activations + f["const_tensor"] * graph.const_tensors
                     + sum(n.get(k, n["other"]) for k in tensor_kinds(graph))
                     + sum(map(buffer_padding, graph.const_buffers)) + f["fixed"]))
