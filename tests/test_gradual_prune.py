"""AGP: the cubic schedule, the per-step channel targets, and GradualPrune inside a real fit."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch

from callbacks.gradual_prune import (
    GradualPrune,
    agp_sparsity,
    agp_step_epochs,
    global_relative_sparsity,
    relative_sparsity,
)
from callbacks.pruning_base import PruningSettingsError
from lightning_modules.image_classifier import ImageClassifier
from lightning_modules.models.mobilenet_v1 import mobilenet_v1_channels
from lightning_modules.pruning.width import keep_count
from tests.helpers.stop_after import StopAfterEpoch
from tests.helpers.tiny_fit import tiny_datamodule, tiny_module, tiny_trainer

pytestmark = pytest.mark.usefixtures("one_thread")  # the tiny fits are faster on one thread


# ------------------------------------------------------------------------------------------ the maths
def test_agp_schedule_at_the_start_middle_and_end() -> None:
    schedule = {"initial": 0.1, "final": 0.5, "start_epoch": 2, "num_steps": 4, "interval": 2}
    assert agp_sparsity(2, **schedule) == pytest.approx(0.1)  # t0
    assert agp_sparsity(6, **schedule) == pytest.approx(0.5 - 0.4 * 0.5**3)  # halfway: (1 − 1/2)³
    assert agp_sparsity(4, **schedule) == pytest.approx(0.5 - 0.4 * 0.75**3)
    assert agp_sparsity(10, **schedule) == pytest.approx(0.5)  # t0 + nΔt
    assert agp_sparsity(0, **schedule) == pytest.approx(0.1)  # clamped before t0
    assert agp_sparsity(30, **schedule) == pytest.approx(0.5)  # and after the end
    values = [agp_sparsity(t, **schedule) for t in range(12)]
    assert values == sorted(values)
    # fast at first, then slower: the increments shrink
    steps = [agp_sparsity(t, **schedule) for t in (2, 4, 6, 8, 10)]
    increments = [b - a for a, b in zip(steps, steps[1:], strict=False)]
    assert increments == sorted(increments, reverse=True)
    with pytest.raises(ValueError, match="num_steps"):
        agp_sparsity(0, 0.0, 0.5, 0, 0, 1)


def test_step_epochs() -> None:
    assert agp_step_epochs(0, 4, 1, 0.0) == [1, 2, 3, 4]
    assert agp_step_epochs(3, 2, 5, 0.2) == [3, 8, 13]


def test_relative_sparsity_reaches_the_target_counts_exactly() -> None:
    for current in range(2, 200):
        for target in range(1, current + 1):
            s = relative_sparsity({"g": current}, {"g": target})["g"]
            assert keep_count(current, s, 1) == target
    assert relative_sparsity({"g": 8}, {"g": 12}) == {"g": 0.0}  # never grows
    assert global_relative_sparsity({"a": 10, "b": 30}, {"a": 5, "b": 15}) == pytest.approx(0.5)


def test_defaults() -> None:
    callback = GradualPrune(final_sparsity=0.75, criterion="fpgm")
    assert callback.criterion == "fpgm" and callback.sparsity == 0.75 and not callback.done


# -------------------------------------------------------------------------------- inside a real fit
class Probe(L.Callback):
    """Records the channels, LR stage and LR each training epoch starts with (after the prune)."""

    def __init__(self) -> None:
        self.channels: dict[int, list[int]] = {}
        self.stage: dict[int, tuple[int, int | None]] = {}
        self.lr: dict[int, float] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: ImageClassifier, batch: object, idx: int) -> None:
        if idx == 0:
            self.lr[trainer.current_epoch] = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: ImageClassifier) -> None:
        self.channels[trainer.current_epoch] = list(pl_module.net.channels)
        self.stage[trainer.current_epoch] = (pl_module.stage_start_step, pl_module.stage_epochs)


def run(
    folder: Path, out: Path, epochs: int = 4, ckpt: Path | None = None, stop_after: int | None = None,
    **kwargs: object
) -> tuple[ImageClassifier, GradualPrune, Probe]:
    module, callback, probe = tiny_module(), GradualPrune(**{"num_steps": 3, **kwargs}), Probe()
    stop = [] if stop_after is None else [StopAfterEpoch(stop_after)]
    tiny_trainer(out, epochs, [callback, probe, *stop]).fit(module, tiny_datamodule(folder), ckpt_path=ckpt)
    return module, callback, probe


def test_widths_follow_the_schedule_in_one_lr_stage_reload_and_resume(folder: Path, tmp_path: Path) -> None:
    module, callback, probe = run(folder, tmp_path)
    full = mobilenet_v1_channels(0.25)
    expected = {t: [keep_count(c, agp_sparsity(t, 0.0, 0.5, 0, 3, 1)) for c in full] for t in range(4)}
    assert probe.channels == expected  # epoch 0 unpruned, then steps at 1, 2, 3
    assert expected[3] == [c // 2 for c in full]
    totals = [sum(probe.channels[t]) for t in range(4)]
    assert totals == sorted(totals, reverse=True) and len(set(totals)) == 4
    assert callback.done and callback.completed == 3 and [s["epoch"] for s in callback.result["steps"]] == [1, 2, 3]
    assert callback.result["epoch"] == 3 and module.arch["channels"] == expected[3]
    assert callback.result["original"] == dict(zip(callback.result["original"], full, strict=True))
    assert 0.2 < callback.result["total_flops_preserve_rate"] < 0.35
    assert all(s["flops_preserve_rate"] < 1.0 for s in callback.result["steps"])
    assert all(0.0 < s["after"]["params"] < s["before"]["params"] for s in callback.result["steps"])
    # the unpruned epoch is a stage of its own (it ends at the first prune); the first prune starts an LR
    # stage over the rest of the fit; the later ones keep its position
    steps_per_epoch = 3  # 48 images in batches of 16
    assert probe.stage[0] == (0, 1)
    assert probe.stage[1] == probe.stage[2] == probe.stage[3] == (steps_per_epoch, 3)
    cosine = [0.05 * 0.5 * (1 + math.cos(math.pi * k / 9)) for k in range(9)]  # 3 epochs of 3 steps
    assert probe.lr == pytest.approx({0: 0.05, 1: cosine[0], 2: cosine[3], 3: cosine[6]})

    reloaded = ImageClassifier.load_from_checkpoint(tmp_path / "epoch=3.ckpt", map_location="cpu")
    assert reloaded.arch == module.arch
    x = torch.randn(2, 3, 32, 32)
    module.eval(), reloaded.eval()
    torch.testing.assert_close(reloaded(x), module(x))

    # killed between the first and the second step: the remaining steps run from the restored state
    resumed, again, resumed_probe = run(folder, tmp_path / "resumed", ckpt=tmp_path / "epoch=1.ckpt")
    assert resumed_probe.channels == {2: expected[2], 3: expected[3]}
    assert resumed_probe.stage[3] == (steps_per_epoch, 3)
    assert resumed_probe.lr == pytest.approx({2: cosine[3], 3: cosine[6]})
    assert again.original == callback.original and again.completed == 3
    assert [s["arch"] for s in again.result["steps"]] == [s["arch"] for s in callback.result["steps"]]
    assert resumed.arch == module.arch
    resumed.eval()
    torch.testing.assert_close(resumed(x), module(x))


def test_initial_sparsity_global_ranking_round_to_and_a_short_fit(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(PruningSettingsError, match="max_epochs is 2; raise --trainer.max_epochs above 4"):
        run(folder, tmp_path, epochs=2, num_steps=2, interval=2)
    module, callback, probe = run(folder, tmp_path, epochs=5, stop_after=1, num_steps=2, interval=2,
                                  initial_sparsity=0.25, final_sparsity=0.75, global_ranking=True, round_to=8,
                                  criterion="l1_norm")  # stopped after 2 epochs, as if killed
    full = mobilenet_v1_channels(0.25)
    assert callback.step_epochs == [0, 2, 4] and callback.completed == 1 and not callback.done
    # a step at t0 because s_i > 0; a global ranking keeps the scheduled total, in multiples of 8
    assert callback.result["epoch"] == 0 and probe.channels[0] == probe.channels[1] == module.arch["channels"]
    assert all(c % 8 == 0 for c in module.arch["channels"])
    target = sum(keep_count(c, 0.25, 8) for c in full)
    assert abs(sum(module.arch["channels"]) - target) <= 8 * len(full)
    assert sum(module.arch["channels"]) < sum(full)
