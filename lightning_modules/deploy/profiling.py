"""Model cost: parameters, MACs and the TinyML budget (peak activation RAM, flash, latency).

MACs come from PyTorch's own ``FlopCounterMode`` (FLOPs / 2): convolutions (depthwise included, through
their ``groups``) and matrix multiplications; BatchNorm, ReLU and pooling are not counted, following the
MobileNet paper's convention (MobileNetV1-1.0 @224, 1000 classes: 568.7M MACs).

Microcontroller cost follows the deployment of an int8 network (TensorFlow Lite Micro, TinyEngine):

* **peak RAM** (:func:`peak_activation_memory`): the largest set of activation buffers alive at once when
  the layers run one after another at batch 1, as analysed by MCUNet (Lin et al., arXiv:2007.10319);
* **flash** (:func:`flash_size`): the stored weights, with BatchNorm folded into the preceding
  convolution and TFLite's int8 scheme (https://ai.google.dev/edge/litert/models/quantization_spec).

de Leon & Atienza (arXiv:2204.10546) report these two numbers for their depth-pruned MobileNetV1.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

#: Layers whose weights are stored (and quantised per output channel).
WEIGHTED_LAYERS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
#: Normalisation layers folded into the preceding weighted layer at deployment.
FOLDABLE_NORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: Bytes of a float32 number (per-channel scales, folded biases in float, unfolded parameters).
FLOAT_BYTES: int = 4
#: Bytes of an int32 bias of an int8 layer.
INT32_BYTES: int = 4


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (BatchNorm affine included, running statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_macs(model: nn.Module, image_size: int = 224, in_chans: int = 3) -> int:
    """Multiply-accumulates of one forward pass at batch 1 and ``image_size``² input."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, in_chans, image_size, image_size, device=device))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


def model_cost(model: nn.Module, image_size: int = 224) -> dict[str, int]:
    """``{"params": …, "macs": …}`` for summaries and logs."""
    return {"params": count_params(model), "macs": count_macs(model, image_size)}


# ------------------------------------------------------------------------------------------ peak RAM
# Hand-written: no maintained library computes MCU-style peak activation memory for PyTorch modules
# (MCUNet/TinyEngine analyse their own graphs; torch's memory tools report allocator state, which
# depends on caching and autograd rather than on the buffers an MCU runtime must keep).


@dataclass
class ActivationTrace:
    """Activation buffers and the ops that read and write them, in execution order.

    A buffer is one storage (``untyped_storage().data_ptr()``): views, flatten and in-place ops share it.
    """

    sizes: dict[int, int] = field(default_factory=dict)  # buffer → elements
    ops: list[tuple[str, list[int], list[int]]] = field(default_factory=list)  # (name, inputs, outputs)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)


class _Tracer(TorchFunctionMode):
    """Records leaf-module calls (through forward hooks) and the torch functions run between them
    (residual adds, ``flatten``, concatenations) as ops on activation buffers."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.trace = ActivationTrace()
        self.depth = 0  # > 0 inside a leaf module: its internal calls are part of that op
        self.alias: dict[int, int] = {}
        self.keep: list[Tensor] = []  # every tensor seen: their storage addresses are never reused
        self.seen: set[int] = set()
        self.weights = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}

    def buffer(self, t: Tensor) -> int | None:
        if t.numel() == 0:
            return None
        storage = t.untyped_storage()
        if storage.data_ptr() not in self.seen:  # hold it, even when aliased, so no later tensor reuses it
            self.seen.add(storage.data_ptr())
            self.keep.append(t)
        ptr = self.alias.get(storage.data_ptr(), storage.data_ptr())
        if ptr in self.weights:
            return None
        self.trace.sizes.setdefault(ptr, storage.nbytes() // t.element_size())
        return ptr

    def buffers(self, value: Any) -> list[int]:
        keys = [self.buffer(t) for t in tree_flatten(value)[0] if isinstance(t, Tensor)]
        return list(dict.fromkeys(k for k in keys if k is not None))

    def record(self, name: str, inputs: Any, outputs: Any) -> None:
        outs = self.buffers(outputs)
        if outs:
            self.trace.ops.append((name, self.buffers(inputs), outs))

    def pre_hook(self, module: nn.Module, args: Any) -> None:
        self.depth += 1

    def hook(self, module: nn.Module, args: Any, output: Any) -> None:
        source = self.buffer(args[0]) if args and isinstance(args[0], Tensor) else None
        if isinstance(module, FOLDABLE_NORMS) and isinstance(output, Tensor) and source is not None:
            # Folded into the preceding convolution at deployment (see flash_size): no buffer of its own.
            self.alias[output.untyped_storage().data_ptr()] = source
        self.record(type(module).__name__, args, output)
        self.depth -= 1

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if self.depth == 0:
            self.record(getattr(func, "__name__", str(func)), (args, kwargs), out)
        return out


@torch.no_grad()
def trace_activations(model: nn.Module, image_size: int = 224, in_chans: int = 3) -> ActivationTrace:
    """Run ``model`` once at batch 1 in eval mode and record its activation buffers and ops in order."""
    return run_traced(model, _Tracer(model), image_size, in_chans).trace


@torch.no_grad()
def run_traced(model: nn.Module, tracer: _Tracer, image_size: int, in_chans: int = 3) -> _Tracer:
    """Run ``model`` once at batch 1 in eval mode under ``tracer`` (a :class:`_Tracer` or a subclass);
    returns the tracer with what it recorded."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(1, in_chans, image_size, image_size, device=device)
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [h for m in leaves for h in (m.register_forward_pre_hook(tracer.pre_hook),
                                           m.register_forward_hook(tracer.hook))]
    was_training = model.training
    model.eval()
    try:
        tracer.trace.inputs = tracer.buffers(x)
        with tracer:
            out = model(x)
        tracer.trace.outputs = tracer.buffers(out)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return tracer


def peak_live_elements(trace: ActivationTrace) -> int:
    """Largest number of activation elements alive at one op.

    A buffer lives from the op that writes it (the input image: from the first op) to its last reader
    (the network's outputs: to the end), so an op sees its inputs, its outputs and every buffer still
    needed later (e.g. a residual input held for an add).
    """
    n = len(trace.ops)
    first = dict.fromkeys(trace.inputs, 0)
    last: dict[int, int] = {}
    for i, (_, ins, outs) in enumerate(trace.ops):
        for k in (*ins, *outs):
            first.setdefault(k, i)
            last[k] = i
    for k in trace.inputs:
        last.setdefault(k, 0)
    for k in trace.outputs:
        last[k] = max(n - 1, 0)
    if n == 0:
        return sum(trace.sizes[k] for k in first)
    return max(sum(trace.sizes[k] for k in first if first[k] <= i <= last[k]) for i in range(n))


def peak_activation_memory(
    model: nn.Module, image_size: int = 224, in_chans: int = 3, bytes_per_element: int = 1
) -> int:
    """Peak activation RAM in bytes at batch 1 when the layers run in execution order.

    Conventions: the input image counts; in-place ops (``ReLU(inplace=True)``), views (``flatten``) and
    identities share their input's buffer; BatchNorm adds no buffer (folded into the preceding
    convolution, as in :func:`flash_size`, or applied in place); buffers a leaf module allocates internally are not counted (a fused kernel keeps none).
    ``bytes_per_element``: 1 for int8, 4 for float32.
    """
    return peak_live_elements(trace_activations(model, image_size, in_chans)) * bytes_per_element


# --------------------------------------------------------------------------------------------- flash
def _stored_layers(model: nn.Module) -> tuple[list[tuple[int, int, bool]], int]:
    """``([(weight elements, output channels, has bias after folding)], other float parameters)``.

    A BatchNorm folds into the weighted layer registered just before it (the Conv → BN order of
    :class:`~lightning_modules.models.layers.ConvBNReLU` and of torchvision/timm blocks) when the channels
    match; any other BatchNorm is stored as a float scale and shift per channel.
    """
    layers: list[list[Any]] = []
    other, folded = 0, set()
    previous: list[Any] | None = None
    for module in (m for m in model.modules() if next(m.children(), None) is None):
        if isinstance(module, WEIGHTED_LAYERS):
            out = module.out_features if isinstance(module, nn.Linear) else module.out_channels
            previous = [module.weight.numel(), int(out), module.bias is not None]
            layers.append(previous)
        elif isinstance(module, FOLDABLE_NORMS) and previous is not None and previous[1] == module.num_features:
            previous[2] = True  # folding adds a bias to a convolution without one
            folded.add(module)
            previous = None
        else:
            previous = None
    counted = {id(p) for m in model.modules() if isinstance(m, WEIGHTED_LAYERS) or m in folded
               for p in m.parameters(recurse=False)}
    for m in model.modules():
        if isinstance(m, FOLDABLE_NORMS) and m not in folded:
            other += 2 * m.num_features
            counted.update(id(p) for p in m.parameters(recurse=False))
    other += sum(p.numel() for p in model.parameters() if id(p) not in counted)
    return [(w, c, b) for w, c, b in layers], other


def flash_size(model: nn.Module, bytes_per_weight: int = 1) -> int:
    """Bytes of stored weights, BatchNorm folded into the preceding convolution.

    ``bytes_per_weight=1`` (int8, TFLite's per-channel scheme): each conv/linear weight takes 1 byte,
    each output channel a float32 scale (4 bytes; symmetric weights need no zero point) and, when the
    layer has a bias or a BatchNorm folded into it, an int32 bias (4 bytes). Otherwise (2 = float16,
    4 = float32) every stored number takes ``bytes_per_weight`` bytes. Parameters of other layers (and
    BatchNorms that cannot be folded: a scale and a shift per channel) are counted as float32.
    """
    layers, other = _stored_layers(model)
    if bytes_per_weight == 1:
        stored = sum(w + c * FLOAT_BYTES + (c * INT32_BYTES if bias else 0) for w, c, bias in layers)
    else:
        stored = sum((w + (c if bias else 0)) * bytes_per_weight for w, c, bias in layers)
    return stored + other * FLOAT_BYTES


# ------------------------------------------------------------------------------------------- latency
def _summary(times_ms: list[float], threads: int) -> dict[str, float]:
    return {
        "median_ms": float(np.median(times_ms)),
        "p90_ms": float(np.percentile(times_ms, 90)),
        "threads": threads,
        "runs": len(times_ms),
    }


def measure_latency_torch(
    model: nn.Module, image_size: int = 224, threads: int = 1, warmup: int = 10, runs: int = 50,
    in_chans: int = 3, channels_last: bool = False,
) -> dict[str, float]:
    """Batch-1 latency of ``model`` in eval mode under ``torch.inference_mode`` with ``threads`` threads:
    ``{"median_ms", "p90_ms", "threads", "runs"}``. ``channels_last``: the input is NHWC (convert the
    model with ``model.to(memory_format=torch.channels_last)`` to run it NHWC throughout)."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.randn(1, in_chans, image_size, image_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    previous_threads, was_training = torch.get_num_threads(), model.training
    torch.set_num_threads(threads)
    model.eval()
    times: list[float] = []
    try:
        with torch.inference_mode():
            for i in range(warmup + runs):
                start = time.perf_counter()
                model(x)
                sync()
                if i >= warmup:
                    times.append((time.perf_counter() - start) * 1e3)
    finally:
        torch.set_num_threads(previous_threads)
        model.train(was_training)
    return _summary(times, threads)


def measure_latency_onnx(
    onnx_path: str | Path, image_size: int = 224, threads: int = 1, warmup: int = 10, runs: int = 50,
    in_chans: int = 3,
) -> dict[str, float]:
    """Batch-1 latency of an ONNX model on onnxruntime's CPU provider with ``intra_op_num_threads``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.random.randn(1, in_chans, image_size, image_size).astype(np.float32)}
    times: list[float] = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        session.run(None, feed)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return _summary(times, threads)


# -------------------------------------------------------------------------------------------- budget
def tinyml_budget(
    model: nn.Module, image_size: int = 224, latency: bool = False, threads: int = 1, warmup: int = 10,
    runs: int = 50, in_chans: int = 3,
) -> dict[str, Any]:
    """Parameters, MACs, peak activation RAM and flash (int8 and float32, bytes); with ``latency`` also
    the batch-1 PyTorch and onnxruntime latencies (ms, median and p90) on ``threads`` CPU threads."""
    peak = peak_live_elements(trace_activations(model, image_size, in_chans))
    budget: dict[str, Any] = {
        "image_size": image_size,
        "params": count_params(model),
        "macs": count_macs(model, image_size, in_chans),
        "peak_ram_int8": peak,
        "peak_ram_fp32": peak * 4,
        "flash_int8": flash_size(model, 1),
        "flash_fp32": flash_size(model, 4),
    }
    if latency:
        from lightning_modules.deploy.export import export_onnx

        torch_lat = measure_latency_torch(model, image_size, threads, warmup, runs, in_chans)
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(model, Path(tmp) / "model.onnx", image_size, in_chans=in_chans)
            onnx_lat = measure_latency_onnx(path, image_size, threads, warmup, runs, in_chans)
        budget.update(
            threads=threads,
            latency_torch_ms=torch_lat["median_ms"],
            latency_torch_p90_ms=torch_lat["p90_ms"],
            latency_onnx_ms=onnx_lat["median_ms"],
            latency_onnx_p90_ms=onnx_lat["p90_ms"],
        )
    return budget
