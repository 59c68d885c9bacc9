"""Network slimming: the L1 penalty on BatchNorm scales, and BNSlimming inside a real fit."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from callbacks.bn_slimming import HOOK_NAME, BNSlimming, bn_l1_penalty
from lightning_modules.image_classifier import ImageClassifier
from lightning_modules.models.mobilenet_v1 import mobilenet_v1_channels
from lightning_modules.pruning.criteria import BNScale
from lightning_modules.pruning.width import keep_count, prune_model
from tests.helpers.stop_after import StopAfterEpoch
from tests.helpers.tiny_fit import tiny_datamodule, tiny_module, tiny_trainer

pytestmark = pytest.mark.usefixtures("one_thread")  # the tiny fits are faster on one thread


# ------------------------------------------------------------------------------------------ the maths
def test_penalty_sums_the_absolute_bn_scales_and_its_gradient_is_their_sign() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 1), nn.BatchNorm2d(6),
                        nn.BatchNorm2d(6, affine=False), nn.Flatten(), nn.Linear(6, 2))
    with torch.no_grad():
        for bn in (net[1], net[4]):
            bn.weight.normal_()
    penalty = bn_l1_penalty(net)
    torch.testing.assert_close(penalty, net[1].weight.abs().sum() + net[4].weight.abs().sum())
    penalty.backward()
    for bn in (net[1], net[4]):
        torch.testing.assert_close(bn.weight.grad, bn.weight.detach().sign())
        assert bn.bias.grad is None
    assert net[0].weight.grad is None
    with pytest.raises(ValueError, match="no"):
        bn_l1_penalty(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))


def test_defaults() -> None:
    callback = BNSlimming()
    assert callback.criterion == "bn_scale" and callback.sparsity == 0.5 and not callback.done


# -------------------------------------------------------------------------------- inside a real fit
class Probe(L.Callback):
    """Records each epoch's loss hooks and a copy of the network just before the prune."""

    def __init__(self) -> None:
        self.hooks: dict[int, list[str]] = {}
        self.unpruned: nn.Module | None = None

    def on_before_prune(self, trainer: L.Trainer, pl_module: ImageClassifier) -> None:
        self.unpruned = copy.deepcopy(pl_module.net)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: ImageClassifier) -> None:
        self.hooks[trainer.current_epoch] = list(pl_module.loss_hooks)


def run(
    folder: Path, out: Path, ckpt: Path | None = None, epochs: int = 3, **kwargs: object
) -> tuple[ImageClassifier, BNSlimming, Probe]:
    module, callback, probe = tiny_module(), BNSlimming(**{"prune_epoch": 2, "penalty": 1e-2, **kwargs}), Probe()
    tiny_trainer(out, epochs, [callback, probe]).fit(module, tiny_datamodule(folder), ckpt_path=ckpt)
    return module, callback, probe


def test_slimming_penalises_then_prunes_by_bn_scale_reloads_and_resumes(folder: Path, tmp_path: Path) -> None:
    module, callback, probe = run(folder, tmp_path)
    full = mobilenet_v1_channels(0.25)
    assert probe.hooks == {0: [HOOK_NAME], 1: [HOOK_NAME], 2: []}
    assert HOOK_NAME not in module.loss_hooks
    assert callback.done and callback.result["epoch"] == 2
    # one global threshold on |γ|: the same total as halving every layer, distributed by the scales
    assert callback.result["channels_removed"] == sum(c - keep_count(c, 0.5) for c in full)
    assert sum(module.arch["channels"]) == sum(keep_count(c, 0.5) for c in full)
    assert 0.0 < callback.result["flops_preserve_rate"] < 1.0
    assert callback.result["after"]["params"] < callback.result["before"]["params"]
    # exactly the channels network slimming picks on the unpruned net
    x = torch.randn(1, 3, 32, 32)
    expected = prune_model(probe.unpruned, BNScale(), 0.5, x, global_ranking=True, max_pruning_ratio=0.8)
    assert module.arch["channels"] == [expected.stem[0].out_channels,
                                       *(b.pw[0].out_channels for b in expected.blocks)]

    reloaded = ImageClassifier.load_from_checkpoint(tmp_path / "epoch=2.ckpt", map_location="cpu")
    assert reloaded.arch == module.arch
    x = torch.randn(2, 3, 32, 32)
    module.eval(), reloaded.eval()
    torch.testing.assert_close(reloaded(x), module(x))

    # killed after epoch 0 (mid-penalty): the penalty comes back at epoch 1 and the prune is the same
    resumed, again, resumed_probe = run(folder, tmp_path / "resumed", tmp_path / "epoch=0.ckpt")
    assert resumed_probe.hooks == {1: [HOOK_NAME], 2: []}
    assert again.result["epoch"] == 2 and again.result["bn_l1"] == pytest.approx(callback.result["bn_l1"])
    assert resumed.arch == module.arch
    resumed.eval()
    torch.testing.assert_close(resumed(x), module(x))

    # resumed after the prune: restored, not redone
    after, restored, after_probe = run(folder, tmp_path / "after", tmp_path / "epoch=2.ckpt", epochs=4)
    assert after_probe.hooks == {3: []} and after_probe.unpruned is None
    assert restored.done and restored.result["epoch"] == 2 and after.arch == module.arch


def test_penalty_shrinks_the_scales_and_teardown_removes_the_hook(folder: Path, tmp_path: Path) -> None:
    plain, penalised = tiny_module(), tiny_module()
    penalised.load_state_dict(plain.state_dict())
    tiny_trainer(tmp_path / "plain", 1, []).fit(plain, tiny_datamodule(folder))
    callback = BNSlimming(start_epoch=0, prune_epoch=5, penalty=0.5)
    stop = StopAfterEpoch(0)  # one epoch of the penalty, as if killed before the prune
    tiny_trainer(tmp_path / "penalised", 6, [callback, stop]).fit(penalised, tiny_datamodule(folder))
    assert not callback.done and HOOK_NAME not in penalised.loss_hooks  # removed at teardown
    assert float(bn_l1_penalty(penalised.net)) < float(bn_l1_penalty(plain.net)) - 1.0


def test_round_to_and_ignore(folder: Path, tmp_path: Path) -> None:
    module, callback, _ = run(folder, tmp_path, start_epoch=1, sparsity=0.75, round_to=8, ignore=["stem.0"],
                              global_ranking=False)
    full = mobilenet_v1_channels(0.25)
    assert module.arch["channels"] == [full[0], *(keep_count(c, 0.75, 8) for c in full[1:])]
    assert all(c % 8 == 0 for c in module.arch["channels"])
