"""Auxiliary heads, the sweep's frozen backbone and the depth cut, on bare modules (no Trainer)."""

import copy

import pytest
import torch

from lightning_modules.backbones.mobilenet_v1 import cut_mobilenet_v1, mobilenet_cut_arch, tap_features
from lightning_modules.deploy.profiling import count_params
from lightning_modules.image_classifier import ImageClassifier
from lightning_modules.models.aux_heads import AuxiliaryHeads, head_channels_of
from lightning_modules.models.mobilenet_v1 import MobileNetV1

ARCH = ImageClassifier(num_classes=10).arch


@pytest.mark.parametrize(("cut", "expected"), [(6, 310_794), (11, 1_654_794), (5, 156_682)])
def test_replication_head_param_counts(cut: int, expected: int) -> None:
    arch = mobilenet_cut_arch(ARCH, cut, head_channels_of("replication"))
    assert count_params(MobileNetV1(**arch)) == expected


def test_head_presets_and_explicit_widths() -> None:
    assert head_channels_of("paper") == (32, 16)
    assert head_channels_of([48, 24]) == (48, 24)
    with pytest.raises(ValueError, match="unknown head preset"):
        head_channels_of("huge")


def test_heads_at_all_fourteen_cut_points() -> None:
    net = MobileNetV1(num_classes=10).eval()
    heads = AuxiliaryHeads(net.channels, 10, (64, 32))
    assert heads.cut_points == list(range(14))
    feats = tap_features(net.feature_modules, torch.randn(2, 3, 64, 64))
    out = heads(feats)
    assert sorted(out) == list(range(14)) and all(o.shape == (2, 10) for o in out.values())


def test_sweep_mode_keeps_backbone_and_trains_every_head() -> None:
    torch.manual_seed(0)
    module = ImageClassifier(num_classes=10, width_mult=0.25)
    module.attach_aux_heads((16, 8))
    module.freeze_modules(["net"])
    module.train()
    before = copy.deepcopy(module.net.state_dict())
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.1)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    loss = module._aux_training_step(x, y)
    loss.backward()
    for k, head in module.aux_heads.heads.items():
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters()), k
    assert all(p.grad is None for p in module.net.parameters())
    opt.step()
    after = module.net.state_dict()
    for key, value in before.items():  # weights and BN running statistics unchanged
        assert torch.equal(value, after[key]), key
    assert not module.net.training and module.aux_heads.training


def test_cut_with_original_init_computes_the_aux_head() -> None:
    torch.manual_seed(0)
    net = MobileNetV1(num_classes=10, width_mult=0.5).eval()
    heads = AuxiliaryHeads(net.channels, 10, (64, 32)).eval()
    for p in heads.parameters():  # make the head non-trivial
        torch.nn.init.normal_(p, 0, 0.1)
    arch = {**ARCH, "width_mult": 0.5}
    cut, new_arch = cut_mobilenet_v1(net, arch, 6, (64, 32), heads.heads["6"], "original")
    cut.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = heads(tap_features(net.feature_modules, x))[6]
        assert torch.allclose(cut(x), expected, atol=1e-5)
    assert new_arch["num_blocks"] == 6 and len(new_arch["channels"]) == 7
    assert count_params(MobileNetV1(**new_arch)) == count_params(cut)


@pytest.mark.parametrize("init", ["original_fresh_head", "random"])
def test_other_init_modes(init: str) -> None:
    torch.manual_seed(0)
    net = MobileNetV1(num_classes=10)
    cut, _ = cut_mobilenet_v1(net, ARCH, 3, (64, 32), None, init)
    same_stem = torch.equal(cut.stem[0].weight, net.stem[0].weight)
    assert same_stem == (init == "original_fresh_head")


def test_original_init_needs_the_head() -> None:
    with pytest.raises(ValueError, match="needs the trained auxiliary head"):
        cut_mobilenet_v1(MobileNetV1(num_classes=10), ARCH, 3, (64, 32), None, "original")
