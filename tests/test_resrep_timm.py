"""ResRep on timm networks: compactors placed from torch-pruning's dependency graph (coupled channels share
one mask), an exact merge, lossless slicing of zeroed channels, RepPrune in a fit and through the
width_prune CLI, checkpoints that rebuild the compactors; networks without a lossless placement (ConvNeXt's
LayerNorms) refused before training.

Families: residual additions (``resnet10t``), inverted residuals with squeeze-excitation and depthwise
convolutions (``mobilenetv3_small_050``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from callbacks.rep_prune import RepPrune
from experiments import depth_prune, width_prune
from lightning_modules.image_classifier import ImageClassifier
from lightning_modules.models.layers import Compactor
from lightning_modules.pruning.compactors import (
    CompactedLayer,
    CompactorPlacementError,
    compactor_groups,
    compactor_positions,
    install_compactors,
    merge_compactors,
    positions_of,
)
from lightning_modules.pruning.width import apply_plan, keep_count, prunable_groups
from tests.helpers.cli_args import cli_args
from tests.helpers.fake_data import make_image_folder
from tests.helpers.snapshots import Snapshots
from tests.helpers.tiny_fit import tiny_datamodule, tiny_trainer
from tests.helpers.weights import save_checkpoint

FAMILIES = ["resnet10t", "mobilenetv3_small_050"]
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes, 8 training and 4 test 32×32 JPEGs each, in the CIFAR-10 image-folder layout."""
    return make_image_folder(tmp_path_factory.mktemp("data"), {"train": 8, "test": 4})


@torch.no_grad()
def trained_like(name: str, seed: int = 0) -> nn.Module:
    """A timm network in eval mode with BatchNorm statistics and affine parameters like a trained one's."""
    torch.manual_seed(seed)
    net = timm.create_model(name, num_classes=3).eval()
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
            m.bias.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return net


@torch.no_grad()
def perturb_compactors(net: nn.Module, scale: float = 0.05, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for group in compactor_groups(net).values():
        for c in group:
            c.weight.add_(torch.randn(c.weight.shape, generator=g) * scale)


def outputs(net: nn.Module, x: torch.Tensor = X) -> torch.Tensor:
    with torch.no_grad():
        return net.eval()(x)


# ----------------------------------------------------------------------------------- pure functions
def test_coupled_channels_share_one_group_and_depthwise_compactors_are_diagonal() -> None:
    positions = compactor_positions(trained_like("resnet10t"), X[:1])
    # the stem's last convolution and the residual branch of layer1 add up: one group, two compactors
    assert positions["conv1.6"] == [{"after": "bn1", "conv": "conv1.6", "diagonal": False},
                                    {"after": "layer1.0.bn2", "conv": "layer1.0.conv2", "diagonal": False}]
    assert [p["after"] for p in positions["layer2.0.conv2"]] == ["layer2.0.bn2", "layer2.0.downsample.2"]

    positions = compactor_positions(trained_like("mobilenetv3_small_050"), X[:1])
    # expansion: a full compactor after the pointwise BN, a diagonal one after the depthwise BN
    assert positions["blocks.2.1.conv_pw"] == [
        {"after": "blocks.2.1.bn1", "conv": "blocks.2.1.conv_pw", "diagonal": False},
        {"after": "blocks.2.1.bn2", "conv": "blocks.2.1.conv_dw", "diagonal": True}]
    # the squeeze convolution of SE and the head convolution have no BN: the compactor follows the conv
    assert positions["blocks.2.1.se.conv_reduce"] == [
        {"after": "blocks.2.1.se.conv_reduce", "conv": "blocks.2.1.se.conv_reduce", "diagonal": False}]
    assert positions["conv_head"] == [{"after": "conv_head", "conv": "conv_head", "diagonal": False}]
    # the residual chain of stage 2: one group, one compactor after each block's projection BN
    assert [p["after"] for p in positions["blocks.2.0.conv_pwl"]] == [
        "blocks.2.0.bn3", "blocks.2.1.bn3", "blocks.2.2.bn3", "blocks.3.0.bn3", "blocks.3.1.bn3"]


@pytest.mark.parametrize("name", FAMILIES)
def test_identity_compactors_keep_the_function_and_their_positions(name: str) -> None:
    net = trained_like(name)
    positions = compactor_positions(net, X[:1])
    before = outputs(net)
    install_compactors(net, positions)
    assert torch.equal(outputs(net), before)
    assert positions_of(net) == positions
    assert all(c.groups == c.out_channels for m in net.modules() if isinstance(m, CompactedLayer)
               for c in [m.compactor] if c.groups > 1)


@pytest.mark.parametrize("name", FAMILIES)
def test_merged_net_computes_what_the_net_with_trained_compactors_computes(name: str) -> None:
    net = install_compactors(trained_like(name), compactor_positions(trained_like(name), X[:1]))
    perturb_compactors(net)
    merged = merge_compactors(net)
    assert not any(isinstance(m, CompactedLayer | Compactor) for m in merged.modules())
    assert set(dict(merged.named_modules())) == set(dict(trained_like(name).named_modules()))
    expected = outputs(net)
    torch.testing.assert_close(outputs(merged), expected, atol=1e-5 * expected.abs().max().item(), rtol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_slicing_channels_whose_rows_are_zero_after_the_merge_is_lossless(name: str) -> None:
    plain = trained_like(name)
    net = install_compactors(copy.deepcopy(plain), compactor_positions(plain, X[:1]))
    perturb_compactors(net)
    masks = {}
    with torch.no_grad():  # every group's masked rows zero in every one of its compactors
        for group, compactors in compactor_groups(net).items():
            masks[group] = list(range(0, compactors[0].out_channels, 3))
            for c in compactors:
                c.weight[masks[group]] = 0.0
    expected = outputs(net)
    merged = merge_compactors(net)
    groups = prunable_groups(merged, X[:1])
    channels = {g.name: g.num_channels for g in groups}
    apply_plan(groups, masks)
    sliced = dict(merged.named_modules())
    for group, masked in masks.items():
        assert sliced[group].out_channels == channels[group] - len(masked)
    assert sum(p.numel() for p in merged.parameters()) < sum(p.numel() for p in plain.parameters())
    torch.testing.assert_close(outputs(merged), expected, atol=1e-5 * expected.abs().max().item(), rtol=1e-5)


def test_layer_norms_have_no_lossless_placement() -> None:
    with pytest.raises(CompactorPlacementError, match=r"'stem.1' \(LayerNorm2d\).*normalises across channels"):
        compactor_positions(timm.create_model("convnext_atto", num_classes=3), X[:1])


# --------------------------------------------------------------------------------------- in a fit
def rep_prune() -> RepPrune:
    return RepPrune(start_epoch=0, prune_epoch=2, sparsity=0.5, penalty=0.5, mask_interval=1, ramp_updates=2)


def timm_module(name: str) -> ImageClassifier:
    return ImageClassifier(backbone=name, num_classes=3, lr=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_rep_prune_on_timm_prunes_to_the_sparsity_and_its_checkpoints_reload(
        name: str, folder: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    callback, snapshots = rep_prune(), Snapshots()
    module = timm_module(name)
    channels = {g.name: g.num_channels for g in prunable_groups(module.net, X[:1])}
    trainer = tiny_trainer(tmp_path, 3, [callback, snapshots], limit_train_batches=2)
    trainer.fit(module, tiny_datamodule(folder, batch_size=8))

    has_compactors = [any(isinstance(m, Compactor) for m in snapshots.nets[e].modules()) for e in range(3)]
    assert has_compactors == [True, True, False]
    assert callback.done and "compactors" not in module.arch["structure"]
    # every group keeps keep_count of its channels; the coupled layers follow (the net runs)
    assert set(callback.targets) == set(channels)
    pruned = dict(module.net.named_modules())
    for group, count in channels.items():
        assert pruned[group].out_channels == keep_count(count, 0.5)
        assert len(callback.masks[group]) == count - keep_count(count, 0.5)
    assert outputs(module.net).shape == (2, 3)

    # mid-ResRep: the checkpoint rebuilds the compactors (the description holds their positions)
    mid = ImageClassifier.load_from_checkpoint(tmp_path / "epoch=0.ckpt", map_location="cpu")
    assert mid.arch["structure"]["compactors"] == positions_of(snapshots.nets[0])
    torch.testing.assert_close(outputs(mid.net), outputs(snapshots.nets[0]), rtol=0, atol=0)
    final = ImageClassifier.load_from_checkpoint(tmp_path / "epoch=2.ckpt", map_location="cpu")
    assert final.arch == module.arch
    torch.testing.assert_close(outputs(final.net), outputs(module.net), rtol=0, atol=0)

    if name != "resnet10t":
        return
    # resumed from the mid-ResRep checkpoint: the same masks, the same prune, the same weights
    resumed_callback, resumed = rep_prune(), timm_module(name)
    tiny_trainer(tmp_path / "resumed", 3, [resumed_callback], limit_train_batches=2).fit(
        resumed, tiny_datamodule(folder, batch_size=8), ckpt_path=tmp_path / "epoch=0.ckpt")
    assert resumed.arch == module.arch and resumed_callback.masks == callback.masks
    torch.testing.assert_close(outputs(resumed.net), outputs(module.net), rtol=0, atol=0)


@pytest.mark.slow
def test_rep_prune_on_timm_through_the_width_prune_cli(folder: Path, tmp_path: Path) -> None:
    name = "mobilenetv3_small_050"
    base = timm_module(name)
    baseline = save_checkpoint(base, tmp_path / "base.ckpt")
    summary = json.loads(width_prune.main([
        *cli_args(folder, tmp_path / "logs", name), "--baseline_ckpt", str(baseline), "--trainer.max_epochs", "3",
        "--trainer.callbacks+=callbacks.RepPrune", "--trainer.callbacks.prune_epoch", "2",
        "--trainer.callbacks.sparsity", "0.5", "--trainer.callbacks.mask_interval", "1",
        "--trainer.callbacks.ramp_updates", "2",
    ]).read_text())
    assert summary["method"] == "resrep" and summary["width"]["done"]
    assert 0.1 < summary["flops_preserve_rate"] < 0.5
    structure = summary["arch"]["structure"]
    assert structure["layers"] and "compactors" not in structure
    model = ImageClassifier.load_from_checkpoint(summary["best_checkpoint"], map_location="cpu")
    assert model.arch == summary["arch"]
    assert sum(p.numel() for p in model.net.parameters()) == summary["params"]
    assert model.net.conv_head.out_channels == keep_count(base.net.conv_head.out_channels, 0.5)


def test_unsupported_backbone_is_refused_before_training(folder: Path, tmp_path: Path) -> None:
    """Width run, and a depth run whose ResRep stage acts only after the cut: one message at start-up."""
    message = r"RepPrune \(ResRep\) cannot prune backbone 'convnext_atto': layer 'stem.1' \(LayerNorm2d\)"
    baseline = save_checkpoint(timm_module("convnext_atto"), tmp_path / "base.ckpt")
    common = [*cli_args(folder, tmp_path / "logs", "convnext_atto"), "--baseline_ckpt", str(baseline)]
    with pytest.raises(SystemExit, match=message):
        width_prune.main([*common, "--trainer.max_epochs", "3", "--trainer.callbacks+=callbacks.RepPrune",
                          "--trainer.callbacks.prune_epoch", "1"])
    with pytest.raises(SystemExit, match=message):
        depth_prune.main([*common, "--sweep.start_epoch", "0", "--sweep.epochs", "1", "--prune.epoch", "1",
                          "--prune.block", "1", "--trainer.max_epochs", "5",
                          "--trainer.callbacks+=callbacks.RepPrune", "--trainer.callbacks.start_epoch", "2",
                          "--trainer.callbacks.prune_epoch", "3"])
    assert not (tmp_path / "logs").exists() or not list((tmp_path / "logs").rglob("*.ckpt"))


@pytest.mark.slow
def test_rep_prune_after_a_depth_cut_on_timm(folder: Path, tmp_path: Path) -> None:
    """Baseline 0, sweep 1, cut at 2 (point 2), compactors 3–4, merge and slice at 5, fine-tune 5."""
    args = [*cli_args(folder, tmp_path / "logs", "resnet10t"), "--trainer.max_epochs", "6",
            "--sweep.start_epoch", "1", "--sweep.epochs", "1", "--prune.epoch", "2", "--prune.block", "2",
            "--sweep.head", "[16, 8]", "--trainer.callbacks+=callbacks.RepPrune",
            "--trainer.callbacks.start_epoch", "3", "--trainer.callbacks.prune_epoch", "5",
            "--trainer.callbacks.sparsity", "0.5", "--trainer.callbacks.mask_interval", "1",
            "--trainer.callbacks.ramp_updates", "2"]
    summary = json.loads(depth_prune.main(args).read_text())
    (width,) = summary["width"]
    assert width["method"] == "resrep" and width["done"] and width["pruned_at"] == [5]
    structure = summary["arch"]["structure"]
    assert structure["cut"] == 2 and structure["layers"] and "compactors" not in structure
    depth, resrep = summary["stages"]
    assert resrep["params"] == summary["pruned"]["params"] < depth["params"]
    model = ImageClassifier.load_from_checkpoint(summary["last_checkpoint"], map_location="cpu")
    assert model.arch == summary["arch"] and outputs(model.net).shape == (2, 3)
