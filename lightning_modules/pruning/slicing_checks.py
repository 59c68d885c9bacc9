"""Which channel groups torch-pruning can slice correctly, and a check that a sliced network still runs.

torch-pruning's dependency graph couples the channels of a network through the operations it traces, but a
network may keep channel counts in its own attributes, where slicing the tensors cannot reach them:

* ``torch.split`` / ``unbind`` with sizes stored on the module (timm's ``MixedConv2d``, CSP blocks): after
  slicing, the split no longer matches the channels it receives, or, worse, splits at the wrong place;
* a slice along the channels (GhostNet's ``cat(...)[:, :out_chs]``) or an in-place add into one
  (ReXNet's ``x[:, :C] += shortcut``), whose bounds are fixed numbers;
* a grouped convolution that is not depthwise (ResNeXt, RegNet) reached at other positions than the group
  root's own (through a concatenation, say).

A grouped convolution reached position for position is sliced: its ``g`` groups must each lose the same
positions (torch-pruning's convolution pruner assumes it for the input channels), so such a channel group
carries ``g`` (:func:`channel_groups`) and every width method removes whole positions across the ``g``
chunks (:func:`~lightning_modules.pruning.width.lowest_channels`).

A group that passes one of the structures above keeps its channels (:func:`unsliceable_reason` says why, and the caller
warns); everything else torch-pruning slices as usual. After slicing, :func:`check_still_runs` runs the
network once, so a structure this screen does not know ends the run with a clear error instead of a
network that fails (or silently computes something else) later.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from lightning_modules.modes import eval_mode
from lightning_modules.pruning.criteria import CONVS

if TYPE_CHECKING:
    import torch_pruning as tp

#: torch-pruning's stand-ins for ``torch.split`` / ``chunk`` and ``unbind``: their sizes live in the network.
_SPLITS: tuple[str, ...] = ("_SplitOp", "_UnbindOp")


def _channel_count(module: nn.Module, out: bool) -> int | None:
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels if out else module.in_channels
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.num_features
    if isinstance(module, nn.Linear):
        return module.out_features if out else module.in_features
    return None


def is_grouped(module: nn.Module) -> bool:
    """A convolution with channel groups that is not depthwise (one group per output channel)."""
    return (isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1
            and module.groups != module.out_channels)


def unsliceable_reason(group: tp.Group, graph: tp.DependencyGraph, names: Mapping[nn.Module, str]) -> str | None:
    """Why torch-pruning cannot slice ``group`` correctly (see the module docstring), or ``None``."""
    for item in group:
        module, handler = item.dep.target.module, item.dep.handler
        kind = type(module).__name__
        if kind in _SPLITS:
            return "its channels pass a torch.split / unbind whose sizes the network stores"
        if kind == "_SliceOp" and module.dim in (1, -3):
            return "its channels pass a slice along the channels with fixed bounds"
        if kind == "_ElementWiseOp" and "CopySlices" in str(module._grad_fn):
            return "its channels are written into a slice of another tensor (x[:, a:b] += ...)"
        count = _channel_count(module, graph.is_out_channel_pruning_fn(handler))
        if is_grouped(module) and (list(item.idxs) != list(item.root_idxs) or len(item.idxs) != count):
            return (f"it reaches the grouped convolution {names.get(module, kind)} (groups={module.groups}) "
                    "at other positions than its own")
        if count is not None and item.idxs and max(item.idxs) >= count:
            return f"torch-pruning maps its channels past the {count} channels of {names.get(module, kind)}"
    return None


def channel_groups(group: tp.Group) -> int:
    """The number of equal chunks ``group``'s channels must be pruned in alike: the least common multiple of
    the ``groups`` of the grouped convolutions it reaches (1 when it reaches none)."""
    return math.lcm(1, *(item.dep.target.module.groups for item in group if is_grouped(item.dep.target.module)))


class UntraceableChannels(RuntimeError):
    """torch-pruning's search for the layers coupled to a group's channels did not end (see :func:`bounded_tracing`)."""


@contextmanager
def bounded_tracing(graph: tp.DependencyGraph, per_node: int = 4) -> Iterator[None]:
    """Within the block, a group torch-pruning builds on ``graph`` may hold at most ``per_node`` entries per
    node of the graph; past that, :class:`UntraceableChannels` is raised.

    torch-pruning follows channel dependencies until no new (layer, indices) pair turns up. Where a network
    writes into a channel slice in place and reads the result back (ReXNet's ``x[:, :C] += shortcut``), each
    pass maps the indices somewhere new and the search never ends: ``get_all_groups`` hangs. The library has
    no option that bounds it, so its ``Group`` is swapped for one that counts (a legitimate group holds each
    node at most a few times: once per handler and per concatenation it reaches).
    """
    from torch_pruning.dependency import graph as tp_graph

    limit = per_node * len(graph.module2node) + 64
    library_group = tp_graph.Group

    class Bounded(library_group):
        def add_dep(self, dep, idxs) -> None:  # noqa: ANN001 (torch-pruning's own types)
            if len(self._group) >= limit:
                raise UntraceableChannels(f"more than {limit} coupled entries")
            super().add_dep(dep, idxs)

    tp_graph.Group = Bounded
    try:
        yield
    finally:
        tp_graph.Group = library_group


def traceable_groups(
    graph: tp.DependencyGraph, ignored: Iterable[nn.Module], names: Mapping[nn.Module, str], kept: dict[str, str]
) -> Iterator[tp.Group]:
    """torch-pruning's ``get_all_groups`` over the convolutions of ``graph``, with each group's tracing
    bounded (:func:`bounded_tracing`): a convolution whose
    channels cannot be traced goes into ``kept`` with the reason instead of hanging the run."""
    skip = {*ignored, *graph.IGNORED_LAYERS_IN_TRACING}
    visited: set[nn.Module] = set()
    for module in list(graph.module2node):
        if module in skip or module in visited or not isinstance(module, CONVS):
            continue
        pruner = graph.get_pruner_of_module(module)
        if pruner is None or pruner.get_out_channels(module) is None:
            continue
        try:
            with bounded_tracing(graph):
                group = graph.get_pruning_group(module, pruner.prune_out_channels,
                                                list(range(pruner.get_out_channels(module))))
        except UntraceableChannels:
            kept[names[module]] = "torch-pruning's tracing of its channels does not end (an in-place write " \
                                  "into a channel slice, x[:, :C] += ...)"
            visited.add(module)
            continue
        members = [item.dep.target.module for item in group if graph.is_out_channel_pruning_fn(item.dep.handler)]
        visited.update(members)
        if not any(m in skip for m in members):
            yield group


def output_shape(model: nn.Module, example_input: Tensor) -> torch.Size:
    """The shape of ``model``'s output for ``example_input``, computed in eval mode without gradients."""
    with eval_mode(model), torch.no_grad():
        return model(example_input).shape


def check_still_runs(model: nn.Module, example_input: Tensor, expected: torch.Size, sliced: list[str]) -> None:
    """Raise ``ValueError`` when the sliced ``model`` no longer runs on ``example_input`` or changed its
    output shape from ``expected``; ``sliced`` names the groups whose channels were removed."""
    try:
        shape = output_shape(model, example_input)
    except RuntimeError as err:
        problem = f"fails on an input of shape {tuple(example_input.shape)}: {str(err).splitlines()[0]}"
    else:
        if shape == expected:
            return
        problem = f"gives outputs of shape {tuple(shape)} instead of {tuple(expected)}"
    raise ValueError(f"width pruning left a network that {problem}; the network keeps a channel count "
                     f"torch-pruning does not update. Keep the channels of the failing layer with the "
                     f"callback's ignore (sliced groups: {sliced[:8]}{' ...' if len(sliced) > 8 else ''})")
