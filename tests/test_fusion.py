"""Conv + BatchNorm folding for evaluation: the folded copy computes what the network computes (to float
rounding), never touches the trained weights, and a Trainer's validation gives the same accuracy."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import timm
import torch
from torch import nn

from lightning_modules.models.fusion import fuse_conv_bn
from lightning_modules.models.mobilenet_v1 import MobileNetV1
from tests.helpers.tiny_fit import tiny_datamodule, tiny_module


def randomise_bn(net: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (fresh ones fold to almost nothing)."""
    gen = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    return net


@pytest.mark.parametrize("make", [
    lambda: MobileNetV1(num_classes=5, width_mult=0.25),
    lambda: MobileNetV1(num_classes=5, width_mult=0.25, num_blocks=6, head_channels=(16, 8), compactors=True),
    lambda: timm.create_model("mobilenetv3_small_050", num_classes=5),
    lambda: timm.create_model("resnet10t", num_classes=5),
], ids=["mobilenet_v1", "cut_with_compactors", "mobilenetv3", "resnet10t"])
def test_folded_copy_matches_and_leaves_the_network_alone(make) -> None:
    torch.manual_seed(0)
    net = randomise_bn(make()).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fused, folded = fuse_conv_bn(net)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        expected = net.eval()(x)
        got = fused(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # trained weights untouched
    assert not any(p.requires_grad for p in fused.parameters())
    assert type(fused) is type(net) and hasattr(fused, "forward_features")
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    left = sum(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert left == bns - folded
    if isinstance(net, MobileNetV1):
        assert left == 0 and folded == bns  # every BatchNorm of MobileNetV1 (and its head) is folded


def test_validation_on_the_folded_copy_gives_the_same_accuracy(folder: Path, tmp_path: Path) -> None:
    results = {}
    for fuse in (False, True):
        torch.manual_seed(0)
        model = tiny_module(fuse_eval=fuse)
        randomise_bn(model.net)
        data = tiny_datamodule(folder)
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=tmp_path)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        results[fuse] = trainer.validate(model, data, verbose=False)[0]
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        assert model.folded_eval.folded is None  # dropped at the end of the epoch
    assert results[True]["val/acc"] == results[False]["val/acc"]
    assert results[True]["val/loss"] == pytest.approx(results[False]["val/loss"], rel=1e-5, abs=1e-6)
