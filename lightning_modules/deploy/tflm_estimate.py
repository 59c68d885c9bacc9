"""Predict TFLite Micro's tensor arena and the int8 ``.tflite`` size of a PyTorch network without
converting it (the budget search needs them for dozens of candidates; a conversion takes minutes).

Hand-written: no library predicts TFLM's memory from a PyTorch module. The model follows what TFLM
and the TFLite converter do with the graph our ONNX export → onnx2tf produces:

* **graph**: BatchNorm and ReLU fuse into the convolution; a convolution whose PyTorch padding is not
  TensorFlow's ``SAME``/``VALID`` padding (a stride-2 3×3 conv with padding 1 on an even input: PyTorch
  pads 1 + 1, ``SAME`` 0 + 1) gets an explicit ``PAD`` op, whose output is an activation buffer of its own;
  global average pooling is a ``MEAN``; ``flatten`` is free.
* **arena head**: TFLM's ``GreedyMemoryPlanner`` (tensorflow/lite/micro/memory_planner/
  greedy_memory_planner.cc): int8 buffers, sizes rounded up to 16 bytes, each live from the op writing it
  to its last reader (the input from the first op, the output to the end), placed largest first at the
  lowest offset that does not overlap a placed buffer alive at the same time; head = highest end.
* **arena tail** (persistent, 64-bit host build): one ``TfLiteEvalTensor`` (24 B) per tensor, one
  ``NodeAndRegistration`` (64 B) per op, kernel op data (conv/depthwise: two int32 per output channel,
  the requantisation multiplier and shift, plus a struct), I/O tensor structs; constants in
  :data:`TAIL_BYTES` measured on the interpreter's own allocation report.
* **flash**: int8 weights, int32 biases, per-channel quantisation parameters as stored in the flatbuffer
  (float32 scale + int64 zero point per channel, for the weight *and* the bias tensor), plus a
  per-tensor, per-op and fixed flatbuffer overhead (:data:`FLASH_BYTES`, fitted on converted models).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lightning_modules.deploy.profiling import ActivationTrace, _Tracer, run_traced

#: TFLM aligns every arena buffer to this many bytes (MicroArenaBufferAlignment()).
ALIGN: int = 16

#: Persistent arena bytes (tail), per item (64-bit host build of TFLM).
TAIL_BYTES: dict[str, int] = {
    "eval_tensor": 24,       # TfLiteEvalTensor per tensor (activations and constants)
    "node": 64,              # NodeAndRegistration per op
    "io_tensor": 96,         # persistent TfLiteTensor (64) + quantisation data (32) per graph input/output
    "per_channel": 8,        # int32 output multiplier + int32 shift per output channel of a conv/depthwise
    "op_data": 109,          # the rest of each op's persistent data (OpData structs, planner bookkeeping)
    "fixed": 357,            # interpreter and subgraph bookkeeping
}

#: Flatbuffer bytes beyond the stored numbers.
FLASH_BYTES: dict[str, float] = {
    "per_channel": 12,       # float32 scale + int64 zero point per channel of a quantised tensor
    "tensor": 167.0,         # Tensor table, shape vector, name (the converter's names are long), buffer entry
    "op": 91.0,              # Operator table, input/output index vectors, options, operator code
    "fixed": 0.0,            # model header, signature, metadata (fitted: about 0 beside the above)
}

# The per-op, per-tensor and fixed constants were fitted (least squares) on the allocation reports and
# file sizes of four converted MobileNetV1s (width 0.25/0.5 full depth, a width-0.5 cut at block 6 with
# the (64, 32) head, a 4-block net with irregular widths) at 32 px; the per-item struct sizes are TFLM's.


@dataclass
class TfliteGraph:
    """Activation buffers (bytes, int8) with their ops in execution order, and the constants."""

    trace: ActivationTrace
    op_kinds: list[str]                      # TFLite op per trace op (CONV_2D, PAD, …; "" = no op)
    const_tensors: int = 0                   # constant tensors (weights, biases, pad/axis parameters)
    const_bytes: int = 0                     # their stored bytes
    quant_channels: int = 0                  # per-channel quantisation entries (weights and biases)
    conv_channels: list[int] = field(default_factory=list)  # output channels of each convolution


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's ``SAME`` padding (before, after) of one spatial dimension."""
    effective = (kernel - 1) * dilation + 1
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def needs_explicit_pad(conv: nn.Conv2d, height: int, width: int) -> bool:
    """Whether onnx2tf must put a ``PAD`` op before ``conv``: its symmetric PyTorch padding is neither
    ``VALID`` (none) nor TensorFlow's ``SAME`` on this input."""
    pad_h, pad_w = conv.padding if isinstance(conv.padding, tuple) else (conv.padding, conv.padding)
    if isinstance(pad_h, str):
        return False
    if pad_h == 0 and pad_w == 0:
        return False
    same_h = same_padding(height, conv.kernel_size[0], conv.stride[0], conv.dilation[0])
    same_w = same_padding(width, conv.kernel_size[1], conv.stride[1], conv.dilation[1])
    return same_h != (pad_h, pad_h) or same_w != (pad_w, pad_w)


class _GraphTracer(_Tracer):
    """The activation tracer, plus the TFLite op of every traced op and an explicit PAD buffer where
    onnx2tf inserts one."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.graph = TfliteGraph(self.trace, [])
        self.next_id = -1
        self.pad_params: set[tuple] = set()

    def hook(self, module: nn.Module, args: Any, output: Any) -> None:
        before = len(self.trace.ops)
        super().hook(module, args, output)
        if len(self.trace.ops) == before:
            return
        kind = {nn.Conv2d: "CONV_2D", nn.Linear: "FULLY_CONNECTED", nn.AdaptiveAvgPool2d: "MEAN",
                nn.ZeroPad2d: "PAD"}.get(type(module), "")
        g = self.graph
        if isinstance(module, nn.Conv2d):
            depthwise = module.groups > 1 and module.groups == module.in_channels
            kind = "DEPTHWISE_CONV_2D" if depthwise else "CONV_2D"
            self._weights(module.weight.numel(), module.out_channels)
            x = args[0]
            if needs_explicit_pad(module, x.shape[-2], x.shape[-1]):
                name, ins, outs = self.trace.ops.pop()
                pad = self.next_id
                self.next_id -= 1
                ph, pw = module.padding
                self.trace.sizes[pad] = x.shape[1] * (x.shape[-2] + 2 * ph) * (x.shape[-1] + 2 * pw)
                self.trace.ops += [("PAD", ins, [pad]), (name, [pad], outs)]
                g.op_kinds.append("PAD")
                if (ph, pw) not in self.pad_params:  # identical paddings share one constant tensor
                    self.pad_params.add((ph, pw))
                    g.const_tensors += 1
                    g.const_bytes += 32
        elif isinstance(module, nn.Linear):
            self._weights(module.weight.numel(), module.out_features, per_channel=False)
        elif isinstance(module, nn.AdaptiveAvgPool2d):
            if args[0].shape[-2:].numel() == 1:  # pooling a 1×1 map is the identity: the converter drops it
                name, ins, outs = self.trace.ops[-1]
                self.alias[outs[0]] = ins[0]
                self.trace.sizes.pop(outs[0], None)
                self.trace.ops[-1] = (name, ins, ins)
                kind = ""
            else:
                g.const_tensors += 1
                g.const_bytes += 8
        g.op_kinds.append(kind)

    def _weights(self, elements: int, channels: int, per_channel: bool = True) -> None:
        g = self.graph
        g.const_tensors += 2                       # weight and (folded) bias
        g.const_bytes += elements + 4 * channels   # int8 weights, int32 bias
        g.quant_channels += 2 * channels if per_channel else channels + 1
        if per_channel:
            g.conv_channels.append(channels)

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        before = len(self.trace.ops)
        out = super().__torch_function__(func, types, args, kwargs)
        if len(self.trace.ops) > before:
            name = getattr(func, "__name__", str(func))
            self.graph.op_kinds.append({"add": "ADD", "__add__": "ADD", "mean": "MEAN",
                                        "adaptive_avg_pool2d": "MEAN"}.get(name, ""))
        return out


def tflite_graph(model: nn.Module, image_size: int, in_chans: int = 3) -> TfliteGraph:
    """Trace ``model`` at batch 1 into the int8 TFLite graph the export produces."""
    return run_traced(model, _GraphTracer(model), image_size, in_chans).graph


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def lifetimes(trace: ActivationTrace, kinds: list[str]) -> dict[int, tuple[int, int]]:
    """First and last op index of every activation buffer that is a TFLite tensor (fused ops — BN,
    in-place ReLU, views — write no new buffer; ops with no TFLite counterpart pass their input on)."""
    n = len(trace.ops)
    span: dict[int, list[int]] = {k: [0, 0] for k in trace.inputs}
    for i, (_, ins, outs) in enumerate(trace.ops):
        for k in (*ins, *outs):
            span.setdefault(k, [i, i])[1] = i
    for k in trace.outputs:
        span[k][1] = max(n - 1, 0)
    return {k: (a, b) for k, (a, b) in span.items()}


def greedy_plan(buffers: list[tuple[int, int, int]]) -> int:
    """Arena bytes TFLM's greedy planner needs for ``(size, first_op, last_op)`` buffers: largest first,
    each at the lowest offset clear of every placed buffer whose lifetime overlaps its own."""
    placed: list[tuple[int, int, int, int]] = []  # offset, size, first, last
    order = sorted(range(len(buffers)), key=lambda i: (-buffers[i][0], i))
    for i in order:
        size, first, last = buffers[i]
        size = _align(size)
        clashes = sorted((o, s) for o, s, f, la in placed if f <= last and first <= la)
        offset = 0
        for o, s in clashes:
            if o - offset >= size:
                break
            offset = max(offset, o + s)
        placed.append((offset, size, first, last))
    return max((o + s for o, s, _, _ in placed), default=0)


def estimate_tflm(model: nn.Module, image_size: int, in_chans: int = 3) -> dict[str, int]:
    """Predicted TFLM arena (head + tail) and ``.tflite`` bytes of ``model`` exported fully int8:
    ``{"arena_bytes", "arena_head_bytes", "arena_tail_bytes", "flash_bytes", "ops", "tensors"}``."""
    graph = tflite_graph(model, image_size, in_chans)
    trace = graph.trace
    spans = lifetimes(trace, graph.op_kinds)
    head = greedy_plan([(trace.sizes[k], a, b) for k, (a, b) in spans.items()])
    ops = sum(1 for kind in graph.op_kinds if kind)
    tensors = len(spans) + graph.const_tensors
    t = TAIL_BYTES
    tail = (t["eval_tensor"] * tensors + t["node"] * ops + t["io_tensor"] * 2 + t["op_data"] * ops
            + t["per_channel"] * sum(graph.conv_channels) + t["fixed"])
    f = FLASH_BYTES
    flash = (graph.const_bytes + f["per_channel"] * (graph.quant_channels + len(spans))
             + f["tensor"] * tensors + f["op"] * ops + f["fixed"])
    return {"arena_bytes": int(head + tail), "arena_head_bytes": int(head), "arena_tail_bytes": int(tail),
            "flash_bytes": int(round(flash)), "ops": ops, "tensors": tensors}

