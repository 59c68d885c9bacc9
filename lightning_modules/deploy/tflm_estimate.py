"""Predict TFLite Micro's tensor arena and the int8 ``.tflite`` size of a PyTorch network without
converting it (the budget search sizes dozens of candidates; one conversion takes minutes).

Hand-written: no library predicts TFLM's memory from a network. The network goes through the same
export as the deployment (:func:`~lightning_modules.deploy.tflm_compat.tflm_friendly`, then the ONNX
export, seconds), and the ONNX graph is mapped onto the TFLite graph onnx2tf + the TFLite converter emit
(:func:`predict_graph`), whose arena :mod:`~lightning_modules.deploy.tflm_plan` computes as TFLM does:

* **ops**: ``Conv`` → ``CONV_2D`` / ``DEPTHWISE_CONV_2D`` with BatchNorm folded and ReLU/ReLU6 fused,
  plus an explicit ``PAD`` (a buffer of its own) where PyTorch's symmetric padding is not TensorFlow's
  ``SAME``; ``HardSwish`` → ``HARD_SWISH``; ``Sigmoid`` → ``LOGISTIC``; ``Mul``/``Add`` of two
  activations → ``MUL``/``ADD``; global average pooling → ``MEAN`` (dropped on a 1×1 map); ``Gemm`` →
  ``FULLY_CONNECTED``; pools → ``MAX_POOL_2D``/``AVERAGE_POOL_2D``; ``Pad`` → ``PAD``; reshapes are free.
* **arena**: :func:`~lightning_modules.deploy.tflm_plan.arena` — TFLM's greedy planner on the int8
  activation buffers in the converter's tensor order (input, activations in execution order) plus the
  kernels' scratch buffers, and the persistent structs and kernel data.
* **flash**: int8 weights, int32 biases, per-channel quantisation parameters as stored in the flatbuffer
  (float32 scale + int64 zero point per channel, for the weight *and* the bias tensor), plus a
  flatbuffer's tables, alignment and tensor names (:mod:`~lightning_modules.deploy.tflite_flash`).
"""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from lightning_modules.deploy.tflite_flash import predicted_flash
from lightning_modules.deploy.tflm_plan import (
    ALIGN,
    OpNode,
    PredictedGraph,
    TfliteGraphPlan,
    arena,
    greedy_plan,
)

__all__ = ["ALIGN", "PredictedGraph", "estimate_tflm", "greedy_plan", "needs_explicit_pad", "network_graph",
           "predict_graph", "same_padding"]

#: ONNX ops that are free in the TFLite graph (views, or folded away by the converter).
_FREE = frozenset({"Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Dropout"})
#: Activations the converter fuses into the op producing their input.
_FUSABLE = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MUL"})


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's ``SAME`` padding (before, after) of one spatial dimension."""
    effective = (kernel - 1) * dilation + 1
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def explicit_pad(pads: list[int], size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
                 dilation: tuple[int, int]) -> bool:
    """Whether onnx2tf puts a ``PAD`` op before a convolution/pool with ONNX ``pads`` (top, left, bottom,
    right): the padding is neither none (``VALID``) nor TensorFlow's ``SAME`` on this input."""
    if not any(pads):
        return False
    same = [same_padding(size[d], kernel[d], stride[d], dilation[d]) for d in (0, 1)]
    return same != [(pads[0], pads[2]), (pads[1], pads[3])]


def needs_explicit_pad(conv: nn.Conv2d, height: int, width: int) -> bool:
    """:func:`explicit_pad` for a PyTorch convolution on a ``height`` × ``width`` input."""
    pad_h, pad_w = conv.padding if isinstance(conv.padding, tuple) else (conv.padding, conv.padding)
    if isinstance(pad_h, str):
        return False
    return explicit_pad([pad_h, pad_w, pad_h, pad_w], (height, width), conv.kernel_size, conv.stride,
                        conv.dilation)


class _Builder:
    """Accumulates predicted TFLite ops over ONNX nodes (see :func:`predict_graph`)."""

    def __init__(self, shapes: dict[str, list[int]], initializers: dict[str, Any]) -> None:
        self.shapes = shapes
        self.init = initializers
        self.tensor: dict[str, int] = {}       # ONNX value → activation tensor id
        self.bytes: list[int] = []
        self.shape_of: list[tuple[int, ...]] = []  # activation tensor id → shape (NCHW)
        self.ops: list[OpNode] = []
        self.layers: list[str] = []
        self.producer: dict[int, int] = {}     # tensor → op index writing it
        self.readers: dict[str, int] = {}      # ONNX value → number of nodes reading it
        self.shared_consts: set[tuple] = set()
        self.zero_biases: dict[int, int] = {}  # conv output tensor → channels, where the bias is all zeros
        self.trained = False                   # no bias is all zeros (see predict_graph)
        self.graph = PredictedGraph(TfliteGraphPlan([], [], []))

    def new_tensor(self, value: str, shape: list[int]) -> int:
        self.bytes.append(math.prod(shape))
        self.shape_of.append(tuple(shape))
        self.tensor[value] = len(self.bytes) - 1
        return self.tensor[value]

    def const(self, count: int, sizes: list[int], channels: int = 0, shared: tuple | None = None) -> None:
        """``count`` constant tensors stored in buffers of ``sizes`` bytes (``shared``: stored once per key)."""
        if shared is not None:
            if shared in self.shared_consts:
                return
            self.shared_consts.add(shared)
        self.graph.const_tensors += count
        self.add_buffer(*sizes)
        self.graph.quant_channels += channels

    def add_buffer(self, *sizes: int) -> None:
        self.graph.const_bytes += sum(sizes)
        self.graph.const_buffers += [s for s in sizes if s]

    def op(self, kind: str, inputs: list[int], value: str, shape: list[int], layer: str, **kw: Any) -> int:
        in_shape = self.shape_of[inputs[0]]
        out = self.new_tensor(value, shape)
        node = OpNode(kind, inputs, [out], channels=shape[-1] if kind == "FULLY_CONNECTED" else shape[1],
                      out_elements=math.prod(shape), in_rank=4, in_shape=in_shape, out_shape=tuple(shape), **kw)
        self.ops.append(node)
        self.layers.append(layer)
        self.producer[out] = len(self.ops) - 1
        return out

    def is_activation(self, value: str) -> bool:
        return value in self.tensor


def predict_graph(onnx_path: str | Path, trained: bool = False) -> PredictedGraph:
    """The int8 TFLite graph onnx2tf + the TFLite converter produce from an exported classifier (batch 1,
    NCHW input): ops in execution order, activation tensor bytes in the converter's order (input first,
    then each op's output), and the constants. Raises ``ValueError`` naming the ONNX node of an op with
    no mapping here.

    ``trained``: predict for the network once trained, whose BatchNorm never folds into an all-zero bias
    (an untrained one does, and the flatbuffer stores equal all-zero biases once)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    g = model.graph
    shapes = _value_shapes(model)
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for node in g.node:
        if node.op_type == "Constant":
            inits[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    b = _Builder(shapes, inits)
    b.trained = trained
    for node in g.node:
        for name in node.input:
            b.readers[name] = b.readers.get(name, 0) + 1
    x = g.input[0].name
    b.new_tensor(x, shapes[x])
    for node in g.node:
        _map_node(b, node)
    b.add_buffer(*(4 * c for c in set(b.zero_biases.values())))
    plan = b.graph.plan
    plan.tensor_bytes, plan.ops = b.bytes, b.ops
    plan.inputs = [b.tensor[x]]
    plan.outputs = [b.tensor[g.output[0].name]]
    b.graph.layers = b.layers
    _shortcut_first(b.graph)
    return b.graph


def _value_shapes(model: Any) -> dict[str, list[int]]:
    """The shape of every value of the graph at batch 1, from one onnxruntime run on zeros (ONNX shape
    inference loses them behind the shape arithmetic PyTorch writes for a padding)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    model = copy.deepcopy(model)
    g = model.graph
    known = {o.name for o in g.output}
    names = [v for node in g.node for v in node.output if v and v not in known]
    g.output.extend(onnx.ValueInfoProto(name=v) for v in names)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    dims = [d.dim_value if d.dim_value > 0 else 1 for d in g.input[0].type.tensor_type.shape.dim]
    outs = session.run(None, {g.input[0].name: np.zeros(dims, np.float32)})
    shapes = {o.name: list(v.shape) for o, v in zip(session.get_outputs(), outs, strict=True)}
    shapes[g.input[0].name] = dims
    return shapes


def _chain(plan: TfliteGraphPlan, tensor: int, producer: dict[int, int], readers: dict[int, int]) -> list[int]:
    """The ops that lead to ``tensor`` one after the other (each reading only the previous one's output,
    which nothing else reads), back to the tensor where the branch forks off."""
    ops: list[int] = []
    while tensor in producer:
        op = producer[tensor]
        node = plan.ops[op]
        ops.append(op)
        if len(node.inputs) != 1:
            return []
        tensor = node.inputs[0]
        if readers.get(tensor, 0) > 1:
            return ops[::-1]
    return []


def _shortcut_first(graph: PredictedGraph) -> None:
    """Reorder two branches that fork from one tensor and meet in an ``ADD`` (a residual block with a
    downsampling shortcut) as the converter does: the shorter branch runs first; renumber the tensors
    in the new execution order (the converter numbers activations in that order)."""
    plan = graph.plan
    producer = {t: i for i, op in enumerate(plan.ops) for t in op.outputs}
    readers: dict[int, int] = {}
    for op in plan.ops:
        for t in op.inputs:
            readers[t] = readers.get(t, 0) + 1
    order = list(range(len(plan.ops)))
    for op in plan.ops:
        if op.kind != "ADD" or len(op.inputs) != 2:
            continue
        a, b = (_chain(plan, t, producer, readers) for t in op.inputs)
        if a and b and len(b) < len(a) and plan.ops[a[0]].inputs[0] == plan.ops[b[0]].inputs[0]:
            at = order.index(min(a[0], b[0]))
            moved = [k for k in order if k not in a and k not in b]
            order = moved[:at] + b + a + moved[at:]
    if order == list(range(len(plan.ops))):
        return
    renumber = {t: n for n, t in enumerate([*plan.inputs, *(t for k in order for t in plan.ops[k].outputs)])}
    plan.tensor_bytes = [plan.tensor_bytes[t] for t in sorted(renumber, key=renumber.get)]
    plan.ops = [plan.ops[k] for k in order]
    graph.layers = [graph.layers[k] for k in order]
    for op in plan.ops:
        op.inputs = [renumber[t] for t in op.inputs]
        op.outputs = [renumber[t] for t in op.outputs]
    plan.inputs = [renumber[t] for t in plan.inputs]
    plan.outputs = [renumber[t] for t in plan.outputs]


def _attr(node: Any, name: str, default: Any = None) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _map_node(b: _Builder, node: Any) -> None:
    """Add the TFLite ops the converter emits for one ONNX node (nothing for constant-only nodes)."""
    acts = [v for v in node.input if b.is_activation(v)]
    if not acts:
        if node.op_type == "Identity":  # the exporter stores equal initializers once, aliased by Identity
            b.init[node.output[0]] = b.init.get(node.input[0])
        elif node.op_type != "Constant":
            b.init[node.output[0]] = None  # computed from constants only: folded by the converter
        return
    kind, out, layer = node.op_type, node.output[0], node.name
    shape = b.shapes.get(out)
    src = b.tensor[acts[0]]
    if kind in _FREE or (kind in ("GlobalAveragePool", "ReduceMean") and math.prod(b.shapes[acts[0]][2:]) == 1):
        b.tensor[out] = src  # a view, or pooling a 1×1 map (the converter drops it)
        return
    if kind in ("Relu", "Clip") and _fusable(b, src, acts[0]):
        b.tensor[out] = src
        return
    if kind == "Conv":
        _conv(b, node, src, shape)
    elif kind in ("MaxPool", "AveragePool"):
        _pool(b, node, src, shape)
    elif kind == "Pad":
        before = b.shapes[acts[0]]
        b.const(1, [32], shared=("pad", shape[2] - before[2], shape[3] - before[3]))  # equal paddings share one
        b.op("PAD", [src], out, shape, layer)
    elif kind in ("GlobalAveragePool", "ReduceMean"):
        b.const(1, [8], shared=("mean_axes",))
        b.op("MEAN", [src], out, shape, layer, axes=2)
    elif kind == "Gemm":
        w = b.init[node.input[1]]
        n = w.shape[0]
        bias = b.init.get(node.input[2]) if len(node.input) > 2 else None
        if bias is None or (not bias.any() and not b.trained):  # the converter drops an all-zero bias
            b.const(1, [w.size], channels=n)
        else:  # int8 weight and int32 bias, each with a scale per output
            b.const(2, [w.size, 4 * n], channels=2 * n)
        b.op("FULLY_CONNECTED", [src], out, shape, layer, per_channel=False)
    elif kind in ("Add", "Mul"):
        if len(acts) == 1:
            constant = next(v for v in node.input if v not in acts)
            if kind == "Add" and _fusable(b, src, acts[0], ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")):
                b.tensor[out] = src  # a constant added to a convolution's output folds into its bias
                if src in b.zero_biases:  # which is then no longer all zeros
                    b.add_buffer(4 * b.zero_biases.pop(src))
                return
            value = b.init.get(constant)
            key = ("scalar", float(value.reshape(-1)[0])) if value is not None and value.size == 1 else None
            b.const(1, [1 if key else int(value.size)], channels=1, shared=key)  # equal scalars share a tensor
        # a constant operand (a scalar or per-channel tensor) or a squeeze-excite gate: TFLM broadcasts it
        broadcast = len(acts) == 1 or b.shapes[acts[0]] != b.shapes[acts[1]]
        b.op(kind.upper(), [b.tensor[a] for a in acts], out, shape, layer, broadcast=broadcast)
    elif kind in ("HardSwish", "Sigmoid", "Relu", "Clip"):
        name = {"HardSwish": "HARD_SWISH", "Sigmoid": "LOGISTIC", "Relu": "RELU", "Clip": "RELU6"}[kind]
        b.op(name, [src], out, shape, layer)
    else:
        raise ValueError(f"no TFLite mapping for ONNX op {kind} (layer {layer})")


def _fusable(b: _Builder, src: int, value: str, kinds: frozenset[str] | tuple[str, ...] = _FUSABLE) -> bool:
    """Whether an op on ``src`` (ONNX value ``value``) fuses into the op that wrote it: that op is one of
    ``kinds`` (default: those that carry a fused activation) and nothing else reads its output."""
    op = b.producer.get(src)
    return op is not None and b.ops[op].kind in kinds and b.readers.get(value, 0) == 1


def _conv(b: _Builder, node: Any, src: int, shape: list[int]) -> None:
    in_shape = b.shapes[node.input[0]]
    w = b.init[node.input[1]]
    group = int(_attr(node, "group", 1))
    depthwise = group > 1 and group == in_shape[1]
    kernel = tuple(w.shape[2:])
    pads = list(_attr(node, "pads", [0, 0, 0, 0]))
    stride = tuple(_attr(node, "strides", [1, 1]))
    dilation = tuple(_attr(node, "dilations", [1, 1]))
    if explicit_pad(pads, (in_shape[2], in_shape[3]), kernel, stride, dilation):
        padded = [in_shape[0], in_shape[1], in_shape[2] + pads[0] + pads[2], in_shape[3] + pads[1] + pads[3]]
        b.const(1, [32], shared=("pad", pads[0] + pads[2], pads[1] + pads[3]))
        src = b.op("PAD", [src], node.name + ":pad", padded, node.name)
    channels = shape[1]
    bias = b.init.get(node.input[2]) if len(node.input) > 2 else None
    zero_bias = bias is not None and not bias.any() and not b.trained
    b.const(2, [w.size, 0 if zero_bias else 4 * channels], channels=2 * channels)
    out = b.op("DEPTHWISE_CONV_2D" if depthwise else "CONV_2D", [src], node.output[0], shape, node.name,
               kernel=kernel, stride=stride)
    if zero_bias:  # the flatbuffer stores equal buffers once: all-zero biases of one length share a buffer
        b.zero_biases[out] = channels


def _pool(b: _Builder, node: Any, src: int, shape: list[int]) -> None:
    in_shape = b.shapes[node.input[0]]
    kernel = tuple(_attr(node, "kernel_shape"))
    pads = list(_attr(node, "pads", [0, 0, 0, 0]))
    stride = tuple(_attr(node, "strides", [1, 1]))
    floor = [(in_shape[2 + d] + pads[d] + pads[d + 2] - kernel[d]) // stride[d] + 1 for d in (0, 1)]
    if _attr(node, "ceil_mode", 0) and floor != shape[2:]:
        raise ValueError(f"{node.name}: a ceil-mode pool whose output is larger than floor mode's; onnx2tf "
                         "emulates it with slices and concatenations, which this estimate does not model")
    if explicit_pad(pads, (in_shape[2], in_shape[3]), kernel, stride, (1, 1)):
        padded = [in_shape[0], in_shape[1], in_shape[2] + pads[0] + pads[2], in_shape[3] + pads[1] + pads[3]]
        b.const(1, [32], shared=("pad", pads[0] + pads[2], pads[1] + pads[3]))
        src = b.op("PADV2" if node.op_type == "MaxPool" else "PAD", [src], node.name + ":pad", padded, node.name)
    b.op("MAX_POOL_2D" if node.op_type == "MaxPool" else "AVERAGE_POOL_2D", [src], node.output[0], shape,
         node.name, kernel=kernel, stride=stride)


def network_graph(model: nn.Module, image_size: int, in_chans: int = 3, trained: bool = False) -> PredictedGraph:
    """:func:`predict_graph` of ``model`` at ``image_size``: exported as the deployment exports it (the
    :func:`~lightning_modules.deploy.tflm_compat.tflm_friendly` copy, then ONNX at batch 1)."""
    from lightning_modules.deploy.export import export_onnx
    from lightning_modules.deploy.tflm_compat import tflm_friendly

    net, _ = tflm_friendly(model, image_size, in_chans)
    with tempfile.TemporaryDirectory() as tmp:
        return predict_graph(export_onnx(net, Path(tmp) / "model.onnx", image_size, in_chans=in_chans), trained)


def estimate_tflm(model: nn.Module, image_size: int, in_chans: int = 3, target_bits: int = 64,
                  trained: bool = False) -> dict[str, int]:
    """Predicted TFLM arena (head + tail) and ``.tflite`` bytes of ``model`` exported fully int8:
    ``{"arena_bytes", "arena_head_bytes", "arena_tail_bytes", "flash_bytes", "ops", "tensors"}``.

    ``target_bits``: 64 = the host interpreter the ``tflite-micro`` package runs; 32 = a 32-bit
    microcontroller build (smaller persistent structs; see :mod:`~lightning_modules.deploy.tflm_plan`).
    ``trained``: size ``model`` as it will be once trained (a budget search sizes candidates before any
    training; see :func:`predict_graph`)."""
    graph = network_graph(model, image_size, in_chans, trained)
    flash = predicted_flash(graph)
    plan = graph.plan
    plan.tensor_bytes += [0] * graph.const_tensors  # constants: a struct each, no arena buffer
    memory = arena(plan, target_bits)
    return {**memory, "flash_bytes": flash, "ops": len(plan.ops),
            "tensors": len(plan.tensor_bytes)}
