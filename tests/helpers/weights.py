"""Checkpoints and weights in tests: save a module without training it, read and compare weights,
and give a fresh network trained-like statistics."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch import nn

from lightning_modules.backbones.base import trained_like_batchnorm


def save_checkpoint(module: L.LightningModule, path: Path) -> Path:
    """``module`` as a Lightning checkpoint file, without training it."""
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, max_epochs=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def trained_like(net: nn.Module, seed: int = 0) -> nn.Module:
    """Trained-like BatchNorm (:func:`~lightning_modules.backbones.base.trained_like_batchnorm`) and a larger
    classifier, so that outputs are O(1) rather than ~0 (a fresh network's logits are tiny and would hide
    export errors); in eval mode."""
    trained_like_batchnorm(net, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.5, generator=gen)
                m.bias.normal_(0.0, 0.1, generator=gen)
    return net
