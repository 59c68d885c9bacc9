"""Predict the Cortex-M instruction count of one int8 inference in TensorFlow Lite Micro with CMSIS-NN
kernels, from a PyTorch network, without converting or emulating it (a budget search ranks dozens of
candidates; a conversion and an emulated run take minutes each).

The network goes through the same export as the arena estimate
(:func:`~lightning_modules.deploy.tflm_estimate.network_graph`: the ONNX graph mapped onto the TFLite ops
the converter emits, with shapes). Each op adds a linear sum of work terms (:func:`op_terms`), chosen by
the CMSIS-NN kernel that runs it (``Source/ConvolutionFunctions/arm_convolve_wrapper_s8.c`` and
``arm_depthwise_conv_wrapper_s8.c`` pick the kernel; github.com/ARM-software/CMSIS-NN):

* ``CONV_2D`` 1×1 (``arm_convolve_1x1_s8_fast`` → ``arm_nn_mat_mult_nt_t_s8``, two output pixels ×
  two output channels at a time): multiply-accumulates over input channels in unrolled groups of 16,
  in groups of four (``SMLAD`` on pairs) and left over (a scalar loop); those of an odd last pixel (a
  one-row loop: every pixel of a 1×1 map) and of an odd last output channel (a scalar loop over every
  pixel); the outputs (requantisation); the weights (the input-offset sum per output channel);
* ``CONV_2D`` k×k (``arm_convolve_s8``: im2col into int16, ``arm_nn_mat_mult_kernel_s8_s16``): the same
  multiply-accumulates over the kh·kw·C column in groups of four and left over, those of an odd last
  pixel or channel, the im2col elements and per-tap copies, the outputs;
* ``DEPTHWISE_CONV_2D`` 3×3 (``arm_depthwise_conv_3x3_s8``, four channels at a time): the taps inside
  the input (padding is skipped) in four-channel groups and left over, the outputs, the output pixels;
  other kernels (``arm_depthwise_conv_s8_opt``): the taps, the outputs;
* ``FULLY_CONNECTED``: multiply-accumulates and outputs; ``ADD``/``MUL``: elements, apart where an operand
  is broadcast (TFLM then runs the reference ``BroadcastAdd4DSlow``/``BroadcastMul4DSlow``, not
  CMSIS-NN); ``MEAN``: input and output elements; ``PAD``: output elements and rows; pools: window
  elements; ``HARD_SWISH``, ``LOGISTIC``: elements;
* a constant per op kind (and kernel path), and per op and per inference (the interpreter's loop).

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

__all__ = ["COEFFICIENTS", "FIT_NOTES", "GRAPH_TERMS", "coefficients", "feature_names", "op_features",
           "op_instructions", "op_terms", "predict_graph_instructions", "predict_instructions"]

#: Terms counted once per graph: one per op (the interpreter's loop) and one per inference.
GRAPH_TERMS: tuple[str, str] = ("graph:ops", "graph:fixed")

#: Ops whose work is one pass over their elements (TFLM reference kernels).
_ELEMENTWISE = frozenset({"HARD_SWISH", "LOGISTIC", "RELU", "RELU6"})
#: Pools: one term, the window elements (networks have one or two, too few to fit a constant apart).
_POOLS = frozenset({"MAX_POOL_2D", "AVERAGE_POOL_2D"})

#: Instructions per unit of each term, by core: fitted by ``experiments/bench/fit_mcu_cost.py`` on nine
#: networks, 345 op rows (:data:`FIT_NOTES`). A zero: a term the fit found no use for.
COEFFICIENTS: dict[str, dict[str, float]] = {
    "cortex-m4": {
        "ADD:elements": 78.7797, "ADD:op": 802.203, "AVERAGE_POOL_2D:window": 9.8475,
        "CONV_2D:1x1_channels": 42.1522, "CONV_2D:1x1_macs16": 1.39518, "CONV_2D:1x1_macs4": 1.76163,
        "CONV_2D:1x1_odd_channel_macs": 10.2199, "CONV_2D:1x1_odd_pixel_macs": 1.81251,
        "CONV_2D:1x1_op": 628.184, "CONV_2D:1x1_out": 39.4915, "CONV_2D:1x1_tail_macs": 3.24491,
        "CONV_2D:1x1_weights": 2.94874, "CONV_2D:kxk_im2col": 2.85721, "CONV_2D:kxk_macs": 1.62977,
        "CONV_2D:kxk_odd_macs": 2.59817, "CONV_2D:kxk_op": 633.983, "CONV_2D:kxk_out": 44.1427,
        "CONV_2D:kxk_tail_macs": 3.10246, "CONV_2D:kxk_taps": 55.8447, "DEPTHWISE_CONV_2D:3x3_op": 1006.64,
        "DEPTHWISE_CONV_2D:3x3_out": 42.8855, "DEPTHWISE_CONV_2D:3x3_pixels": 60.4239,
        "DEPTHWISE_CONV_2D:3x3_tail_taps": 10.3523, "DEPTHWISE_CONV_2D:3x3_taps": 3.2528,
        "DEPTHWISE_CONV_2D:kxk_op": 1551.9, "DEPTHWISE_CONV_2D:kxk_out": 181.098,
        "DEPTHWISE_CONV_2D:kxk_taps": 2.16041, "FULLY_CONNECTED:macs": 1.87499, "FULLY_CONNECTED:op": 1044.1,
        "FULLY_CONNECTED:out": 0, "HARD_SWISH:elements": 97.5313, "HARD_SWISH:op": 0,
        "LOGISTIC:elements": 368.325, "LOGISTIC:op": 170.161, "MAX_POOL_2D:window": 8.29115,
        "MEAN:in": 162.231, "MEAN:op": 1189.41, "MEAN:out": 43.3649, "MUL:broadcast_elements": 52.3652,
        "MUL:elements": 35.3725, "MUL:op": 653.088, "PAD:op": 315.501, "PAD:out": 0.518453,
        "PAD:rows": 111.267, "graph:ops": 16, "graph:fixed": 73,
    },
}

#: How each table was fitted: the command, the library, the networks, and the errors of the fit and
#: held-out networks (these and the per-op residuals are printed by the fit command).
FIT_NOTES: dict[str, str] = {
    "cortex-m4": (
        "uv run experiments/bench/fit_mcu_cost.py --out outputs/mcu_cost/fit-cortex-m4.json: TFLM + CMSIS-NN "
        "of the source archive with SHA-256 9eacced06ab7b12c…, QEMU mps2-an386, 345 op rows of nine networks. "
        "Error of the prediction from the PyTorch network against the deployed firmware's count, fit: "
        "mnv1_w0.25_32px +0.24%; mnv1_w0.5_64px +0.03%; mnv1_w0.25_96px +0.09%; mnv1_w1.0_cut3_32px +0.08%; "
        "mnv1_w0.5_cut6_32px +0.08%; mnv1_odd_channels_42px -0.35%; mobilenetv3_small_050_32px +0.24%; "
        "efficientnet_b0_cut4_32px -0.07%; resnet10t_cut2_40px -0.01% (max |error| 0.35%); held out: "
        "mnv1_w0.35_48px -0.24%; mnv1_w0.75_cut10_48px -0.14%; mnv1_pruned0.65_32px -0.15%; "
        "mobilenetv3_small_050_cut4_64px -0.16%; efficientnet_b0_cut6_32px -0.06%; resnet10t_cut3_32px "
        "+0.10%; mnv1_pruned0.6_cut4_32px -0.27% (max |error| 0.27%)."
    ),
}


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
    """The work terms of one op, keyed ``"KIND:term"``, with a constant (``"KIND:op"``, or per kernel
    path ``"KIND:1x1_op"`` …) except for pools. Raises ``ValueError`` for an op kind with no cost model,
    or an op without the shapes of a predicted graph."""
    kind = op.kind
    if not op.in_shape or not op.out_shape:
        raise ValueError(f"{kind}: no shapes; the cost model needs a graph from tflm_estimate.predict_graph")
    elements = math.prod(op.out_shape)
    path = ""  # the kernel path, for convolutions
    if kind == "CONV_2D":
        pixels, c_in, c_out, _ = _spatial(op)
        kh, kw = op.kernel
        # both kernels take output pixels and output channels two at a time; an odd last one goes apart
        pp, cp = pixels - pixels % 2, c_out - c_out % 2
        if (kh, kw) == (1, 1):
            path = "1x1_"
            terms = {"1x1_macs16": pp * cp * 16 * (c_in // 16), "1x1_macs4": pp * cp * 4 * (c_in % 16 // 4),
                     "1x1_tail_macs": pp * cp * (c_in % 4), "1x1_odd_pixel_macs": (pixels % 2) * cp * c_in,
                     "1x1_odd_channel_macs": pixels * (c_out % 2) * c_in, "1x1_out": pixels * c_out,
                     "1x1_weights": c_in * c_out, "1x1_channels": c_out}
        else:
            path, column = "kxk_", kh * kw * c_in
            terms = {"kxk_macs": pp * cp * 4 * (column // 4), "kxk_tail_macs": pp * cp * (column % 4),
                     "kxk_odd_macs": (pixels * c_out - pp * cp) * column, "kxk_im2col": pixels * column,
                     "kxk_taps": pixels * kh * kw, "kxk_out": pixels * c_out}
    elif kind == "DEPTHWISE_CONV_2D":
        pixels, c_in, c_out, taps = _spatial(op)
        if op.kernel == (3, 3) and c_in == c_out:
            path = "3x3_"
            terms = {"3x3_taps": taps * 4 * (c_out // 4), "3x3_tail_taps": taps * (c_out % 4),
                     "3x3_out": pixels * c_out, "3x3_pixels": pixels}
        else:
            path = "kxk_"
            terms = {"kxk_taps": taps * c_out, "kxk_out": pixels * c_out}
    elif kind == "FULLY_CONNECTED":
        terms = {"macs": math.prod(op.in_shape[1:]) * elements, "out": elements}
    elif kind in ("ADD", "MUL"):
        terms = {"broadcast_elements" if op.broadcast else "elements": elements}
    elif kind == "MEAN":
        terms = {"in": math.prod(op.in_shape), "out": elements}
    elif kind in ("PAD", "PADV2"):
        terms = {"out": elements, "rows": op.in_shape[0] * op.in_shape[2]}
    elif kind in _POOLS:
        terms = {"window": _spatial(op)[3] * op.out_shape[1]}
    elif kind in _ELEMENTWISE:
        terms = {"elements": elements}
    else:
        raise ValueError(f"no instruction-count model for TFLite op {kind}")
    if kind not in _POOLS:
        terms[f"{path}op"] = 1
    return {f"{kind}:{term}": float(value) for term, value in terms.items()}


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
                         "it was fitted on had no such op or kernel path; refit with one among them")
    return sum(v * table.get(t, 0.0) for t, v in terms.items())


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
