"""Model cost: the one place where parameters and MACs are counted.

MACs come from PyTorch's own ``FlopCounterMode`` (FLOPs / 2): convolutions (depthwise included, through
their ``groups``) and matrix multiplications; BatchNorm, ReLU and pooling are not counted, following the
MobileNet paper's convention (MobileNetV1-1.0 @224, 1000 classes: 568.7M MACs).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (BatchNorm affine included, running statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_macs(model: nn.Module, image_size: int = 224, in_chans: int = 3) -> int:
    """Multiply-accumulates of one forward pass at batch 1 and ``image_size``² input."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, in_chans, image_size, image_size, device=device))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


def model_cost(model: nn.Module, image_size: int = 224) -> dict[str, int]:
    """``{"params": …, "macs": …}`` for summaries and logs."""
    return {"params": count_params(model), "macs": count_macs(model, image_size)}
