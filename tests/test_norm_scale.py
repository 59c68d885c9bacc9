"""Network slimming's γ beyond BatchNorm: the ``bn_scale`` criterion and BN-slimming read the per-channel
affine weight of LayerNorm (timm's ``LayerNorm2d``) and GroupNorm, end to end on ConvNeXt; a network with no
normalisation layer is one clear error."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import pytest
import torch
from timm.layers import LayerNorm2d
from torch import nn

from callbacks import BNSlimming, OneShotPrune
from callbacks.bn_slimming import bn_l1_penalty
from callbacks.pruning_base import PruningSettingsError
from lightning_modules.image_classifier import ImageClassifier
from lightning_modules.pruning.criteria import BNScale
from lightning_modules.pruning.width import prunable_groups, prune_model
from tests.helpers.tiny_fit import assert_reloads_identically, tiny_datamodule, tiny_trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def layernorm_groupnorm_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3), LayerNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 1), nn.GroupNorm(1, 6),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))


def test_layernorm_and_groupnorm_scales_are_the_slimming_gamma() -> None:
    torch.manual_seed(0)
    net = layernorm_groupnorm_net()
    ln_gamma = torch.tensor([0.9, -0.1, 0.5, 0.05, -2.0, 0.3, 0.2, 1.1])
    gn_gamma = torch.tensor([0.01, 1.0, -0.02, 0.7, 0.6, -0.03])
    with torch.no_grad():
        net[1].weight.copy_(ln_gamma)
        net[4].weight.copy_(gn_gamma)
    penalty = bn_l1_penalty(net)
    torch.testing.assert_close(penalty, ln_gamma.abs().sum() + gn_gamma.abs().sum())
    penalty.backward()
    torch.testing.assert_close(net[1].weight.grad, ln_gamma.sign())
    torch.testing.assert_close(net[4].weight.grad, gn_gamma.sign())

    prune_model(net, BNScale(), 0.5, torch.randn(1, 3, 16, 16))
    # the channels with the largest |γ| stay, in order
    assert torch.equal(net[1].weight.detach(), ln_gamma[[0, 2, 4, 7]])
    assert torch.equal(net[4].weight.detach(), gn_gamma[[1, 3, 4]])
    assert net[0].out_channels == 4 and net[3].out_channels == 3 and net(torch.randn(2, 3, 16, 16)).shape == (2, 2)


def test_a_network_without_normalisation_layers_is_one_clear_error() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"BNScale\(\) scores no layer of any prunable group .*LayerNorm"):
        prune_model(net, BNScale(), 0.5, torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="per-channel affine scale .* the network has none"):
        bn_l1_penalty(net)
    names = [g.name for g in prunable_groups(net, torch.randn(1, 3, 16, 16))]
    for callback in (OneShotPrune(criterion="bn_scale"), BNSlimming()):
        with pytest.raises(PruningSettingsError, match=r"criterion = 'bn_scale': .* has none; prune it with"):
            callback.check_network(net, names)
    OneShotPrune(criterion="bn_scale").check_network(layernorm_groupnorm_net(), names)  # norms: accepted


class KeepUnpruned(L.Callback):
    """A copy of the network right before the prune."""

    unpruned: nn.Module | None = None

    def on_before_prune(self, trainer: L.Trainer, pl_module: ImageClassifier) -> None:
        self.unpruned = copy.deepcopy(pl_module.net)


@pytest.mark.parametrize("method", ["oneshot_bn_scale", "bn_slimming"])
def test_norm_scale_pruning_of_convnext_end_to_end(method: str, folder: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = ImageClassifier(backbone="convnext_atto", num_classes=3, lr=0.01)
    before = sum(p.numel() for p in module.net.parameters())
    pruner = (OneShotPrune(epoch=1, criterion="bn_scale", sparsity=0.5) if method == "oneshot_bn_scale"
              else BNSlimming(start_epoch=0, prune_epoch=1, sparsity=0.5, penalty=1e-2))
    keep = KeepUnpruned()
    with pytest.warns(UserWarning, match=r"reads no layer of the groups \['stages.0.blocks.0.mlp.fc1'"):
        tiny_trainer(tmp_path, 2, [pruner, keep], limit_train_batches=2).fit(module,
                                                                            tiny_datamodule(folder, batch_size=8))
    assert sum(p.numel() for p in module.net.parameters()) < before
    # exactly the channels network slimming picks by the LayerNorms' |γ| on the unpruned net
    settings = ({} if method == "oneshot_bn_scale" else {"global_ranking": True, "max_pruning_ratio": 0.8})
    with pytest.warns(UserWarning):
        expected = prune_model(keep.unpruned, BNScale(), 0.5, torch.randn(1, 3, 32, 32), **settings)
    assert {k: v.shape for k, v in module.net.state_dict().items()} == \
           {k: v.shape for k, v in expected.state_dict().items()}
    # the residual streams (normalised by LayerNorm2d) are thinner; the MLPs' hidden channels (no norm) stay
    streams = [module.net.stem[0], *(module.net.stages[i].downsample[1] for i in (1, 2, 3))]
    assert sum(c.out_channels for c in streams) < 40 + 80 + 160 + 320
    assert all(block.mlp.fc1.out_channels == 4 * dim for stage, dim in zip(module.net.stages, (40, 80, 160, 320),
                                                                           strict=True) for block in stage.blocks)

    assert_reloads_identically(module, tmp_path / "epoch=1.ckpt")
