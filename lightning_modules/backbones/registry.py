"""Backbone adapters: one file per network family (see :mod:`.base` for the interface).

:func:`make_adapter` picks the adapter of a ``--model.backbone`` value: ``mobilenet_v1`` (ours) or any
timm model name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from lightning_modules.models.adapters.base import (
    ArchitectureMismatch,
    BackboneAdapter,
    CutPointInfo,
    check_same_architecture,
)
from lightning_modules.models.adapters.mobilenet_v1 import MobileNetV1Adapter
from lightning_modules.models.adapters.timm import TimmAdapter
from lightning_modules.models.mobilenet_v1 import NUM_BLOCKS, MobileNetV1

#: The default backbone.
MOBILENET_V1 = "mobilenet_v1"

__all__ = ["ArchitectureMismatch", "BackboneAdapter", "CutPointInfo", "MOBILENET_V1", "MobileNetV1Adapter",
           "TimmAdapter", "adapter_for", "adapter_of_net", "build_net", "check_backbone_arguments",
           "check_same_architecture", "normalise_arch"]


def adapter_for(arch: Mapping[str, Any]) -> BackboneAdapter:
    """The adapter of a network description (``backbone`` absent = MobileNetV1)."""
    backbone = arch.get("backbone") or MOBILENET_V1
    if backbone == MOBILENET_V1:
        return MobileNetV1Adapter()
    return TimmAdapter(backbone, arch.get("backbone_kwargs"), arch.get("num_classes", 10), arch.get("in_chans", 3),
                       arch.get("dropout", 0.0))


def build_net(arch: Mapping[str, Any]) -> nn.Module:
    """A network of any backbone from its description (``pl_module.arch``, ``describe_net``)."""
    return adapter_for(arch).build(arch)


def adapter_of_net(net: nn.Module) -> BackboneAdapter:
    """The adapter of a built, uncut network: a MobileNetV1, or a timm model (which records its name)."""
    if isinstance(net, MobileNetV1):
        return MobileNetV1Adapter()
    name = (getattr(net, "pretrained_cfg", None) or {}).get("architecture")
    if not name:
        raise ValueError(f"{type(net).__name__} is neither MobileNetV1 nor a timm model; no adapter knows it")
    return TimmAdapter(name)


def normalise_arch(arch: Mapping[str, Any]) -> dict[str, Any]:
    """A network description with JSON-friendly values (lists of ints, plain dicts), as checkpoints store it."""
    out = dict(arch)
    for key in ("channels", "head_channels"):
        if out.get(key) is not None:
            out[key] = [int(c) for c in out[key]]
    for key in ("backbone_kwargs", "structure"):
        if key in out:
            out[key] = dict(out[key] or {})
    return out


#: MobileNetV1 arguments with their defaults: a timm backbone takes none of them (its own go in
#: ``backbone_kwargs``).
MOBILENET_ONLY: dict[str, Any] = {"width_mult": 1.0, "channels": None, "stem_stride": 2, "num_blocks": NUM_BLOCKS,
                                  "head_channels": (), "compactors": False}


def check_backbone_arguments(hparams: Mapping[str, Any]) -> None:
    """MobileNetV1's own arguments are not given to a timm backbone, nor timm's to MobileNetV1."""
    backbone = hparams["backbone"]
    if backbone == MOBILENET_V1:
        if hparams.get("structure"):
            raise ValueError("structure describes timm networks; MobileNetV1 is described by its own arguments")
        if hparams.get("backbone_kwargs"):
            raise ValueError("backbone_kwargs are timm.create_model arguments; MobileNetV1 takes its own "
                             "(--model.width_mult, --model.channels, ...)")
        return
    for key, default in MOBILENET_ONLY.items():
        value = hparams.get(key)
        if (tuple(value) if isinstance(value, list | tuple) else value) != default:
            raise ValueError(f"--model.{key} applies to mobilenet_v1 only, not to backbone {backbone!r}; pass timm "
                             f"arguments in --model.backbone_kwargs")
