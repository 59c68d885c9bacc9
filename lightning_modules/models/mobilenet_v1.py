"""MobileNetV1.

Howard et al., *MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications*,
arXiv:1704.04861 (2017).

The architecture is fully described by the constructor arguments: a width-pruned network is a
different ``channels`` list, a depth-pruned one a smaller ``num_blocks`` with a different
``head_channels``, a network being pruned by ResRep one with ``compactors``. Checkpoints therefore rebuild
any pruned network from their hyper-parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.layers import make_divisible
from torch import nn

from lightning_modules.models.layers import ClassifierHead, Compactor, ConvBNReLU, DepthwiseSeparableConv

#: Output channels of the stem followed by those of the 13 depthwise-separable blocks (width 1.0).
BASE_CHANNELS: tuple[int, ...] = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)
#: Strides of the 13 depthwise-separable blocks (the stem's stride is a constructor argument).
BLOCK_STRIDES: tuple[int, ...] = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)
NUM_BLOCKS: int = len(BLOCK_STRIDES)


def mobilenet_v1_channels(width_mult: float = 1.0, divisor: int = 8) -> list[int]:
    """Stem + per-block output channels for a width multiplier, rounded to ``divisor`` as in TF-Slim."""
    return [make_divisible(c * width_mult, divisor) for c in BASE_CHANNELS]


class MobileNetV1(nn.Module):
    """MobileNetV1: stem conv 3×3 → 13 depthwise-separable blocks → classifier head.

    Args:
        num_classes: outputs of the final FC layer.
        width_mult: channel multiplier α; ignored when ``channels`` is given.
        channels: explicit output channels ``[stem, block_1, …, block_num_blocks]`` (``num_blocks + 1``
            entries; a 14-entry list is truncated to the kept blocks). Overrides ``width_mult``.
        stem_stride: stride of the stem (2 at ImageNet resolution; 1 is common for 32 px CIFAR).
        num_blocks: how many of the 13 blocks are kept (depth pruning cuts here).
        head_channels: widths of depthwise-separable blocks in the head before pooling; ``()`` is the
            standard GAP + FC classifier.
        dropout: dropout before the final FC.
        in_chans: input image channels.
        compactors: put an identity-initialised :class:`~lightning_modules.models.layers.Compactor` after the
            BatchNorm of the stem and of every pointwise convolution (backbone and head blocks), never after
            a depthwise one (Ding et al., *ResRep*, ICCV 2021; see :mod:`lightning_modules.pruning.resrep`).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        channels: Sequence[int] | None = None,
        stem_stride: int = 2,
        num_blocks: int = NUM_BLOCKS,
        head_channels: Sequence[int] = (),
        dropout: float = 0.0,
        in_chans: int = 3,
        compactors: bool = False,
    ) -> None:
        super().__init__()
        if not 0 <= num_blocks <= NUM_BLOCKS:
            raise ValueError(f"num_blocks must be in [0, {NUM_BLOCKS}], got {num_blocks}")
        chans = list(channels) if channels is not None else mobilenet_v1_channels(width_mult)
        if len(chans) == NUM_BLOCKS + 1:
            chans = chans[: num_blocks + 1]
        if len(chans) != num_blocks + 1:
            raise ValueError(
                f"channels needs num_blocks + 1 = {num_blocks + 1} entries (stem + blocks) or "
                f"{NUM_BLOCKS + 1}, got {len(chans)}"
            )
        self.channels = [int(c) for c in chans]
        self.num_classes = num_classes
        self.stem = ConvBNReLU(in_chans, self.channels[0], 3, stride=stem_stride, compactor=compactors)
        self.blocks = nn.Sequential(
            *(
                DepthwiseSeparableConv(self.channels[i], self.channels[i + 1], BLOCK_STRIDES[i], compactors)
                for i in range(num_blocks)
            )
        )
        self.head = ClassifierHead(self.channels[-1], num_classes, tuple(head_channels), dropout, compactors)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, Compactor):
                m.reset_parameters()  # the identity
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    @property
    def feature_modules(self) -> list[nn.Module]:
        """Ordered modules whose outputs are the cut points: the stem (index 0), then blocks 1…n."""
        return [self.stem, *self.blocks]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
