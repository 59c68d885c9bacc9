"""ResRep (Ding et al., ICCV 2021): compactors, re-routed gradients, masks, the merge; RepPrune in a fit."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from callbacks.distillation import Distillation
from callbacks.rep_prune import RepPrune
from lightning_modules.backbones.mobilenet_v1 import (
    merge_compactors,
    mobilenet_v1_arch_after_pruning,
    with_compactors,
)
from lightning_modules.image_classifier import ARCH_KEYS, ImageClassifier
from lightning_modules.models.layers import Compactor
from lightning_modules.models.mobilenet_v1 import MobileNetV1, mobilenet_v1_channels
from lightning_modules.pruning.resrep import (
    compactor_layers,
    mask_vector,
    ramp_fraction,
    removal_plan,
    removal_targets,
    resrep_gradients,
    update_masks,
)
from lightning_modules.pruning.width import (
    apply_plan,
    keep_count,
    prunable_groups,
)
from tests.helpers.snapshots import Snapshots
from tests.helpers.tiny_fit import tiny_datamodule, tiny_module, tiny_trainer

X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def small_mobilenet(**kwargs) -> MobileNetV1:
    return MobileNetV1(num_classes=10, width_mult=0.25, stem_stride=1, head_channels=(16,), **kwargs)


@torch.no_grad()
def randomise_norms(net: nn.Module, seed: int = 0) -> None:
    """BatchNorm statistics and affine parameters of a trained-like network."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)


@torch.no_grad()
def randomise_compactors(net: nn.Module, seed: int = 0) -> None:
    """Trained-like compactors: identity plus noise."""
    g = torch.Generator().manual_seed(seed)
    for c in compactor_layers(net).values():
        c.weight.add_(torch.randn(c.weight.shape, generator=g) * 0.3)


# ------------------------------------------------------------------------------------------ compactors
def test_identity_compactors_keep_the_function_and_sit_after_every_non_depthwise_conv() -> None:
    torch.manual_seed(0)
    net = small_mobilenet()
    randomise_norms(net)
    new, arch = with_compactors(net)
    assert arch["compactors"] and mobilenet_v1_arch_after_pruning(new) == arch
    compactors = compactor_layers(new)
    assert list(compactors) == [g.name for g in prunable_groups(net, X[:1])]  # the merged net's group names
    assert list(compactors)[:2] == ["stem.0", "blocks.0.pw.0"]
    assert list(compactors)[-1] == "head.blocks.0.pw.0"
    assert not any(isinstance(m, Compactor) for b in [*new.blocks, *new.head.blocks] for m in b.dw.modules())
    eye = torch.eye(16).view(16, 16, 1, 1)
    assert torch.equal(compactors["blocks.0.pw.0"].weight, eye)
    fresh = compactor_layers(small_mobilenet(compactors=True))
    assert torch.equal(fresh["blocks.0.pw.0"].weight, eye)  # the initialisation
    net.eval(), new.eval()
    torch.testing.assert_close(new(X), net(X))
    net.train(), new.train()
    torch.testing.assert_close(new(X), net(X))
    with pytest.raises(ValueError, match="already has compactors"):
        with_compactors(new)


def test_merged_net_computes_what_the_net_with_trained_compactors_computes() -> None:
    torch.manual_seed(0)
    net = small_mobilenet(compactors=True)
    randomise_norms(net)
    randomise_compactors(net)
    merged, arch = merge_compactors(net)
    assert not arch["compactors"] and not any(isinstance(m, Compactor) for m in merged.modules())
    assert arch["channels"] == mobilenet_v1_channels(0.25)
    assert MobileNetV1(**arch).state_dict().keys() == merged.state_dict().keys()
    net.eval(), merged.eval()
    torch.testing.assert_close(merged(X), net(X), atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_slicing_zero_rows_after_the_merge_changes_the_output_only_through_later_bn_shifts() -> None:
    torch.manual_seed(0)
    net = small_mobilenet(compactors=True)
    randomise_norms(net)
    randomise_compactors(net)
    compactors = compactor_layers(net)
    masks = {name: list(range(0, c.out_channels, 3)) for name, c in compactors.items()}
    for name, c in compactors.items():
        c.weight[masks[name]] = 0.0
    merged, _ = merge_compactors(net)
    # a removed channel is 0 after its ReLU; the depthwise BN after it turns that into β − γμ/σ: zero those
    depthwise = [b.dw for b in [*merged.blocks, *merged.head.blocks]]
    for dw, name in zip(depthwise, list(compactors)[:-1], strict=True):
        dw[1].bias[masks[name]] = 0.0
        dw[1].running_mean[masks[name]] = 0.0
    merged.eval()
    before = merged(X)
    apply_plan(prunable_groups(merged, X[:1]), removal_plan(masks))
    arch = mobilenet_v1_arch_after_pruning(merged)
    widths = [c.out_channels - len(masks[n]) for n, c in compactors.items()]
    assert arch["channels"] + arch["head_channels"] == widths
    torch.testing.assert_close(merged(X), before, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------- gradients, masks
def test_resrep_gradients_mask_the_objective_and_add_group_lasso_on_every_row() -> None:
    torch.manual_seed(0)
    compactor = Compactor(6)
    with torch.no_grad():
        compactor.weight.add_(torch.randn_like(compactor.weight))
        compactor.weight[5] = 0.0  # a row already at zero gets no lasso gradient (no NaN)
    grad = torch.randn_like(compactor.weight)
    compactor.weight.grad = grad.clone()
    mask = mask_vector(6, [1, 4, 5])
    assert mask.tolist() == [1, 0, 1, 1, 0, 0]
    out = resrep_gradients(compactor, mask, penalty=0.1)
    assert out is compactor.weight.grad
    q = compactor.weight.detach()
    lasso = 0.1 * q / q.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    torch.testing.assert_close(out[[0, 2, 3]], grad[[0, 2, 3]] + lasso[[0, 2, 3]])
    torch.testing.assert_close(out[[1, 4]], lasso[[1, 4]])  # no objective gradient on masked rows
    assert torch.equal(out[5], torch.zeros_like(out[5]))
    torch.testing.assert_close(lasso[0].flatten().norm(), torch.tensor(0.1))


def test_masks_ramp_up_to_the_targets_on_the_smallest_rows() -> None:
    net = small_mobilenet(compactors=True)
    compactors = compactor_layers(net)
    with torch.no_grad():
        for c in compactors.values():  # row i has norm C − i
            c.weight.mul_(torch.arange(1, c.out_channels + 1, dtype=torch.float32).flip(0).view(-1, 1, 1, 1))
    targets = removal_targets(compactors, {"default": 0.5, "stem.0": 0.75}, ignore=["head.blocks.0.pw.0"])
    assert targets["stem.0"] == 6 and targets["blocks.0.pw.0"] == 8 and targets["head.blocks.0.pw.0"] == 0
    assert removal_targets(compactors, 0.3, round_to=8)["blocks.4.pw.0"] == 64 - keep_count(64, 0.3, 8) == 16
    with pytest.raises(ValueError, match="names no compactor"):
        removal_targets(compactors, {"blocks.0.dw.0": 0.5})
    counts = []
    for k in range(6):
        masks = update_masks(compactors, targets, ramp_fraction(k, 4))
        counts.append(len(masks["blocks.0.pw.0"]))
        n = compactors["blocks.0.pw.0"].out_channels
        assert masks["blocks.0.pw.0"] == list(range(n - counts[-1], n))  # the smallest norms: the last rows
    assert counts == [0, 2, 4, 6, 8, 8]
    assert masks == {name: list(range(c.out_channels - targets[name], c.out_channels))
                     for name, c in compactors.items()}
    assert ramp_fraction(0, 10) == 0.0 and ramp_fraction(10, 10) == ramp_fraction(99, 10) == 1.0
    assert math.ceil(3 * ramp_fraction(1, 3)) == 1


def rep_prune() -> RepPrune:
    return RepPrune(start_epoch=0, prune_epoch=2, sparsity=0.5, penalty=0.5, mask_interval=2, ramp_updates=2)


def outputs(net: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return net.eval()(X)


def test_rep_prune_in_a_fit_resumes_exactly_and_its_checkpoints_reload(folder: Path, tmp_path: Path) -> None:
    callback, snapshots = rep_prune(), Snapshots()
    module = tiny_module()
    assert not module.arch["compactors"]
    tiny_trainer(tmp_path, 3, [callback, snapshots]).fit(module, tiny_datamodule(folder, batch_size=8))

    # epochs 0–1: compactors (in the checkpointed architecture); epoch 2: pruned, plain
    has_compactors = [any(isinstance(m, Compactor) for m in snapshots.nets[e].modules()) for e in range(3)]
    assert has_compactors == [True, True, False]
    full = mobilenet_v1_channels(0.25)
    assert module.net.channels == module.arch["channels"] == [c // 2 for c in full]
    assert not module.arch["compactors"]
    assert "compactors" in ARCH_KEYS and callback.done and callback.result["epoch"] == 2
    assert callback.result["mask_updates"] == 5  # 12 steps with compactors: after 2, 4, …, 10 of them
    assert sum(len(v) for v in callback.masks.values()) == sum(c - c // 2 for c in full)
    # without objective gradient the masked rows shrink from epoch to epoch, below the layer's other rows
    for name in callback.masks:
        norms = [compactor_layers(snapshots.nets[e])[name].weight.detach().flatten(1).norm(dim=1)
                 for e in (0, 1)]
        masked = torch.zeros(len(norms[1]), dtype=torch.bool)
        masked[callback.masks[name]] = True
        assert norms[1][masked].mean() < 0.97 * norms[0][masked].mean()
        assert norms[1][masked].mean() < norms[1][~masked].mean()
    # preserve rate against the plain baseline (the merged net has its architecture)
    assert callback.result["before"]["macs"] < callback.result["with_compactors"]["macs"]
    assert 0.2 < callback.result["flops_preserve_rate"] < 0.35
    assert callback.result["flops_preserve_rate_vs_compactors"] < callback.result["flops_preserve_rate"]

    # a checkpoint saved mid-ResRep rebuilds the compactors and gives the same outputs
    mid = ImageClassifier.load_from_checkpoint(tmp_path / "epoch=0.ckpt", map_location="cpu")
    assert mid.arch["compactors"] and len(compactor_layers(mid.net)) == 14
    torch.testing.assert_close(outputs(mid.net), outputs(snapshots.nets[0]))
    # the checkpoint after the prune rebuilds the pruned plain net
    pruned = ImageClassifier.load_from_checkpoint(tmp_path / "epoch=2.ckpt", map_location="cpu")
    assert pruned.arch == module.arch
    torch.testing.assert_close(outputs(pruned.net), outputs(module.net))

    # resuming from the mid-ResRep checkpoint continues exactly: same masks, same prune, same weights
    resumed_callback, resumed = rep_prune(), tiny_module()
    tiny_trainer(tmp_path / "resumed", 3, [resumed_callback]).fit(
        resumed, tiny_datamodule(folder, batch_size=8), ckpt_path=tmp_path / "epoch=0.ckpt")
    assert resumed.arch == module.arch
    assert resumed_callback.masks == callback.masks and resumed_callback.updates == callback.updates
    assert resumed_callback.result["flops_preserve_rate"] == callback.result["flops_preserve_rate"]
    torch.testing.assert_close(outputs(resumed.net), outputs(module.net))


def test_distillation_teacher_is_the_plain_unpruned_net(folder: Path, tmp_path: Path) -> None:
    distill = Distillation(start_epoch=0)
    module = tiny_module()
    callback = RepPrune(start_epoch=0, prune_epoch=1, sparsity=0.75, round_to=8, mask_interval=1,
                        ramp_updates=1)
    tiny_trainer(tmp_path, 2, [callback, distill]).fit(module, tiny_datamodule(folder))
    # the prune is announced before the compactors are installed
    assert not any(isinstance(m, Compactor) for m in distill.teacher.modules())
    assert not distill.teacher_arch["compactors"]
    assert distill.teacher.channels == mobilenet_v1_channels(0.25)
    assert all(c % 8 == 0 for c in module.arch["channels"])
    assert module.arch["channels"] != distill.teacher.channels


def test_an_unknown_ignored_module_is_a_clear_error_at_the_prune(folder: Path, tmp_path: Path) -> None:
    trainer = tiny_trainer(tmp_path, 2, [RepPrune(prune_epoch=1, ignore=["blocks.99.pw.0"])])
    with pytest.raises(ValueError, match="ignore names no module"):
        trainer.fit(tiny_module(), tiny_datamodule(folder))
