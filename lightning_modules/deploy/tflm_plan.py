"""TFLite Micro's memory plan, re-implemented: where the interpreter puts every buffer of a model in its
tensor arena, and how many persistent bytes it allocates beside them.

Hand-written because no library exposes TFLM's planner outside the C++ interpreter; it follows the
interpreter's sources (tensorflow/tflite-micro, ``tensorflow/lite/micro/``), cited per function:

* :func:`greedy_plan` — ``memory_planner/greedy_memory_planner.cc`` (``GreedyMemoryPlanner``);
* :func:`tflite_buffers` — ``micro_allocation_info.cc`` (``AllocationInfoBuilder``: which tensors are
  planned, their lifetimes, the kernels' scratch buffers) and ``micro_allocator.cc`` (sizes aligned up
  to ``MicroArenaBufferAlignment()`` = 16 bytes before planning);
* :func:`persistent_bytes` — the kernels' ``Init``/``Prepare`` persistent allocations (``kernels/*.cc``)
  and the interpreter's per-tensor and per-node structs, with the struct sizes of the 64-bit host build
  the ``tflite-micro`` Python package runs, or of a 32-bit microcontroller build (``target_bits=32``).

:func:`plan_tflite` applies them to a converted ``.tflite``; :mod:`.tflm_estimate` applies them to the
graph it predicts from a PyTorch network, before any conversion.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: TFLM aligns every planned arena buffer and every persistent allocation to this many bytes
#: (``MicroArenaBufferAlignment()``, micro_arena_constants.h).
ALIGN: int = 16

#: ``sizeof`` of each kernel's persistent op data (``Init``: ``AllocatePersistentBuffer(sizeof(...))``),
#: by target pointer width. 64-bit: compiled against TFLM's headers on the x86-64 host (the Python
#: package's build); 32-bit: the same structs laid out for a 32-bit ARM EABI target (pointers 4 bytes).
OP_DATA_BYTES: dict[str, dict[int, int]] = {
    "CONV_2D": {64: 72, 32: 64},             # OpDataConv (kernels/conv.h)
    "DEPTHWISE_CONV_2D": {64: 72, 32: 64},   # OpDataConv
    "FULLY_CONNECTED": {64: 64, 32: 56},     # OpDataFullyConnected (kernels/fully_connected.h)
    "MEAN": {64: 44, 32: 44},                # OpDataReduce (kernels/reduce.h)
    "SUM": {64: 44, 32: 44},
    "ADD": {64: 60, 32: 60},                 # OpDataAdd (kernels/add.h)
    "MUL": {64: 36, 32: 36},                 # OpDataMul (kernels/mul.h)
    "LOGISTIC": {64: 16, 32: 16},            # OpDataLogistic (kernels/logistic.h)
    "HARD_SWISH": {64: 20, 32: 20},          # HardSwishParams (kernels/internal/types.h)
    "MAX_POOL_2D": {64: 32, 32: 32},         # OpDataPooling (kernels/pooling.h)
    "AVERAGE_POOL_2D": {64: 32, 32: 32},
    "RELU": {64: 28, 32: 28},                # ReluOpData (kernels/activations.h)
    "RELU6": {64: 8, 32: 8},                 # Relu6OpData
    "PAD": {64: 56, 32: 56},                 # pad.h OpData (PadParams + zero point)
    "PADV2": {64: 56, 32: 56},
    "RESHAPE": {64: 0, 32: 0},               # no op data
}

#: ``sizeof`` of the builtin options TFLM parses from the flatbuffer into the persistent arena per op
#: (``MicroBuiltinDataAllocator``, 4-byte aligned; core/api/flatbuffer_conversions.cc, c/builtin_op_data.h).
#: Ops absent here (PAD, LOGISTIC, HARD_SWISH, RELU, …) parse no options. 32-bit: ARM EABI, where enums
#: take the smallest integer type that holds them.
BUILTIN_DATA_BYTES: dict[str, dict[int, int]] = {
    "CONV_2D": {64: 28, 32: 28},             # TfLiteConvParams
    "DEPTHWISE_CONV_2D": {64: 28, 32: 28},   # TfLiteDepthwiseConvParams
    "FULLY_CONNECTED": {64: 16, 32: 5},      # TfLiteFullyConnectedParams
    "ADD": {64: 8, 32: 2},                   # TfLiteAddParams
    "MUL": {64: 4, 32: 1},                   # TfLiteMulParams
    "MEAN": {64: 1, 32: 1},                  # TfLiteReducerParams
    "SUM": {64: 1, 32: 1},
    "MAX_POOL_2D": {64: 40, 32: 40},         # TfLitePoolParams
    "AVERAGE_POOL_2D": {64: 40, 32: 40},
    "RESHAPE": {64: 36, 32: 36},             # TfLiteReshapeParams
}

#: Interpreter structs, by target pointer width (c/common.h, micro_allocator.h).
STRUCT_BYTES: dict[str, dict[int, int]] = {
    "eval_tensor": {64: 24, 32: 12},         # TfLiteEvalTensor, one per tensor of the subgraph
    "node": {64: 64, 32: 36},                # NodeAndRegistration, one per operator
    "io_tensor": {64: 64 + 32, 32: 32 + 32},  # persistent TfLiteTensor + its quantisation data, per graph I/O
    "scratch_handle": {64: 8, 32: 4},        # ScratchBufferHandle, one per kernel scratch request
}

#: Persistent bytes that do not depend on the model (interpreter, allocator, planner and subgraph
#: bookkeeping), by target pointer width. 64-bit: the tail of the host interpreter's allocation report
#: less every per-tensor / per-op item above, for a MobileNetV1-0.75 at 48 px (outside the grid
#: ``tests/test_tflm_plan.py`` holds the estimate to). 32-bit: see :data:`ARENA_32BIT_NOTE`.
FIXED_BYTES: dict[int, int] = {64: 632, 32: 116}

#: How far the 32-bit figure can be trusted.
ARENA_32BIT_NOTE: str = (
    "32-bit arena: TFLM's structs with ARM EABI sizes (read from TFLM's headers compiled with "
    "arm-none-eabi-g++ for Cortex-M4), the same plan for the activations; the fixed part is set so that "
    "MobileNetV1-0.35 at 64 px gives the 88,372 B a Cortex-M4 build with CMSIS-NN kernels reported. "
    "CMSIS-NN's own scratch buffers (im2col) are not modelled; an estimate until firmware measures more nets.")

#: Ops whose kernel stores a requantisation multiplier and shift (int32 each) per output channel.
PER_CHANNEL_OPS: frozenset[str] = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D"})


def align(n: int, to: int = ALIGN) -> int:
    """``n`` rounded up to a multiple of ``to``."""
    return (n + to - 1) // to * to


@dataclass(frozen=True)
class PlanBuffer:
    """One buffer the planner places: aligned bytes, first and last time step it is live (inclusive).
    Its position in the list handed to :func:`greedy_plan` is its id (TFLM: tensor index, then scratch
    buffers in request order)."""

    size: int
    first: int
    last: int


def planner_order(sizes: Sequence[int]) -> list[int]:
    """The order TFLM's ``GreedyMemoryPlanner`` places buffers in: it copies them into its sort arrays
    back to front and bubble-sorts them by descending size (a stable sort), so the largest goes first and,
    among equal sizes, the buffer added *later* goes first."""
    return sorted(range(len(sizes)), key=lambda i: (-sizes[i], -i))


def greedy_offsets(buffers: Sequence[PlanBuffer]) -> list[int]:
    """Arena offset of each buffer, placed as ``GreedyMemoryPlanner::CalculateOffsetsIfNeeded`` does: in
    :func:`planner_order`, each at the first gap (walking the placed buffers whose lifetimes overlap its
    own, by offset) large enough to hold it, or after the last of them."""
    offsets = [0] * len(buffers)
    placed: list[int] = []  # ids, kept sorted by offset; equal offsets keep their insertion order
    for i in planner_order([b.size for b in buffers]):
        b = buffers[i]
        candidate = 0
        for j in placed:
            other = buffers[j]
            if other.first > b.last or b.first > other.last:
                continue  # not alive at the same time
            if offsets[j] - candidate >= b.size:
                break  # the gap before this one holds the buffer
            candidate = max(candidate, offsets[j] + other.size)
        offsets[i] = candidate
        at = next((k for k, j in enumerate(placed) if offsets[j] > candidate), len(placed))
        placed.insert(at, i)
    return offsets


def greedy_plan(buffers: Iterable[PlanBuffer | tuple[int, int, int]]) -> int:
    """Bytes of the arena's head (non-persistent part) TFLM needs for these buffers: the highest end of
    any buffer in the :func:`greedy_offsets` layout. Tuples are ``(size, first, last)``; sizes are
    aligned to :data:`ALIGN` first, as ``MicroAllocator`` does before handing them to the planner."""
    items = [b if isinstance(b, PlanBuffer) else PlanBuffer(align(b[0]), b[1], b[2]) for b in buffers]
    items = [PlanBuffer(align(b.size), b.first, b.last) for b in items]
    offsets = greedy_offsets(items)
    return max((o + b.size for o, b in zip(offsets, items, strict=True)), default=0)


# ------------------------------------------------------------------------------------------ a graph
@dataclass
class OpNode:
    """One operator of a TFLite graph: its builtin name, input and output tensor ids (activations only,
    or constants too; constants are ignored by the planner), output channels, output elements and
    input rank (what the kernels' persistent and scratch allocations depend on). A graph predicted from
    a network (:mod:`.tflm_estimate`) also carries the geometry the kernels' work depends on
    (:mod:`.mcu_cost`): the first activation input's and the output's shape (NCHW, batch first), the
    kernel and stride of a convolution or pool, and whether an ``ADD``/``MUL`` broadcasts an operand."""

    kind: str
    inputs: list[int]
    outputs: list[int]
    channels: int = 0
    out_elements: int = 0
    in_rank: int = 4
    axes: int = 0
    per_channel: bool = True
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    broadcast: bool = False


@dataclass
class TfliteGraphPlan:
    """What the planner and the persistent-allocation model need: tensor bytes (0 for constants and
    tensors TFLM does not plan), the graph inputs and outputs, the ops in execution order."""

    tensor_bytes: list[int]
    inputs: list[int]
    outputs: list[int]
    ops: list[OpNode] = field(default_factory=list)


@dataclass
class PredictedGraph:
    """The TFLite graph predicted for a network (:mod:`~lightning_modules.deploy.tflm_estimate`), and its
    constants (for the flatbuffer's size, :mod:`~lightning_modules.deploy.tflite_flash`)."""

    plan: TfliteGraphPlan
    const_tensors: int = 0
    const_bytes: int = 0
    const_buffers: list[int] = field(default_factory=list)  # bytes of each stored constant buffer
    quant_channels: int = 0
    layers: list[str] = field(default_factory=list)  # the ONNX node (layer) behind each op


def scratch_requests(op: OpNode) -> list[int]:
    """Bytes of the scratch buffers an int8 kernel requests in ``Prepare`` (reference kernels): MEAN / SUM
    ask for an int32 accumulator per output element, then an int per input dimension and per reduced
    axis (kernels/reduce_common.cc); the other ops here request none for int8 weights."""
    if op.kind in ("MEAN", "SUM"):
        return [4 * op.out_elements, 4 * op.in_rank, 4 * op.axes]
    return []


def tflite_buffers(graph: TfliteGraphPlan) -> list[PlanBuffer]:
    """The buffers TFLM plans, in the order it adds them (tensor index, then scratch requests), with
    lifetimes as ``AllocationInfoBuilder::MarkAllocationLifetimes`` counts them: graph inputs at step 0,
    operator ``i`` at step ``i + 1`` (its outputs created there, its inputs last used there), graph
    outputs alive to the last step; scratch buffers live during their op only. Zero-byte tensors
    (constants: their data stays in the flatbuffer) are not planned."""
    n = len(graph.tensor_bytes)
    first, last = [-1] * n, [-1] * n
    for t in graph.inputs:
        first[t], last[t] = 0, 0
    scratch: list[PlanBuffer] = []
    for i, op in enumerate(graph.ops, start=1):
        for t in op.outputs:
            if first[t] < 0:
                first[t] = i
        for t in (*op.inputs, *op.outputs):
            if t >= 0:
                last[t] = i
        scratch += [PlanBuffer(align(s), i, i) for s in scratch_requests(op) if s > 0]
    end = len(graph.ops)
    for t in graph.outputs:
        if first[t] < 0:
            first[t] = end
        last[t] = end
    planned = [PlanBuffer(align(graph.tensor_bytes[t]), first[t], last[t]) for t in range(n)
               if graph.tensor_bytes[t] > 0 and first[t] >= 0]
    return planned + scratch


def op_persistent_bytes(op: OpNode, target_bits: int = 64) -> int:
    """Persistent arena bytes of one op's kernel: its op data, plus an int32 multiplier and shift per
    output channel for per-channel-quantised convolutions (kernels/conv_common.cc,
    depthwise_conv_common.cc); each allocation aligned to :data:`ALIGN`."""
    table = OP_DATA_BYTES.get(op.kind)
    if table is None:
        raise KeyError(f"no persistent-allocation model for TFLite op {op.kind}")
    total = align(table[target_bits]) if table[target_bits] else 0
    if op.kind in PER_CHANNEL_OPS and op.per_channel:
        total += 2 * align(4 * op.channels)
    return total


def persistent_bytes(graph: TfliteGraphPlan, target_bits: int = 64) -> int:
    """The arena's tail: the fixed interpreter structs, a ``TfLiteEvalTensor`` per tensor, a
    ``NodeAndRegistration`` per op, the parsed builtin options of every op (one block), every kernel's
    persistent data, the persistent input/output tensors and a handle per scratch buffer."""
    if target_bits not in (32, 64):
        raise ValueError(f"target_bits must be 32 or 64, got {target_bits}")
    s = {k: v[target_bits] for k, v in STRUCT_BYTES.items()}
    scratch = sum(len([b for b in scratch_requests(op) if b > 0]) for op in graph.ops)
    builtin = sum(align(BUILTIN_DATA_BYTES.get(op.kind, {}).get(target_bits, 0), 4) for op in graph.ops)
    return (FIXED_BYTES[target_bits] + s["eval_tensor"] * len(graph.tensor_bytes) + align(builtin)
            + s["node"] * len(graph.ops) + s["io_tensor"] * (len(graph.inputs) + len(graph.outputs))
            + sum(op_persistent_bytes(op, target_bits) for op in graph.ops)
            + s["scratch_handle"] * scratch)


def arena(graph: TfliteGraphPlan, target_bits: int = 64) -> dict[str, int]:
    """``{"arena_bytes", "arena_head_bytes", "arena_tail_bytes"}`` TFLM allocates for ``graph``."""
    head = greedy_plan(tflite_buffers(graph))
    tail = persistent_bytes(graph, target_bits)
    return {"arena_bytes": head + tail, "arena_head_bytes": head, "arena_tail_bytes": tail}


# --------------------------------------------------------------------------------------- a .tflite
_DTYPE_BYTES: dict[str, int] = {"INT8": 1, "UINT8": 1, "BOOL": 1, "INT16": 2, "FLOAT16": 2, "INT32": 4,
                                "FLOAT32": 4, "INT64": 8, "FLOAT64": 8}


def read_graph(model: bytes | str | Path) -> tuple[TfliteGraphPlan, list[str], Any]:
    """The plan inputs of a ``.tflite`` (subgraph 0), each op's builtin name, and the parsed model."""
    from lightning_modules.deploy.tflite_file import builtin_names, parse_model

    graph_obj = parse_model(model)
    sub = graph_obj.subgraphs[0]
    names = builtin_names(graph_obj)
    types = _tensor_type_names()
    sizes = []
    for t in sub.tensors:
        buf = graph_obj.buffers[t.buffer].data if t.buffer < len(graph_obj.buffers) else None
        constant = buf is not None and len(buf) > 0
        count = 1
        for d in (t.shape if t.shape is not None else []):
            count *= int(d)
        sizes.append(0 if constant else count * _DTYPE_BYTES.get(types[t.type], 4))
    ops = []
    for op, name in zip(sub.operators, names, strict=True):
        ins, outs = [int(i) for i in op.inputs], [int(o) for o in op.outputs]
        out = sub.tensors[outs[0]]
        shape = [int(d) for d in out.shape]
        elements = 1
        for d in shape:
            elements *= d
        node = OpNode(name, ins, outs, channels=shape[-1] if shape else 0, out_elements=elements,
                      in_rank=len(sub.tensors[ins[0]].shape))
        if name in ("MEAN", "SUM"):
            node.axes = int(sub.tensors[ins[1]].shape[0]) if len(sub.tensors[ins[1]].shape) else 1
        if name in PER_CHANNEL_OPS:
            scales = sub.tensors[ins[1]].quantization.scale
            node.per_channel = scales is not None and len(scales) > 1
        ops.append(node)
    plan = TfliteGraphPlan(sizes, [int(i) for i in sub.inputs], [int(o) for o in sub.outputs], ops)
    return plan, names, graph_obj


def _tensor_type_names() -> dict[int, str]:
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    return {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}


def plan_tflite(model: bytes | str | Path, target_bits: int = 64) -> dict[str, int]:
    """TFLM's arena for a converted ``.tflite`` without running it, and the flash it takes (its bytes):
    ``{"arena_bytes", "arena_head_bytes", "arena_tail_bytes", "flash_bytes", "ops", "tensors"}``."""
    from lightning_modules.deploy.tflite_file import read_model

    data = read_model(model)
    graph, _, _ = read_graph(data)
    return {**arena(graph, target_bits), "flash_bytes": len(data), "ops": len(graph.ops),
            "tensors": len(graph.tensor_bytes)}
