"""The per-stage protocol: the baseline converges on its own LR schedule, which ends where the sweep (or the
first structural prune) begins; each later stage restarts the schedule; a resumed run keeps the stages;
the summary holds the trained baseline's test accuracy beside the pruned net's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch

from callbacks.auxiliary_sweep import AuxiliarySweep
from callbacks.depth_prune import DepthPrune
from callbacks.one_shot_prune import OneShotPrune
from experiments import depth_prune
from lightning_modules.image_classifier import ImageClassifier, first_stage_epochs
from tests.helpers.cli_args import pipeline_args
from tests.helpers.stop_after import StopAfterEpoch
from tests.helpers.tiny_fit import tiny_datamodule, tiny_folder, tiny_module, tiny_trainer

LR = 0.05  # tiny_module's
SWEEP_LR = 2e-3  # the heads' own (Adam)


class LrTrace(L.Callback):
    """The learning rate of every optimiser update, by epoch."""

    def __init__(self) -> None:
        self.by_epoch: dict[int, list[float]] = {}
        self.optimizer_by_epoch: dict[int, str] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx) -> None:
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        self.by_epoch.setdefault(trainer.current_epoch, []).append(float(lr))
        self.optimizer_by_epoch[trainer.current_epoch] = type(trainer.optimizers[0]).__name__


def cosine_lr(step: int, steps: int, peak: float = LR) -> float:
    return 0.5 * peak * (1 + math.cos(math.pi * step / steps))


def test_first_stage_epochs_is_the_earliest_restart() -> None:
    sweep, cut, width = AuxiliarySweep(start_epoch=5, epochs=1), DepthPrune(epoch=6), OneShotPrune(epoch=9)
    assert first_stage_epochs([sweep, cut, width]) == 5
    assert first_stage_epochs([cut, width]) == 6  # no sweep: the cut ends the baseline
    assert first_stage_epochs([AuxiliarySweep(start_epoch=5, epochs=0), cut]) == 6  # an empty sweep restarts nothing
    assert first_stage_epochs([OneShotPrune(epoch=0)]) is None  # pruned at once: the new stage replaces it
    assert first_stage_epochs([]) is None  # plain training: one schedule over the fit


def depth_fit(tmp_path: Path, schedule_span: str = "stage", stop_after: int | None = None,
              ckpt_path: str | None = None, sweep_epochs: int = 1,
              sweep_optimizer: str | None = "adam") -> tuple[ImageClassifier, LrTrace]:
    """Baseline epochs 0 to 3 - ``sweep_epochs`` - 1, the sweep up to epoch 3, cut after block 2 and
    fine-tune epochs 4-5 (6 steps per epoch)."""
    trace = LrTrace()
    sweep = AuxiliarySweep(start_epoch=4 - sweep_epochs, epochs=sweep_epochs, head=[8], optimizer=sweep_optimizer,
                           lr=SWEEP_LR)
    callbacks = [sweep, DepthPrune(epoch=4, block=2), trace]
    if stop_after is not None:
        callbacks.append(StopAfterEpoch(stop_after))
    module = tiny_module(schedule_span=schedule_span)
    trainer = tiny_trainer(tmp_path / "ckpt", 6, callbacks)
    L.seed_everything(0)
    trainer.fit(module, tiny_datamodule(tiny_folder(tmp_path / "data", per_class=32)), ckpt_path=ckpt_path)
    return module, trace


def test_baseline_schedule_reaches_its_floor_before_the_sweep(tmp_path: Path) -> None:
    _, trace = depth_fit(tmp_path)
    steps = len(trace.by_epoch[0])  # updates per epoch
    baseline = [lr for e in (0, 1, 2) for lr in trace.by_epoch[e]]
    # the baseline's cosine spans its own 3 epochs: its last update is at the floor's doorstep
    assert baseline == pytest.approx([cosine_lr(i, 3 * steps) for i in range(3 * steps)])
    assert baseline[-1] < 0.01 * LR
    # the sweep trains its heads with its own optimiser (the paper's heads': Adam) from its own peak; the
    # fine-tuning goes back to the model's optimiser at the model's peak; each decays over its own epochs
    assert trace.by_epoch[3] == pytest.approx([cosine_lr(i, steps, SWEEP_LR) for i in range(steps)])
    assert [trace.optimizer_by_epoch[e] for e in range(6)] == ["SGD"] * 3 + ["Adam"] + ["SGD"] * 2
    finetune = trace.by_epoch[4] + trace.by_epoch[5]
    assert finetune == pytest.approx([cosine_lr(i, 2 * steps) for i in range(2 * steps)])


def test_a_sweep_without_its_own_optimiser_uses_the_models(tmp_path: Path) -> None:
    _, trace = depth_fit(tmp_path, sweep_optimizer=None)
    steps = len(trace.by_epoch[0])
    assert trace.by_epoch[3] == pytest.approx([cosine_lr(i, steps) for i in range(steps)])
    assert set(trace.optimizer_by_epoch.values()) == {"SGD"}


def test_a_run_killed_inside_the_sweep_resumes_with_the_sweeps_optimiser(tmp_path: Path) -> None:
    straight, straight_trace = depth_fit(tmp_path / "straight", sweep_epochs=2)
    depth_fit(tmp_path / "killed", sweep_epochs=2, stop_after=2)  # after the sweep's first epoch
    last = tmp_path / "killed" / "ckpt" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["stage"]["optimizer"]["optimizer"] == "adam"
    resumed, resumed_trace = depth_fit(tmp_path / "killed", sweep_epochs=2, ckpt_path=str(last))
    assert resumed_trace.optimizer_by_epoch[3] == "Adam"
    for epoch in range(3, 6):
        assert resumed_trace.by_epoch[epoch] == pytest.approx(straight_trace.by_epoch[epoch], rel=0, abs=0)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_whole_fit_span_keeps_the_archived_protocol(tmp_path: Path) -> None:
    _, trace = depth_fit(tmp_path, schedule_span="fit")
    steps = len(trace.by_epoch[0])
    baseline = [lr for e in (0, 1, 2) for lr in trace.by_epoch[e]]
    assert baseline == pytest.approx([cosine_lr(i, 6 * steps) for i in range(3 * steps)])
    assert baseline[-1] > 0.4 * LR  # read mid-schedule: what the per-stage protocol fixes


@pytest.mark.parametrize("stop_after", [1, 4])  # killed mid-baseline, and after the cut
def test_resumed_run_keeps_the_per_stage_schedules(tmp_path: Path, stop_after: int) -> None:
    straight, straight_trace = depth_fit(tmp_path / "straight")
    depth_fit(tmp_path / "killed", stop_after=stop_after)
    last = tmp_path / "killed" / "ckpt" / "last.ckpt"
    stage = torch.load(last, map_location="cpu", weights_only=True)["stage"]
    assert stage["epochs"] == (3 if stop_after < 3 else 2)  # the baseline's own span, or the fine-tuning's
    resumed, resumed_trace = depth_fit(tmp_path / "killed", ckpt_path=str(last))
    for epoch in range(stop_after + 1, 6):
        assert resumed_trace.by_epoch[epoch] == pytest.approx(straight_trace.by_epoch[epoch], rel=0, abs=0)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_summary_holds_the_baseline_test_accuracy(real_data_dir: Path, tmp_path: Path) -> None:
    summary = json.loads(depth_prune.main(pipeline_args(real_data_dir, tmp_path / "logs")).read_text())
    baseline = summary["baseline"]
    assert baseline["val_acc"] == baseline["acc"] and 0 <= baseline["val_acc"] <= 1  # what the rule compared
    # the trained baseline (the checkpoint before any head or cut), scored on the pruned net's test split
    from datamodules import CIFAR10DataModule

    module = ImageClassifier.load_from_checkpoint(summary["baseline_checkpoint"], map_location="cpu")
    assert module.aux_heads is None and module.hparams.num_blocks == 13
    data = CIFAR10DataModule(root=str(real_data_dir / "cifar10-jpg.tar.gz"), train_subset=256, eval_subset=128,
                             batch_size=64)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    assert baseline["test_acc"] == pytest.approx(trainer.test(module, data, verbose=False)[0]["test/acc"])
    assert summary["pruned"]["acc"] is not None


def test_removes_nothing_names_the_last_cut_point_and_a_net_no_smaller() -> None:
    from lightning_modules.pruning.depth_cut import Baseline, CutPoint, removes_nothing

    baseline = Baseline(params=1000, macs=100, acc=0.8)
    assert removes_nothing(CutPoint(3, 400, 40, 0.7), baseline, last=13) is None
    assert "the last cut point" in removes_nothing(CutPoint(13, 900, 90, 0.79), baseline, last=13)
    # a head larger than the classifier it replaces: cut 12 of 13 still no smaller than the baseline
    assert "no fewer than the baseline" in removes_nothing(CutPoint(12, 1000, 90, 0.79), baseline, last=13)


def test_an_automatic_cut_that_prunes_nothing_ends_in_one_error(real_data_dir: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The sweep measures only the last cut point, so the tolerance rule can only land there: the run stops
    at the cut with exit status 1 and one ``error:`` line, and leaves the sweep table and the baseline."""
    args = [a for a in pipeline_args(real_data_dir, tmp_path / "logs")]
    args[args.index("--prune.block") + 1] = "null"
    args += ["--sweep.cut_points", "[13]", "--trainer.logger.init_args.id", "nocut"]
    with pytest.raises(SystemExit) as exit_info:
        depth_prune.main(args)
    message = str(exit_info.value.code)
    assert message.startswith("error: DepthPrune.tolerance = 0.01: the tolerance rule chose cut 13, the last cut "
                              "point, which keeps every block") and "\n" not in message
    run = tmp_path / "logs" / "tinyml-pruning" / "nocut"
    assert (run / "depth_sweep.csv").is_file() and (run / "checkpoints" / "baseline.ckpt").is_file()
    assert not (run / "summary.json").exists()  # nothing that reads as a finished run
    import wandb

    assert wandb.run is None  # its W&B run was closed (marked failed), not left open for the next run


def test_an_explicit_cut_at_the_last_cut_point_ends_in_one_error(real_data_dir: Path, tmp_path: Path) -> None:
    """``--prune.block`` at the last cut point keeps every block: refused before any training, exit status 1,
    one line. Before, it exited 0 with a "pruned" net larger than the baseline."""
    args = pipeline_args(real_data_dir, tmp_path / "logs")
    last = [*args, "--prune.block", "13", "--trainer.logger.init_args.id", "last"]
    with pytest.raises(SystemExit) as exit_info:
        depth_prune.main(last)
    message = str(exit_info.value.code)
    assert message.startswith("error: DepthPrune.block = 13: is the network's last cut point") and "\n" not in message
    assert not list((tmp_path / "logs").rglob("*.ckpt"))  # refused before training
