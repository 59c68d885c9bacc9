"""The registry of backbone families: ``--model.backbone NAME`` → the family's adapter.

A native family registers its adapter with :func:`register_backbone` (as timm's ``register_model`` does for
its networks); any name no family registered is a timm model name (:class:`~.timm.TimmAdapter`). Each
adapter checks its own arguments; :func:`check_backbone_arguments` adds the rule shared by all of them: an
argument only another family takes keeps its default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from torch import nn

from lightning_modules.backbones.base import BackboneAdapter
from lightning_modules.backbones.timm import TimmAdapter

#: The default backbone.
MOBILENET_V1 = "mobilenet_v1"

Family = TypeVar("Family", bound=type[BackboneAdapter])
_FAMILIES: dict[str, type[BackboneAdapter]] = {}


def register_backbone(name: str) -> Callable[[Family], Family]:
    """Class decorator: ``@register_backbone("mobilenet_v1")`` makes the adapter the one of that name."""

    def register(adapter: Family) -> Family:
        if _FAMILIES.get(name, adapter) is not adapter:
            raise ValueError(f"backbone {name!r} is registered already ({_FAMILIES[name].__name__})")
        adapter.name = name
        _FAMILIES[name] = adapter
        return adapter

    return register


def unregister_backbone(name: str) -> None:
    """Forget a registered family (its name is a timm model name again)."""
    _FAMILIES.pop(name, None)


def registered_backbones() -> tuple[str, ...]:
    """The names of the native families, in registration order."""
    return tuple(_FAMILIES)


def adapter_class(backbone: str) -> type[BackboneAdapter]:
    """The adapter class of a ``--model.backbone`` value: a registered family's, else timm's."""
    return _FAMILIES.get(backbone, TimmAdapter)


def adapter_for(arch: Mapping[str, Any]) -> BackboneAdapter:
    """The adapter of a network description (``backbone`` absent = MobileNetV1)."""
    backbone = arch.get("backbone") or MOBILENET_V1
    return adapter_class(backbone).for_arch({**arch, "backbone": backbone})


def build_net(arch: Mapping[str, Any]) -> nn.Module:
    """A network of any backbone from its description (``pl_module.arch``, ``describe_net``)."""
    return adapter_for(arch).build(arch)


def uncut_arch(arch: Mapping[str, Any]) -> dict[str, Any]:
    """The description of the full network a pruned ``arch`` of any family was pruned from (its family's
    :meth:`~lightning_modules.backbones.base.BackboneAdapter.uncut_arch`; ``backbone`` absent = MobileNetV1)."""
    return adapter_class(arch.get("backbone") or MOBILENET_V1).uncut_arch(arch)


def adapter_of_net(net: nn.Module) -> BackboneAdapter:
    """The adapter of a built, uncut network: a registered family's network, or a timm model (which records
    its name)."""
    for adapter in _FAMILIES.values():
        if adapter.network_class is not None and isinstance(net, adapter.network_class):
            return adapter()
    name = (getattr(net, "pretrained_cfg", None) or {}).get("architecture")
    if not name:
        raise ValueError(f"{type(net).__name__} is neither a registered backbone ({', '.join(_FAMILIES)}) nor a "
                         "timm model; no adapter knows it")
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


def _is_default(value: Any, default: Any) -> bool:
    if isinstance(value, list | tuple):
        value = tuple(value)
    return value == default or (not value and not default and value is not False)


def check_backbone_arguments(hparams: Mapping[str, Any]) -> None:
    """The chosen family's own checks, then: no argument that only another family takes is given."""
    backbone = hparams["backbone"]
    chosen = adapter_class(backbone)
    chosen.check_arguments(hparams)
    for other in (*_FAMILIES.values(), TimmAdapter):
        if other is chosen:
            continue
        for key, default in other.own_arguments.items():
            if key not in chosen.arch_keys and not _is_default(hparams.get(key), default):
                raise ValueError(f"--model.{key} applies to {other.name or 'timm backbones'} only, not to backbone "
                                 f"{backbone!r}{chosen.argument_hint}")
