"""The single exception type raised for every bad dataset input."""

from __future__ import annotations

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """A dataset root, archive, folder layout or image file cannot be used.

    The message always names the offending path and says how to fix it.
    """
