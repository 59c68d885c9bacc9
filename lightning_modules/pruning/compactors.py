"""ResRep's compactors in any network whose channel groups torch-pruning's dependency graph finds.

Ding et al., *ResRep: Lossless CNN Pruning via Decoupling Remembering and Forgetting*, ICCV 2021; the
training maths (re-routed gradients, masks) is in :mod:`lightning_modules.pruning.resrep`.

**Where the compactors go.** Every prunable channel group (:func:`~lightning_modules.pruning.width.prunable_groups`:
the channels one convolution produces, together with everything torch-pruning couples to them: the
depthwise convolution that follows, the other branches of a residual addition, the gate of a
squeeze-excitation) gets one compactor after each BatchNorm of the group, between the BatchNorm and its
activation, and one after the group's root convolution when no BatchNorm follows it (the squeeze
convolution of an SE block, a head convolution with a bias). A compactor after the BatchNorm of a
grouped (depthwise) convolution is *diagonal* (one scale per channel, a depthwise 1×1 convolution): a
full matrix would mix channels that the grouped convolution keeps apart, and could not be folded into it.
All compactors of a group share one mask and are ranked together (:func:`group_row_scores`), so a masked
channel is driven to zero at every place that produces it: before a residual addition on every branch,
after the depthwise convolution of an inverted residual, so that removing it is lossless. A group whose
channels reach a grouped convolution of ``g`` groups (ResNeXt, RegNet) keeps ``g`` in its positions
(``"channel_groups"``): its masks take the same positions of each of the ``g`` chunks, so that the
grouped convolution still splits into equal groups after the slicing.

**Merge.** ``conv → BN → compactor`` folds into ``conv' → identity BN`` exactly as for MobileNetV1
(:func:`fold_into_conv_norm`), ``conv → compactor`` into ``conv'`` (:func:`fold_into_conv`); the merged
network has the original module names, so its masked channels are sliced by torch-pruning like any
width-pruned network.

**Refused.** A group in which a channel is produced by any other layer (a LayerNorm or GroupNorm, which
normalise across channels, so a zeroed channel still changes the others; a Linear layer; another kind of
norm) has no lossless compactor placement: :func:`compactor_positions` raises
:class:`CompactorPlacementError` naming that layer (ConvNeXt is refused this way).

The positions are JSON (``{group: [{"after": module, "conv": module, "diagonal": bool}, ...]}``) so that a
backbone adapter can keep them in a network's description and rebuild the compactors from a checkpoint
(:func:`install_compactors`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from timm.layers import BatchNormAct2d
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_modules.models.layers import Compactor
from lightning_modules.modes import eval_mode
from lightning_modules.pruning.width import prunable_groups

#: Norm layers a compactor can follow (timm's BatchNormAct2d: BatchNorm, then its drop and activation).
COMPACTOR_NORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm2d, BatchNormAct2d)

Positions = dict[str, list[dict[str, Any]]]


class CompactorPlacementError(ValueError):
    """A network in which ResRep's compactors cannot be placed so that removing masked channels is lossless."""


class CompactedLayer(nn.Module):
    """``layer`` (a BatchNorm or a convolution) followed by a :class:`Compactor`; a timm ``BatchNormAct2d``
    runs its normalisation, the compactor, then its own drop and activation.

    Attributes:
        group: name of the channel group the compactor belongs to (the root convolution of the group).
        conv: name of the convolution the compactor folds into (the layer itself, or the convolution
            before the BatchNorm), in the network without compactors.
        channel_groups: the ``g`` of the group's channels (:class:`~lightning_modules.pruning.width.ChannelGroup`):
            its masks remove the same positions of each of ``g`` equal chunks.
    """

    def __init__(self, layer: nn.Module, group: str, conv: str, diagonal: bool = False,
                 channel_groups: int = 1) -> None:
        super().__init__()
        channels = layer.num_features if isinstance(layer, _BatchNorm) else layer.out_channels
        self.layer = layer
        self.compactor = Compactor(channels, diagonal=diagonal)
        self.group, self.conv, self.channel_groups = group, conv, channel_groups
        param = next(layer.parameters())
        self.compactor.to(device=param.device, dtype=param.dtype)
        self.train(layer.training)

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.layer, BatchNormAct2d):
            x = self.compactor(_BatchNorm.forward(self.layer, x))  # BatchNormAct2d's own normalisation
            return self.layer.act(self.layer.drop(x))
        return self.compactor(self.layer(x))


# ------------------------------------------------------------------------------------------- place
def conv_before_norms(net: nn.Module, example_input: Tensor) -> dict[nn.Module, nn.Module]:
    """``{norm: convolution}`` for every BatchNorm whose input is the output of a convolution, found by
    one forward pass in eval mode (torch-pruning's graph may put pseudo-operations between the two)."""
    produced: dict[int, tuple[Tensor, nn.Module]] = {}
    found: dict[nn.Module, nn.Module] = {}

    def after_conv(module: nn.Module, _args: Any, out: Tensor) -> None:
        produced[id(out)] = (out, module)  # the tensor is kept: its id stays unique during the pass

    def before_norm(module: nn.Module, args: tuple) -> None:
        entry = produced.get(id(args[0]))
        if entry is not None and entry[0] is args[0]:
            found[module] = entry[1]

    handles = [m.register_forward_hook(after_conv) for m in net.modules() if isinstance(m, nn.Conv2d)]
    handles += [m.register_forward_pre_hook(before_norm) for m in net.modules() if isinstance(m, _BatchNorm)]
    try:
        with eval_mode(net), torch.no_grad():
            net(example_input)
    finally:
        for h in handles:
            h.remove()
    return found


def _is_graph_op(module: nn.Module) -> bool:
    """torch-pruning's stand-ins for functional operations (additions, concatenations, reshapes)."""
    return type(module).__module__.startswith("torch_pruning")


def compactor_positions(net: nn.Module, example_input: Tensor, ignore: Iterable[nn.Module] = ()) -> Positions:
    """Where the compactors of ``net`` go: ``{group name: [{"after", "conv", "diagonal"}, ...]}`` in module
    order (see the module docstring), for the prunable groups of ``net`` not touching ``ignore``.

    Raises :class:`CompactorPlacementError` naming the first layer that produces channels of a group and
    is neither a convolution nor a BatchNorm following one.
    """
    if any(isinstance(m, CompactedLayer | Compactor) for m in net.modules()):
        raise CompactorPlacementError("the network already has compactors")
    groups = prunable_groups(net, example_input, ignore)
    producer = conv_before_norms(net, example_input)
    names = {m: n for n, m in net.named_modules()}
    order = {m: i for i, m in enumerate(net.modules())}
    positions: Positions = {}
    for g in groups:
        members = [(item.dep.target.module, list(item.idxs), list(item.root_idxs)) for item in g.group
                   if g.graph.is_out_channel_pruning_fn(item.dep.handler) and not _is_graph_op(item.dep.target.module)]
        convs = {m for m, _, _ in members if isinstance(m, nn.Conv2d)}
        entries = []
        for layer, idxs, root_idxs in members:
            if isinstance(layer, nn.Conv2d):
                continue
            conv = producer.get(layer)
            if type(layer) not in COMPACTOR_NORMS or conv not in convs or idxs != root_idxs or not layer.affine:
                raise CompactorPlacementError(
                    f"layer {names[layer]!r} ({type(layer).__name__}) produces channels of the prunable group "
                    f"{g.name!r}, but compactors fold only into convolutions followed by an affine BatchNorm (a "
                    "LayerNorm or GroupNorm normalises across channels, so a channel driven to zero still "
                    "changes the others)")
            entries.append((layer, {"after": names[layer], "conv": names[conv], "diagonal": conv.groups > 1}))
        if g.root not in {producer.get(layer) for layer, _ in entries}:
            entries.append((g.root, {"after": g.name, "conv": g.name, "diagonal": False}))
        if g.channel_groups > 1:  # written only where it matters: earlier descriptions stay as they were
            for _, entry in entries:
                entry["channel_groups"] = g.channel_groups
        positions[g.name] = [entry for _, entry in sorted(entries, key=lambda e: order[e[0]])]
    return positions


def install_compactors(net: nn.Module, positions: Mapping[str, Sequence[Mapping[str, Any]]]) -> nn.Module:
    """Put an identity compactor at every position (in place; the function is unchanged) and return ``net``."""
    for group, entries in positions.items():
        for entry in entries:
            parent_name, _, child = str(entry["after"]).rpartition(".")
            parent = net.get_submodule(parent_name)
            layer = getattr(parent, child)
            if isinstance(layer, CompactedLayer):
                raise ValueError(f"{entry['after']!r} already has a compactor")
            setattr(parent, child, CompactedLayer(layer, group, str(entry["conv"]), bool(entry["diagonal"]),
                                                  int(entry.get("channel_groups", 1))))
    return net


def compacted_layers(net: nn.Module) -> dict[str, CompactedLayer]:
    """The compactor wrappers of ``net`` by module name, in module order."""
    return {name: m for name, m in net.named_modules() if isinstance(m, CompactedLayer)}


def positions_of(net: nn.Module) -> Positions:
    """The positions of ``net``'s compactors, as :func:`compactor_positions` gave them (``{}`` without)."""
    positions: Positions = {}
    for name, m in compacted_layers(net).items():
        entry: dict[str, Any] = {"after": name, "conv": m.conv, "diagonal": m.compactor.groups > 1}
        if m.channel_groups > 1:
            entry["channel_groups"] = m.channel_groups
        positions.setdefault(m.group, []).append(entry)
    return positions


def compactor_groups(net: nn.Module) -> dict[str, list[Compactor]]:
    """The compactors of ``net`` grouped by the channel group whose mask they share, in module order."""
    groups: dict[str, list[Compactor]] = {}
    for m in compacted_layers(net).values():
        groups.setdefault(m.group, []).append(m.compactor)
    return groups


def compactor_channel_groups(net: nn.Module) -> dict[str, int]:
    """The ``g`` of each compactor group of ``net`` whose channels reach a grouped convolution (the others: 1)."""
    return {m.group: m.channel_groups for m in compacted_layers(net).values() if m.channel_groups > 1}


def strip_compactors(net: nn.Module) -> nn.Module:
    """Replace every compactor wrapper by the layer it wraps (in place; the compactors are dropped)."""
    for name, m in list(compacted_layers(net).items()):
        parent_name, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent_name), child, m.layer)
    return net


# ------------------------------------------------------------------------------------------- merge
def _compactor_matrix(compactor: Compactor) -> Tensor:
    """The compactor as a ``C × C`` matrix in float64 (a diagonal one as its diagonal)."""
    q = compactor.weight.detach().double().flatten(1)
    return torch.diag(q[:, 0]) if compactor.groups > 1 else q


def _folded_weight(conv: nn.Conv2d, q: Tensor, scale: Tensor) -> Tensor:
    """``Q · diag(scale) · W`` for the convolution's weight ``W`` (grouped convolutions: diagonal ``Q`` only)."""
    w = conv.weight.detach().double()
    scaled = scale[:, None] * w.flatten(1)
    if conv.groups > 1:
        if not torch.equal(q, torch.diag(torch.diagonal(q))):
            raise ValueError("only a diagonal compactor folds into a grouped convolution")
        return (torch.diagonal(q)[:, None] * scaled).view_as(w)
    return (q @ scaled).view_as(w)


@torch.no_grad()
def fold_into_conv(conv: nn.Conv2d, compactor: Compactor) -> tuple[Tensor, Tensor | None]:
    """Weight and bias of the convolution computing ``compactor(conv(x))``: ``Q·W`` and ``Q·b``."""
    q = _compactor_matrix(compactor)
    weight = _folded_weight(conv, q, torch.ones(q.shape[0], dtype=torch.float64, device=q.device))
    bias = None if conv.bias is None else (q @ conv.bias.double()).to(conv.bias.dtype)
    return weight.to(conv.weight.dtype), bias


@torch.no_grad()
def fold_into_conv_norm(conv: nn.Conv2d, norm: _BatchNorm, compactor: Compactor) -> tuple[Tensor, Tensor]:
    """Weight and BatchNorm bias of ``compactor(norm(conv(x)))`` with the norm in eval mode:
    ``W' = Q · diag(γ/σ) · W`` and ``b' = Q · (β + γ·(b − μ)/σ)`` (``b``: the convolution's bias, or 0)."""
    q = _compactor_matrix(compactor)
    scale = norm.weight.double() / (norm.running_var.double() + norm.eps).sqrt()
    mean = norm.running_mean.double() - (0.0 if conv.bias is None else conv.bias.double())
    shift = norm.bias.double() - scale * mean
    return _folded_weight(conv, q, scale).to(conv.weight.dtype), (q @ shift).to(norm.bias.dtype)


@torch.no_grad()
def merge_compactors(net: nn.Module) -> nn.Module:
    """A copy of ``net`` without compactors computing what ``net`` computes in eval mode, with the module
    names of the network before the compactors (its BatchNorms after a compactor become identities
    carrying the bias: ``γ = 1``, ``β = b'``, ``running_mean = 0``, ``running_var = 1 − eps``)."""
    merged = copy.deepcopy(net)
    wrappers = compacted_layers(merged)
    if not wrappers:
        raise ValueError("the network has no compactors to merge")
    for name, wrapper in wrappers.items():
        layer = wrapper.layer
        if isinstance(layer, nn.Conv2d):
            weight, bias = fold_into_conv(layer, wrapper.compactor)
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)
            continue
        conv = merged.get_submodule(wrapper.conv)
        conv = conv.layer if isinstance(conv, CompactedLayer) else conv
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"the compactor after {name!r} names {wrapper.conv!r}, which is not a convolution")
        weight, bias = fold_into_conv_norm(conv, layer, wrapper.compactor)
        conv.weight.copy_(weight)
        if conv.bias is not None:
            conv.bias.zero_()
        layer.weight.fill_(1.0)
        layer.bias.copy_(bias)
        layer.running_mean.zero_()
        layer.running_var.fill_(1.0 - layer.eps)
    return strip_compactors(merged)
