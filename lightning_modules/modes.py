"""A network's mode for the length of a block: the idiom every probe, trace and measurement shares."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block (BatchNorm statistics untouched, dropout off), then back in
    the mode it had, also when the block raises. As ``model.train(mode)`` does, leaving sets every
    submodule to ``model``'s earlier mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
