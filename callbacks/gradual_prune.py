"""Automated gradual pruning (AGP): remove channels in several steps along a cubic sparsity schedule.

Zhu & Gupta, *To prune, or not to prune: exploring the efficacy of pruning for model compression*,
arXiv:1710.01878 (2017). The sparsity rises from ``s_i`` to ``s_f`` over ``n`` pruning steps spaced
``Δt`` apart, starting at ``t0``::

    s_t = s_f + (s_i − s_f) · (1 − (t − t0) / (n·Δt))³

fast at first, while many redundant channels remain, then slower. Here every step is a real structural
prune (the channels are sliced out, not masked), so the network gets cheaper as training goes on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import lightning as L

from callbacks.pruning_base import WidthPruningCallback, check_at_least, check_sparsity, settings_error
from callbacks.width_stage import module_groups, prune_width
from lightning_modules.pruning.criteria import make_criterion
from lightning_modules.pruning.width import (
    DEFAULT_KEY,
    SparsitySpec,
    check_sparsity_names,
    keep_counts,
    sparsity_of,
)


# ------------------------------------------------------------------------------------------ the maths
def agp_sparsity(
    epoch: int, initial: float, final: float, start_epoch: int, num_steps: int, interval: int
) -> float:
    """AGP's target sparsity at ``epoch``: ``s_f + (s_i − s_f)(1 − (t − t0)/(nΔt))³``, clamped to ``s_i``
    before ``t0`` and to ``s_f`` after ``t0 + nΔt``."""
    if num_steps < 1 or interval < 1:
        raise ValueError(f"num_steps and interval must be >= 1, got {num_steps} and {interval}")
    progress = min(max((epoch - start_epoch) / (num_steps * interval), 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** 3


def agp_step_epochs(start_epoch: int, num_steps: int, interval: int, initial: float) -> list[int]:
    """The epochs ``t0 + kΔt`` that prune: ``k = 1..n``, and ``k = 0`` too when ``s_i > 0``."""
    first = 0 if initial > 0 else 1
    return [start_epoch + k * interval for k in range(first, num_steps + 1)]


def relative_sparsity(current: Mapping[str, int], target: Mapping[str, int]) -> dict[str, float]:
    """Per-group sparsity that turns ``current`` channel counts into ``target`` ones (``round_to=1``).

    ``keep_count(current[g], s[g])`` is exactly ``target[g]`` (never more than ``current[g]``).
    """
    return {name: 1.0 - min(target[name], c) / c for name, c in current.items()}


def global_relative_sparsity(current: Mapping[str, int], target: Mapping[str, int]) -> float:
    """The uniform sparsity that removes ``Σ current − Σ target`` channels in all (for a global ranking)."""
    total = sum(current.values())
    return 1.0 - min(sum(target[n] for n in current), total) / total if total else 0.0


# ---------------------------------------------------------------------------------- the callback
@dataclass(eq=False)
class GradualPrune(WidthPruningCallback):
    """Prune at the epochs ``t0 + kΔt`` so that each layer follows AGP's cubic sparsity schedule.

    At the start of each step epoch ``t`` every prunable group is sliced down to
    ``keep_count(original channels, s_t, round_to)`` channels, counted from its width when the first step
    ran (kept in the state). With a local ranking each group reaches exactly that count (the per-group
    sparsity relative to the current width is passed to :func:`~callbacks.width_stage.prune_width` with
    ``round_to=1``); with ``global_ranking`` the total over all groups follows the schedule and one
    threshold over the mean-normalised scores distributes it (each group a multiple of ``round_to``).

    The first prune starts a new LR stage spanning the rest of the fit; the later ones only rebuild the
    optimiser over the sliced parameters and keep the schedule's position, so the successive prunes
    happen inside one schedule as in the paper.

    Args:
        start_epoch: ``t0``, where the schedule starts.
        num_steps: ``n``, the pruning steps after ``t0``.
        interval: ``Δt``, training epochs between two prunes.
        initial_sparsity: ``s_i`` (> 0 also prunes at ``t0``).
        final_sparsity: ``s_f``, reached at ``t0 + nΔt``; a float for every layer or
            ``{"default": s, "<conv name>": s, ...}``.
        criterion: ``random``, ``l1_norm``, ``l2_norm``, ``fpgm``, ``hrank`` or ``bn_scale``.
        round_to: kept channels are a multiple of this (8 suits MCU kernels).
        global_ranking: one threshold over all layers' scores instead of per layer.
        ignore: convolutions whose output channels are kept, e.g. ``["stem.0"]``.
        hrank_batches: training batches that HRank reads its statistics from.
        seed: of the ``random`` criterion (step ``k`` uses ``seed + k``).
    """

    method = "gradual"
    epoch_attributes = ("start_epoch",)
    state_attributes = ("original", "completed", "result")
    sparsity_option = "final_sparsity"

    start_epoch: int = 0
    num_steps: int = 4
    interval: int = 1
    initial_sparsity: float = 0.0
    final_sparsity: float | dict[str, float] = 0.5
    global_ranking: bool = False
    hrank_batches: int = 8
    seed: int = 0

    def schedule(self) -> str:
        return f"AGP prunes @{', '.join(str(self.start_epoch + k * self.interval) for k in range(1, self.num_steps + 1))}"

    def __post_init__(self) -> None:
        super().__post_init__()
        #: Output channels of every prunable group when the first step ran.
        self.original: dict[str, int] = {}
        #: How many of ``step_epochs`` have been passed.
        self.completed = 0

    @property
    def sparsity(self) -> SparsitySpec:
        """The final sparsity (what the schedule ends at)."""
        return self.final_sparsity

    @property
    def step_epochs(self) -> list[int]:
        """The epochs that prune (computed from ``start_epoch``, so they move when the schedule shifts)."""
        return agp_step_epochs(self.start_epoch, self.num_steps, self.interval, self.initial_sparsity)

    def structure_epochs(self) -> list[int]:
        return self.step_epochs

    @property
    def done(self) -> bool:
        return self.completed >= len(self.step_epochs)

    def check_settings(self) -> None:
        super().check_settings()
        check_at_least(self, "num_steps", self.num_steps, 1)
        check_at_least(self, "interval", self.interval, 1)
        check_sparsity(self, "initial_sparsity", self.initial_sparsity)
        finals = self.final_sparsity.values() if isinstance(self.final_sparsity, Mapping) else [self.final_sparsity]
        if any(self.initial_sparsity > s for s in finals):
            raise settings_error(self, "initial_sparsity", self.initial_sparsity, "exceeds a final sparsity "
                                 f"({self.final_sparsity})", "set it at most the smallest final_sparsity")

    def sparsity_at(self, epoch: int, name: str) -> float:
        """The scheduled sparsity of group ``name`` at ``epoch``."""
        final = sparsity_of(name, self.final_sparsity)
        return agp_sparsity(epoch, min(self.initial_sparsity, final), final, self.start_epoch, self.num_steps,
                            self.interval)

    def target_channels(self, epoch: int, channel_groups: Mapping[str, int] | None = None) -> dict[str, int]:
        """Channels every group keeps after the step at ``epoch``, counted from its original width (in
        ``channel_groups`` equal chunks alike where a grouped convolution follows)."""
        return keep_counts(self.original, {n: self.sparsity_at(epoch, n) for n in self.original}, self.round_to,
                           channel_groups=channel_groups)

    # ------------------------------------------------------------------------------------- hooks
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        due = sum(1 for e in self.step_epochs[self.completed:] if e <= epoch)
        if not due:
            return
        groups = module_groups(trainer, pl_module, self.ignore)
        current = {g.name: g.num_channels for g in groups}
        if not self.original:
            check_sparsity_names(self.final_sparsity, current, "final_sparsity")
            self.original = dict(current)
        target = self.target_channels(epoch, {g.name: g.channel_groups for g in groups})
        current = {n: c for n, c in current.items() if n in target}
        if self.global_ranking:
            sparsity: SparsitySpec = global_relative_sparsity(current, target)
            round_to = self.round_to
        else:
            sparsity, round_to = {DEFAULT_KEY: 0.0, **relative_sparsity(current, target)}, 1
        steps = self.result.get("steps", [])
        kwargs = {"seed": self.seed + len(steps)} if self.criterion == "random" else {}
        step = prune_width(
            trainer, pl_module, make_criterion(self.criterion, **kwargs), sparsity, round_to,
            self.global_ranking, self.ignore, restart_schedule=not steps, hrank_batches=self.hrank_batches,
            tag="agp",
        )
        # several steps are due at once only when the fit starts (or resumes) past them: one prune catches up
        self.completed += due
        step["sparsity"] = {n: self.sparsity_at(epoch, n) for n in target}
        steps = [*steps, step]
        start = steps[0]["before"]
        self.result = {
            **step,
            "steps": steps,
            "original": dict(self.original),
            "total_flops_preserve_rate": step["after"]["macs"] / start["macs"],
            "total_params_ratio": step["after"]["params"] / start["params"],
        }
