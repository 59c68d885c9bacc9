"""Convolution + BatchNorm folding for inference: an eval copy of a network with every BatchNorm that
directly follows a convolution folded into that convolution's weights and bias.

In eval mode a BatchNorm is an affine map per channel, so ``bn(conv(x)) == conv'(x)`` with
``W' = W·γ/σ`` and ``b' = (b − μ)·γ/σ + β``; the folded net runs one pass over each activation fewer.
The maths is PyTorch's (``torch.nn.utils.fusion.fuse_conv_bn_eval``); what is ours is finding the pairs
without tracing the network, so the copy keeps its classes and methods (``forward_features``, the
adapters' ``features`` for the auxiliary heads) — ``torch.fx.experimental.optimization.fuse`` returns a
``GraphModule`` with ``forward`` only, and ``torch.ao.quantization.fuse_modules`` needs every pair named.

Pairs found: consecutive ``Conv2d`` → ``BatchNorm2d`` children of an ``nn.Sequential`` (MobileNetV1's
``ConvBNReLU``, timm's ``ConvNormAct`` sequences) and modules holding a ``conv`` and a ``bn`` attribute
applied in that order (timm's ``ConvNormAct``/``ConvBnAct``). A timm ``BatchNormAct2d`` (BatchNorm, drop,
activation in one module) is replaced by its drop and activation. Other BatchNorms (e.g. ResNet blocks'
``conv1``/``bn1`` attributes, whose order only ``forward`` knows) are left as they are: the copy is then
partly folded, never wrong.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["FoldedEvalCopy", "foldable", "fuse_conv_bn"]


def foldable(conv: nn.Module, bn: nn.Module) -> bool:
    """Whether ``bn`` (applied to ``conv``'s output) can be folded into ``conv``."""
    return (type(conv) is nn.Conv2d and isinstance(bn, nn.BatchNorm2d)
            and bn.track_running_stats and bn.running_mean is not None
            and bn.num_features == conv.out_channels)


def _after_fold(bn: nn.BatchNorm2d) -> nn.Module:
    """What stays of ``bn`` once folded: nothing, or a timm ``BatchNormAct2d``'s drop and activation."""
    rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if isinstance(m, nn.Module)]
    rest = [m for m in rest if not isinstance(m, nn.Identity)]
    return nn.Sequential(*rest) if rest else nn.Identity()


def _fold_sequential(seq: nn.Sequential) -> int:
    children = list(seq.named_children())
    folded = 0
    for (name, conv), (bn_name, bn) in zip(children, children[1:], strict=False):
        if foldable(conv, bn) and isinstance(getattr(seq, name), nn.Conv2d):
            setattr(seq, name, fuse_conv_bn_eval(conv, bn))
            setattr(seq, bn_name, _after_fold(bn))
            folded += 1
    return folded


def _fold_conv_bn_attributes(module: nn.Module) -> int:
    """timm's ``ConvNormAct``: ``forward`` is ``bn(conv(x))`` (with its activation inside ``bn``)."""
    conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
    if type(module).__name__ not in ("ConvNormAct", "ConvBnAct", "ConvNormActAa") or not foldable(conv, bn):
        return 0
    module.conv = fuse_conv_bn_eval(conv, bn)
    module.bn = _after_fold(bn)
    return 1


@torch.no_grad()
def fuse_conv_bn(net: nn.Module) -> tuple[nn.Module, int]:
    """An eval-mode copy of ``net`` with its Conv → BatchNorm pairs folded; ``net`` is not touched.

    Returns the copy and the number of BatchNorms folded (0: the copy computes exactly as ``net``).
    Outputs agree with ``net.eval()``'s to float rounding (about 1e-6 relative)."""
    fused = copy.deepcopy(net).eval()
    folded = 0
    for module in list(fused.modules()):
        if isinstance(module, nn.Sequential):
            folded += _fold_sequential(module)
        else:
            folded += _fold_conv_bn_attributes(module)
    for p in fused.parameters():
        p.requires_grad_(False)
    return fused, folded


class FoldedEvalCopy:
    """The folded copy of a network for one validation/test epoch, kept outside the module tree (no
    state-dict keys, never trained): :meth:`make` at the start of the epoch, :meth:`drop` at its end;
    :meth:`get` returns ``net`` itself when there is no copy or it was made of another network."""

    def __init__(self) -> None:
        self.source: nn.Module | None = None
        self.folded: nn.Module | None = None

    def make(self, net: nn.Module) -> None:
        self.source, self.folded = net, fuse_conv_bn(net)[0]

    def drop(self) -> None:
        self.source = self.folded = None

    def get(self, net: nn.Module) -> nn.Module:
        return self.folded if self.folded is not None and self.source is net else net
