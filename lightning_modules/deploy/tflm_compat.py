"""Make a network convert to ops TFLite Micro runs, and refuse clearly what it cannot run.

* :func:`tflm_friendly` — an export-time copy of the network with two common timm blocks rewritten into
  mathematically equal forms the TFLite converter maps onto TFLM kernels:

  - hard-sigmoid (MobileNetV3's squeeze-excite gate): the converter turns ONNX ``HardSigmoid`` into
    ``RELU_0_TO_1``, which TFLM has no kernel for; written as ``relu6(x + 3) / 6`` (Howard et al.,
    *Searching for MobileNetV3*, ICCV 2019, eq. 2 — the same function) it becomes ``ADD``/``RELU6``/
    ``MUL``-family ops TFLM has;
  - a max-pool with padding (ResNet stems): PyTorch pads with −∞, which ONNX → TensorFlow carries as a
    ``PADV2`` with −FLT_MAX; calibration then sees −3.4e38 and gives the tensor a scale of ~1e36 (every
    activation quantises to one value; the TFLM interpreter aborts). When the pool's input is the output
    of a ReLU (values ≥ 0), padding with 0 gives the same maximum for every window that holds at least one
    real pixel (all of them, as padding < kernel), so the pool becomes ``ZeroPad2d`` + an unpadded pool.

* :func:`preflight` — every builtin op of a converted ``.tflite`` checked against the op kernels the
  TFLM interpreter registers, and every tensor's quantisation scale checked finite and sane, before the
  interpreter sees the model; a problem raises :class:`NotDeployable` naming the op, the tensor and the
  layer of the network it came from.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.deploy.errors import DeploymentError
from lightning_modules.deploy.tflite_file import builtin_names, parse_model, tflm_runtime

#: Largest quantisation scale a calibrated int8 tensor may have: an activation range of ±2^20 (a range
#: beyond that means calibration saw an infinity or a sentinel such as −FLT_MAX, not data).
MAX_SANE_SCALE: float = 2.0**20 / 127

#: ONNX op types that the converter turns into each TFLite builtin (to name the layer of an op).
ONNX_SOURCES: dict[str, tuple[str, ...]] = {
    "RELU_0_TO_1": ("HardSigmoid", "Clip"),
    "PADV2": ("MaxPool", "Pad"),
    "PAD": ("Pad", "Conv", "MaxPool"),
    "MAX_POOL_2D": ("MaxPool",),
    "HARD_SWISH": ("HardSwish",),
    "LOGISTIC": ("Sigmoid",),
    "MEAN": ("GlobalAveragePool", "ReduceMean"),
    "CONV_2D": ("Conv",),
    "DEPTHWISE_CONV_2D": ("Conv",),
    "FULLY_CONNECTED": ("Gemm", "MatMul"),
    "GELU": ("Gelu", "Erf"),
    "TANH": ("Tanh",),
    "ELU": ("Elu",),
    "LEAKY_RELU": ("LeakyRelu",),
    "SOFTMAX": ("Softmax",),
    "DIV": ("Div",),
    "SQRT": ("Sqrt",),
    "POW": ("Pow",),
}


class NotDeployable(DeploymentError):
    """The converted model cannot run in TFLite Micro; the message names the op and the layer."""


# ----------------------------------------------------------------------------- export-time rewrites
class HardSigmoidRelu6(nn.Module):
    """``relu6(x + 3) / 6``: hard-sigmoid written with ops TFLM has (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + 3.0) * (1.0 / 6.0)


class ZeroPadMaxPool(nn.Module):
    """A padded max-pool over non-negative inputs: zero padding, then the pool without padding."""

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__()
        pad = pool.padding if isinstance(pool.padding, tuple) else (pool.padding, pool.padding)
        self.pad = nn.ZeroPad2d((pad[1], pad[1], pad[0], pad[0]))
        self.pool = nn.MaxPool2d(pool.kernel_size, pool.stride, 0, pool.dilation, ceil_mode=pool.ceil_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.pad(x))


_NON_NEGATIVE = (nn.ReLU, nn.ReLU6)


def _hard_sigmoid_types() -> tuple[type, ...]:
    kinds: list[type] = [nn.Hardsigmoid]
    try:
        from timm.layers.activations import HardSigmoid

        kinds.append(HardSigmoid)
    except ImportError:  # timm absent or reorganised: torch's module is still handled
        pass
    return tuple(kinds)


def _producers(net: nn.Module, image_size: int, in_chans: int) -> dict[nn.Module, nn.Module | None]:
    """For every padded max-pool, the leaf module whose output it reads (one probe pass, batch 1)."""
    last_writer: dict[int, nn.Module] = {}
    found: dict[nn.Module, nn.Module | None] = {}
    pools = {m for m in net.modules() if isinstance(m, nn.MaxPool2d) and _padded(m)}

    def after(module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            last_writer[output.untyped_storage().data_ptr()] = module

    def before(module: nn.Module, args: Any) -> None:
        if module in pools and args and isinstance(args[0], torch.Tensor):
            found[module] = last_writer.get(args[0].untyped_storage().data_ptr())

    leaves = [m for m in net.modules() if next(m.children(), None) is None]
    handles = [h for m in leaves for h in (m.register_forward_hook(after), m.register_forward_pre_hook(before))]
    try:
        param = next(net.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.no_grad():
            net(torch.zeros(1, in_chans, image_size, image_size, device=device))
    finally:
        for h in handles:
            h.remove()
    return found


def _padded(pool: nn.MaxPool2d) -> bool:
    pad = pool.padding if isinstance(pool.padding, tuple) else (pool.padding,)
    return any(p > 0 for p in pad)


def _non_negative(module: nn.Module | None) -> bool:
    if isinstance(module, _NON_NEGATIVE):
        return True
    return isinstance(module, nn.Hardtanh) and module.min_val >= 0


def tflm_friendly(model: nn.Module, image_size: int, in_chans: int = 3) -> tuple[nn.Module, list[str]]:
    """An eval-mode copy of ``model`` with hard-sigmoids and padded max-pools after a ReLU rewritten (see
    the module docstring), and the names of the rewritten layers. The copy computes the same function."""
    net = copy.deepcopy(model).eval()
    producers = _producers(net, image_size, in_chans)
    hard_sigmoids = _hard_sigmoid_types()
    changed: list[str] = []
    for name, module in list(net.named_modules()):
        replacement: nn.Module | None = None
        if isinstance(module, hard_sigmoids):
            replacement = HardSigmoidRelu6()
        elif isinstance(module, nn.MaxPool2d) and _padded(module) and _non_negative(producers.get(module)):
            replacement = ZeroPadMaxPool(module)
        if replacement is not None:
            parent_name, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent_name) if parent_name else net, child, replacement)
            changed.append(name)
    return net, changed


# --------------------------------------------------------------------------------------- preflight
@functools.lru_cache(maxsize=1)
def interpreter_ops() -> frozenset[str]:
    """The builtin ops the installed TFLM interpreter has kernels for: the ``Register_<OP>`` functions
    compiled into the ``tflite-micro`` package's extension module (its op resolver registers each)."""
    runtime = tflm_runtime()

    libs = sorted(Path(runtime.__file__).parent.glob("_runtime*.so"))
    if not libs:
        raise NotDeployable(f"no TFLM runtime library next to {runtime.__file__}")
    found = set(re.findall(rb"Register_([A-Z][A-Z0-9_]*)Ev", libs[0].read_bytes()))
    return frozenset(name.decode() for name in found)


def onnx_layers(onnx_path: str | Path | None) -> dict[str, list[str]]:
    """ONNX op type → the names of its nodes in graph order (``/blocks/blocks.0/se/gate/HardSigmoid``:
    the module path of the layer), for naming where a TFLite op came from."""
    if onnx_path is None or not Path(onnx_path).is_file():
        return {}
    import onnx

    layers: dict[str, list[str]] = {}
    for node in onnx.load(str(onnx_path), load_external_data=False).graph.node:
        layers.setdefault(node.op_type, []).append(node.name)
    return layers


def _layer_of(kind: str, nth: int, tensor: str, layers: dict[str, list[str]]) -> str:
    """The layer a TFLite op of ``kind`` (its ``nth`` occurrence) came from: the ``nth`` ONNX node of a
    type the converter maps onto ``kind`` when there is one, else the TFLite tensor's own name."""
    for source in ONNX_SOURCES.get(kind, ()):
        names = layers.get(source, [])
        if names:
            return _module_path(names[min(nth, len(names) - 1)])
    return tensor


def _module_path(onnx_name: str) -> str:
    """``/blocks/blocks.0/blocks.0.0/se/gate/HardSigmoid`` → ``blocks.0.0.se.gate``."""
    parts = [p for p in onnx_name.split("/") if p][:-1]
    dotted = [i for i, p in enumerate(parts) if "." in p]
    start = dotted[-1] if dotted else 0
    return ".".join(parts[start:]) if parts else onnx_name


def bad_scales(scales: Iterable[float]) -> list[float]:
    """The scales that are not finite, not positive, or above :data:`MAX_SANE_SCALE`."""
    return [s for s in scales if not (math.isfinite(s) and 0.0 < s <= MAX_SANE_SCALE)]


def preflight(model: bytes | str | Path, onnx_path: str | Path | None = None) -> dict[str, Any]:
    """Check a converted ``.tflite`` before TFLM runs it: every op has a TFLM kernel, every quantised
    tensor's scale is finite, positive and at most :data:`MAX_SANE_SCALE`. Raises :class:`NotDeployable`
    with the op, the tensor and the network layer (from ``onnx_path``'s node names, when given); returns
    ``{"ops": {name: count}}`` when the model passes."""
    graph = parse_model(model)
    sub = graph.subgraphs[0]
    names = builtin_names(graph)
    layers = onnx_layers(onnx_path)
    supported = interpreter_ops()
    seen: dict[str, int] = {}
    for op, kind in zip(sub.operators, names, strict=True):
        nth = seen.get(kind, 0)
        seen[kind] = nth + 1
        out = sub.tensors[op.outputs[0]]
        tensor = out.name.decode(errors="replace") if isinstance(out.name, bytes) else str(out.name)
        if kind not in supported:
            raise NotDeployable(
                f"op {kind} (layer {_layer_of(kind, nth, tensor, layers)}, tensor {tensor!r}) has no "
                "TFLite Micro kernel; rewrite that layer with supported ops or choose another network")
        for index in (*op.inputs, *op.outputs):
            if index < 0:
                continue
            t = sub.tensors[index]
            q = t.quantization
            scales = [] if q is None or q.scale is None else [float(s) for s in q.scale]
            bad = bad_scales(scales)
            if bad:
                name = t.name.decode(errors="replace") if isinstance(t.name, bytes) else str(t.name)
                raise NotDeployable(
                    f"op {kind} (layer {_layer_of(kind, nth, tensor, layers)}): tensor {name!r} has "
                    f"quantisation scale {bad[0]:.3g} (not finite, or a range beyond ±{MAX_SANE_SCALE * 127:.3g}); "
                    "calibration saw an infinite or sentinel value there")
    return {"ops": dict(seen)}
