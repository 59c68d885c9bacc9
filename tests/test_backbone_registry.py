"""A native backbone family is one file: its adapter, registered by name. The tiny family below is defined
and registered here alone, and goes through the depth pipeline (sweep, cut, fine-tune) and a width prune
inside one real ``fit``; its checkpoint reloads with identical outputs."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from callbacks import AuxiliarySweep, DepthPrune, OneShotPrune
from lightning_modules.backbones import (
    BackboneAdapter,
    CutPointInfo,
    TimmAdapter,
    adapter_for,
    adapter_of_net,
    build_net,
    register_backbone,
    registered_backbones,
    uncut_arch,
    unregister_backbone,
)
from lightning_modules.backbones.base import check_cut_init, device_of
from lightning_modules.deploy.profiling import model_cost
from lightning_modules.image_classifier import ImageClassifier
from lightning_modules.models.layers import ClassifierHead
from tests.helpers.tiny_fit import assert_reloads_identically, tiny_datamodule, tiny_folder, tiny_trainer

NAME = "tiny_plain_cnn"


def conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class TinyNet(nn.Module):
    """A stem and ``num_blocks`` plain 3×3 blocks (the first two of stride 2), then a classifier head."""

    def __init__(self, num_classes: int = 10, channels: Sequence[int] | None = None, num_blocks: int = 3,
                 head_channels: Sequence[int] = (), in_chans: int = 3) -> None:
        super().__init__()
        channels = list(channels or [8, 16, 16, 16])[: num_blocks + 1]
        self.stem = conv_bn_relu(in_chans, channels[0], 2)
        self.blocks = nn.Sequential(*(conv_bn_relu(channels[i], channels[i + 1], 2 if i < 2 else 1)
                                      for i in range(num_blocks)))
        self.head = ClassifierHead(channels[-1], num_classes, head_channels)

    def stages(self) -> list[nn.Module]:
        return [self.stem, *self.blocks]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


ARCH_KEYS = tuple(inspect.signature(TinyNet).parameters)


class TinyAdapter(BackboneAdapter):
    arch_keys = ("backbone", *ARCH_KEYS)
    network_class = TinyNet

    @classmethod
    def uncut_arch(cls, arch: Mapping[str, Any]) -> dict[str, Any]:
        return {**arch, "num_blocks": 3, "channels": None, "head_channels": []}

    def build(self, arch: Mapping[str, Any]) -> nn.Module:
        return TinyNet(**{k: v for k, v in arch.items() if k in ARCH_KEYS and v is not None})

    def describe(self, net: nn.Module) -> dict[str, Any]:
        return {"num_classes": net.head.fc.out_features, "num_blocks": len(net.blocks),
                "channels": [s[0].out_channels for s in net.stages()],
                "head_channels": [b.pw[0].out_channels for b in net.head.blocks], "in_chans": net.stem[0].in_channels}

    def cut_points(self, net: nn.Module, in_chans: int = 3) -> list[CutPointInfo]:
        points, stride = [], 1
        for k, stage in enumerate(net.stages()):
            stride *= stage[0].stride[0]
            points.append(CutPointInfo(k, "stem" if k == 0 else f"blocks.{k - 1}", stage[0].out_channels, stride))
        return points

    def features(self, net: nn.Module, x: torch.Tensor, cut_points: Sequence[int], logits: bool = True
                 ) -> tuple[torch.Tensor | None, dict[int, torch.Tensor]]:
        feats = {}
        for k, stage in enumerate(net.stages()[: None if logits else max(cut_points) + 1]):
            x = stage(x)
            feats[k] = x
        return (net.head(x) if logits else None), {k: feats[k] for k in cut_points}

    def cut(self, net: nn.Module, arch: Mapping[str, Any], k: int, head_channels: Sequence[int],
            head: ClassifierHead | None = None, init: str = "original") -> tuple[nn.Module, dict[str, Any]]:
        check_cut_init(init, head)
        new_arch = {**self.describe(net), "num_blocks": k, "head_channels": list(head_channels)}
        new_arch["channels"] = new_arch["channels"][: k + 1]
        new = self.build(new_arch).to(device_of(net))
        if init != "random":
            for old, kept in zip(net.stages(), new.stages(), strict=False):
                kept.load_state_dict(old.state_dict())
        if init == "original":
            new.head.load_state_dict(head.state_dict())
        return new, new_arch

    def cut_costs(self, net: nn.Module, arch: Mapping[str, Any], cut_points: Sequence[int],
                  head_channels: Sequence[int], image_size: int) -> dict[int, dict[str, int]]:
        full = self.describe(net)
        return {k: model_cost(self.build({**full, "num_blocks": k, "channels": full["channels"][: k + 1],
                                          "head_channels": list(head_channels)}), image_size) for k in cut_points}

    def after_width_prune(self, net: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
        arch = self.describe(net)
        new = self.build(arch).to(device_of(net))
        new.load_state_dict(net.state_dict())
        return new.train(net.training), arch


@pytest.fixture
def tiny_family() -> Iterator[type[BackboneAdapter]]:
    adapter = register_backbone(NAME)(TinyAdapter)
    yield adapter
    unregister_backbone(NAME)


def test_a_registered_name_picks_its_adapter_and_any_other_is_timm(tiny_family: type) -> None:
    assert NAME in registered_backbones() and "mobilenet_v1" in registered_backbones()
    assert isinstance(adapter_for({"backbone": NAME}), TinyAdapter)
    assert isinstance(adapter_of_net(TinyNet()), TinyAdapter)
    assert isinstance(adapter_for({"backbone": "resnet10t"}), TimmAdapter)
    with pytest.raises(ValueError, match="registered already"):
        register_backbone("mobilenet_v1")(TinyAdapter)


def test_arguments_of_another_family_are_an_error(tiny_family: type) -> None:
    ImageClassifier(backbone=NAME, num_classes=3, channels=[4, 8, 8], num_blocks=2)  # its own: fine
    with pytest.raises(ValueError, match="--model.width_mult applies to mobilenet_v1 only, not to backbone"):
        ImageClassifier(backbone=NAME, width_mult=0.5)
    with pytest.raises(ValueError, match="--model.structure applies to timm backbones only"):
        ImageClassifier(backbone=NAME, structure={"cut": 1})


def test_the_uncut_network_of_a_pruned_one_comes_from_its_family(tiny_family: type) -> None:
    """What a report prices as a depth run's unpruned baseline, for any registered family (and timm)."""
    pruned = {"backbone": NAME, "num_classes": 3, "channels": [4, 8, 8], "num_blocks": 2, "head_channels": [4]}
    full = build_net(uncut_arch(pruned))
    assert isinstance(full, TinyNet) and len(full.blocks) == 3 and full.head.fc.out_features == 3
    cut = {"num_classes": 10, "width_mult": 0.5, "num_blocks": 6, "channels": [16] * 7, "head_channels": [64]}
    assert uncut_arch(cut) == {**cut, "num_blocks": 13, "channels": None, "head_channels": []}
    timm_cut = {"backbone": "resnet10t", "num_classes": 10, "structure": {"cut": 2, "cut_channels": 64}}
    assert uncut_arch(timm_cut) == {**timm_cut, "structure": {}}
    with pytest.raises(ValueError, match="does not describe its uncut network"):
        BackboneAdapter.uncut_arch(pruned)  # a family that does not say


def test_a_new_family_goes_through_depth_and_width_pruning(tiny_family: type, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = ImageClassifier(backbone=NAME, num_classes=3, channels=[8, 16, 16, 16], num_blocks=3, lr=0.05)
    sweep = AuxiliarySweep(start_epoch=0, epochs=1, head=[8])
    callbacks = [sweep, DepthPrune(epoch=1, block=2, head=[8]), OneShotPrune(epoch=2, sparsity=0.5)]
    trainer = tiny_trainer(tmp_path, 3, callbacks, limit_train_batches=2)
    trainer.fit(module, tiny_datamodule(tiny_folder(tmp_path / "data"), batch_size=8))

    assert len(sweep.accuracies) == 4  # the stem and three blocks
    assert isinstance(module.net, TinyNet) and len(module.net.blocks) == 2  # cut after block 2
    assert module.hparams.channels == [4, 8, 8] and module.hparams.head_channels == [4]  # then half the channels
    assert_reloads_identically(module, tmp_path / "epoch=2.ckpt")
