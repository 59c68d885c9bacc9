"""How a number reads in every report: one place for percentages, counts, sizes, durations and ratios.

A missing value (``None``) reads as an em dash in every table.
"""

from __future__ import annotations

from pathlib import Path

#: What a table shows for a value a run did not record.
MISSING = "—"
#: Sizes are given in KB of 1024 bytes, as the budgets are (:data:`lightning_modules.pruning.budget.KB`).
KB = 1024


def run_id(summary: dict) -> str:
    """The run's id: the name of the folder its ``summary.json`` was read from."""
    return Path(summary["_path"]).parent.name


def pct(value: float | None) -> str:
    """A fraction as a percentage with two decimals (``0.9123`` → ``91.23``)."""
    return MISSING if value is None else f"{100 * value:.2f}"


def points(value: float | None) -> str:
    """A difference of fractions in signed percentage points (``-0.0123`` → ``-1.23``)."""
    return MISSING if value is None else f"{100 * value:+.2f}"


def count(value: int | None) -> str:
    """A whole number with thousands separators (``1234567`` → ``1,234,567``)."""
    return MISSING if value is None else f"{value:,}"


def kb(value: float | None, digits: int = 0) -> str:
    """Bytes as KB with thousands separators and ``digits`` decimals (``3520614`` → ``3,438``)."""
    return MISSING if value is None else f"{value / KB:,.{digits}f}"


def minutes(seconds: float | None) -> str:
    """Seconds as minutes with one decimal."""
    return MISSING if seconds is None else f"{seconds / 60:.1f}"


def ratio(after: dict, before: dict, key: str) -> str:
    """``after[key] / before[key]`` with three decimals, when both are known and non-zero."""
    return f"{after[key] / before[key]:.3f}" if before.get(key) and after.get(key) else MISSING
