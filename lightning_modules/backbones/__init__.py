"""Backbone families: one file per family, registered by name (see :mod:`.registry`; interface in :mod:`.base`).

``mobilenet_v1`` (ours) is registered here; any other ``--model.backbone`` is a timm model name.
"""

from lightning_modules.backbones.base import (
    ArchitectureMismatch,
    BackboneAdapter,
    CutPointInfo,
    check_same_architecture,
)
from lightning_modules.backbones.mobilenet_v1 import MobileNetV1Adapter  # importing a family registers it
from lightning_modules.backbones.registry import (
    MOBILENET_V1,
    adapter_for,
    adapter_of_net,
    build_net,
    check_backbone_arguments,
    normalise_arch,
    register_backbone,
    registered_backbones,
    uncut_arch,
    unregister_backbone,
)
from lightning_modules.backbones.timm import TimmAdapter

__all__ = ["ArchitectureMismatch", "BackboneAdapter", "CutPointInfo", "MOBILENET_V1", "MobileNetV1Adapter",
           "TimmAdapter", "adapter_for", "adapter_of_net", "build_net", "check_backbone_arguments",
           "check_same_architecture", "normalise_arch", "register_backbone", "registered_backbones",
           "uncut_arch", "unregister_backbone"]
