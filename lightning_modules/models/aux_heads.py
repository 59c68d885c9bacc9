"""Auxiliary classifiers at every cut point of a backbone, and the depth cut itself.

de Leon & Atienza, *Depth Pruning with Auxiliary Networks for TinyML*, arXiv:2204.10546 (2022): a small
classifier attached after a block of a trained network measures how much accuracy that prefix of the
network still carries; cutting there and keeping the head gives a much smaller model.

A backbone is anything with an ordered list of *feature modules* applied one after the other: the stem
(cut point 0) then each block (cut point k = after block k). ``feature_modules_of`` finds that list for
:class:`MobileNetV1` and for timm ResNets and EfficientNet-style models (e.g. ``mobilenetv1_100``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from lightning_modules.models.layers import ClassifierHead
from lightning_modules.models.mobilenet_v1 import MobileNetV1, mobilenet_v1_channels

#: Head presets: depthwise-separable widths before pooling.
HEAD_PRESETS: dict[str, tuple[int, ...]] = {
    "paper": (32, 16),  # de Leon & Atienza (2022): DS→32, DS→16, GAP, FC
    "replication": (64, 32),  # public replication: DS→64, DS→32, GAP, FC
    "linear": (),  # linear probe: GAP, FC
}


def head_channels_of(head: str | Sequence[int]) -> tuple[int, ...]:
    """A preset name (``paper``, ``replication``, ``linear``) or explicit widths → widths."""
    if isinstance(head, str):
        if head not in HEAD_PRESETS:
            raise ValueError(f"unknown head preset {head!r}; choose one of {sorted(HEAD_PRESETS)} or give widths")
        return HEAD_PRESETS[head]
    return tuple(int(c) for c in head)


def feature_modules_of(model: nn.Module) -> list[nn.Module]:
    """The ordered stem + blocks of a backbone; the output of entry k is cut point k."""
    if hasattr(model, "feature_modules"):
        return list(model.feature_modules)
    if all(hasattr(model, a) for a in ("conv1", "bn1", "act1", "maxpool", "layer1")):  # timm ResNet
        stem = nn.Sequential(model.conv1, model.bn1, model.act1, model.maxpool).train(model.training)
        return [stem, *(getattr(model, f"layer{i}") for i in range(1, 5))]
    if all(hasattr(model, a) for a in ("conv_stem", "bn1", "blocks")):  # timm EfficientNet family
        return [nn.Sequential(model.conv_stem, model.bn1).train(model.training), *model.blocks]
    raise TypeError(f"{type(model).__name__} exposes no stem + block list; add it to feature_modules_of")


def tap_features(modules: Sequence[nn.Module], x: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
    """Run the feature modules in order and return every cut point's output (up to ``upto``)."""
    feats = []
    for module in modules[: None if upto is None else upto + 1]:
        x = module(x)
        feats.append(x)
    return feats


@torch.no_grad()
def tap_channels(modules: Sequence[nn.Module], image_size: int = 64, in_chans: int = 3) -> list[int]:
    """Channels at each cut point, found with one dummy forward pass (eval mode, batch 1)."""
    modes = {sub: sub.training for m in modules for sub in m.modules()}
    for m in modules:
        m.eval()
    device = next(iter(modules[0].parameters())).device
    feats = tap_features(modules, torch.zeros(1, in_chans, image_size, image_size, device=device))
    for sub, mode in modes.items():  # restore each submodule's own mode, not the containers'
        sub.training = mode
    return [int(f.shape[1]) for f in feats]


class AuxiliaryHeads(nn.Module):
    """One :class:`ClassifierHead` per cut point, all trained in one pass over shared features."""

    def __init__(
        self,
        channels: Sequence[int] = (),
        num_classes: int = 10,
        head_channels: Sequence[int] = HEAD_PRESETS["replication"],
        cut_points: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.cut_points = list(range(len(channels))) if cut_points is None else sorted(int(k) for k in cut_points)
        if any(not 0 <= k < len(channels) for k in self.cut_points):
            raise ValueError(f"cut points {self.cut_points} outside 0..{len(channels) - 1}")
        self.head_channels = tuple(int(c) for c in head_channels)
        self.heads = nn.ModuleDict(
            {str(k): ClassifierHead(channels[k], num_classes, self.head_channels) for k in self.cut_points}
        )

    def forward(self, features: Sequence[torch.Tensor]) -> dict[int, torch.Tensor]:
        return {k: self.heads[str(k)](features[k]) for k in self.cut_points}


def mobilenet_cut_arch(arch: dict, cut: int, head_channels: Sequence[int]) -> dict:
    """Constructor arguments of "stem + blocks ≤ ``cut`` + head" for a MobileNetV1 described by ``arch``."""
    channels = list(arch["channels"]) if arch.get("channels") is not None else mobilenet_v1_channels(
        arch.get("width_mult", 1.0))
    return {**arch, "num_blocks": int(cut), "channels": channels[: cut + 1], "head_channels": list(head_channels)}


def cut_mobilenet_v1(
    net: MobileNetV1,
    arch: dict,
    cut: int,
    head_channels: Sequence[int] = HEAD_PRESETS["replication"],
    head: ClassifierHead | None = None,
    init: str = "original",
) -> tuple[MobileNetV1, dict]:
    """Cut ``net`` (described by ``arch``) after block ``cut`` (0 = after the stem) and put a head there.

    ``init``: ``original`` keeps the trained stem/blocks and the trained auxiliary ``head`` (whose widths
    must be ``head_channels``); ``original_fresh_head`` keeps the blocks and initialises a new head;
    ``random`` initialises everything anew. Returns the new network and its constructor arguments.
    """
    if init not in ("original", "original_fresh_head", "random"):
        raise ValueError(f"init must be original, original_fresh_head or random, got {init!r}")
    new_arch = mobilenet_cut_arch(arch, cut, head_channels)
    new = MobileNetV1(**new_arch).to(next(net.parameters()).device)
    if init in ("original", "original_fresh_head"):
        new.stem.load_state_dict(net.stem.state_dict())
        for i in range(cut):
            new.blocks[i].load_state_dict(net.blocks[i].state_dict())
    if init == "original":
        if head is None:
            raise ValueError("init='original' needs the trained auxiliary head of the cut point")
        new.head.load_state_dict(head.state_dict())
    return new, new_arch


def cut_generic(
    modules: Sequence[nn.Module], cut: int, head: ClassifierHead, init: str = "original"
) -> nn.Sequential:
    """The cut of any backbone given as feature modules: ``Sequential(stem, blocks ≤ cut, head)``."""
    new = nn.Sequential(*(copy.deepcopy(m) for m in modules[: cut + 1]), copy.deepcopy(head))
    if init == "random":
        for m in new.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return new
