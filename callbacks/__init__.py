"""Lightning callbacks: reseeding, progress, and the pruning and distillation stages of a run.

A callback class ``CamelName`` lives in ``callbacks/camel_name.py`` (``ADMMPrune`` in ``admm_prune.py``): a
new width method is its one file, and ``callbacks.NewMethod`` (or a config's
``class_path: callbacks.new_method.NewMethod``) finds it. Classes are imported on first use, so that
importing one callback module does not load the pruning libraries of all the others.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any


def module_of(name: str) -> str:
    """The module of a callback class by the naming rule: ``ADMMPrune`` → ``admm_prune``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def _callback_names() -> list[str]:
    """The classes that follow the rule, read from the files' text (nothing is imported)."""
    names = []
    for path in Path(__file__).parent.glob("*.py"):
        names += [n for n in re.findall(r"^class (\w+)\(", path.read_text(), flags=re.M) if module_of(n) == path.stem]
    return sorted(names)


__all__ = _callback_names()


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(f"callbacks.{module_of(name)}"), name)
    raise AttributeError(f"module 'callbacks' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
