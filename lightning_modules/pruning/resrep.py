"""ResRep: prune channels by training compactors, then fold them away.

Ding et al., *ResRep: Lossless CNN Pruning via Decoupling Remembering and Forgetting*, ICCV 2021.

1. **Convolutional re-parameterisation.** An identity-initialised 1×1 convolution, the *compactor*
   (:class:`~lightning_modules.models.layers.Compactor`), follows the BatchNorm of every prunable convolution
   (the backbone adapter's ``with_compactors``, e.g.
   :func:`lightning_modules.backbones.mobilenet_v1.with_compactors`); the network computes the same function.
2. **Gradient re-parameterisation.** Training goes on with the objective's gradient re-routed on the
   compactors only: rows (output channels) in a *mask* receive no objective gradient ("forgetting"), every
   row receives the group-lasso gradient ``λ·Q_i/‖Q_i‖₂`` (:func:`resrep_gradients`). The masked rows then
   shrink to zero while the rest of the network keeps learning the task ("remembering"). Every few steps
   the rows with the smallest norm are (re-)masked, their number ramping up to the target removal count
   of each layer (:func:`update_masks`).
3. **Merge and slice.** ``conv → BN → compactor`` folds into one convolution followed by an identity
   BatchNorm (the adapter's ``merge_compactors``); the masked rows are now output channels of that convolution whose
   filters are (near) zero, and slicing them (:func:`removal_plan` with
   :func:`~lightning_modules.pruning.width.apply_plan`) gives a plain, narrower MobileNetV1.

Compactors are placed after the stem and every pointwise convolution of MobileNetV1 (the prunable
convolutions of :mod:`lightning_modules.pruning.width`); the keys of :func:`compactor_layers` are the names
of the convolutions they follow, i.e. the group names of the merged network. Other networks (timm's) get
their compactors from the dependency graph (:mod:`lightning_modules.pruning.compactors`), several per
channel group where torch-pruning couples channels; the functions here take ``{group: compactor}`` or
``{group: [compactors sharing one mask]}`` alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from lightning_modules.models.layers import Compactor
from lightning_modules.pruning.compactors import compactor_groups as graph_compactor_groups
from lightning_modules.pruning.criteria import Criterion
from lightning_modules.pruning.width import (
    SparsitySpec,
    check_sparsity_names,
    keep_count,
    lowest_channels,
    sparsity_of,
)

#: Row norms that rank a compactor's rows (name → the ``p`` of the norm).
ROW_NORMS: dict[str, int] = {"l2_norm": 2, "l1_norm": 1}


class CompactorRowNorm(Criterion):
    """Norm of each row (output channel) of a compactor; the smallest are masked and finally removed.

    ``l2_norm`` is ResRep's metric (the norm the group-lasso penalty acts on); ``l1_norm`` ranks by the sum
    of absolute values instead.
    """

    layer_types = (Compactor,)
    normalize = False

    def __init__(self, name: str = "l2_norm") -> None:
        if name not in ROW_NORMS:
            raise ValueError(f"unknown compactor row norm {name!r}; choose from {sorted(ROW_NORMS)}")
        self.name = name

    def score(self, layer: nn.Module) -> Tensor:
        return layer.weight.detach().flatten(1).norm(p=ROW_NORMS[self.name], dim=1)

    def __repr__(self) -> str:
        return f"CompactorRowNorm({self.name!r})"

    def group_score(self, compactors: nn.Conv2d | Sequence[nn.Conv2d]) -> Tensor:
        """The norm of each channel's rows over all compactors of a group (the rows of one compactor: its
        :meth:`score`; several: the norm of the concatenated rows)."""
        members = group_members(compactors)
        if len(members) == 1:
            return self.score(members[0])
        scores = torch.stack([self.score(c).double() for c in members])
        p = ROW_NORMS[self.name]
        return scores.pow(p).sum(0).pow(1.0 / p).to(members[0].weight.dtype)


#: Compactors by channel group: one compactor, or all the compactors sharing the group's mask.
CompactorSet = Mapping[str, nn.Conv2d | Sequence[nn.Conv2d]]


def group_members(compactors: nn.Conv2d | Sequence[nn.Conv2d]) -> list[nn.Conv2d]:
    """The compactors of one group as a list."""
    return [compactors] if isinstance(compactors, nn.Module) else list(compactors)


def compactor_layers(net: nn.Module) -> dict[str, Compactor]:
    """The compactors of ``net`` in module order, keyed by the name of the convolution they follow
    (``"stem.0"``, ``"blocks.3.pw.0"``, ``"head.blocks.0.pw.0"``: the group names of the merged net)."""
    return {f"{name.rsplit('.', 1)[0]}.0": m for name, m in net.named_modules() if isinstance(m, Compactor)}


def compactor_groups(net: nn.Module) -> dict[str, list[Compactor]]:
    """The compactors of any network by channel group (a group's compactors share its mask): those placed
    from the dependency graph (:func:`~lightning_modules.pruning.compactors.compactor_groups`), or
    MobileNetV1's, one per group (:func:`compactor_layers`)."""
    return graph_compactor_groups(net) or {name: [c] for name, c in compactor_layers(net).items()}


def removal_targets(
    compactors: CompactorSet,
    sparsity: SparsitySpec,
    round_to: int = 1,
    ignore: Iterable[str] = (),
    channel_groups: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Rows to remove from each compactor: ``C − keep_count(C, sparsity, round_to)`` (0 for ``ignore``).

    ``sparsity`` is a float for all layers or ``{"default": s, "<conv name>": s, ...}`` as in
    :func:`~lightning_modules.pruning.width.sparsity_of`. ``channel_groups`` (group → ``g``, 1 where left
    out) makes a group's target a multiple of ``g``, the same count from each chunk (:func:`keep_count`).
    """
    check_sparsity_names(sparsity, compactors, kind="compactor")
    ignored, chunks = set(ignore), dict(channel_groups or {})
    targets = {}
    for name, c in compactors.items():
        rate = 0.0 if name in ignored else sparsity_of(name, sparsity)
        channels = group_members(c)[0].out_channels
        targets[name] = channels - keep_count(channels, rate, round_to, channel_groups=chunks.get(name, 1))
    return targets


# ------------------------------------------------------------------------------------------- train
def ramp_fraction(updates: int, ramp_updates: int) -> float:
    """Fraction of the target masked after ``updates`` mask updates: linear, 1 from ``ramp_updates`` on."""
    return min(max(updates, 0) / max(ramp_updates, 1), 1.0)


def update_masks(
    compactors: CompactorSet,
    targets: Mapping[str, int],
    fraction: float,
    criterion: CompactorRowNorm | None = None,
    channel_groups: Mapping[str, int] | None = None,
) -> dict[str, list[int]]:
    """Sorted rows to mask in each compactor: the ``ceil(fraction · target)`` rows of smallest norm.

    Masks are chosen afresh from the current norms at every update (a row that grew back is released), as
    in ResRep's reference implementation; ``fraction`` 1 masks exactly the target counts. A group with
    ``channel_groups`` ``g`` > 1 masks the same positions of each of its ``g`` chunks, those of smallest
    norm summed over the chunks (:func:`~lightning_modules.pruning.width.lowest_channels`), its count
    rounded up to a multiple of ``g``.
    """
    criterion = criterion or CompactorRowNorm()
    fraction = min(max(float(fraction), 0.0), 1.0)
    chunks = dict(channel_groups or {})
    masks = {}
    for name, compactor in compactors.items():
        rows, g = group_members(compactor)[0].out_channels, chunks.get(name, 1)
        count = math.ceil(round(targets.get(name, 0) * fraction, 6))
        count = min(g * math.ceil(count / g), rows - rows % g)
        masks[name] = lowest_channels(criterion.group_score(compactor).float().cpu(), count, g)
    return masks


def mask_vector(num_rows: int, masked: Sequence[int], like: Tensor | None = None) -> Tensor:
    """``1`` for the rows that keep the objective gradient, ``0`` for the masked ones."""
    mask = torch.ones(num_rows, device=None if like is None else like.device,
                      dtype=torch.float32 if like is None else like.dtype)
    if len(masked):
        mask[torch.as_tensor(list(masked), dtype=torch.long, device=mask.device)] = 0.0
    return mask


def resrep_gradients(compactor: nn.Conv2d, mask: Tensor, penalty: float, eps: float = 1e-12) -> Tensor:
    """Re-route the gradient of ``compactor`` in place and return it (ResRep's gradient re-parameterisation):

    ``grad ← grad · m_i + λ · Q_i / ‖Q_i‖₂`` for every row ``i``, where ``m_i`` is ``mask[i]`` (0 on masked
    rows: no objective gradient) and ``λ`` is ``penalty`` (the group-lasso gradient, on all rows; a row of
    norm 0 gets none). A missing gradient counts as zero.
    """
    weight = compactor.weight
    q = weight.detach()
    grad = weight.grad if weight.grad is not None else torch.zeros_like(q)
    norms = q.flatten(1).norm(dim=1).clamp_min(eps).view(-1, 1, 1, 1)
    new = grad * mask.to(grad).view(-1, 1, 1, 1) + penalty * q / norms
    weight.grad = new
    return new


def masked_row_norm(
    compactors: CompactorSet,
    masks: Mapping[str, Sequence[int]],
    criterion: CompactorRowNorm | None = None,
) -> float:
    """Mean norm of the masked rows over all compactors (0 when none is masked): how close the masked
    channels are to zero, i.e. how lossless removing them is."""
    criterion = criterion or CompactorRowNorm()
    values = [criterion.group_score(c)[list(masks[name])] for name, c in compactors.items() if masks.get(name)]
    return float(torch.cat(values).mean()) if values else 0.0


def removal_plan(masks: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    """The channels to slice out of the merged network: ``{group (conv) name: masked rows}``, for
    :func:`~lightning_modules.pruning.width.apply_plan` (layers with nothing masked are left out)."""
    return {name: sorted(int(i) for i in rows) for name, rows in masks.items() if len(rows)}
