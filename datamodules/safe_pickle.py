"""Reading torchvision's ``cifar-10-batches-py`` pickles without running code from them.

A pickle names the callables that rebuild its objects, and ``pickle.load`` calls whatever it names: a
crafted batch file inside a downloaded archive would run arbitrary code. :class:`BatchUnpickler` admits
only the globals a CIFAR batch needs (numpy's array reconstruction and dtypes; dicts, lists, strings,
bytes and numbers need none) and refuses everything else, as the Python documentation's "Restricting
Globals" recipe does. ``torch.load(weights_only=True)`` applies the same idea to checkpoints.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ALLOWED_GLOBALS", "BatchUnpickler", "UnsafePickleError", "load_batch"]

#: (module, name) pairs a CIFAR batch may reference; numpy moved ``core`` to ``_core`` in 2.0, and
#: Python 3 writes ``bytes`` into protocol-2 pickles as ``_codecs.encode(text, "latin1")``.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
})


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references a global outside :data:`ALLOWED_GLOBALS` (it could run code)."""


class BatchUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(f"it references {module}.{name}, which a CIFAR batch never contains")


def load_batch(path: str | Path = "") -> Any:
    """Unpickle a CIFAR batch file (Python 2 pickles: byte strings read as latin-1) with
    :class:`BatchUnpickler`; object arrays are refused too."""
    with open(path, "rb") as f:
        content = BatchUnpickler(f, encoding="latin1").load()
    if isinstance(content, dict):
        for value in content.values():
            if isinstance(value, np.ndarray) and value.dtype.hasobject:
                raise UnsafePickleError("it holds an object array, which a CIFAR batch never contains")
    return content
