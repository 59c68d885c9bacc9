"""Which activation tensor costs accuracy in int8, measured in PyTorch before any conversion.

TFLite (and TFLite Micro) quantise every activation tensor with **one** scale and zero point (per tensor;
only weights get a scale per channel). A tensor whose channels span very different ranges (a BatchNorm
scale of 40 on a few channels, squeeze-excite gates, SiLU outputs in the hundreds next to channels below 4)
then leaves the small channels a handful of int8 levels, and accuracy collapses although every weight
quantises well. This module finds such tensors on the float network:

* :func:`activation_ranges`: each leaf module's output range over calibration images (the min/max the
  TFLite converter calibrates with), from ``torch.ao``'s :class:`MinMaxObserver`;
* :func:`channel_spread`: per tensor, its largest channel maximum over the median channel's — how many
  times more of the int8 range the widest channel takes than a typical one;
* :func:`tensor_sensitivity`: the accuracy with one tensor at a time fake-quantised per tensor
  (:func:`torch.fake_quantize_per_tensor_affine`, asymmetric int8 as TFLite's activations), and with all
  of them at once.

The float network is first copied with every BatchNorm that directly consumes a convolution's output folded
into that convolution (:func:`fold_batchnorms`, as the ONNX export folds it), so the tensors probed are the
ones a converted graph has: a convolution's output *is* its BatchNorm's.

It ranks the causes; it does not reproduce the converter's figure (BatchNorm folding, fused activations and
integer rounding differ), so the int8 accuracy to report is still the interpreter's
(:func:`~lightning_modules.deploy.verify.deploy_net`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.ao.quantization.observer import MinMaxObserver
from torch.nn.utils.fusion import fuse_conv_bn_weights

#: Leaf modules whose output is no new tensor in a converted graph.
_PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Flatten)


def leaf_modules(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every module without children whose output is a tensor of its own."""
    return [(n, m) for n, m in net.named_modules()
            if n and not any(True for _ in m.children()) and not isinstance(m, _PASS_THROUGH)]


@contextmanager
def output_hooks(modules: Sequence[tuple[str, nn.Module]], hook) -> Iterator[None]:
    """``hook(name, module, output)`` on each module's forward output for the ``with`` block; a hook that
    returns a tensor replaces the output."""
    handles = [m.register_forward_hook(lambda mod, _inp, out, name=n: hook(name, mod, out)) for n, m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def fold_batchnorms(net: nn.Module, example: Tensor) -> tuple[nn.Module, list[tuple[str, str]]]:
    """An eval-mode copy of ``net`` in which every BatchNorm whose input is a convolution's output (seen in
    one forward pass on ``example``) is folded into that convolution and left as an identity affine (a
    BatchNorm with a fused activation, as timm's ``BatchNormAct2d``, keeps its activation). Returns the copy
    and the ``(conv, norm)`` name pairs folded. The copy computes the same function."""
    net = copy.deepcopy(net).eval()
    convs = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    norms = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d) and m.track_running_stats]
    outputs: dict[int, tuple[str, Tensor]] = {}  # the tensors are kept alive, so no id is reused
    pairs: dict[str, str] = {}

    def conv_out(name: str, _module: nn.Module, out: Tensor) -> None:
        outputs[id(out)] = (name, out)

    def norm_in(name: str, inputs: tuple[Tensor, ...]) -> None:
        if inputs and id(inputs[0]) in outputs:
            pairs.setdefault(name, outputs[id(inputs[0])][0])

    handles = [m.register_forward_pre_hook(lambda mod, inp, name=n: norm_in(name, inp)) for n, m in norms]
    with torch.no_grad(), output_hooks(convs, conv_out):
        net(example)
    for handle in handles:
        handle.remove()
    modules = dict(net.named_modules())
    uses = {conv: sum(c == conv for c in pairs.values()) for conv in pairs.values()}
    folded = []
    for norm_name, conv_name in pairs.items():
        if uses[conv_name] != 1:  # a convolution read by two BatchNorms cannot carry both
            continue
        conv, norm = modules[conv_name], modules[norm_name]
        weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps,
                                            norm.weight, norm.bias)
        conv.weight, conv.bias = weight, bias
        with torch.no_grad():
            norm.running_mean.zero_()
            norm.running_var.fill_(1.0 - norm.eps)
            if norm.affine:
                norm.weight.fill_(1.0)
                norm.bias.zero_()
        folded.append((conv_name, norm_name))
    return net, folded


def activation_ranges(net: nn.Module, batches: Sequence[Tensor]) -> dict[str, tuple[float, float]]:
    """Min and max of every leaf module's output over ``batches`` (``net`` in eval mode, no gradients)."""
    observers: dict[str, MinMaxObserver] = {}

    def observe(name: str, _module: nn.Module, out: Tensor) -> None:
        if isinstance(out, Tensor) and out.is_floating_point():
            observers.setdefault(name, MinMaxObserver(dtype=torch.qint8))(out.detach().float())

    with torch.no_grad(), output_hooks(leaf_modules(net), observe):
        for batch in batches:
            net(batch)
    return {n: (float(o.min_val), float(o.max_val)) for n, o in observers.items()}


def int8_params(low: float, high: float) -> tuple[float, int]:
    """Scale and zero point of TFLite's asymmetric int8 activation quantisation of ``[low, high]``
    (widened to hold 0, as the converter does)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = (high - low) / 255.0 or 1e-8
    zero_point = int(round(-128 - low / scale))
    return scale, max(-128, min(127, zero_point))


def fake_int8(x: Tensor, low: float, high: float) -> Tensor:
    """``x`` rounded to the int8 grid of ``[low, high]`` and back to float."""
    scale, zero_point = int8_params(low, high)
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, -128, 127)


def channel_spread(net: nn.Module, batches: Sequence[Tensor]) -> dict[str, float]:
    """Per leaf output with channels (N, C, …): the largest per-channel absolute maximum over the median
    channel's, over ``batches``. 1 means every channel uses the range alike."""
    peaks: dict[str, Tensor] = {}

    def record(name: str, _module: nn.Module, out: Tensor) -> None:
        if isinstance(out, Tensor) and out.is_floating_point() and out.dim() >= 2 and out.shape[1] > 1:
            dims = [d for d in range(out.dim()) if d != 1]
            peak = out.detach().abs().amax(dim=dims).float()
            peaks[name] = torch.maximum(peaks[name], peak) if name in peaks else peak

    with torch.no_grad(), output_hooks(leaf_modules(net), record):
        for batch in batches:
            net(batch)
    return {n: float(p.max() / p.median().clamp_min(1e-12)) for n, p in peaks.items()}


def accuracy(net: nn.Module, batches: Sequence[tuple[Tensor, Tensor]]) -> float:
    """Top-1 accuracy of ``net`` on ``(images, labels)`` batches."""
    correct = total = 0
    with torch.no_grad():
        for images, labels in batches:
            correct += int((net(images).argmax(1) == labels).sum())
            total += len(labels)
    return correct / max(total, 1)


def accuracy_with_int8(net: nn.Module, batches: Sequence[tuple[Tensor, Tensor]],
                       ranges: dict[str, tuple[float, float]], names: Sequence[str]) -> float:
    """Accuracy with the outputs of the modules ``names`` fake-quantised to int8 with their ``ranges``."""
    chosen = [(n, m) for n, m in leaf_modules(net) if n in set(names) and n in ranges]

    def quantise(name: str, _module: nn.Module, out: Tensor) -> Tensor:
        return fake_int8(out, *ranges[name])

    with output_hooks(chosen, quantise):
        return accuracy(net, batches)


@dataclass
class TensorCost:
    """One activation tensor: its module, range, channel spread and the accuracy lost when it alone is int8."""

    name: str
    kind: str
    low: float
    high: float
    spread: float | None
    drop: float

    @property
    def step(self) -> float:
        """The int8 step of its range (what one level is worth)."""
        return int8_params(self.low, self.high)[0]


def tensor_sensitivity(net: nn.Module, calibration: Sequence[Tensor],
                       batches: Sequence[tuple[Tensor, Tensor]]) -> tuple[float, float, list[TensorCost]]:
    """Float accuracy, accuracy with every activation int8, and every tensor's own cost (largest first).

    ``net`` is probed as a BatchNorm-folded eval-mode copy (:func:`fold_batchnorms`); ``calibration``: image
    batches for the ranges; ``batches``: labelled evaluation batches."""
    net, folded = fold_batchnorms(net, calibration[0][:1])
    modules = dict(net.named_modules())
    # a folded plain BatchNorm's output is its convolution's: probed once, under the convolution's name
    duplicates = {n for _, n in folded if type(modules[n]) is nn.BatchNorm2d}
    ranges = {n: r for n, r in activation_ranges(net, calibration).items() if n not in duplicates}
    spread = channel_spread(net, calibration)
    kinds = dict(leaf_modules(net))
    base = accuracy(net, batches)
    everything = accuracy_with_int8(net, batches, ranges, list(ranges))
    costs = [TensorCost(n, type(kinds[n]).__name__, lo, hi, spread.get(n),
                        base - accuracy_with_int8(net, batches, ranges, [n])) for n, (lo, hi) in ranges.items()]
    return base, everything, sorted(costs, key=lambda c: (-c.drop, c.name))
