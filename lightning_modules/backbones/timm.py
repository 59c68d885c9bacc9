"""Any CNN timm can build, through timm's own feature API.

Cut points are at block granularity where the network exposes blocks
(:mod:`~lightning_modules.backbones.timm_blocks`): the entries of ``forward_intermediates`` (timm's
API for intermediate features: the stem and stages of ResNets, the stages of ConvNeXt, the stem and every
``blocks[i]`` of EfficientNet / MobileNetV3), plus the output of every block inside those stages. The cut
is ``prune_intermediate_layers`` (which drops the stages after the cut point's stage and the classifier),
the cut point's stage truncated after its block, and one of our classifier heads.

A network is described by its timm name and arguments plus a ``structure`` hyper-parameter:
``{"cut": k, "cut_module": name, "stage": s, "stage_blocks": n | null, "cut_channels": C,
"head_channels": [...]}`` for a cut network (what was cut, checked on rebuild) and ``{"layers": {...}}``
for a width-pruned one: for every module whose tensors were sliced, the new shapes of its own tensors
(and the ``groups`` of a convolution). While ResRep trains, ``{"compactors": {group: [positions]}}``
places its compactors (:mod:`lightning_modules.pruning.compactors`), after the cut and the slicing. :func:`apply_layer_shapes` resizes a freshly built network to
them, so ``ImageClassifier.load_from_checkpoint`` rebuilds a pruned timm network from the checkpoint's
hyper-parameters alone (JSON, nothing unpickled), before loading its weights.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import timm
import torch
from torch import nn

from lightning_modules.backbones.base import (
    BackboneAdapter,
    CutPointInfo,
    check_cut_init,
    device_of,
    untouched_rng,
)
from lightning_modules.backbones.timm_blocks import (
    BlockPoint,
    block_points,
    features_at,
    intermediate_kwargs,
    point_to_json,
    resolve_cut,
    truncate_stage,
)
from lightning_modules.backbones.timm_weights import local_weights
from lightning_modules.deploy.profiling import model_cost
from lightning_modules.models.layers import ClassifierHead
from lightning_modules.pruning.compactors import (
    compactor_positions,
    install_compactors,
    merge_compactors,
    positions_of,
    strip_compactors,
)

#: Hyper-parameters that describe a timm network.
ARCH_KEYS: tuple[str, ...] = ("backbone", "backbone_kwargs", "num_classes", "in_chans", "dropout", "structure")
#: Image size of the dummy pass that measures channels and stride at the cut points.
PROBE_SIZE: int = 64


def fixed_input_size(net: nn.Module) -> int | None:
    """The input size a network insists on, if any: a patch embedding with ``strict_img_size`` (timm's ViTs
    and their kin) asserts its ``img_size``, whatever ``pretrained_cfg`` says."""
    for module in net.modules():
        size = getattr(module, "img_size", None)
        if getattr(module, "strict_img_size", False) and size is not None:
            return int(size[0] if isinstance(size, (tuple, list)) else size)
    return None


def check_timm_name(name: str) -> None:
    """A clear error for a name timm cannot build, with close names."""
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:12]
        raise ValueError(f"backbone {name!r} is neither 'mobilenet_v1' nor a timm model name; "
                         f"close timm names: {close}")


class TimmCut(nn.Module):
    """A timm network truncated after cut point ``index`` (``point``: its stage with ``point.blocks``
    blocks, the later stages dropped by ``prune_intermediate_layers``) and a head."""

    def __init__(self, body: nn.Module, index: int, point: BlockPoint, cut_channels: int, head: ClassifierHead,
                 head_channels: Sequence[int]) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.index = int(index)
        self.point = point
        self.cut_channels = int(cut_channels)
        self.head_channels = [int(c) for c in head_channels]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.body.forward_intermediates(x, indices=[self.point.stage], intermediates_only=True,
                                                **intermediate_kwargs(self.body))
        return self.head(feats[-1])

    def structure(self) -> dict[str, Any]:
        """The ``structure`` hyper-parameter of this cut (before any width pruning)."""
        return {"cut": self.index, **point_to_json(self.point), "cut_channels": self.cut_channels,
                "head_channels": self.head_channels}


def cut_body(model: nn.Module, point: BlockPoint) -> nn.Module:
    """``model`` (an uncut timm network, changed in place) without the layers after ``point``."""
    model.prune_intermediate_layers(indices=[point.stage], prune_norm=True, prune_head=True,
                                    **intermediate_kwargs(model))
    truncate_stage(model, point)
    return model


# ------------------------------------------------------------------------------ width-pruned shapes
def _own_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_parameters(recurse=False)),
            **{k: v for k, v in module.named_buffers(recurse=False) if v is not None}}


def layer_shapes(net: nn.Module, reference: nn.Module) -> dict[str, dict[str, Any]]:
    """For every module of ``net`` whose own tensors differ in shape from ``reference``'s (the same
    network before slicing): ``{"shapes": {tensor: shape}, "groups": g}`` (``groups`` for convolutions)."""
    ref_modules = dict(reference.named_modules())
    out: dict[str, dict[str, Any]] = {}
    for name, module in net.named_modules():
        if name not in ref_modules:
            raise ValueError(f"module {name!r} is not in the network the description is built from")
        ref = _own_tensors(ref_modules[name])
        changed = {k: list(v.shape) for k, v in _own_tensors(module).items()
                   if k not in ref or ref[k].shape != v.shape}
        if changed:
            entry: dict[str, Any] = {"shapes": changed}
            if isinstance(module, nn.modules.conv._ConvNd):
                entry["groups"] = int(module.groups)
            out[name] = entry
    return out


def apply_layer_shapes(net: nn.Module, layers: Mapping[str, Mapping[str, Any]]) -> nn.Module:
    """Resize ``net``'s tensors (uninitialised: load weights next) and layer attributes to ``layers``."""
    for name, entry in layers.items():
        module = net.get_submodule(name)
        for key, shape in entry["shapes"].items():
            old = getattr(module, key)
            new = torch.empty(tuple(shape), dtype=old.dtype, device=old.device)
            if isinstance(old, nn.Parameter):
                setattr(module, key, nn.Parameter(new, requires_grad=old.requires_grad))
            else:
                module.register_buffer(key, new, persistent=key not in module._non_persistent_buffers_set)
        _sync_attributes(module, entry)
    return net


def _sync_attributes(module: nn.Module, entry: Mapping[str, Any]) -> None:
    """The size attributes of the standard layers, from their resized weights."""
    weight = getattr(module, "weight", None)
    if isinstance(module, nn.modules.conv._ConvNd):
        module.groups = int(entry.get("groups", module.groups))
        module.out_channels = weight.shape[0]
        module.in_channels = weight.shape[1] * module.groups
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        module.num_features = (weight if weight is not None else module.running_mean).shape[0]
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = weight.shape
    elif isinstance(module, nn.LayerNorm) and weight is not None:
        module.normalized_shape = (weight.shape[0],)
    elif isinstance(module, nn.GroupNorm) and weight is not None:
        module.num_channels = weight.shape[0]


# ------------------------------------------------------------------------------------------ adapter
class TimmAdapter(BackboneAdapter):
    """Networks built by ``timm.create_model(backbone, num_classes=…, in_chans=…, **backbone_kwargs)``.

    No weights are downloaded: ``pretrained`` is off unless ``backbone_kwargs`` asks for it, e.g. with a
    local file ``{"pretrained": true, "pretrained_cfg_overlay": {"file": "weights.safetensors"}}``.
    """

    arch_keys = ARCH_KEYS
    own_arguments = {"backbone_kwargs": None, "structure": None}
    argument_hint = "; pass timm arguments in --model.backbone_kwargs"

    @classmethod
    def for_arch(cls, arch: Mapping[str, Any]) -> TimmAdapter:
        return cls(arch["backbone"], arch.get("backbone_kwargs"), arch.get("num_classes", 10), arch.get("in_chans", 3),
                   arch.get("dropout", 0.0))

    @classmethod
    def uncut_arch(cls, arch: Mapping[str, Any]) -> dict[str, Any]:
        # the structure holds the cut, the sliced layers and the compactors: without it, timm's network
        return {**arch, "structure": {}}

    def __init__(self, backbone: str, backbone_kwargs: Mapping[str, Any] | None = None, num_classes: int = 10,
                 in_chans: int = 3, dropout: float = 0.0) -> None:
        check_timm_name(backbone)
        self.name = backbone
        self.kwargs = dict(backbone_kwargs or {})
        self.num_classes, self.in_chans, self.dropout = int(num_classes), int(in_chans), float(dropout)

    # ------------------------------------------------------------------------------------- building
    def _create(self) -> nn.Module:
        kwargs = local_weights(self.name, {"pretrained": False, **self.kwargs})  # never a download
        if self.dropout > 0:
            kwargs.setdefault("drop_rate", self.dropout)
        return timm.create_model(self.name, num_classes=self.num_classes, in_chans=self.in_chans, **kwargs)

    def _build_unsliced(self, structure: Mapping[str, Any]) -> nn.Module:
        model = self._create()
        if structure.get("cut") is None:
            return model
        k, point = resolve_cut(model, structure, self.name)
        head = ClassifierHead(int(structure["cut_channels"]), self.num_classes, structure["head_channels"],
                              self.dropout)
        return TimmCut(cut_body(model, point), k, point, structure["cut_channels"], head, structure["head_channels"])

    def build(self, arch: Mapping[str, Any]) -> nn.Module:
        structure = dict(arch.get("structure") or {})
        net = apply_layer_shapes(self._build_unsliced(structure), structure.get("layers") or {})
        return install_compactors(net, structure.get("compactors") or {})

    def _base_arch(self, structure: Mapping[str, Any]) -> dict[str, Any]:
        return {"backbone": self.name, "backbone_kwargs": dict(self.kwargs), "num_classes": self.num_classes,
                "in_chans": self.in_chans, "dropout": self.dropout, "structure": dict(structure)}

    def describe(self, net: nn.Module) -> dict[str, Any]:
        structure: dict[str, Any] = {}
        if isinstance(net, TimmCut):
            structure = net.structure()
        with untouched_rng():
            reference = self._build_unsliced(structure)
        compactors = positions_of(net)
        layers = layer_shapes(strip_compactors(copy.deepcopy(net)) if compactors else net, reference)
        if layers:
            structure["layers"] = layers
        if compactors:
            structure["compactors"] = compactors
        return self._base_arch(structure)

    # ------------------------------------------------------------------------------------ cut points
    def _full(self, net: nn.Module) -> nn.Module:
        if isinstance(net, TimmCut):
            raise ValueError(f"{self.name} is already cut after cut point {net.index}; sweep and cut the "
                             "uncut network")
        return net

    def cut_points(self, net: nn.Module, in_chans: int = 3) -> list[CutPointInfo]:
        """Every block's output where the stage exposes blocks, every stage's otherwise
        (:func:`~lightning_modules.backbones.timm_blocks.block_points`); channels and stride from a
        dummy pass in eval mode."""
        points = block_points(self._full(net))
        size = fixed_input_size(net) or PROBE_SIZE
        modes = {m: m.training for m in net.modules()}
        net.eval()
        try:
            with torch.no_grad():
                x = torch.zeros(1, in_chans, size, size, device=device_of(net))
                _, feats = features_at(net, x, points, logits=False)
        finally:
            for m, mode in modes.items():
                m.training = mode
        return [CutPointInfo(k, p.module, int(f.shape[1]), size // int(f.shape[-1]))
                for k, (p, f) in enumerate(zip(points, feats, strict=True))]

    def features(
        self, net: nn.Module, x: torch.Tensor, cut_points: Sequence[int], logits: bool = True
    ) -> tuple[torch.Tensor | None, dict[int, torch.Tensor]]:
        layout = block_points(self._full(net))
        ks = sorted(int(k) for k in cut_points)
        out, feats = features_at(net, x, [layout[k] for k in ks], logits)
        return out, dict(zip(ks, feats, strict=True))

    # ------------------------------------------------------------------------------------------ cut
    def cut(
        self, net: nn.Module, arch: Mapping[str, Any], k: int, head_channels: Sequence[int],
        head: ClassifierHead | None = None, init: str = "original",
    ) -> tuple[nn.Module, dict[str, Any]]:
        check_cut_init(init, head)
        net = self._full(net)
        channels = self.cut_points(net, self.in_chans)[k].channels
        point = block_points(net)[k]
        structure = {"cut": int(k), **point_to_json(point), "cut_channels": channels,
                     "head_channels": [int(c) for c in head_channels]}
        if init == "random":
            if (arch.get("structure") or {}).get("layers"):
                raise ValueError("init='random' re-initialises a timm network from its timm arguments, which do "
                                 "not hold a width-pruned structure; cut before width pruning")
            new = self._build_unsliced(structure).to(device_of(net))
            return new, self.describe(new)
        body = cut_body(copy.deepcopy(net), point)
        if init == "original":
            new_head = copy.deepcopy(head)
        else:
            new_head = ClassifierHead(channels, self.num_classes, structure["head_channels"], self.dropout)
        new = TimmCut(body, k, point, channels, new_head.to(device_of(net)), structure["head_channels"])
        new.train(net.training)
        return new, self.describe(new)

    def cut_costs(
        self, net: nn.Module, arch: Mapping[str, Any], cut_points: Sequence[int], head_channels: Sequence[int],
        image_size: int,
    ) -> dict[int, dict[str, int]]:
        with untouched_rng():
            return {k: model_cost(self.cut(net, arch, k, head_channels, None, "original_fresh_head")[0], image_size)
                    for k in cut_points}

    def after_width_prune(self, net: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
        return net, self.describe(net)

    def with_compactors(
        self, net: nn.Module, example_input: torch.Tensor, ignore: Sequence[nn.Module] = ()
    ) -> tuple[nn.Module, dict[str, Any]]:
        positions = compactor_positions(net, example_input, ignore)
        new = install_compactors(copy.deepcopy(net), positions)
        return new, self.describe(new)

    def merge_compactors(self, net: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
        merged = merge_compactors(net)
        return merged, self.describe(merged)


def timm_network(name: str, num_classes: int = 10, cut: int | None = None) -> nn.Module:
    """timm network ``name`` for ``num_classes`` (random weights), whole or cut after cut point ``cut`` with
    a fresh head, as a depth-pruning run builds it (for sizing and cost measurements)."""
    adapter = TimmAdapter(name, None, num_classes)
    net = adapter.build({})
    if cut is None:
        return net
    return adapter.cut(net, adapter.describe(net), cut, (), None, "original_fresh_head")[0]
