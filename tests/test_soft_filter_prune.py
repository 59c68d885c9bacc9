"""Soft filter pruning: the zeroing maths on tensors; SoftFilterPrune inside a real fit, reloaded and resumed."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from callbacks.soft_filter_prune import SoftFilterPrune, weakest_rows, zero_filters
from lightning_modules.backbones.base import trained_like_batchnorm
from lightning_modules.image_classifier import ImageClassifier
from lightning_modules.models.mobilenet_v1 import mobilenet_v1_channels
from lightning_modules.pruning.admm import row_norms
from lightning_modules.pruning.width import keep_count
from tests.helpers.tiny_fit import assert_reloads_identically, tiny_datamodule, tiny_module, tiny_trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_weakest_rows_are_the_lowest_norms_and_zeroing_touches_only_them() -> None:
    torch.manual_seed(0)
    w = torch.randn(12, 3, 3, 3) * torch.linspace(0.1, 3.0, 12).view(-1, 1, 1, 1)[torch.randperm(12)]
    rows = weakest_rows(w, 5)
    assert rows == sorted(torch.argsort(row_norms(w))[:7].tolist())
    before = w.clone()
    assert zero_filters({"w": w}, {"w": rows}) == 7
    assert not w[rows].any()
    kept = [i for i in range(12) if i not in rows]
    assert torch.equal(w[kept], before[kept])
    assert weakest_rows(w, 12) == [] and len(weakest_rows(w, 0)) == 12


class Probe(L.Callback):
    """Root weights at each epoch's start (after the zeroing) and end (after training), and around the prune."""

    def __init__(self) -> None:
        self.start: dict[int, dict[str, torch.Tensor]] = {}
        self.end: dict[int, dict[str, torch.Tensor]] = {}
        self.before: dict[str, torch.Tensor] = {}

    def on_before_prune(self, trainer: L.Trainer, pl_module: ImageClassifier) -> None:
        self.before = convs(pl_module.net)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: ImageClassifier) -> None:
        self.start[trainer.current_epoch] = convs(pl_module.net)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: ImageClassifier) -> None:
        self.end[trainer.current_epoch] = convs(pl_module.net)


def convs(net: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in net.named_modules() if isinstance(m, nn.Conv2d) and m.groups == 1}


def test_sfp_zeroes_lets_filters_regrow_prunes_the_weakest_reloads_and_resumes(folder: Path, tmp_path: Path) -> None:
    def run(out: Path, ckpt: Path | None = None) -> tuple[ImageClassifier, SoftFilterPrune, Probe]:
        # as after a baseline: BatchNorm shifts not all zero (a zeroed filter behind a shift ≤ 0 and a ReLU
        # gets no gradient and stays zero; a fresh network's shifts are all zero)
        module, callback, probe = tiny_module(), SoftFilterPrune(start_epoch=0, prune_epoch=2), Probe()
        trained_like_batchnorm(module.net).train()
        tiny_trainer(out, 3, [callback, probe]).fit(module, tiny_datamodule(folder), ckpt_path=ckpt)
        return module, callback, probe

    module, callback, probe = run(tmp_path)
    full = mobilenet_v1_channels(0.25)
    keep = [keep_count(c, 0.75) for c in full]
    assert module.arch["channels"] == module.net.channels == keep
    assert callback.soft_epochs == [0, 1] and callback.result["epoch"] == 2
    assert callback.result["after"]["params"] < callback.result["before"]["params"]

    roots = list(callback.result["plan"])
    assert roots[0] == "stem.0" and len(roots) == len(full)
    for epoch in (0, 1):  # each soft epoch starts with exactly C − keep zero filters per root convolution
        for name, k in zip(roots, keep, strict=True):
            zero = (probe.start[epoch][name].flatten(1).abs().sum(1) == 0).sum()
            assert int(zero) == probe.start[epoch][name].shape[0] - k, (epoch, name)
    # zeroed filters keep training: after epoch 0 some of them are not zero any more
    regrown = [name for name in roots
               if probe.end[0][name][(probe.start[0][name].flatten(1).abs().sum(1) == 0)].abs().sum() > 0]
    assert regrown
    # the prune removes the weakest filters of the weights it finds, and keeps the others as they were
    for i, name in enumerate(roots):
        removed = callback.result["plan"][name]
        assert removed == weakest_rows(probe.before[name], keep[i])
        kept = [r for r in range(full[i]) if r not in removed]
        rows = probe.before[name][kept]
        if i > 0:  # input channels follow the previous group's choice (through the depthwise convolution)
            rows = rows[:, [r for r in range(full[i - 1]) if r not in callback.result["plan"][roots[i - 1]]]]
        assert torch.equal(probe.start[2][name], rows)

    assert_reloads_identically(module, tmp_path / "epoch=2.ckpt")

    # killed after epoch 0: the resumed run zeroes at epoch 1 from the checkpoint's weights and prunes alike
    resumed, again, _ = run(tmp_path / "resumed", tmp_path / "epoch=0.ckpt")
    assert again.soft_epochs == [0, 1] and again.result["plan"] == callback.result["plan"]
    x = torch.randn(2, 3, 32, 32)
    module.eval(), resumed.eval()
    torch.testing.assert_close(resumed(x), module(x))


def test_sfp_accepts_only_the_l2_norm_and_an_ordered_schedule() -> None:
    from callbacks.pruning_base import PruningSettingsError

    with pytest.raises(PruningSettingsError, match="criterion"):
        SoftFilterPrune(criterion="fpgm").check_settings()
    with pytest.raises(PruningSettingsError, match="prune_epoch"):
        SoftFilterPrune(start_epoch=3, prune_epoch=1).check_settings()
