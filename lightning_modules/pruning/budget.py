"""Budget-driven pruning: enumerate cut point × width candidates, check them against a microcontroller's
flash/RAM (and optionally MACs/latency) budget, and pick the most accurate one that fits.

Pure functions over plain records; the sizes they compare come from the TFLM estimators
(:mod:`lightning_modules.deploy.tflm_estimate`), the instruction-count model
(:mod:`lightning_modules.deploy.mcu_cost`), both applied by :mod:`lightning_modules.pruning.budget_search`,
and the accuracies from the sweep and the width proxies of :class:`callbacks.budget_choice.BudgetChoice`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

KB: int = 1024  #: budgets are given in KB of 1024 bytes


@dataclass(frozen=True)
class Budget:
    """A microcontroller's limits.

    Args:
        flash_kb: flash for the model (the ``.tflite`` flatbuffer), KB of 1024 bytes.
        ram_kb: RAM for TFLite Micro's tensor arena, KB of 1024 bytes.
        macs: optional limit on multiply-accumulates per inference.
        latency_ms: optional limit on one inference on the microcontroller at ``clock_mhz``: instructions
            predicted per candidate (:mod:`lightning_modules.deploy.mcu_cost`), counted for the chosen net
            on the emulated ``core``, turned into milliseconds with the calibrated cycles per instruction
            (:mod:`lightning_modules.deploy.mcu_latency`).
        clock_mhz: the microcontroller's clock, MHz.
        core: the Cortex-M core of the instruction counts.
    """

    flash_kb: float
    ram_kb: float
    macs: int | None = None
    latency_ms: float | None = None
    clock_mhz: float = 120.0
    core: str = "cortex-m4"

    def __post_init__(self) -> None:
        for name in ("flash_kb", "ram_kb", "macs", "latency_ms", "clock_mhz"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"budget.{name} must be positive, got {value}")


@dataclass
class Candidate:
    """One pruned network: cut after block ``cut`` (``None`` = no cut), ``width`` = fraction of channels
    kept, at ``image_size``; its predicted cost and accuracy."""

    cut: int | None
    width: float
    image_size: int
    flash_bytes: int
    ram_bytes: int
    macs: int
    latency_ms: float | None = None
    instructions: int | None = None    # predicted Cortex-M instructions of one inference
    acc: float | None = None           # predicted top-1 accuracy
    arch: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        cut = "full" if self.cut is None else f"cut{self.cut}"
        return f"{cut}_w{self.width:g}_{self.image_size}px"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}


class NothingFits(ValueError):
    """No candidate meets the budget; the message says what the smallest candidate needs."""


def grid(cuts: Sequence[int | None], widths: Sequence[float], image_sizes: Sequence[int]) -> list[tuple]:
    """Every ``(cut, width, image_size)`` combination, in a stable order."""
    for w in widths:
        if not 0 < w <= 1:
            raise ValueError(f"width ratios must be in (0, 1], got {w}")
    return list(itertools.product(cuts, widths, image_sizes))


def need_ratios(flash_bytes: int, ram_bytes: int, macs: int, latency_ms: float | None, budget: Budget,
                what: str = "the network") -> dict[str, float]:
    """Need / limit for every limit of the budget (≤ 1 where it fits)."""
    ratios = {"flash": flash_bytes / (budget.flash_kb * KB), "ram": ram_bytes / (budget.ram_kb * KB)}
    if budget.macs is not None:
        ratios["macs"] = macs / budget.macs
    if budget.latency_ms is not None:
        if latency_ms is None:
            raise ValueError(f"budget.latency_ms is set but {what} has no latency")
        ratios["latency"] = latency_ms / budget.latency_ms
    return ratios


def overshoot(candidate: Candidate, budget: Budget) -> dict[str, float]:
    """A candidate's predicted need / limit for every limit of the budget."""
    return need_ratios(candidate.flash_bytes, candidate.ram_bytes, candidate.macs, candidate.latency_ms, budget,
                       f"candidate {candidate.name}")


def measured_overshoot(measured: dict[str, Any], budget: Budget) -> dict[str, float]:
    """The deployed net's measured need / limit (``flash_bytes``, ``arena_bytes``, ``macs``, ``latency_ms``)."""
    return need_ratios(measured["flash_bytes"], measured["arena_bytes"], measured["macs"],
                       measured.get("latency_ms"), budget, "the measured net")


def fits(candidate: Candidate, budget: Budget) -> bool:
    return all(r <= 1.0 for r in overshoot(candidate, budget).values())


def describe_needs(candidate: Candidate, budget: Budget) -> str:
    """``flash 300.1 KB (limit 256 KB), RAM 70.2 KB (limit 64 KB)`` …"""
    parts = [f"flash {candidate.flash_bytes / KB:.1f} KB (limit {budget.flash_kb:g} KB)",
             f"RAM {candidate.ram_bytes / KB:.1f} KB (limit {budget.ram_kb:g} KB)"]
    if budget.macs is not None:
        parts.append(f"{candidate.macs / 1e6:.2f} M MACs (limit {budget.macs / 1e6:.2f} M)")
    if budget.latency_ms is not None:
        parts.append(f"{candidate.latency_ms:.1f} ms at {budget.clock_mhz:g} MHz (limit {budget.latency_ms:g} ms)")
    return ", ".join(parts)


def smallest(candidates: Iterable[Candidate], budget: Budget) -> Candidate:
    """The candidate closest to fitting: smallest worst need/limit ratio."""
    return min(candidates, key=lambda c: (max(overshoot(c, budget).values()), c.flash_bytes))


def feasible(candidates: Sequence[Candidate], budget: Budget) -> list[Candidate]:
    """The candidates that fit; raises :class:`NothingFits` naming the smallest one's needs if none does."""
    if not candidates:
        raise NothingFits("no candidates to choose from")
    fitting = [c for c in candidates if fits(c, budget)]
    if not fitting:
        best = smallest(candidates, budget)
        raise NothingFits(f"no candidate fits the budget; the smallest, {best.name}, needs "
                          f"{describe_needs(best, budget)}: raise the budget or add smaller cuts/widths")
    return fitting


def choose(candidates: Sequence[Candidate], budget: Budget) -> Candidate:
    """The most accurate candidate that fits (ties: less flash, then fewer MACs)."""
    fitting = feasible(candidates, budget)
    missing = [c.name for c in fitting if c.acc is None]
    if missing:
        raise ValueError(f"candidates without a predicted accuracy: {missing}")
    return max(fitting, key=lambda c: (c.acc, -c.flash_bytes, -c.macs))


def combined_accuracy(cut_acc: float, width_acc: float, baseline_acc: float) -> float:
    """Predicted accuracy of cut + width pruning: the cut's accuracy (its sweep head) times the fraction
    of the baseline's accuracy the width ratio keeps on the unpruned depth (retention assumed to
    multiply; a stated proxy, not a measurement)."""
    if baseline_acc <= 0:
        raise ValueError(f"baseline accuracy must be positive, got {baseline_acc}")
    return cut_acc * min(width_acc / baseline_acc, 1.0)
