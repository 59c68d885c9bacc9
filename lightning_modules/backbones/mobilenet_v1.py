"""MobileNetV1 (ours): its constructor arguments are its description.

Cut points are the stem (0) and each of the 13 depthwise-separable blocks (k = after block k). A cut or
width-pruned MobileNetV1 is another set of constructor arguments (``num_blocks``, ``channels``,
``head_channels``), so checkpoints rebuild it from the hyper-parameters as they always did.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_modules.backbones.base import BackboneAdapter, CutPointInfo, check_cut_init, device_of
from lightning_modules.backbones.registry import register_backbone
from lightning_modules.deploy.profiling import model_cost
from lightning_modules.models.layers import ClassifierHead, Compactor
from lightning_modules.models.mobilenet_v1 import (
    BLOCK_STRIDES,
    NUM_BLOCKS,
    MobileNetV1,
    mobilenet_v1_channels,
)

#: Hyper-parameters that are MobileNetV1 constructor arguments.
ARCH_KEYS: tuple[str, ...] = tuple(inspect.signature(MobileNetV1).parameters)
#: MobileNetV1 arguments with their defaults: another backbone takes none of them (timm's own go in
#: ``backbone_kwargs``).
MOBILENET_ONLY: dict[str, Any] = {"width_mult": 1.0, "channels": None, "stem_stride": 2, "num_blocks": NUM_BLOCKS,
                                  "head_channels": (), "compactors": False}


def tap_features(modules: Sequence[nn.Module], x: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
    """Run the feature modules in order and return every cut point's output (up to cut point ``upto``)."""
    feats = []
    for module in modules[: None if upto is None else upto + 1]:
        x = module(x)
        feats.append(x)
    return feats


def mobilenet_cut_arch(arch: Mapping[str, Any], cut: int, head_channels: Sequence[int]) -> dict:
    """Constructor arguments of "stem + blocks ≤ ``cut`` + head" for a MobileNetV1 described by ``arch``."""
    channels = list(arch["channels"]) if arch.get("channels") is not None else mobilenet_v1_channels(
        arch.get("width_mult", 1.0))
    return {**arch, "num_blocks": int(cut), "channels": channels[: cut + 1], "head_channels": list(head_channels)}


def cut_mobilenet_v1(
    net: MobileNetV1,
    arch: Mapping[str, Any],
    cut: int,
    head_channels: Sequence[int] = (64, 32),
    head: ClassifierHead | None = None,
    init: str = "original",
) -> tuple[MobileNetV1, dict]:
    """Cut ``net`` (described by ``arch``) after block ``cut`` (0 = after the stem) and put a head there.

    ``init``: ``original`` keeps the trained stem/blocks and the trained auxiliary ``head`` (whose widths
    must be ``head_channels``); ``original_fresh_head`` keeps the blocks and initialises a new head;
    ``random`` initialises everything anew. Returns the new network and its constructor arguments.
    """
    check_cut_init(init, head)
    new_arch = mobilenet_cut_arch(arch, cut, head_channels)
    new = MobileNetV1(**new_arch).to(device_of(net))
    if init in ("original", "original_fresh_head"):
        new.stem.load_state_dict(net.stem.state_dict())
        for i in range(cut):
            new.blocks[i].load_state_dict(net.blocks[i].state_dict())
    if init == "original":
        new.head.load_state_dict(head.state_dict())
    return new, new_arch


def mobilenet_v1_arch_after_pruning(net: MobileNetV1) -> dict:
    """Constructor arguments of a (sliced) :class:`MobileNetV1`, read from its layers.

    ``MobileNetV1(**arch)`` has the parameter shapes of ``net``, so ``load_state_dict(net.state_dict())``
    rebuilds it exactly (with a consistent ``channels`` attribute, which slicing does not update).
    """
    dropout = net.head.dropout
    return {
        "num_classes": net.head.fc.out_features,
        "channels": [net.stem[0].out_channels, *(b.pw[0].out_channels for b in net.blocks)],
        "stem_stride": net.stem[0].stride[0],
        "num_blocks": len(net.blocks),
        "head_channels": [b.pw[0].out_channels for b in net.head.blocks],
        "dropout": dropout.p if isinstance(dropout, nn.Dropout) else 0.0,
        "in_chans": net.stem[0].in_channels,
        "compactors": any(isinstance(m, Compactor) for m in net.modules()),
    }


def rebuild_mobilenet_v1(net: MobileNetV1) -> tuple[MobileNetV1, dict]:
    """A fresh :class:`MobileNetV1` built from the sliced ``net``'s constructor arguments, with its weights."""
    arch = mobilenet_v1_arch_after_pruning(net)
    param = next(net.parameters())
    new = MobileNetV1(**arch).to(device=param.device, dtype=param.dtype)
    new.load_state_dict(net.state_dict())
    new.train(net.training)
    return new, arch


# ------------------------------------------------------- ResRep compactors (Ding et al., ICCV 2021)
def with_compactors(net: MobileNetV1) -> tuple[MobileNetV1, dict]:
    """A MobileNetV1 with identity compactors carrying ``net``'s weights (the same function) and its
    constructor arguments (``compactors=True``); on ``net``'s device, dtype and train/eval mode."""
    if not isinstance(net, MobileNetV1):
        raise TypeError(f"with_compactors places MobileNetV1's compactors, not {type(net).__name__}'s (other "
                        "networks: lightning_modules.pruning.compactors, through their backbone adapter)")
    arch = mobilenet_v1_arch_after_pruning(net)
    if arch["compactors"]:
        raise ValueError("the network already has compactors")
    arch["compactors"] = True
    param = next(net.parameters())
    new = MobileNetV1(**arch).to(device=param.device, dtype=param.dtype)
    missing, unexpected = new.load_state_dict(net.state_dict(), strict=False)
    compactor_keys = {f"{name}.weight" for name, m in new.named_modules() if isinstance(m, Compactor)}
    if unexpected or set(missing) != compactor_keys:
        raise ValueError(f"weights do not map onto the network with compactors: missing "
                         f"{sorted(set(missing) - compactor_keys)}, unexpected {unexpected}")
    new.train(net.training)
    return new, arch


@torch.no_grad()
def fold_compactor(conv: nn.Conv2d, bn: nn.BatchNorm2d, compactor: nn.Conv2d) -> tuple[Tensor, Tensor]:
    """Weight and bias of the one convolution computing ``compactor(bn(conv(x)))`` with BN in eval mode:

    ``W' = Q · diag(γ/σ) · W`` and ``b' = Q · (β − γ·μ/σ)`` with ``σ = sqrt(running_var + eps)``.
    """
    if conv.groups != 1:
        raise ValueError("only a non-grouped convolution folds with its compactor")
    dtype = conv.weight.dtype
    q = compactor.weight.double().flatten(1)
    std = (bn.running_var.double() + bn.eps).sqrt()
    scale = bn.weight.double() / std
    shift = bn.bias.double() - scale * bn.running_mean.double()
    w = conv.weight.double()
    weight = (q @ (scale[:, None] * w.flatten(1))).view_as(w)
    return weight.to(dtype), (q @ shift).to(dtype)


@torch.no_grad()
def merge_compactors(net: MobileNetV1) -> tuple[MobileNetV1, dict]:
    """A plain MobileNetV1 computing what ``net`` (with compactors) computes in eval mode, and its
    constructor arguments (``compactors=False``).

    Every ``conv → BN → compactor`` becomes ``conv' → BN'`` with ``conv'`` from :func:`fold_compactor` and an
    identity BN' carrying the bias: ``γ = 1``, ``β = b'``, ``running_mean = 0``, ``running_var = 1 − eps``.
    The network is on ``net``'s device and dtype and in its train/eval mode.
    """
    arch = mobilenet_v1_arch_after_pruning(net)
    if not arch["compactors"]:
        raise ValueError("the network has no compactors to merge")
    arch["compactors"] = False
    state = {k: v.clone() for k, v in net.state_dict().items()}
    for name, block in net.named_modules():
        if isinstance(block, nn.Sequential) and len(block) > 2 and isinstance(block[2], Compactor):
            conv, bn, compactor = block[0], block[1], block[2]
            weight, bias = fold_compactor(conv, bn, compactor)
            state[f"{name}.0.weight"] = weight
            state[f"{name}.1.weight"] = torch.ones_like(bn.weight)
            state[f"{name}.1.bias"] = bias
            state[f"{name}.1.running_mean"] = torch.zeros_like(bn.running_mean)
            state[f"{name}.1.running_var"] = torch.full_like(bn.running_var, 1.0 - bn.eps)
            del state[f"{name}.2.weight"]
    param = next(net.parameters())
    merged = MobileNetV1(**arch).to(device=param.device, dtype=param.dtype)
    merged.load_state_dict(state)
    merged.train(net.training)
    return merged, arch


@register_backbone("mobilenet_v1")
class MobileNetV1Adapter(BackboneAdapter):
    """:class:`~lightning_modules.models.mobilenet_v1.MobileNetV1`, described by its constructor arguments."""

    arch_keys = ARCH_KEYS
    network_class = MobileNetV1
    own_arguments = MOBILENET_ONLY

    @classmethod
    def check_arguments(cls, hparams: Mapping[str, Any]) -> None:
        if hparams.get("structure"):
            raise ValueError("structure describes timm networks; MobileNetV1 is described by its own arguments")
        if hparams.get("backbone_kwargs"):
            raise ValueError("backbone_kwargs are timm.create_model arguments; MobileNetV1 takes its own "
                             "(--model.width_mult, --model.channels, ...)")

    @classmethod
    def uncut_arch(cls, arch: Mapping[str, Any]) -> dict[str, Any]:
        # all 13 blocks, the plain classifier and the channels of the width multiplier
        return {**arch, "num_blocks": NUM_BLOCKS, "head_channels": [], "channels": None}

    def build(self, arch: Mapping[str, Any]) -> MobileNetV1:
        return MobileNetV1(**{k: v for k, v in arch.items() if k in ARCH_KEYS})

    def describe(self, net: nn.Module) -> dict[str, Any]:
        return mobilenet_v1_arch_after_pruning(net)

    def cut_points(self, net: nn.Module, in_chans: int = 3) -> list[CutPointInfo]:
        stride = net.stem[0].stride[0]
        points = [CutPointInfo(0, "stem", int(net.channels[0]), stride)]
        for i in range(len(net.blocks)):
            stride *= BLOCK_STRIDES[i]
            points.append(CutPointInfo(i + 1, f"blocks.{i}", int(net.channels[i + 1]), stride))
        return points

    def features(
        self, net: nn.Module, x: torch.Tensor, cut_points: Sequence[int], logits: bool = True
    ) -> tuple[torch.Tensor | None, dict[int, torch.Tensor]]:
        feats = tap_features(net.feature_modules, x, None if logits else max(cut_points))
        return (net.head(feats[-1]) if logits else None), {k: feats[k] for k in cut_points}

    def cut(
        self, net: nn.Module, arch: Mapping[str, Any], k: int, head_channels: Sequence[int],
        head: ClassifierHead | None = None, init: str = "original",
    ) -> tuple[nn.Module, dict[str, Any]]:
        return cut_mobilenet_v1(net, arch, k, head_channels, head, init)

    def cut_costs(
        self, net: nn.Module, arch: Mapping[str, Any], cut_points: Sequence[int], head_channels: Sequence[int],
        image_size: int,
    ) -> dict[int, dict[str, int]]:
        # Built from the constructor arguments (this draws from the global RNG, as every recorded
        # MobileNetV1 run did: keeping it keeps those runs reproducible).
        return {k: model_cost(MobileNetV1(**mobilenet_cut_arch(arch, k, head_channels)), image_size)
                for k in cut_points}

    def after_width_prune(self, net: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
        return rebuild_mobilenet_v1(net)

    def with_compactors(
        self, net: nn.Module, example_input: torch.Tensor, ignore: Sequence[nn.Module] = ()
    ) -> tuple[nn.Module, dict[str, Any]]:
        # Every prunable convolution gets one (ignored ones too, with nothing to remove): the
        # constructor's ``compactors`` switch.
        return with_compactors(net)

    def merge_compactors(self, net: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
        return merge_compactors(net)
