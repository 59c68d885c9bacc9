"""The candidates of a budget search, built and sized before any training.

A candidate is the trained network cut after cut point ``k`` (with the sweep's head there) and then thinned
one-shot to keep a fraction of every prunable layer's channels, exactly as the run will build it:
:meth:`~lightning_modules.backbones.base.BackboneAdapter.cut`, then
:func:`~lightning_modules.pruning.width.prune_model` with the width stage's rounding and ignored layers,
then :meth:`~lightning_modules.backbones.base.BackboneAdapter.after_width_prune`. Channel counts do not
depend on the weights (per-layer ranking), so the sizes hold for the trained net. Any backbone family
with an adapter works.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lightning_modules.backbones.base import untouched_rng
from lightning_modules.backbones.registry import adapter_for
from lightning_modules.deploy.profiling import count_macs
from lightning_modules.deploy.tflm_estimate import estimate_tflm
from lightning_modules.pruning.budget import Budget, Candidate, grid
from lightning_modules.pruning.criteria import make_criterion
from lightning_modules.pruning.width import ignored_modules, prune_model


def candidate_net(net: nn.Module, arch: Mapping[str, Any], cut: int, width: float, head_channels: Sequence[int],
                  image_size: int, in_chans: int = 3, round_to: int = 1,
                  ignore: Sequence[str] = ()) -> tuple[nn.Module, dict[str, Any]]:
    """``net`` (described by ``arch``) cut after cut point ``cut`` with a ``head_channels`` head, keeping
    ``width`` of every prunable layer's channels; a CPU copy in eval mode, and its description.
    ``net`` itself and the global random stream are left as they were."""
    adapter = adapter_for(arch)
    with untouched_rng(), torch.no_grad():
        source = copy.deepcopy(net).cpu().eval()
        model, description = adapter.cut(source, arch, cut, head_channels, init="original_fresh_head")
        model = model.cpu().eval()
        if width < 1.0:
            example = torch.zeros(1, in_chans, image_size, image_size)
            prune_model(model, make_criterion("l2_norm"), 1.0 - width, example, round_to=round_to,
                        ignore=ignored_modules(model, ignore))
            model, description = adapter.after_width_prune(model)
    return model.eval(), description


def size_candidates(net: nn.Module, arch: Mapping[str, Any], cuts: Sequence[int], widths: Sequence[float],
                    head_channels: Sequence[int], image_size: int, budget: Budget, in_chans: int = 3,
                    round_to: int = 1, ignore: Sequence[str] = (),
                    progress: Callable[[str], None] | None = None) -> list[Candidate]:
    """Every cut × width candidate with its predicted TFLM arena and ``.tflite`` bytes, its MACs and, when
    the budget limits latency, its predicted instructions on ``budget.core`` and latency at
    ``budget.clock_mhz``."""
    combos = grid(cuts, widths, [image_size])
    rows = []
    for i, (cut, width, size) in enumerate(combos, 1):
        model, description = candidate_net(net, arch, cut, width, head_channels, size, in_chans, round_to, ignore)
        estimate = estimate_tflm(model, size, in_chans, trained=True)  # its weights are not trained yet
        row = Candidate(cut=cut, width=width, image_size=size, flash_bytes=estimate["flash_bytes"],
                        ram_bytes=estimate["arena_bytes"], macs=count_macs(model, size, in_chans), arch=description)
        if budget.latency_ms is not None:
            from lightning_modules.deploy.mcu_cost import predict_instructions
            from lightning_modules.deploy.mcu_latency import latency_ms

            row.instructions = predict_instructions(model, size, in_chans, arch=budget.core)
            row.latency_ms = latency_ms(row.instructions, budget.clock_mhz)
        rows.append(row)
        if progress is not None:
            latency = "" if row.latency_ms is None else f", {row.latency_ms:.1f} ms"
            progress(f"candidate {i}/{len(combos)} {row.name}: .tflite {row.flash_bytes / 1024:.1f} KB, "
                     f"arena {row.ram_bytes / 1024:.1f} KB, {row.macs / 1e6:.2f} M MACs{latency}")
    return rows
