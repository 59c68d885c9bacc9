"""A tiny real fit for the pruning callbacks: a generated CIFAR-layout image folder, MobileNetV1-0.25 and a
CPU ``Trainer`` that checkpoints every epoch (so tests can resume and reload after each kind of prune)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

import callbacks
from callbacks.epoch_seed import EpochSeed
from datamodules import CIFAR10DataModule
from lightning_modules.image_classifier import ImageClassifier
from tests.helpers.fake_data import make_image_folder

NUM_CLASSES = 3


def tiny_folder(root: Path, per_class: int = 16) -> Path:
    """``train/`` and ``test/`` of 3 classes, 32×32 JPEGs (the CIFAR-10 folder layout)."""
    return make_image_folder(root, {"train": per_class, "test": 4})


def tiny_datamodule(folder: Path, batch_size: int = 16) -> CIFAR10DataModule:
    return CIFAR10DataModule(root=str(folder), image_size=32, batch_size=batch_size, num_workers=0)


def tiny_module(**kwargs: Any) -> ImageClassifier:
    return ImageClassifier(num_classes=NUM_CLASSES, width_mult=0.25, lr=0.05, **kwargs)


def tiny_trainer(out: Path, max_epochs: int, callbacks: list[L.Callback], **kwargs: Any) -> L.Trainer:
    """Saves ``out/last.ckpt`` after every epoch (and ``out/epoch=N.ckpt`` for each)."""
    checkpoint = ModelCheckpoint(dirpath=out, save_last=True, save_top_k=-1, every_n_epochs=1,
                                 filename="{epoch}")
    return L.Trainer(max_epochs=max_epochs, callbacks=[EpochSeed(), checkpoint, *callbacks], logger=False,
                     enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                     default_root_dir=out, **kwargs)


def width_method(name: str) -> L.Callback:
    """Each width-pruning method, scheduled to prune within a 2-epoch fit (AGP: its second step at epoch 2)."""
    if name.startswith("oneshot_"):
        return callbacks.OneShotPrune(epoch=1, criterion=name.removeprefix("oneshot_"), sparsity=0.5,
                                      hrank_batches=2)
    return {"bn_slimming": lambda: callbacks.BNSlimming(start_epoch=0, prune_epoch=1, sparsity=0.5),
            "admm": lambda: callbacks.ADMMPrune(start_epoch=0, admm_epoch=1, prune_epoch=1, sparsity=0.5),
            "sfp": lambda: callbacks.SoftFilterPrune(start_epoch=0, prune_epoch=1, sparsity=0.5),
            "resrep": lambda: callbacks.RepPrune(start_epoch=0, prune_epoch=1, sparsity=0.5, penalty=0.5,
                                                 mask_interval=1, ramp_updates=1),
            "gradual": lambda: callbacks.GradualPrune(start_epoch=0, num_steps=2, interval=1,
                                                      final_sparsity=0.5)}[name]()


def assert_reloads_identically(module: ImageClassifier, checkpoint: Path, image_size: int = 32) -> ImageClassifier:
    """``checkpoint`` reloads (from the checkpoint alone) into ``module``'s architecture, and the reloaded
    network's outputs equal ``module``'s bit for bit; returns the reloaded module."""
    import torch

    reloaded = ImageClassifier.load_from_checkpoint(checkpoint, map_location="cpu")
    assert reloaded.arch == module.arch
    x = torch.randn(2, 3, image_size, image_size)
    module.eval(), reloaded.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(x), module(x))
    return reloaded
