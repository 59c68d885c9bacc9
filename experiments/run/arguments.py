"""Argument parsing for the entry points that are not LightningCLI scripts (profiling, reports, benches):
a bad argument is one ``error: ...`` line, like every other mistake, not argparse's usage block."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

__all__ = ["OneLineArgumentParser", "existing_file", "non_negative_int", "positive_int"]


class OneLineArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors end the program with one line and exit status 1."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise SystemExit(f"error: {' '.join(message.split())}; `--help` lists every option")


def existing_file(path: str | Path, option: str) -> Path:
    """``path`` as a ``Path``; ``SystemExit`` with one line unless it is an existing file."""
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise SystemExit(f"error: {option} {path} {what}")
    return path


def positive_int(text: str) -> int:
    """An ``argparse`` type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def non_negative_int(text: str) -> int:
    """An ``argparse`` type: an integer of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def positive_float(text: str) -> float:
    """An ``argparse`` type: a number above 0 (a learning rate)."""
    value = float(text)
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def unit_fraction(text: str) -> float:
    """An ``argparse`` type: a number in [0, 1] (an accuracy drop, a fraction)."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not in [0, 1]")
    return value
