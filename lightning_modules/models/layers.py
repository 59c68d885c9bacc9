"""Small building blocks shared by the backbone and the classifier heads."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Compactor(nn.Conv2d):
    """ResRep's compactor: a 1×1 convolution ``C → C`` without bias, initialised to the identity.

    Ding et al., *ResRep: Lossless CNN Pruning via Decoupling Remembering and Forgetting*, ICCV 2021. Placed
    after the BatchNorm of a convolution, it leaves the network's function unchanged when installed; the
    pruning penalty then drives some of its rows (output channels) to zero, and after training it is folded
    into the convolution before it (:func:`lightning_modules.backbones.mobilenet_v1.merge_compactors`).

    With ``diagonal`` it is a depthwise 1×1 convolution (one scale per channel): the compactor after the
    BatchNorm of a grouped convolution, which a full matrix could not be folded into
    (:mod:`lightning_modules.pruning.compactors`).
    """

    def __init__(self, channels: int = 32, diagonal: bool = False) -> None:
        super().__init__(channels, channels, 1, bias=False, groups=channels if diagonal else 1)

    def reset_parameters(self) -> None:
        """The identity: output channel ``i`` is input channel ``i``."""
        with torch.no_grad():
            if self.groups > 1:
                self.weight.fill_(1.0)
                return
            self.weight.zero_()
            self.weight[:, :, 0, 0].copy_(torch.eye(self.out_channels, dtype=self.weight.dtype))


class ConvBNReLU(nn.Sequential):
    """Conv (no bias) → BatchNorm → ReLU. ``groups == in_channels`` makes it depthwise.

    With ``compactor`` a :class:`Compactor` sits between the BatchNorm and the ReLU (ResRep); the conv and
    the BatchNorm keep indices 0 and 1 either way, and the ReLU has no parameters, so the state dict of a
    block without compactor loads into one with (all but the compactor's weight).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 32,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        compactor: bool = False,
    ) -> None:
        if compactor and groups != 1:
            raise ValueError("a compactor follows only non-grouped (e.g. not depthwise) convolutions")
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=kernel_size // 2,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            *([Compactor(out_channels)] if compactor else []),
            nn.ReLU(inplace=True),
        )


class DepthwiseSeparableConv(nn.Module):
    """Depthwise 3×3-BN-ReLU followed by pointwise 1×1-BN-ReLU (Howard et al., 2017, Fig. 3).

    ``compactor`` puts a :class:`Compactor` after the pointwise BatchNorm (never after the depthwise one).
    """

    def __init__(
        self, in_channels: int = 32, out_channels: int = 64, stride: int = 1, compactor: bool = False
    ) -> None:
        super().__init__()
        self.dw = ConvBNReLU(in_channels, in_channels, 3, stride=stride, groups=in_channels)
        self.pw = ConvBNReLU(in_channels, out_channels, 1, compactor=compactor)

    @property
    def out_channels(self) -> int:
        return self.pw[0].out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class ClassifierHead(nn.Module):
    """Optional depthwise-separable blocks → global average pool → dropout → FC.

    With ``hidden_channels=()`` this is the standard MobileNet classifier (a linear probe on pooled
    features). ``(32, 16)`` is the auxiliary head of de Leon & Atienza (2022); ``(64, 32)`` the one of
    the public replication of that paper. ``compactors`` puts a :class:`Compactor` after the pointwise
    convolution of each hidden block.
    """

    def __init__(
        self,
        in_channels: int = 1024,
        num_classes: int = 1000,
        hidden_channels: Sequence[int] = (),
        dropout: float = 0.0,
        compactors: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for width in hidden_channels:
            layers.append(DepthwiseSeparableConv(channels, int(width), stride=1, compactor=compactors))
            channels = int(width)
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.blocks(x)).flatten(1)
        return self.fc(self.dropout(x))
