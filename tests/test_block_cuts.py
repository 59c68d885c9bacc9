"""Block-level cut points of timm networks: one after every block (the stage points among them), each cut
computing exactly what the sweep's head saw, a mid-stage cut that fine-tunes and reloads with identical
outputs, and descriptions that never rebuild a different cut than the one they were made from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from callbacks import AuxiliarySweep, DepthPrune
from lightning_modules.backbones import ArchitectureMismatch
from lightning_modules.backbones.timm_blocks import intermediate_kwargs, stage_names
from lightning_modules.image_classifier import ImageClassifier
from tests.helpers.tiny_fit import assert_reloads_identically, tiny_datamodule, tiny_trainer
from tests.helpers.weights import save_checkpoint

FAMILIES = ["resnet10t", "resnet18", "convnext_atto", "mobilenetv3_small_050"]


def block_count(net: nn.Module, backbone: str) -> int:
    """Blocks counted from the timm network's own attributes, plus the stem where timm has a stem point."""
    if backbone.startswith("resnet"):
        return 1 + sum(len(getattr(net, f"layer{i}")) for i in range(1, 5))
    if backbone.startswith("convnext"):
        return sum(len(stage.blocks) for stage in net.stages)
    return 1 + sum(len(stage) for stage in net.blocks)


@pytest.mark.parametrize("backbone", FAMILIES)
def test_a_cut_point_after_every_block_and_every_cut_computes_its_head(backbone: str) -> None:
    torch.manual_seed(0)
    module = ImageClassifier(backbone=backbone, num_classes=3).eval()
    net = module.net
    points = module.adapter.cut_points(net)
    assert len(points) == block_count(net, backbone)
    assert [p.index for p in points] == list(range(len(points)))
    assert all(b.stride >= a.stride for a, b in zip(points, points[1:], strict=False))
    if backbone == "resnet10t":  # one block per stage: the block points are timm's stage points
        assert [p.module for p in points] == stage_names(net)

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        timm_stages = net.forward_intermediates(x, intermediates_only=True, **intermediate_kwargs(net))
        logits, feats = module.adapter.features(net, x, range(len(points)))
        early, partial = module.adapter.features(net, x, [1, 2], logits=False)
    assert torch.equal(logits, net(x)) and early is None
    assert all(torch.equal(partial[k], feats[k]) for k in (1, 2))
    stage_points = [p.index for p in points if p.module in stage_names(net)]
    assert len(stage_points) == len(timm_stages)  # every stage-level point is still a cut point
    for k, f in zip(stage_points, timm_stages, strict=True):
        assert torch.equal(feats[k], f)

    module.attach_aux_heads((16, 8))
    module.eval()
    for k, point in enumerate(points):
        assert feats[k].shape[1] == point.channels
        head = module.aux_heads.heads[str(k)]
        cut, arch = module.adapter.cut(net, module.arch, k, (16, 8), head)
        assert arch["structure"]["cut_module"] == point.module
        with torch.no_grad():
            assert torch.equal(cut.eval()(x), head(feats[k])), point.module


@pytest.mark.parametrize(("backbone", "module_name"), [
    ("resnet18", "layer3.0"), ("convnext_atto", "stages.2.blocks.2"), ("mobilenetv3_small_050", "blocks.2.1")])
def test_a_mid_stage_cut_fine_tunes_and_reloads_with_identical_outputs(
    backbone: str, module_name: str, folder: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    module = ImageClassifier(backbone=backbone, num_classes=3, lr=0.01)
    block = next(p.index for p in module.adapter.cut_points(module.net) if p.module == module_name)
    sweep = AuxiliarySweep(start_epoch=0, epochs=1, head=[16, 8])
    trainer = tiny_trainer(tmp_path, 2, [sweep, DepthPrune(epoch=1, block=block, head=[16, 8])],
                           limit_train_batches=2)
    trainer.fit(module, tiny_datamodule(folder, batch_size=8))
    assert len(sweep.accuracies) == len(module.adapter.cut_points(ImageClassifier(backbone=backbone).net))
    structure = module.hparams.structure
    assert structure["cut"] == block and structure["cut_module"] == module_name
    assert structure["stage_blocks"] is not None  # inside a stage

    assert_reloads_identically(module, tmp_path / "epoch=1.ckpt")
    sweeping = ImageClassifier.load_from_checkpoint(tmp_path / "epoch=0.ckpt", map_location="cpu")
    assert sweeping.aux_cut_modules[block] == module_name  # the heads come back where they were


def test_a_description_never_rebuilds_another_cut(tmp_path: Path) -> None:
    module = ImageClassifier(backbone="resnet18", num_classes=3)
    cut, arch = module.adapter.cut(module.net, module.arch, 5, (16, 8), None, "original_fresh_head")
    assert arch["structure"] | {"head_channels": None} == {
        "cut": 5, "cut_module": "layer3.0", "stage": 3, "stage_blocks": 1, "cut_channels": 256,
        "head_channels": None}
    for wrong in ({"cut": 6}, {"cut_module": "layer3"}, {"stage_blocks": 2}, {"cut": 40}):
        with pytest.raises(ValueError, match="describes cut point"):
            module.adapter.build({**arch, "structure": {**arch["structure"], **wrong}})
    # a structure from stage-level cut points (``cut`` = timm's stage index) rebuilds that whole stage
    legacy = {**arch, "structure": {"cut": 3, "cut_channels": 256, "head_channels": [16, 8]}}
    rebuilt = module.adapter.build(legacy)
    assert rebuilt.point.module == "layer3" and rebuilt.index == 6
    assert module.adapter.describe(rebuilt)["structure"]["cut"] == 6

    module.attach_aux_heads((16, 8))
    state = torch.load(save_checkpoint(module, tmp_path / "sweep.ckpt"), weights_only=True)
    del state["aux_heads"]["cut_modules"]  # heads saved when cut points were per stage
    with pytest.raises(ArchitectureMismatch, match="restart the sweep from the baseline checkpoint"):
        ImageClassifier(backbone="resnet18", num_classes=3).on_load_checkpoint(state)
