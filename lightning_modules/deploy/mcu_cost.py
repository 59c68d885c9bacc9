"""Predict the Cortex-M instruction count of one int8 inference in TensorFlow Lite Micro with CMSIS-NN
kernels, from a PyTorch network, without converting or emulating it (a budget search ranks dozens of
candidates; a conversion and an emulated run take minutes each).

The network goes through the same export as the arena estimate
(:func:`~lightning_modules.deploy.tflm_estimate.network_graph`: the ONNX graph mapped onto the TFLite ops
the converter emits, with shapes). Each op adds a linear sum of work terms (:func:`op_terms`), chosen by
the CMSIS-NN kernel that runs it (``Source/ConvolutionFunctions/arm_convolve_wrapper_s8.c`` and
``arm_depthwise_conv_wrapper_s8.c`` pick the kernel; github.com/ARM-software/CMSIS-NN):

* ``CONV_2D`` 1×1 (``arm_convolve_1x1_s8_fast`` → ``arm_nn_mat_mult_nt_t_s8``): multiply-accumulates
  over input channels in groups of four (``SMLAD`` on pairs) and those left over (a scalar loop), for
  output pixels taken two at a time and for an odd last one (a slower one-row loop: every pixel of a
  1×1 map), the outputs (requantisation), and the weights (the input-offset sum per output channel);
* ``CONV_2D`` k×k (``arm_convolve_s8``: im2col into int16, ``arm_nn_mat_mult_kernel_s8_s16``): the same
  multiply-accumulates over the kh·kw·C column, the im2col elements and per-tap copies, the outputs;
* ``DEPTHWISE_CONV_2D`` 3×3 (``arm_depthwise_conv_3x3_s8``, four channels at a time): the taps inside
  the input (padding is skipped) in four-channel groups and left over, the outputs, the output pixels;
  other kernels
  (``arm_depthwise_conv_s8_opt``): the taps, the outputs;
* ``FULLY_CONNECTED``: multiply-accumulates and outputs; ``ADD``/``MUL``: elements, apart where an operand
  is broadcast (TFLM then runs the reference ``BroadcastAdd4DSlow``/``BroadcastMul4DSlow``, not
  CMSIS-NN); ``MEAN``: input and output elements; ``PAD``: output elements and rows; pools: window
  elements and outputs; activations: elements;
* a constant per op of each kind, and per inference (the interpreter's loop around the kernels).

The coefficients (:data:`COEFFICIENTS`, instructions per unit of each term) are a non-negative least
squares fit on instruction counts of real firmware emulated in QEMU, each op counted apart
(``experiments/bench/fit_mcu_cost.py``; its table and errors are in :data:`FIT_NOTES`). They hold for
the TFLM + CMSIS-NN sources of the firmware build (``lightning_modules/deploy/cortexm.py``) and one
core; another core or library needs a new fit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from torch import nn

from lightning_modules.deploy.tflm_estimate import PredictedGraph, network_graph
from lightning_modules.deploy.tflm_plan import OpNode, TfliteGraphPlan

__all__ = ["COEFFICIENTS", "FIT_NOTES", "GRAPH_TERMS", "coefficients", "op_features", "op_instructions",
           "op_terms", "predict_graph_instructions", "predict_instructions"]

#: Terms counted once per graph: one per op (the interpreter's loop) and one per inference.
GRAPH_TERMS: tuple[str, str] = ("graph:ops", "graph:fixed")

#: Ops whose work is one pass over their elements (TFLM reference kernels).
_ELEMENTWISE = frozenset({"HARD_SWISH", "LOGISTIC", "RELU", "RELU6"})

#: Instructions per unit of each term, by core: fitted by ``experiments/bench/fit_mcu_cost.py``.
COEFFICIENTS: dict[str, dict[str, float]] = {}

#: How each table was fitted: the command, the networks, and the errors of fit and held-out networks.
FIT_NOTES: dict[str, str] = {}


def _valid_taps(size_in: int, size_out: int, kernel: int, stride: int) -> int:
    """Kernel positions inside the input, summed over the outputs of one spatial axis, with TensorFlow's
    ``SAME`` padding (none where the input was padded explicitly: then ``size_out`` is ``VALID``'s)."""
    before = max((size_out - 1) * stride + kernel - size_in, 0) // 2  # SAME puts the odd pixel after
    taps = 0
    for o in range(size_out):
        start = o * stride - before
        taps += min(start + kernel, size_in) - max(start, 0)
    return taps


def _spatial(op: OpNode) -> tuple[int, int, int, int]:
    """(output pixels, input channels, output channels, valid kernel taps over all output pixels)."""
    _, c_in, h_in, w_in = op.in_shape
    _, c_out, h_out, w_out = op.out_shape
    kh, kw = op.kernel
    taps = _valid_taps(h_in, h_out, kh, op.stride[0]) * _valid_taps(w_in, w_out, kw, op.stride[1])
    return h_out * w_out, c_in, c_out, taps


def op_terms(op: OpNode) -> dict[str, float]:
    """The work terms of one op, keyed ``"KIND:term"`` (every op has ``"KIND:op"`` = 1). Raises
    ``ValueError`` for an op kind with no cost model, or an op without the shapes of a predicted graph."""
    kind = op.kind
    if not op.in_shape or not op.out_shape:
        raise ValueError(f"{kind}: no shapes; the cost model needs a graph from tflm_estimate.predict_graph")
    terms: dict[str, float] = {f"{kind}:op": 1.0}
    elements = math.prod(op.out_shape)
    if kind == "CONV_2D":
        pixels, c_in, c_out, _ = _spatial(op)
        kh, kw = op.kernel
        paired = pixels - pixels % 2  # both kernels take output pixels two at a time; an odd one is apart
        if (kh, kw) == (1, 1):
            terms.update({"CONV_2D:1x1_macs": paired * c_out * 4 * (c_in // 4),
                          "CONV_2D:1x1_tail_macs": paired * c_out * (c_in % 4),
                          "CONV_2D:1x1_odd_pixel_macs": (pixels % 2) * c_out * c_in,
                          "CONV_2D:1x1_out": pixels * c_out, "CONV_2D:1x1_weights": c_in * c_out})
        else:
            column = kh * kw * c_in
            terms.update({"CONV_2D:kxk_macs": paired * c_out * 4 * (column // 4),
                          "CONV_2D:kxk_tail_macs": paired * c_out * (column % 4),
                          "CONV_2D:kxk_odd_pixel_macs": (pixels % 2) * c_out * column,
                          "CONV_2D:kxk_im2col": pixels * column, "CONV_2D:kxk_taps": pixels * kh * kw,
                          "CONV_2D:kxk_out": pixels * c_out})
    elif kind == "DEPTHWISE_CONV_2D":
        pixels, c_in, c_out, taps = _spatial(op)
        if op.kernel == (3, 3) and c_in == c_out:
            terms.update({"DEPTHWISE_CONV_2D:3x3_taps": taps * 4 * (c_out // 4),
                          "DEPTHWISE_CONV_2D:3x3_tail_taps": taps * (c_out % 4),
                          "DEPTHWISE_CONV_2D:3x3_out": pixels * c_out, "DEPTHWISE_CONV_2D:3x3_pixels": pixels})
        else:
            terms.update({"DEPTHWISE_CONV_2D:kxk_taps": taps * c_out,
                          "DEPTHWISE_CONV_2D:kxk_out": pixels * c_out})
    elif kind == "FULLY_CONNECTED":
        features = math.prod(op.in_shape[1:])
        terms.update({"FULLY_CONNECTED:macs": features * elements, "FULLY_CONNECTED:out": elements})
    elif kind in ("ADD", "MUL"):
        terms[f"{kind}:broadcast_elements" if op.broadcast else f"{kind}:elements"] = elements
    elif kind == "MEAN":
        terms.update({"MEAN:in": math.prod(op.in_shape), "MEAN:out": elements})
    elif kind in ("PAD", "PADV2"):
        terms.update({f"{kind}:out": elements, f"{kind}:rows": op.in_shape[0] * op.in_shape[2]})
    elif kind in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        pixels, _, c_out, taps = _spatial(op)
        terms.update({f"{kind}:window": taps * c_out, f"{kind}:out": elements})
    elif kind in _ELEMENTWISE:
        terms[f"{kind}:elements"] = elements
    else:
        raise ValueError(f"no instruction-count model for TFLite op {kind}")
    return {k: float(v) for k, v in terms.items()}


def _ops(graph: PredictedGraph | TfliteGraphPlan) -> list[OpNode]:
    return (graph.plan if isinstance(graph, PredictedGraph) else graph).ops


def op_features(graph: PredictedGraph | TfliteGraphPlan) -> dict[str, float]:
    """The work terms of a whole graph: :func:`op_terms` summed over its ops, plus :data:`GRAPH_TERMS`
    (the op count and 1). The predicted instructions are ``Σ coefficient[term] × feature[term]``."""
    ops = _ops(graph)
    total: dict[str, float] = {GRAPH_TERMS[0]: float(len(ops)), GRAPH_TERMS[1]: 1.0}
    for op in ops:
        for term, value in op_terms(op).items():
            total[term] = total.get(term, 0.0) + value
    return total


def coefficients(arch: str = "cortex-m4") -> dict[str, float]:
    """The fitted table of ``arch``; ``ValueError`` naming the fitted cores and the fit command if none."""
    if arch not in COEFFICIENTS:
        fitted = ", ".join(sorted(COEFFICIENTS)) or "none"
        raise ValueError(f"no instruction-count table for {arch} (fitted: {fitted}); fit one with "
                         f"uv run experiments/bench/fit_mcu_cost.py --arch {arch}")
    return COEFFICIENTS[arch]


def _dot(terms: dict[str, float], table: dict[str, float]) -> float:
    missing = [t for t, v in terms.items() if v and t not in table]
    if missing:
        raise ValueError(f"the fitted table has no coefficient for {', '.join(sorted(missing))}: the networks "
                         "it was fitted on had no such op; refit with one among them")
    return sum(v * table[t] for t, v in terms.items())


def op_instructions(graph: PredictedGraph | TfliteGraphPlan, arch: str = "cortex-m4") -> list[float]:
    """Predicted instructions of each op's kernel, in execution order (without the per-inference terms)."""
    table = coefficients(arch)
    return [_dot(op_terms(op), table) for op in _ops(graph)]


def predict_graph_instructions(graph: PredictedGraph | TfliteGraphPlan, arch: str = "cortex-m4") -> int:
    """Predicted instructions of one inference of a predicted graph on ``arch`` (TFLM + CMSIS-NN)."""
    return int(round(_dot(op_features(graph), coefficients(arch))))


def predict_instructions(model: nn.Module, image_size: int, in_chans: int = 3, arch: str = "cortex-m4") -> int:
    """Predicted instructions of one int8 inference of ``model`` at ``image_size`` on ``arch``, without
    converting it (the ONNX export only, seconds). :func:`~lightning_modules.deploy.mcu_latency.latency_ms`
    turns it into milliseconds."""
    coefficients(arch)  # fail before the export
    return predict_graph_instructions(network_graph(model, image_size, in_chans), arch)


def feature_names(rows: Iterable[dict[str, float]]) -> list[str]:
    """Every term appearing in ``rows``, sorted (the columns of a fit)."""
    return sorted({t for row in rows for t in row})
