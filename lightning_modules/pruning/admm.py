"""Structured (filter) pruning with ADMM: the maths, on plain tensors.

Zhang et al., *A Systematic DNN Weight Pruning Framework using Alternating Direction Methods of
Multipliers*, ECCV 2018, as structured by TinyNeuralNetwork's ``ADMMPruner``. Pruning is the constrained
problem ``min f(W) s.t. W ∈ S``, where ``S`` is the set of weights with at most ``keep`` non-zero output
filters per layer. ADMM splits it with an auxiliary ``Z ∈ S`` and a scaled dual variable ``U``:

* W-step: train on ``f(W) + Σ ρ/2 ‖W − Z + U‖²`` (:func:`admm_penalty`), ``Z`` and ``U`` fixed;
* Z-step: ``Z ← proj_S(W + U)`` (:func:`project_rows`), the Euclidean projection onto ``S``, which keeps
  the ``keep`` rows of largest L2 norm;
* U-step: ``U ← U + W − Z``.

:func:`admm_update` does the Z- and U-steps; :func:`primal_residual` (``Σ ‖W − Z‖``) measures how far the
weights still are from the sparse set. After a few rounds the filters outside ``Z``'s support are small and
removing them (:func:`zero_rows`) costs little accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from lightning_modules.pruning.width import lowest_channels


def row_norms(w: Tensor) -> Tensor:
    """L2 norm of every output row (filter) of ``w``: ``(out_channels,)``."""
    return w.detach().flatten(1).norm(dim=1)


def kept_rows(w: Tensor, keep: int, channel_groups: int = 1) -> Tensor:
    """Sorted indices of the ``keep`` rows of ``w`` with the largest L2 norm (ties: the lower index).

    With ``channel_groups`` ``g`` > 1 (the rows feed or form a grouped convolution) the same positions stay
    in each of the ``g`` equal chunks of rows: those of largest squared norm summed over the chunks, which
    keeps the projection onto such supports Euclidean.
    """
    rows = w.shape[0]
    if not 0 <= keep <= rows:
        raise ValueError(f"keep must be in [0, {rows}] for a weight with {rows} rows, got {keep}")
    if channel_groups == 1:
        order = torch.argsort(-row_norms(w).double(), stable=True)
        return torch.sort(order[:keep]).values
    removed = set(lowest_channels(row_norms(w).double().pow(2), rows - keep, channel_groups))
    return torch.tensor([i for i in range(rows) if i not in removed], dtype=torch.long)


@torch.no_grad()
def project_rows(w: Tensor, keep: int, channel_groups: int = 1) -> Tensor:
    """Euclidean projection of ``w`` onto the weights with at most ``keep`` non-zero rows (the same
    positions in each of ``channel_groups`` chunks, :func:`kept_rows`).

    The ``keep`` rows with the largest L2 norm are copied unchanged; the others are exactly zero.
    """
    z = torch.zeros_like(w)
    idx = kept_rows(w, keep, channel_groups).to(w.device)
    z[idx] = w.detach()[idx]
    return z


def zero_rows(z: Tensor) -> list[int]:
    """Indices of the all-zero rows of ``z`` (the filters outside its support)."""
    return torch.nonzero(z.detach().flatten(1).abs().sum(1) == 0).flatten().tolist()


def admm_penalty(
    weights: Mapping[str, Tensor], Z: Mapping[str, Tensor], U: Mapping[str, Tensor], rho: float
) -> Tensor:
    """The augmented-Lagrangian term ``Σ ρ/2 ‖W − Z + U‖²`` over the named weights (differentiable in W)."""
    if not weights:
        raise ValueError("admm_penalty needs at least one weight")
    terms = [(w - Z[name].to(w) + U[name].to(w)).pow(2).sum() for name, w in weights.items()]
    return 0.5 * rho * torch.stack(terms).sum()


@torch.no_grad()
def admm_update(W: Tensor, Z: Tensor, U: Tensor, keep: int, channel_groups: int = 1) -> tuple[Tensor, Tensor]:
    """One Z- and U-step: ``Z ← proj(W + U)``, ``U ← U + W − Z``; returns the new ``(Z, U)``.

    ``Z`` is the previous auxiliary variable (only its shape is checked: the projection does not read it).
    """
    if not W.shape == Z.shape == U.shape:
        raise ValueError(f"W, Z and U differ in shape: {tuple(W.shape)}, {tuple(Z.shape)}, {tuple(U.shape)}")
    W = W.detach()
    new_z = project_rows(W + U, keep, channel_groups)
    return new_z, U + W - new_z


@torch.no_grad()
def primal_residual(weights: Mapping[str, Tensor], Z: Mapping[str, Tensor]) -> float:
    """``Σ ‖W − Z‖`` (Frobenius norms): zero once every weight lies in the sparse set."""
    return float(sum((w.detach() - Z[name].to(w)).norm() for name, w in weights.items()))
