"""Width (channel) pruning: score coupled channels, plan how many to remove, slice the network.

Channel dependencies and the structural slicing come from torch-pruning's ``DependencyGraph`` (Fang et al.,
*DepGraph: Towards Any Structural Pruning*, CVPR 2023): pruning an output channel of a convolution also
removes it from the BatchNorm after it, from the depthwise convolution that follows (whose channels are
tied to its input) and from the input of the next convolution; residual additions tie several
convolutions into one group.

Conventions follow TinyNeuralNetwork's one-shot pruner: ``sparsity`` is the fraction of channels removed
from every prunable layer (0.5 → width 0.5, 0.75 → width 0.25); the prunable layers are every
non-depthwise convolution (the stem included); the final ``nn.Linear`` keeps its outputs. Under the MAC
count of :mod:`lightning_modules.deploy.profiling`, the "FLOPs preserve rate" of MobileNetV1-1.0 is about 0.25 at
sparsity 0.5 and 0.06 at 0.75.

Typical use (a callback adds the schedule and the fine-tuning)::

    criterion = make_criterion("l1_norm")
    prune_model(net, criterion, 0.5, torch.randn(1, 3, 32, 32), round_to=8)
    net, arch = adapter.after_width_prune(net)  # the sliced net and its description (any backbone)

The description of a sliced network comes from its backbone adapter: MobileNetV1's constructor arguments
(a per-block channel list), or for a timm network the new shapes of every sliced layer
(:mod:`lightning_modules.backbones.timm`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from timm.layers import make_divisible
from torch import Tensor, nn

from lightning_modules.modes import eval_mode
from lightning_modules.pruning.criteria import CONVS, NORMS, Criterion
from lightning_modules.pruning.slicing_checks import (
    bounded_tracing,
    channel_groups,
    check_still_runs,
    output_shape,
    traceable_groups,
    unsliceable_reason,
)

if TYPE_CHECKING:  # torch-pruning is imported where it is used: it pulls in timm's data stack and W&B,
    import torch_pruning as tp  # seconds of start-up that runs without width pruning do not need

#: Key of a per-layer sparsity dict that applies to the layers it does not name.
DEFAULT_KEY: str = "default"

SparsitySpec = float | Mapping[str, float]


@dataclass
class ChannelGroup:
    """The coupled output channels of one prunable convolution.

    Attributes:
        name: module name of the convolution that produces the channels (the group's root).
        group: torch-pruning group rooted at that convolution, over all its output channels.
        graph: the dependency graph the group belongs to.
        channel_groups: ``g`` when the channels reach a grouped convolution with ``g`` groups: they are then
            ``g`` equal consecutive chunks, and every removal takes the same positions from each
            (:func:`lowest_channels`); 1 otherwise.
    """

    name: str
    group: tp.Group
    graph: tp.DependencyGraph
    channel_groups: int = 1

    @property
    def root(self) -> nn.Module:
        return self.group[0].dep.target.module

    @property
    def num_channels(self) -> int:
        return len(self.group[0].idxs)

    @property
    def layers(self) -> list[tuple[nn.Module, list[int], list[int]]]:
        """``(layer, its channel indices, the root's channel indices)`` for every convolution and
        BatchNorm whose output channels are in the group (the root first)."""
        return [
            (item.dep.target.module, list(item.idxs), list(item.root_idxs))
            for item in self.group
            if isinstance(item.dep.target.module, CONVS + NORMS)
            and self.graph.is_out_channel_pruning_fn(item.dep.handler)
        ]


def ignored_modules(net: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    """Modules of ``net`` named in ``names`` (unknown names are an error that lists the valid ones)."""
    modules = dict(net.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
        raise ValueError(f"ignore names no module of the network: {unknown}; convolutions: {convs}")
    return [modules[n] for n in names]


def output_layer(model: nn.Module) -> nn.Module | None:
    """The final ``nn.Linear`` of ``model`` (the classifier), whose outputs are never pruned."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def build_graph(model: nn.Module, example_input: Tensor) -> tp.DependencyGraph:
    """torch-pruning dependency graph of ``model``, traced in eval mode (BatchNorm statistics untouched)."""
    import torch_pruning as tp

    with eval_mode(model), torch.enable_grad():
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)


def prunable_groups(
    model: nn.Module, example_input: Tensor, ignore: Iterable[nn.Module] = ()
) -> list[ChannelGroup]:
    """One :class:`ChannelGroup` per prunable convolution output, in module order.

    The root of a group is its first non-depthwise convolution (the stem, a pointwise convolution, the
    first convolution of a residual stage); depthwise convolutions only follow. Groups that would change
    the outputs of the final ``nn.Linear`` or of a module in ``ignore`` are left out, and so are groups
    torch-pruning cannot slice correctly (:func:`~lightning_modules.pruning.slicing_checks.unsliceable_reason`:
    a warning names them); a network where that leaves no group is an error.
    """
    import torch_pruning as tp

    graph = build_graph(model, example_input)
    order = {m: i for i, m in enumerate(model.modules())}
    names = {m: n for n, m in model.named_modules()}
    classifier = output_layer(model)
    ignored = [*ignore, *([classifier] if classifier is not None else [])]
    groups, kept = [], {}
    for full in traceable_groups(graph, ignored, names, kept):
        convs = [
            item.dep.target.module
            for item in full
            if isinstance(item.dep.target.module, CONVS) and graph.is_out_channel_pruning_fn(item.dep.handler)
        ]
        producers = [c for c in convs if tp.ops.module2type(c) != tp.ops.OPTYPE.DEPTHWISE_CONV] or convs
        root = min(producers, key=order.__getitem__)
        if root.out_channels < 2:
            continue
        pruner = graph.get_pruner_of_module(root)
        with bounded_tracing(graph):
            group = graph.get_pruning_group(root, pruner.prune_out_channels, list(range(root.out_channels)))
        reason = unsliceable_reason(group, graph, names)
        if reason is None:
            groups.append(ChannelGroup(names[root], group, graph, channel_groups(group)))
        else:
            kept[names[root]] = reason
    position = {n: order[m] for m, n in names.items()}
    kept = {n: kept[n] for n in sorted(kept, key=position.__getitem__)}
    if kept and not groups:
        raise ValueError(f"no channel group of {type(model).__name__} can be width-pruned: "
                         + "; ".join(f"{n}: {r}" for n, r in list(kept.items())[:4]))
    if kept:
        warnings.warn(f"width pruning keeps every channel of {len(kept)} of {len(kept) + len(groups)} groups: "
                      + "; ".join(f"{n}: {r}" for n, r in list(kept.items())[:4])
                      + (" ..." if len(kept) > 4 else ""), stacklevel=2)
    return sorted(groups, key=lambda g: order[g.root])


@torch.no_grad()
def channel_scores(
    groups: Sequence[ChannelGroup], criterion: Criterion, normalize: bool = False
) -> dict[str, Tensor]:
    """Importance of each group's channels: the criterion's per-channel scores summed over the group's
    layers of ``criterion.layer_types``. With ``normalize`` (for a global ranking) the scores of each
    group are divided by their mean when ``criterion.normalize`` is set.

    A group with no layer the criterion reads (e.g. the squeeze convolution of a squeeze-excitation block
    has no BatchNorm for ``bn_scale`` or ``hrank``) gets no scores, so no channel of it is removed; a
    warning names those groups, and a criterion that can score no group at all is an error."""
    scores: dict[str, Tensor] = {}
    unscored: list[str] = []
    for g in groups:
        total = torch.zeros(g.num_channels, dtype=torch.float64)
        scored = False
        for layer, idxs, root_idxs in g.layers:
            if isinstance(layer, criterion.layer_types):
                s = criterion.score(layer).detach().cpu().to(torch.float64)
                total.index_add_(0, torch.tensor(root_idxs), s[idxs])
                scored = True
        if not scored:
            unscored.append(g.name)
            continue
        if normalize and criterion.normalize:
            total = total / total.mean().clamp_min(1e-12)
        scores[g.name] = total.float()
    if unscored and not scores:
        raise ValueError(f"{criterion!r} scores no layer of any prunable group (it reads "
                         f"{[t.__name__ for t in criterion.layer_types]}); choose another criterion")
    if unscored:
        warnings.warn(f"{criterion!r} reads no layer of the groups {unscored}: their channels are kept",
                      stacklevel=2)
    return scores


def sparsity_of(name: str, sparsity: SparsitySpec) -> float:
    """Sparsity of the group rooted at ``name``: a float applies to all; a dict maps module names to
    sparsities, with ``"default"`` (else 0) for the others."""
    if isinstance(sparsity, Mapping):
        return float(sparsity.get(name, sparsity.get(DEFAULT_KEY, 0.0)))
    return float(sparsity)


def check_sparsity_names(
    sparsity: SparsitySpec, names: Iterable[str], argument: str = "sparsity", kind: str = "prunable group"
) -> None:
    """A clear error when a per-layer sparsity dict names a layer that is not one of ``names``."""
    if isinstance(sparsity, Mapping):
        names = list(names)
        unknown = set(sparsity) - set(names) - {DEFAULT_KEY}
        if unknown:
            raise ValueError(f"{argument} names no {kind}: {sorted(unknown)}; {kind}s: {names}")


def round_channels(count: float, round_to: int = 1) -> int:
    """``count`` channels as a whole number: the nearest multiple of ``round_to`` not below 90 % of it
    (timm's ``make_divisible``, as for width multipliers), or the nearest integer when ``round_to`` is 1."""
    return int(make_divisible(count, round_to)) if round_to > 1 else int(count + 0.5)


def keep_count(
    num_channels: int, sparsity: float, round_to: int = 1, min_channels: int = 1, channel_groups: int = 1
) -> int:
    """Channels kept when removing a ``sparsity`` fraction: :func:`round_channels` of
    ``num_channels · (1 − sparsity)``, at least ``min_channels``, at most ``num_channels``.

    The one place where a sparsity becomes a channel count. torch-pruning's pruners truncate instead
    (``int(C · (1 − s))``) and round the kept count *down* to ``round_to``, which can leave 0 channels;
    rounding to the nearest keeps TinyNeuralNetwork's widths (0.5 → MobileNetV1-0.5) and never empties a
    layer.

    With ``channel_groups`` ``g`` (the channels reach a grouped convolution, see :class:`ChannelGroup`) the
    count is ``g`` times the count kept of each chunk of ``num_channels / g``, rounded so that the total is
    a multiple of ``round_to`` where a chunk allows it.
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    if sparsity == 0.0:
        return num_channels
    if channel_groups > 1:
        if num_channels % channel_groups:
            raise ValueError(f"{num_channels} channels do not split into {channel_groups} equal groups")
        chunk = keep_count(num_channels // channel_groups, sparsity, round_to // math.gcd(round_to, channel_groups),
                           math.ceil(min_channels / channel_groups))
        return chunk * channel_groups
    return int(min(num_channels, max(min_channels, round_channels(num_channels * (1.0 - sparsity), round_to))))


def keep_counts(
    channels: Mapping[str, int],
    sparsity: SparsitySpec,
    round_to: int = 1,
    min_channels: int = 1,
    ignore: Iterable[str] = (),
    kind: str = "prunable group",
    channel_groups: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """:func:`keep_count` of every layer of ``channels`` (name → output channels) at its sparsity
    (:func:`sparsity_of`) and its ``channel_groups`` (1 for a name it lacks); the layers in ``ignore`` keep
    all their channels. A per-layer ``sparsity`` naming no layer of ``channels`` is an error."""
    check_sparsity_names(sparsity, channels, kind=kind)
    ignored, chunks = set(ignore), channel_groups or {}
    return {name: c if name in ignored
            else keep_count(c, sparsity_of(name, sparsity), round_to, min_channels, chunks.get(name, 1))
            for name, c in channels.items()}


def lowest_channels(scores: Tensor, count: int, channel_groups: int = 1) -> list[int]:
    """Sorted indices of the ``count`` lowest ``scores`` (ties: the lower index).

    With ``channel_groups`` ``g`` > 1 the channels are ``g`` equal consecutive chunks (the groups of a
    grouped convolution) and the same positions leave every chunk: the positions are ranked by their scores
    summed over the chunks, and ``count`` must be a multiple of ``g``.
    """
    total = scores.numel()
    if not 0 <= count <= total:
        raise ValueError(f"cannot remove {count} of {total} channels")
    if channel_groups == 1:
        return sorted(torch.argsort(scores, stable=True)[:count].tolist())
    if total % channel_groups or count % channel_groups:
        raise ValueError(f"{count} of {total} channels cannot leave {channel_groups} equal groups alike")
    chunk = total // channel_groups
    positions = torch.argsort(scores.double().view(channel_groups, chunk).sum(0), stable=True)
    positions = positions[: count // channel_groups]
    return sorted((positions + chunk * torch.arange(channel_groups).view(-1, 1)).flatten().tolist())


def plan_pruning(
    scores: Mapping[str, Tensor],
    sparsity: SparsitySpec,
    round_to: int = 1,
    global_ranking: bool = False,
    min_channels: int = 1,
    max_pruning_ratio: float = 1.0,
    channel_groups: Mapping[str, int] | None = None,
) -> dict[str, list[int]]:
    """Sorted channel indices to remove from each group (lowest scores first, :func:`lowest_channels`).

    Local ranking removes ``num_channels - keep_count(...)`` channels from every group. Global ranking
    removes the same total from the groups with non-zero sparsity, but below one threshold on the scores
    of all of them (which should be comparable, e.g. ``channel_scores(..., normalize=True)``); every group
    then keeps at least ``max(min_channels, round_to)`` channels, at least the ``1 − max_pruning_ratio``
    fraction of its channels (torch-pruning's option of the same name: without it one threshold can empty
    a layer whose scores are all small, e.g. the last BatchNorm of a slimmed MobileNet) and a multiple of
    ``round_to``. ``channel_groups`` (group name → ``g``, see :class:`ChannelGroup`) makes a group remove
    the same positions from each of its ``g`` chunks; under global ranking its kept count is rounded up to
    a multiple of ``g``.
    """
    # torch-pruning's MetaPruner ranks globally too, but keeps every channel at or below one threshold and
    # enforces max_pruning_ratio only between iterative steps; here the removed total is exactly the local
    # plans' total and the cap holds within the one step, so the planning is our own.
    if not 0.0 < max_pruning_ratio <= 1.0:
        raise ValueError(f"max_pruning_ratio must be in (0, 1], got {max_pruning_ratio}")
    chunks = {name: (channel_groups or {}).get(name, 1) for name in scores}
    rates = {name: sparsity_of(name, sparsity) for name in scores}
    keep = keep_counts({name: len(s) for name, s in scores.items()}, sparsity, round_to, min_channels,
                       channel_groups=chunks)
    if global_ranking:
        keep = _global_keep(scores, rates, keep, round_to, min_channels, max_pruning_ratio)
        keep = {name: min(len(scores[name]), math.ceil(k / chunks[name]) * chunks[name]) for name, k in keep.items()}
    return {name: lowest_channels(s, len(s) - keep[name], chunks[name]) for name, s in scores.items()}


def _global_keep(
    scores: Mapping[str, Tensor], rates: Mapping[str, float], keep: Mapping[str, int], round_to: int,
    min_channels: int,
    max_pruning_ratio: float = 1.0,
) -> dict[str, int]:
    """Kept channels per group when the lowest scores of all pruned groups go first, for the same total."""
    pool = [name for name in scores if rates[name] > 0]
    target = sum(len(scores[n]) - keep[n] for n in pool)
    left = {name: len(s) for name, s in scores.items()}
    floor = {n: min(len(scores[n]), max(min_channels, round_to, math.ceil(len(scores[n]) * (1 - max_pruning_ratio))))
             for n in pool}
    values = torch.cat([scores[n].float() for n in pool]) if pool else torch.zeros(0)
    owners = [n for n in pool for _ in range(len(scores[n]))]
    removed = 0
    for i in torch.argsort(values, stable=True).tolist():
        if removed == target:
            break
        if left[owners[i]] > floor[owners[i]]:
            left[owners[i]] -= 1
            removed += 1
    for n in pool:
        left[n] = int(min(len(scores[n]), max(floor[n], round_channels(left[n], round_to))))
    return left


def apply_plan(
    groups: Sequence[ChannelGroup], plan: Mapping[str, Sequence[int]], example_input: Tensor | None = None
) -> None:
    """Slice every group's channels in ``plan`` out of the network (torch-pruning ``Group.prune``); with
    ``example_input``, then check that the network still runs and gives outputs of the same shape
    (:func:`~lightning_modules.pruning.slicing_checks.check_still_runs`)."""
    model = groups[0].graph.model if groups and example_input is not None else None
    expected = output_shape(model, example_input) if model is not None else None
    for g in groups:
        idxs = list(plan.get(g.name, ()))
        if idxs:
            g.group.prune(idxs)
    if expected is not None:
        check_still_runs(model, example_input, expected, [g.name for g in groups if plan.get(g.name)])


def prune_model(
    model: nn.Module,
    criterion: Criterion,
    sparsity: SparsitySpec,
    example_input: Tensor,
    round_to: int = 1,
    global_ranking: bool = False,
    ignore: Iterable[nn.Module] = (),
    min_channels: int = 1,
    max_pruning_ratio: float = 1.0,
) -> nn.Module:
    """Remove the lowest-scored channels of ``model`` in place and return it (the same, sliced module).

    A criterion with ``needs_data`` (HRank) must have collected its statistics on ``model`` first.
    """
    groups = prunable_groups(model, example_input, ignore)
    scores = channel_scores(groups, criterion, normalize=global_ranking)
    plan = plan_pruning(scores, sparsity, round_to, global_ranking, min_channels, max_pruning_ratio,
                        {g.name: g.channel_groups for g in groups})
    apply_plan(groups, plan, example_input)
    return model


def flops_preserve_rate(before_macs: int, after_macs: int) -> float:
    """MACs after pruning / MACs before (TinyNeuralNetwork's "FLOPs preserve rate")."""
    return after_macs / before_macs
