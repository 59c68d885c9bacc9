"""OneShotPrune inside a real fit: the prune happens at its epoch, is logged, survives checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from callbacks.distillation import Distillation
from callbacks.one_shot_prune import OneShotPrune
from lightning_modules.image_classifier import ImageClassifier
from lightning_modules.models.mobilenet_v1 import mobilenet_v1_channels
from tests.helpers.tiny_fit import tiny_datamodule, tiny_module, tiny_trainer


@pytest.mark.parametrize("criterion", ["random", "l1_norm", "l2_norm", "fpgm", "hrank", "bn_scale"])
def test_one_shot_prune_halves_every_layer_and_reloads(folder: Path, tmp_path: Path, criterion: str) -> None:
    module, callback = tiny_module(), OneShotPrune(epoch=1, criterion=criterion, sparsity=0.5, hrank_batches=2)
    trainer = tiny_trainer(tmp_path, 2, [callback])
    trainer.fit(module, tiny_datamodule(folder))

    full = mobilenet_v1_channels(0.25)
    assert module.net.channels == module.arch["channels"] == [round(c / 2) for c in full]
    assert callback.result["epoch"] == 1
    assert 0.2 < callback.result["flops_preserve_rate"] < 0.35
    assert callback.result["after"]["params"] < callback.result["before"]["params"]
    # the checkpoint of the epoch after the prune rebuilds the pruned net and gives the same outputs
    reloaded = ImageClassifier.load_from_checkpoint(tmp_path / "epoch=1.ckpt", map_location="cpu")
    assert reloaded.arch == module.arch
    x = torch.randn(2, 3, 32, 32)
    module.eval(), reloaded.eval()
    torch.testing.assert_close(reloaded(x), module(x))


def test_resume_after_the_prune_keeps_the_pruned_net_and_does_not_prune_again(folder: Path, tmp_path: Path) -> None:
    first = tiny_trainer(tmp_path, 2, [OneShotPrune(epoch=0, criterion="l2_norm", sparsity=0.75, round_to=8)])
    first.fit(tiny_module(), tiny_datamodule(folder))
    pruned = ImageClassifier.load_from_checkpoint(tmp_path / "epoch=0.ckpt").arch["channels"]
    assert all(c % 8 == 0 for c in pruned)

    callback = OneShotPrune(epoch=0, criterion="l2_norm", sparsity=0.75, round_to=8)
    module = tiny_module()
    tiny_trainer(tmp_path / "resumed", 3, [callback]).fit(module, tiny_datamodule(folder),
                                                         ckpt_path=tmp_path / "epoch=0.ckpt")
    assert callback.done and callback.result["epoch"] == 0  # restored, not redone
    assert module.arch["channels"] == pruned


def test_distillation_teacher_is_the_unpruned_net(folder: Path, tmp_path: Path) -> None:
    distill = Distillation(start_epoch=0)
    module = tiny_module()
    tiny_trainer(tmp_path, 1, [OneShotPrune(epoch=0, sparsity=0.5), distill]).fit(module, tiny_datamodule(folder))
    assert distill.teacher.channels == mobilenet_v1_channels(0.25)
    assert module.net.channels != distill.teacher.channels


def test_an_unknown_ignored_module_is_a_clear_error_at_the_prune(folder: Path, tmp_path: Path) -> None:
    trainer = tiny_trainer(tmp_path, 1, [OneShotPrune(ignore=["blocks.99.pw.0"])])
    with pytest.raises(ValueError, match="ignore names no module"):
        trainer.fit(tiny_module(), tiny_datamodule(folder))
