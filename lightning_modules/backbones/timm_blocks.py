"""Cut points of a timm network at block granularity: timm's stages, and every block inside them.

timm's feature API works per *stage*: ``feature_info`` names the stage modules, ``forward_intermediates``
returns their outputs and ``prune_intermediate_layers`` drops the stages after one (for EfficientNet /
MobileNetV3, with ``extra_blocks=True``, the stem and every entry of ``net.blocks``). Those stay the
source of the stage-level cut points here. timm has no API for the output of each *block* inside a stage,
so the blocks within one stage are walked by hand, and only where that is exact: a stage that is an
``nn.Sequential`` of blocks (ResNet ``layer1..4``, EfficientNet / MobileNetV3 ``blocks[i]``) or whose only
children are a ``downsample`` and a ``blocks`` Sequential (ConvNeXt stages) computes the output of its
``n``-th block when its Sequential is truncated to ``n`` blocks. Any other stage (e.g. RegNet's
``b1..bN`` children) is one cut point, timm's own.

A cut point is a :class:`BlockPoint`: the timm stage index, how many blocks of that stage are kept
(``None``: the whole stage) and the name of the module whose output it is. The last block of a stage is the
stage's own (timm) point, so every stage-level cut point is still a cut point.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class BlockPoint:
    """One cut point: the output of ``module``, i.e. timm stage ``stage`` with its first ``blocks``
    blocks (``None``: the whole stage, timm's own intermediate)."""

    stage: int
    blocks: int | None
    module: str


def intermediate_kwargs(model: nn.Module) -> dict[str, Any]:
    """``extra_blocks=True`` where timm offers one entry per ``blocks[i]`` (EfficientNet, MobileNetV3)."""
    params = inspect.signature(model.forward_intermediates).parameters
    return {"extra_blocks": True} if "extra_blocks" in params else {}


def stage_names(net: nn.Module) -> list[str]:
    """Module names of the entries of ``forward_intermediates``, in order (from ``feature_info``)."""
    infos = net.feature_info if isinstance(net.feature_info, list) else net.feature_info.get_dicts()
    if intermediate_kwargs(net):  # the stem (conv_stem → bn1), then every entry of net.blocks
        stem = "bn1" if isinstance(getattr(net, "bn1", None), nn.Module) else infos[0]["module"]
        return [stem, *(f"blocks.{i}" for i in range(len(net.blocks)))]
    return [info["module"] for info in infos]


def stage_blocks(stage: nn.Module) -> tuple[str, nn.Sequential] | None:
    """``(prefix, blocks)`` when running the first ``n`` blocks is exactly the stage cut after block ``n``:
    a plain Sequential, or a module whose only children are ``downsample`` and a ``blocks`` Sequential
    (ConvNeXt); ``None`` for any other stage."""
    if type(stage) is nn.Sequential:
        return "", stage
    children = dict(stage.named_children())
    if isinstance(children.get("blocks"), nn.Sequential) and set(children) <= {"downsample", "blocks"}:
        return "blocks.", children["blocks"]
    return None


def block_points(net: nn.Module) -> list[BlockPoint]:
    """The ordered cut points of an uncut timm network, from its structure alone (no forward pass)."""
    points = []
    for s, name in enumerate(stage_names(net)):
        found = stage_blocks(net.get_submodule(name))
        if found is not None:
            prefix, blocks = found
            points += [BlockPoint(s, n, f"{name}.{prefix}{n - 1}") for n in range(1, len(blocks))]
        points.append(BlockPoint(s, None, name))
    return points


def truncate_stage(net: nn.Module, point: BlockPoint) -> None:
    """Keep only the first ``point.blocks`` blocks of stage ``point.stage`` (after timm's
    ``prune_intermediate_layers`` dropped the later stages)."""
    if point.blocks is None:
        return
    found = stage_blocks(net.get_submodule(stage_names(net)[point.stage]))
    if found is None or not 0 < point.blocks < len(found[1]):
        raise ValueError(f"cannot keep {point.blocks} blocks of stage {point.stage} for cut point {point.module!r}")
    del found[1][point.blocks:]


def point_to_json(point: BlockPoint) -> dict[str, Any]:
    """The ``structure`` entries that say what a cut cut (see :func:`resolve_cut`)."""
    return {"cut_module": point.module, "stage": point.stage, "stage_blocks": point.blocks}


def resolve_cut(net: nn.Module, structure: Mapping[str, Any], name: str) -> tuple[int, BlockPoint]:
    """The cut point a ``structure`` describes, checked against the uncut network ``net``.

    A structure records the cut point's index, module, stage and kept blocks, and all must agree with
    ``net``'s cut points: a description never rebuilds a different cut than the one it was made from. A
    structure without ``stage`` (described when timm networks had stage-level cut points only) names
    timm's stage index in ``cut`` and rebuilds that whole stage, as it did then.
    """
    layout = block_points(net)
    if "stage" not in structure:
        stage = int(structure["cut"])
        found = [i for i, p in enumerate(layout) if p.stage == stage and p.blocks is None]
        if not found:
            raise ValueError(f"structure.cut = {stage}: {name} has no stage {stage} "
                             f"(stages 0..{layout[-1].stage})")
        return found[0], layout[found[0]]
    k = int(structure["cut"])
    blocks = structure.get("stage_blocks")
    wanted = BlockPoint(int(structure["stage"]), None if blocks is None else int(blocks), str(structure["cut_module"]))
    actual = layout[k] if 0 <= k < len(layout) else None
    if actual != wanted:
        raise ValueError(f"structure.cut = {k} describes cut point {wanted}, but cut point {k} of {name} is "
                         f"{actual or f'absent (cut points 0..{len(layout) - 1})'}; the description was made for "
                         "another network (timm version or backbone_kwargs differ)")
    return k, wanted


@contextlib.contextmanager
def block_taps(net: nn.Module, points: Sequence[BlockPoint]) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks on the blocks of ``points``: during a pass, ``taps[point.module]`` is that block's
    output (timm's ``forward_intermediates`` returns stage outputs only)."""
    taps: dict[str, torch.Tensor] = {}

    def hook(name: str):  # noqa: ANN202
        def store(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            taps[name] = output
        return store

    handles = [net.get_submodule(p.module).register_forward_hook(hook(p.module)) for p in points]
    try:
        yield taps
    finally:
        for h in handles:
            h.remove()


def features_at(
    net: nn.Module, x: torch.Tensor, points: Sequence[BlockPoint], logits: bool
) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """Logits (or ``None``) and the features at ``points``, in one pass through ``forward_intermediates``
    (stage points) with hooks on the blocks inside stages; without logits the pass stops after the
    deepest point's stage."""
    kwargs = intermediate_kwargs(net)
    inner = [p for p in points if p.blocks is not None]
    indices = sorted({p.stage for p in points if p.blocks is None} | {max(p.stage for p in points)})
    with block_taps(net, inner) as taps:
        if logits:
            final, feats = net.forward_intermediates(x, indices=indices, **kwargs)
            out = net.forward_head(final)
        else:
            feats = net.forward_intermediates(x, indices=indices, intermediates_only=True, stop_early=True,
                                              **kwargs)
            out = None
    by_stage = dict(zip(indices, feats, strict=True))
    return out, [by_stage[p.stage] if p.blocks is None else taps[p.module] for p in points]
