"""The pruning callbacks' common base: settings checked before training (one message that names the option,
its value and the fix), two pruning callbacks in one run, and a schedule that follows a shift."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from callbacks import ADMMPrune, BNSlimming, DepthPrune, GradualPrune, OneShotPrune, RepPrune
from callbacks.pruning_base import (
    PruningCallback,
    PruningSettingsError,
    check_collisions,
    check_schedule,
    prunable_layer_names,
)
from experiments import depth_prune, train, width_prune
from lightning_modules.models.mobilenet_v1 import MobileNetV1, mobilenet_v1_channels
from lightning_modules.pruning.width import keep_count
from tests.helpers.fake_data import CIFAR_CLASSES, make_image_folder
from tests.helpers.tiny_fit import tiny_datamodule, tiny_module, tiny_trainer

pytestmark = pytest.mark.usefixtures("one_thread")  # the tiny fits are faster on one thread

#: (callback, the text its check must say): each an impossible setting, found without a network.
BAD_SETTINGS = [
    (OneShotPrune(sparsity=1.0), "OneShotPrune.sparsity = 1.0: every sparsity must be in [0, 1)"),
    (OneShotPrune(sparsity={"default": 0.5, "stem.0": -0.1}), "OneShotPrune.sparsity = {'default'"),
    (OneShotPrune(criterion="taylor"), "OneShotPrune.criterion = 'taylor': unknown; choose one of ['bn_scale', "
                                       "'fpgm', 'hrank', 'l1_norm', 'l2_norm', 'random']"),
    (OneShotPrune(round_to=0), "OneShotPrune.round_to = 0: must be >= 1"),
    (OneShotPrune(max_pruning_ratio=0.0), "OneShotPrune.max_pruning_ratio = 0.0: must be in (0, 1]"),
    (BNSlimming(start_epoch=2, prune_epoch=1), "BNSlimming.prune_epoch = 1: comes before start_epoch (2)"),
    (BNSlimming(penalty=-1.0), "BNSlimming.penalty = -1.0: must be >= 0"),
    (BNSlimming(start_epoch=-1), "BNSlimming.start_epoch = -1: must be >= 0"),
    (ADMMPrune(criterion="fpgm"), "ADMMPrune.criterion = 'fpgm': unknown; choose one of ['l2_norm']"),
    (ADMMPrune(rho=0.0), "ADMMPrune.rho = 0.0: must be > 0; give the penalty weight"),
    (ADMMPrune(admm_epoch=0), "ADMMPrune.admm_epoch = 0: must be >= 1"),
    (ADMMPrune(sparsity=1.0), "ADMMPrune.sparsity = 1.0: every sparsity must be in [0, 1)"),
    (GradualPrune(final_sparsity=1.0), "GradualPrune.final_sparsity = 1.0: every sparsity must be in [0, 1)"),
    (GradualPrune(initial_sparsity=0.6, final_sparsity=0.5), "GradualPrune.initial_sparsity = 0.6: exceeds"),
    (GradualPrune(num_steps=0), "GradualPrune.num_steps = 0: must be >= 1"),
    (RepPrune(criterion="fpgm"), "RepPrune.criterion = 'fpgm': unknown; choose one of ['l1_norm', 'l2_norm']"),
    (RepPrune(start_epoch=2, prune_epoch=2), "RepPrune.prune_epoch = 2: must come after start_epoch (2)"),
    (DepthPrune(rule="elbow"), "DepthPrune.rule = 'elbow': unknown; choose one of ['knee', 'tolerance']"),
]


@pytest.mark.parametrize(("callback", "message"), BAD_SETTINGS, ids=lambda v: str(v)[:40])
def test_impossible_settings_are_one_clear_error(callback: PruningCallback, message: str) -> None:
    with pytest.raises(PruningSettingsError) as err:
        callback.check_settings()
    assert str(err.value).startswith(message)
    assert err.value.__cause__ is None and err.value.__context__ is None


def test_settings_that_do_not_fit_the_network_name_the_valid_ones() -> None:
    net = MobileNetV1(num_classes=10, width_mult=0.25)
    names = prunable_layer_names(net, 32)
    assert names[:2] == ["stem.0", "blocks.0.pw.0"] and len(names) == 14  # stem + 13 pointwise convolutions
    cases = [
        (OneShotPrune(sparsity={"default": 0.5, "blocks.99.pw.0": 0.3}), "sparsity = ['blocks.99.pw.0']"),
        (GradualPrune(final_sparsity={"blocks.0.dw.0": 0.3}), "final_sparsity = ['blocks.0.dw.0']"),
        (RepPrune(ignore=["blocks.99.pw.0"]), "ignore = ['blocks.99.pw.0']: names no convolution"),
        (DepthPrune(block=14), "DepthPrune.block = 14: is no cut point"),
        (DepthPrune(block=-1), "give a block in [0, 13]"),
        (DepthPrune(block=13), "DepthPrune.block = 13: is the network's last cut point"),  # keeps every block
    ]
    for callback, message in cases:
        with pytest.raises(PruningSettingsError, match=message.replace("[", r"\[").replace(".", r"\.")) as err:
            callback.check_network(net, names)
        assert "stem.0" in str(err.value) or "[0, 1" in str(err.value)  # how to fix: the valid names / range
    for fine in (OneShotPrune(sparsity={"default": 0.5, "blocks.12.pw.0": 0.2}), DepthPrune(block=12)):
        fine.check_network(net, names)


def test_schedule_must_leave_fine_tuning_and_no_two_changes_collide() -> None:
    check_schedule(GradualPrune(start_epoch=1, num_steps=2, interval=2), 6)
    with pytest.raises(PruningSettingsError, match="last at epoch 5, but --trainer.max_epochs is 5; raise"):
        check_schedule(GradualPrune(start_epoch=1, num_steps=2, interval=2), 5)
    with pytest.raises(PruningSettingsError, match="max_epochs is None"):
        check_schedule(OneShotPrune(), None)
    check_collisions([DepthPrune(epoch=2), OneShotPrune(epoch=3), RepPrune(start_epoch=4, prune_epoch=6)])
    with pytest.raises(PruningSettingsError, match="RepPrune and GradualPrune both change the network at the "
                                                   "start of epoch 4"):
        check_collisions([RepPrune(start_epoch=2, prune_epoch=4), GradualPrune(start_epoch=2, interval=2)])


def test_shift_moves_every_step_of_the_schedule() -> None:
    gradual = GradualPrune(start_epoch=5, num_steps=2, interval=2, initial_sparsity=0.1)
    assert gradual.step_epochs == [5, 7, 9]
    gradual.shift_schedule(3)
    assert gradual.start_epoch == 2 and gradual.step_epochs == gradual.structure_epochs() == [2, 4, 6]
    rep = RepPrune(start_epoch=3, prune_epoch=6)
    rep.shift_schedule(4)
    assert (rep.start_epoch, rep.prune_epoch) == (0, 2)


def test_state_keys_differ_per_settings_and_survive_a_shift() -> None:
    first, second = OneShotPrune(epoch=1, sparsity=0.25), OneShotPrune(epoch=2, sparsity=0.25)
    assert first.state_key != second.state_key and first.state_key.startswith("OneShotPrune{")
    key = first.state_key
    first.shift_schedule(1)
    assert first.state_key == key and OneShotPrune(epoch=1, sparsity=0.25).state_key == key


def test_a_state_saved_under_the_class_name_is_adopted_and_other_settings_refused() -> None:
    callback = OneShotPrune(epoch=1)
    checkpoint = {"callbacks": {"OneShotPrune": {"result": {"epoch": 1}}}}
    callback.on_load_checkpoint(SimpleNamespace(callbacks=[callback]), None, checkpoint)
    assert checkpoint["callbacks"] == {callback.state_key: {"result": {"epoch": 1}}}
    other = {"callbacks": {OneShotPrune(epoch=4).state_key: {"result": {}}}}
    with pytest.raises(PruningSettingsError, match="saved under other settings; resume with the settings"):
        callback.on_load_checkpoint(SimpleNamespace(callbacks=[callback]), None, other)


def test_two_pruning_callbacks_in_one_fit_keep_their_own_state(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "data", {"train": 16, "test": 4})

    def fit(out: Path, ckpt: Path | None = None) -> tuple[list[int], OneShotPrune, OneShotPrune]:
        module, first, second = tiny_module(), OneShotPrune(epoch=0, sparsity=0.25), OneShotPrune(epoch=1, sparsity=0.5)
        tiny_trainer(out, 3, [first, second]).fit(module, tiny_datamodule(folder), ckpt_path=ckpt)
        return module.arch["channels"], first, second

    channels, first, second = fit(tmp_path / "a")
    assert channels == [keep_count(keep_count(c, 0.25), 0.5) for c in mobilenet_v1_channels(0.25)]
    assert first.pruned_epochs() == [0] and second.pruned_epochs() == [1]
    states = torch.load(tmp_path / "a" / "epoch=1.ckpt", map_location="cpu", weights_only=False)["callbacks"]
    assert states[first.state_key]["result"]["epoch"] == 0 and states[second.state_key]["result"]["epoch"] == 1
    # resumed after the first prune: the first is restored (not redone), the second still prunes at epoch 1
    resumed, again_first, again_second = fit(tmp_path / "b", tmp_path / "a" / "epoch=0.ckpt")
    assert resumed == channels and again_first.result["epoch"] == 0 and again_second.pruned_epochs() == [1]


# ------------------------------------------------------------------------------- the experiment scripts
@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A 10-class CIFAR-layout folder and a MobileNetV1-0.25 baseline trained on it for one epoch."""
    root = tmp_path_factory.mktemp("settings")
    folder = make_image_folder(root / "data", {"train": 4, "test": 2}, classes=CIFAR_CLASSES)
    common = ["--data.root", str(folder), "--data.batch_size", "16", "--data.check_counts", "false", "--model.width_mult", "0.25",
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
              "--trainer.accelerator", "cpu"]
    summary = json.loads(train.main([*common, "--trainer.max_epochs", "1",
                                     "--trainer.logger.init_args.save_dir", str(root / "base")]).read_text())
    return SimpleNamespace(common=common, baseline=summary["last_checkpoint"])


DEPTH = ["--sweep.start_epoch", "1", "--sweep.epochs", "1", "--prune.epoch", "2", "--prune.block", "6",
         "--sweep.head", "[16, 8]", "--trainer.max_epochs", "5"]
ONE_SHOT = ["--trainer.callbacks+=callbacks.OneShotPrune"]
#: (script, arguments, what the message must say): each exits before anything is trained or decoded.
BAD_RUNS = [
    ("width", [*ONE_SHOT, "--trainer.callbacks.sparsity", "1.0"], "OneShotPrune.sparsity = 1.0: every sparsity"),
    ("width", [*ONE_SHOT, "--trainer.callbacks.sparsity", '{"default": 0.5, "blocks.99.pw.0": 0.3}'],
     "OneShotPrune.sparsity = ['blocks.99.pw.0']: names no prunable layer of the network; use the names of its "
     "prunable layers: ['stem.0', 'blocks.0.pw.0'"),
    ("width", [*ONE_SHOT, "--trainer.callbacks.criterion", "taylor"], "criterion = 'taylor': unknown; choose one"),
    ("width", [*ONE_SHOT, "--trainer.callbacks.ignore", "[blocks.99.pw.0]"], "ignore = ['blocks.99.pw.0']"),
    ("width", [*ONE_SHOT, "--trainer.callbacks.epoch", "3", "--trainer.max_epochs", "3"],
     "OneShotPrune changes the network last at epoch 3, but --trainer.max_epochs is 3; raise --trainer.max_epochs"),
    ("depth", [*DEPTH, "--prune.block", "20"], "DepthPrune.block = 20: is no cut point of the network"),
    ("depth", [*DEPTH, "--trainer.max_epochs", "2"], "DepthPrune changes the network last at epoch 2"),
    ("depth", [*DEPTH, "--sweep.epochs", "0"], "--prune.init original keeps the cut point's trained auxiliary head, "
     "and --sweep.epochs 0 trains none; use --prune.init original_fresh_head"),
    ("depth", [*DEPTH, "--sweep.epochs", "0", "--prune.block", "null"],
     "--sweep.epochs 0 trains no auxiliary heads, so nothing can choose the cut; give --prune.block"),
    ("depth", [*DEPTH, *ONE_SHOT, "--trainer.callbacks.epoch", "3", "--trainer.callbacks.sparsity", "0.25",
               *ONE_SHOT, "--trainer.callbacks.epoch", "3"],
     "OneShotPrune and OneShotPrune both change the network at the start of epoch 3"),
]


@pytest.mark.parametrize(("script", "args", "message"), BAD_RUNS, ids=lambda v: str(v)[:50])
def test_bad_settings_stop_the_run_before_training(script: str, args: list[str], message: str, runs: SimpleNamespace,
                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("TINYML_CACHE_DIR", str(cache))
    out = ["--trainer.logger.init_args.save_dir", str(tmp_path / "logs")]
    if script == "width":
        main, extra = width_prune.main, ["--baseline_ckpt", runs.baseline]
    else:
        main, extra = depth_prune.main, []
    with pytest.raises(SystemExit) as exit_:
        main([*runs.common, *out, *extra, *args])
    assert exit_.value.code == f"error: {exit_.value.code.removeprefix('error: ')}"  # a message: exit status 1
    assert message in exit_.value.code and "\n" not in exit_.value.code
    assert exit_.value.__cause__ is None or isinstance(exit_.value.__cause__, PruningSettingsError)
    written = [p for p in tmp_path.rglob("*") if p.suffix in (".ckpt", ".json", ".pt")]
    assert written == [] and not any(cache.rglob("*.pt"))  # no checkpoint, summary or decoded data


def test_gradual_after_a_cut_from_a_baseline_checkpoint_prunes_at_its_shifted_steps(runs: SimpleNamespace,
                                                                                   tmp_path: Path) -> None:
    # baseline stage 0-1 (skipped: the checkpoint) → sweep 2 → cut at 3 → AGP steps at 5 and 6 → fine-tune 7;
    # shifted by the two baseline epochs: sweep 0, cut 1, steps 3 and 4, 5 epochs in all
    args = [*runs.common, "--trainer.logger.init_args.save_dir", str(tmp_path), "--baseline_ckpt", runs.baseline,
            "--sweep.start_epoch", "2", "--sweep.epochs", "1", "--prune.epoch", "3", "--prune.block", "6",
            "--sweep.head", "[16, 8]", "--trainer.max_epochs", "7",
            "--trainer.callbacks+=callbacks.GradualPrune", "--trainer.callbacks.start_epoch", "4",
            "--trainer.callbacks.num_steps", "2", "--trainer.callbacks.final_sparsity", "0.5"]
    summary = json.loads(depth_prune.main(args).read_text())
    assert summary["epochs"] == 5
    (width,) = summary["width"]
    assert width["method"] == "gradual" and width["done"] and width["pruned_at"] == [3, 4]
    assert [s["epoch"] for s in width["result"]["steps"]] == [3, 4]
    cut = mobilenet_v1_channels(0.25)[:7]
    assert summary["arch"]["channels"] == [keep_count(c, 0.5) for c in cut]  # the steps really thinned the net
    assert summary["arch"]["head_channels"] == [8, 4]
    depth, gradual = summary["stages"]
    assert depth["stage"] == "depth" and gradual["stage"] == "width" and gradual["pruned_at"] == [3, 4]
    assert gradual["params"] == summary["pruned"]["params"] < depth["params"]
