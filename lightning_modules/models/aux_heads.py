"""Auxiliary classifiers at every cut point of a backbone.

de Leon & Atienza, *Depth Pruning with Auxiliary Networks for TinyML*, arXiv:2204.10546 (2022): a small
classifier attached after a block of a trained network measures how much accuracy that prefix of the
network still carries; cutting there and keeping the head gives a much smaller model.

The cut points of a backbone, the features there and the cut itself come from its adapter
(:mod:`lightning_modules.backbones`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from lightning_modules.models.layers import ClassifierHead

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

    def forward(self, features: Sequence[torch.Tensor] | Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        return {k: self.heads[str(k)](features[k]) for k in self.cut_points}
