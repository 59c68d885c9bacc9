"""Channel-importance criteria for width pruning.

A criterion scores the output channels of one layer; :func:`~lightning_modules.pruning.width.channel_scores`
sums those scores over the layers that share a channel (a convolution, its BatchNorm, the depthwise
convolution that follows, ...), as torch-pruning's group importance does, and the lowest-scored channels are
removed. Each criterion is one small class with a single :meth:`Criterion.score` method:

* ``l1_norm`` / ``l2_norm``: norm of each output filter (Li et al., *Pruning Filters for Efficient ConvNets*,
  arXiv:1608.08710);
* ``fpgm``: sum of Euclidean distances from each filter to the other filters of the layer; the filters
  closest to the geometric median are the most replaceable and score lowest (He et al., *Filter Pruning via
  Geometric Median*, CVPR 2019);
* ``hrank``: average matrix rank of each channel's feature map over a few batches; low-rank maps carry
  less information (Lin et al., *HRank: Filter Pruning using High-Rank Feature Map*, CVPR 2020);
* ``bn_scale``: ``|γ|`` of the normalisation layer after a convolution (Liu et al., *Learning Efficient
  Convolutional Networks through Network Slimming*, ICCV 2017): the BatchNorm scale, or for networks
  normalised otherwise (ConvNeXt) the per-channel affine weight of a LayerNorm / GroupNorm;
* ``random``: seeded uniform scores (the usual baseline).

Adding a criterion is one class and one :data:`CRITERIA` entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.modes import eval_mode

#: Convolutions scored by the weight criteria (their output filters).
CONVS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: Normalisation layers with a per-channel affine scale γ (timm's ``LayerNorm2d`` / ``BatchNormAct2d`` /
#: ``GroupNorm1`` are subclasses): what ``bn_scale`` reads, and the layers a channel group lists.
NORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)


class Criterion:
    """Per-output-channel importance of one layer; higher = more important, kept longer.

    Class attributes:
        layer_types: the layers this criterion reads; the other layers of a channel group are skipped.
        normalize: divide each group's scores by their mean before a global ranking across layers
            (torch-pruning's default ``normalizer="mean"``), for scores whose scale differs between layers.
        needs_data: :meth:`collect` must see batches before :meth:`score` can be called.
    """

    layer_types: ClassVar[tuple[type[nn.Module], ...]] = CONVS
    normalize: ClassVar[bool] = True
    needs_data: ClassVar[bool] = False

    def score(self, layer: nn.Module) -> Tensor:
        """1-D tensor with one score per output channel of ``layer``."""
        raise NotImplementedError

    def collect(self, model: nn.Module, batches: Iterable[Any]) -> None:
        """Gather activation statistics (only for criteria with ``needs_data``)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _filters(layer: nn.Module) -> Tensor:
    """Output filters of a convolution as rows: ``(out_channels, in_channels / groups · kernel elements)``."""
    return layer.weight.detach().flatten(1)


class L1Norm(Criterion):
    """L1 norm of each output filter."""

    def score(self, layer: nn.Module) -> Tensor:
        return _filters(layer).abs().sum(1)


class L2Norm(Criterion):
    """L2 norm of each output filter."""

    def score(self, layer: nn.Module) -> Tensor:
        return _filters(layer).norm(dim=1)


class FPGM(Criterion):
    """Sum of distances to the layer's other filters: near the geometric median → low score → pruned."""

    def score(self, layer: nn.Module) -> Tensor:
        w = _filters(layer).float()
        return torch.cdist(w, w).sum(1)


class BNScale(Criterion):
    """``|γ|`` of the normalisation after a convolution: network slimming's scaling factor, compared across
    layers as it is (no normalisation).

    For BatchNorm γ is its scale. For a LayerNorm over the channels (timm's ``LayerNorm2d`` in ConvNeXt) or
    a GroupNorm, γ is the per-channel affine weight applied after normalising: it scales channel ``c`` of
    the layer's output just as a BatchNorm scale does, though the statistics it follows are shared by the
    channels of the layer (LayerNorm) or of a group (GroupNorm).

    torch-pruning's ``BNScaleImportance`` reads BatchNorm only and its magnitude importance has no
    GroupNorm case (torch-pruning 1.6); the scores here go through the same per-layer criterion interface
    and group sum as every other criterion.
    """

    layer_types = NORMS
    normalize = False

    def score(self, layer: nn.Module) -> Tensor:
        weight = getattr(layer, "weight", None)
        if weight is None or weight.ndim != 1:
            raise ValueError(f"bn_scale needs normalisation layers with a per-channel affine scale, got {layer}")
        return weight.detach().abs()


class RandomCriterion(Criterion):
    """Uniform random scores from a generator seeded once: the same seed and calls give the same scores."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def score(self, layer: nn.Module) -> Tensor:
        return torch.rand(layer.weight.shape[0], generator=self.generator)

    def __repr__(self) -> str:
        return f"RandomCriterion(seed={self.seed})"


class HRank(Criterion):
    """Average rank of each channel's feature map, read after the BatchNorm that follows a convolution.

    :meth:`collect` runs the model in eval mode on a few batches with forward hooks on the BatchNorm layers,
    applies ``activation`` (the ReLU that follows them in the networks HRank prunes) and accumulates
    ``torch.linalg.matrix_rank`` of every ``H × W`` map per channel. Under DDP the sums are reduced across
    ranks with ``all_reduce``, so every rank prunes the same channels.
    """

    layer_types = (nn.BatchNorm2d,)
    needs_data = True

    def __init__(self, activation: Callable[[Tensor], Tensor] = F.relu, max_batches: int | None = None) -> None:
        self.activation = activation
        self.max_batches = max_batches
        self.ranks: dict[nn.Module, Tensor] = {}

    @torch.no_grad()
    def collect(self, model: nn.Module, batches: Iterable[Any]) -> None:
        """Average per-channel feature-map rank of every BatchNorm of ``model`` over ``batches``.

        ``batches`` yields image tensors or ``(images, labels, ...)`` tuples; statistics of an earlier call
        are replaced.
        """
        norms = [m for m in model.modules() if isinstance(m, self.layer_types)]
        param = next(model.parameters())
        sums = {m: torch.zeros(m.num_features, dtype=torch.float64, device=param.device) for m in norms}
        seen = torch.zeros((), dtype=torch.float64, device=param.device)

        def hook(module: nn.Module, args: Any, output: Tensor) -> None:
            maps = self.activation(output.detach().float())  # (batch, channels, H, W)
            sums[module] += torch.linalg.matrix_rank(maps).sum(0).to(torch.float64)

        handles = [m.register_forward_hook(hook) for m in norms]
        try:
            with eval_mode(model):
                for i, batch in enumerate(batches):
                    if self.max_batches is not None and i >= self.max_batches:
                        break
                    x = batch[0] if isinstance(batch, (tuple, list)) else batch
                    model(x.to(param.device))
                    seen += x.shape[0]
        finally:
            for h in handles:
                h.remove()
        if dist.is_available() and dist.is_initialized():
            for total in (*sums.values(), seen):
                dist.all_reduce(total)
        if seen == 0:
            raise ValueError("hrank.collect saw no batches")
        self.ranks = {m: (s / seen).float() for m, s in sums.items()}

    def score(self, layer: nn.Module) -> Tensor:
        ranks = self.ranks.get(layer)
        if ranks is None:
            raise RuntimeError("hrank has no statistics for this layer: call collect(model, batches) first")
        if ranks.numel() != layer.num_features:
            raise RuntimeError("hrank statistics are stale (the layer was pruned since): collect again")
        return ranks.cpu()


#: Criterion names (as in TinyNeuralNetwork's configurations) → classes.
CRITERIA: dict[str, type[Criterion]] = {
    "random": RandomCriterion,
    "l1_norm": L1Norm,
    "l2_norm": L2Norm,
    "fpgm": FPGM,
    "hrank": HRank,
    "bn_scale": BNScale,
}


def make_criterion(name: str, **kwargs: Any) -> Criterion:
    """Instantiate a criterion by registry name, e.g. ``make_criterion("random", seed=1)``."""
    if name not in CRITERIA:
        raise ValueError(f"unknown criterion {name!r}; choose from {sorted(CRITERIA)}")
    return CRITERIA[name](**kwargs)
