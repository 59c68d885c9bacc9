"""The one-run sweep against one head per cut point: both columns from the same baseline, each head's
per-epoch history, rank correlations and the rules' choices, from a real (tiny) run."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from callbacks.auxiliary_sweep import AuxiliarySweep
from datamodules import CIFAR10DataModule
from experiments import sweep_check
from lightning_modules.image_classifier import ImageClassifier
from tests.helpers import fake_data
from tests.helpers.weights import save_checkpoint, trained_like


def test_rank_correlation_is_spearman_over_common_cuts() -> None:
    a = {0: 0.1, 1: 0.5, 2: 0.4, 3: 0.9}
    assert sweep_check.rank_correlation(a, a) == pytest.approx(1.0, abs=1e-5)
    assert sweep_check.rank_correlation(a, {k: -v for k, v in a.items()}) == pytest.approx(-1.0, abs=1e-5)
    assert sweep_check.rank_correlation(a, {1: 0.2, 2: 0.3, 3: 0.4, 9: 0.0}) == pytest.approx(0.5, abs=1e-5)
    assert sweep_check.rank_correlation(a, {k: 0.3 for k in a}) is None  # a constant column ranks nothing


def test_per_point_heads_and_the_one_run_sweep_from_one_baseline(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    root = fake_data.make_image_folder(tmp_path / "cifar", {"train": 8, "test": 4})
    module = ImageClassifier(num_classes=3, width_mult=0.25)
    trained_like(module.net)
    ckpt = save_checkpoint(module, tmp_path / "baseline.ckpt")
    sweep_json = tmp_path / "depth_sweep.json"
    sweep_json.write_text(json.dumps({"rows": [{"cut": k, "acc": 0.3 + 0.1 * k} for k in range(14)]}))
    out = tmp_path / "runs" / "sweep_check_tiny.json"
    result = sweep_check.main(["--baseline_ckpt", str(ckpt), "--data_root", str(root), "--cuts", "0", "2", "5",
                               "--epochs", "2", "--batch_size", "8", "--sweep", str(sweep_json), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    printed = capsys.readouterr().out
    assert "all heads, adam: epoch 1/2, heads" in printed and "cut 5, adam: epoch 2/2, heads" in printed  # progress
    assert set(result["columns"]) == {"per_point", "one_run", "depth_run_sweep"}
    assert all(set(col) == {"0", "2", "5"} for col in result["columns"].values())
    assert all(len(h) == 2 for h in result["history"]["per_point"].values())  # one accuracy per epoch
    rho = result["spearman_vs_per_point"]
    assert rho["per_point"] is None or rho["per_point"] == pytest.approx(1.0, abs=1e-5)
    assert all(r is None or -1.0 <= r <= 1.0 for r in rho.values())
    assert all(set(r) == {"tolerance", "knee"} and set(r.values()) <= {0, 2, 5} for r in result["rules"].values())
    assert result["columns"]["depth_run_sweep"]["5"] == pytest.approx(0.8)
    from experiments.reports.sweep_check import sweep_check_sections

    section = sweep_check_sections(tmp_path / "runs")
    rows = [line for line in section if line.startswith(("| 0 |", "| 2 |", "| 5 |"))]
    assert len(rows) == 3 and rows[2].split(" | ")[4] == "80.00"  # the depth run's sweep column, in %
    assert any(line.startswith("`uv run experiments/sweep_check.py --baseline_ckpt") for line in section)


def first_check(tmp_path: Path, epochs: int) -> tuple[Path, list[str], Path, dict]:
    """A tiny trained-like baseline, the arguments of a check of it at cuts 0, 2, 5, and that check's file."""
    root = fake_data.make_image_folder(tmp_path / "cifar", {"train": 8, "test": 4})
    module = ImageClassifier(num_classes=3, width_mult=0.25)
    trained_like(module.net)
    ckpt = save_checkpoint(module, tmp_path / "baseline.ckpt")
    common = ["--baseline_ckpt", str(ckpt), "--data_root", str(root), "--cuts", "0", "2", "5", "--epochs", str(epochs),
              "--batch_size", "8"]
    earlier = tmp_path / "runs" / "sweep_check_first.json"
    return ckpt, common, earlier, sweep_check.main([*common, "--out", str(earlier)])


def test_the_default_sweep_is_measured_against_an_earlier_checks_heads(tmp_path: Path) -> None:
    """``--default_sweep --per_point_from``: the per-point and one-run columns are the earlier check's, not
    trained again; the new column is the sweep as depth_prune.py runs it by default; another recipe is refused."""
    ckpt, common, earlier, first = first_check(tmp_path, epochs=2)
    later = sweep_check.main([*common, "--default_sweep", "--per_point_from", str(earlier)])
    for name in ("per_point", "one_run"):
        assert later["columns"][name] == first["columns"][name]
        assert later["history"][name] == first["history"][name]
    assert set(later["columns"]["default_sweep"]) == {"0", "2", "5"}
    assert later["default_sweep"] == {"optimizer": "adam", "lr": 1e-3, "epochs": 1, "train_subset": None}
    assert {k: len(h) for k, h in later["history"]["default_sweep"].items()} == {"0": 1, "2": 1, "5": 1}
    assert set(later["rules"]["default_sweep"]) == {"tolerance", "knee"}
    faster = sweep_check.main([*common, "--default_sweep", "--sweep_lr", "0.01", "--per_point_from", str(earlier)])
    assert faster["default_sweep"] == {**later["default_sweep"], "lr": 0.01}
    for wrong in (["--epochs", "3"], ["--seed", "1"]):  # the earlier heads were trained another way
        with pytest.raises(SystemExit, match="error: --per_point_from .* measured another recipe"):
            sweep_check.main([*common[:-4], *wrong, "--batch_size", "8", "--default_sweep", "--per_point_from",
                              str(earlier)])
    with pytest.raises(SystemExit, match="error: --per_point_from .* add --default_sweep"):
        sweep_check.main([*common, "--per_point_from", str(earlier)])
    assert first["baseline_weights_sha256"] == later["baseline_weights_sha256"]


def test_heads_of_another_network_under_the_same_path_are_refused(tmp_path: Path) -> None:
    """A baseline retrained to the same checkpoint path is another network: an earlier check's heads are not
    its heads. Refused before training by the weights digest; an earlier check without a digest by its
    baseline's validation accuracy; and the report will not put the two side by side. Nothing is written."""
    ckpt, common, earlier, first = first_check(tmp_path, epochs=1)
    torch.manual_seed(123)
    retrained = ImageClassifier(num_classes=3, width_mult=0.25)
    trained_like(retrained.net)
    save_checkpoint(retrained, ckpt)  # same path, other weights
    later = tmp_path / "runs" / "sweep_check_first_default.json"
    with pytest.raises(SystemExit, match=r"error: --per_point_from .* measured other weights .* retrained or replaced"):
        sweep_check.main([*common, "--default_sweep", "--per_point_from", str(earlier), "--out", str(later)])
    # a check from before the digest, whose baseline scored 12.35 % (no fraction of the 12 test images)
    legacy = {**{k: v for k, v in first.items() if k != "baseline_weights_sha256"}, "baseline_val_acc": 0.123456}
    earlier.write_text(json.dumps(legacy))
    with pytest.raises(SystemExit) as exc:
        sweep_check.main([*common, "--default_sweep", "--per_point_from", str(earlier), "--out", str(later)])
    message = str(exc.value.code)
    assert message.startswith("error: --per_point_from") and "validation accuracy 12.35 %" in message
    assert "\n" not in message and not later.exists()
    from experiments.reports.sweep_check import merge_default_sweeps

    other = {**legacy, "_name": "sweep_check_first_default", "per_point_from": str(earlier),
             "baseline_val_acc": legacy["baseline_val_acc"] + 0.01,
             "default_sweep": {"optimizer": "adam", "lr": 1e-3, "epochs": 1, "train_subset": None}}
    with pytest.raises(ValueError, match="measured another baseline"):
        merge_default_sweeps([{**legacy, "_name": "sweep_check_first"}, other])


def test_a_missing_baseline_is_one_error_line(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:  # a string: printed on stderr, exit status 1
        sweep_check.main(["--baseline_ckpt", str(tmp_path / "none.ckpt")])
    message = str(exit_info.value.code)
    assert message.startswith("error:") and "\n" not in message and "none.ckpt" in message


def test_the_finding_needs_rank_agreement_and_the_same_cuts() -> None:
    from experiments.reports.sweep_check import sweep_findings

    def check(rho: float | None, one_run: dict, per_point: dict) -> dict:
        columns = {"per_point": {"0": 0.3, "1": 0.5}, "one_run": {"0": 0.3, "1": 0.5}}
        return {"spearman_vs_per_point": {"one_run": rho}, "rules": {"one_run": one_run, "per_point": per_point},
                "epochs": 4, "baseline_ckpt": "b.ckpt", "_name": "sweep_check_b", "columns": columns}

    same = {"tolerance": 8, "knee": 4}
    assert sweep_findings([])[0].endswith("| not measured yet | cannot tell |")
    assert sweep_findings([check(0.95, same, same)])[0].endswith("(1 baseline, 4 epochs) | holds |")
    assert sweep_findings([check(0.95, {"tolerance": 9, "knee": 4}, same)])[0].endswith("| does not hold |")
    assert sweep_findings([check(0.80, same, same)])[0].endswith("| does not hold |")
    assert sweep_findings([check(None, same, same)])[0].endswith("| does not hold |")
    assert sweep_findings([check(0.95, same, same)])[1].endswith("| no seed repeat of the per-point heads yet | cannot tell |")


def check_record(name: str, seed: int, per_point: dict, one_run: dict, baseline: str = "b.ckpt") -> dict:
    rules = {"tolerance": 7, "knee": 4}
    return {"_name": name, "seed": seed, "baseline_ckpt": baseline, "epochs": 4, "lr": 1e-3, "head": "replication",
            "train_subset": 10000, "optimizer": "adam, cosine", "columns": {"per_point": per_point, "one_run": one_run},
            "rules": {"per_point": rules, "one_run": rules}, "spearman_vs_per_point": {"one_run": 0.8}}


def test_disagreements_are_located_and_judged_against_the_heads_own_seed_change() -> None:
    from experiments.reports.sweep_check import discordant_pairs, head_noise, sweep_findings, where_text

    # a rising curve with a plateau (cuts 2-4 within 0.4 pp) that the one-run column orders differently
    per_point = {"0": 0.30, "1": 0.50, "2": 0.730, "3": 0.734, "4": 0.732}
    one_run = {"0": 0.31, "1": 0.49, "2": 0.735, "3": 0.731, "4": 0.733}
    assert {(i, j) for i, j, _ in discordant_pairs(per_point, one_run)} == {("2", "3"), ("2", "4"), ("3", "4")}
    assert discordant_pairs(per_point, {"0": 0.3, "1": 0.3}) == [("0", "1", pytest.approx(0.2))]  # a tie counts
    text = where_text({"columns": {"per_point": per_point, "one_run": one_run}}, "one_run")
    assert text == "orders 3 of 10 pairs of cut points differently, all among cuts 2, 3, 4, where the per-point " \
                   "heads are at most 0.40 pp apart"
    first = check_record("sweep_check_b", 0, per_point, one_run)
    assert head_noise([first]) is None
    # the per-point heads rerun with another seed move by up to 0.5 pp: the plateau's order is within it
    repeat = check_record("sweep_check_b_seed1", 1, {**per_point, "3": 0.729, "2": 0.735}, one_run)
    assert head_noise([first, repeat]) == pytest.approx(0.005)
    rows = sweep_findings([first, repeat])
    assert rows[0].endswith("| does not hold |")  # ρ 0.8 misses the pre-registered bar
    assert "change 0.50 pp; pairs beyond it ordered differently: 0, 0 (1 baseline, 4 epochs)" in rows[1]
    assert rows[1].endswith("| holds |")
    # another baseline is no repeat, and a one-run column that swaps two clearly separated cuts fails
    other = check_record("sweep_check_c", 0, per_point, {**one_run, "0": 0.6}, baseline="c.ckpt")
    assert head_noise([first, other]) is None
    # nor is a baseline retrained under the same path (another validation accuracy, or other weights)
    assert head_noise([{**first, "baseline_val_acc": 0.74}, {**repeat, "baseline_val_acc": 0.7427}]) is None
    assert head_noise([{**first, "baseline_weights_sha256": "a"}, {**repeat, "baseline_weights_sha256": "b"}]) is None
    assert "(2 baselines" in sweep_findings([{**first, "baseline_val_acc": 0.74}, {**repeat, "baseline_val_acc": 0.75}])[0]
    rows = sweep_findings([first, repeat, other])
    assert "(2 baselines, 4 epochs)" in rows[0] and rows[1].endswith("| does not hold |")


def test_a_default_sweep_check_joins_the_check_whose_heads_it_reused() -> None:
    from experiments.reports.sweep_check import head_noise, merge_default_sweeps, sweep_findings

    per_point = {"0": 0.30, "1": 0.50, "2": 0.730}
    first = check_record("sweep_check_b", 0, per_point, per_point)
    repeat = check_record("sweep_check_b_seed1", 1, per_point, per_point)

    def default(name: str, of: str, tolerance: int, rho: float) -> dict:
        return {"_name": name, "per_point_from": f"docs/runs/{of}.json", "seed": 0, "command": "python x",
                "wall_time_s": 60.0, "default_sweep": {"optimizer": "adam", "lr": 1e-3, "epochs": 1},
                "columns": {"default_sweep": {"0": 0.2, "1": 0.4, "2": 0.7}},
                "spearman_vs_per_point": {"default_sweep": rho},
                "rules": {"default_sweep": {"tolerance": tolerance, "knee": 4}}}

    checks = merge_default_sweeps([first, repeat, default("sweep_check_b_default", "sweep_check_b", 7, 1.0)])
    assert [c["_name"] for c in checks] == ["sweep_check_b", "sweep_check_b_seed1"]  # the heads counted once
    assert checks[0]["columns"]["default_sweep"]["2"] == 0.7 and "default_sweep" not in checks[1]["columns"]
    assert checks[0]["sweep_variants"]["default_sweep"]["_name"] == "sweep_check_b_default"
    assert head_noise(checks) == 0.0  # the default check is no seed repeat of the per-point heads
    rows = sweep_findings(checks)
    assert len(rows) == 3 and "runs by default (adam lr 0.001, 1 epoch(s)" in rows[1] and rows[1].endswith("| holds |")
    wrong = merge_default_sweeps([check_record("sweep_check_b", 0, per_point, per_point),
                                  default("sweep_check_b_default", "sweep_check_b", 9, 1.0)])
    assert sweep_findings(wrong)[1].endswith("| does not hold |")  # another tolerance cut than the heads'
    longer = default("sweep_check_b_default2", "sweep_check_b", 6, 0.5)
    longer["default_sweep"] = {**longer["default_sweep"], "epochs": 2}
    both = merge_default_sweeps([check_record("sweep_check_b", 0, per_point, per_point),
                                 default("sweep_check_b_default", "sweep_check_b", 7, 1.0), longer])
    assert set(both[0]["columns"]) == {"per_point", "one_run", "default_sweep", "sweep_2_epochs"}
    sixteen = {**longer, "_name": "sweep_check_b_default16", "default_sweep": {**longer["default_sweep"], "epochs": 16}}
    # columns by sweep length, not by file name ("default16" sorts before "default2")
    ordered = merge_default_sweeps([check_record("sweep_check_b", 0, per_point, per_point), sixteen, longer])
    assert list(ordered[0]["columns"])[-2:] == ["sweep_2_epochs", "sweep_16_epochs"]
    assert both[0]["rules"]["sweep_2_epochs"]["tolerance"] == 6
    assert sweep_findings(both)[1].endswith("| holds |")  # the Findings row judges the default length only
    # the 2-epoch column (0.5 + …) against the per-point heads (0.30, 0.50, 0.73): it leads nowhere here
    from experiments.reports.sweep_reference import reference_gap, reference_gap_text

    assert reference_gap_text(both[0]) is None
    ahead = {**both[0], "columns": {**both[0]["columns"], "sweep_2_epochs": {"0": 0.40, "1": 0.52, "2": 0.70}}}
    assert reference_gap(ahead) == ("sweep_2_epochs", "0", pytest.approx(0.10))
    assert reference_gap_text(ahead).startswith("*one run, the default's optimiser for 2 epochs* beats the per-point "
                                                "heads by up to 10.00 pp (cut 0)")
    assert "the reference had not converged" in sweep_findings([ahead])[1]
    with pytest.raises(FileNotFoundError, match="sweep_check_gone"):
        merge_default_sweeps([default("sweep_check_x_default", "sweep_check_gone", 7, 1.0)])
    # a candidate learning rate: a column of its own, never taken for a length of the default-rate sweep
    from experiments.reports.sweep_check import column_title
    from experiments.reports.sweep_reference import reference_text, sweep_lengths

    fast = {**longer, "_name": "sweep_check_b_lr", "default_sweep": {**longer["default_sweep"], "epochs": 8, "lr": 0.01}}
    with_fast = merge_default_sweeps([check_record("sweep_check_b", 0, per_point, per_point),
                                      default("sweep_check_b_default", "sweep_check_b", 7, 1.0), longer, fast])
    assert set(with_fast[0]["columns"]) == {"per_point", "one_run", "default_sweep", "sweep_2_epochs",
                                            "sweep_8_epochs_lr0.01"}
    assert sweep_lengths(with_fast[0]) == [(1, "default_sweep"), (2, "sweep_2_epochs")]
    assert column_title("sweep_8_epochs_lr0.01") == "one run, the default's optimiser at lr 0.01 for 8 epochs"
    assert "8 epochs: tolerance" not in reference_text(with_fast[0])


def test_a_knee_that_differs_is_shown_against_the_per_point_heads_own_margin() -> None:
    from experiments.reports.sweep_check import knee_margin_text
    from lightning_modules.pruning.depth_cut import CutPoint, knee_distances, knee_point, pareto_front

    params = {"0": 10, "1": 100, "2": 1000, "3": 10000}
    per_point = {"0": 0.30, "1": 0.60, "2": 0.68, "3": 0.70}
    front = pareto_front([CutPoint(int(k), p, p, per_point[k]) for k, p in params.items()])
    dists = knee_distances(front)
    # log10 params 1..4 → x 0, 1/3, 2/3, 1; accuracy 0.3..0.7 → y 0, 0.75, 0.95, 1: cut 1 is farthest above
    assert dists[1] == pytest.approx((0.75 - 1 / 3) / 2 ** 0.5) and dists[0] == dists[3] == pytest.approx(0.0)
    assert knee_point(front).cut == max(dists, key=dists.get) == 1
    check = {"costs": {k: {"params": p, "macs": p} for k, p in params.items()},
             "columns": {"per_point": per_point, "one_run": per_point},
             "rules": {"per_point": {"knee": 1}, "one_run": {"knee": 2}}}
    text = knee_margin_text(check, "one_run")
    assert text == (f"its knee is cut 2, the per-point heads' cut 1: on the per-point column cut 1 lies {dists[1]:.3f} "
                    f"above the chord and cut 2 {dists[2]:.3f} above the chord")
    assert knee_margin_text({**check, "rules": {"per_point": {"knee": 1}, "one_run": {"knee": 1}}}, "one_run") is None


def test_the_reports_default_sweep_length_is_the_callbacks() -> None:
    from callbacks.auxiliary_sweep import AuxiliarySweep
    from experiments.reports.sweep_check import DEFAULT_SWEEP_EPOCHS

    assert DEFAULT_SWEEP_EPOCHS == AuxiliarySweep().epochs



class PinHeads(L.Callback):
    """After the sweep attaches its heads: give head ``k`` the same initial weights whichever other heads
    exist (drawn from its own seed), and restart the global RNG each epoch, so the augmentations do not
    depend on how many heads drew from it first."""

    def __init__(self) -> None:
        self.initial: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 0:
            for k in pl_module.aux_heads.cut_points:
                torch.manual_seed(100 + k)
                head = pl_module.aux_heads.heads[str(k)]
                for layer in head.modules():
                    if layer is not head and hasattr(layer, "reset_parameters"):
                        layer.reset_parameters()  # in place: the optimiser keeps the same tensors
                self.initial[k] = {n: t.clone() for n, t in head.state_dict().items()}
        torch.manual_seed(1000 + trainer.current_epoch)


def fit_heads(ckpt: Path, root: Path, cuts: list[int], optimizer: str | None) -> tuple[dict, dict]:
    """The sweep stage alone (2 epochs) from ``ckpt`` with heads at ``cuts``: each head's initial and final
    weights."""
    L.seed_everything(0, verbose=False)
    module = ImageClassifier.load_from_checkpoint(str(ckpt), map_location="cpu", scheduler="cosine")
    data = CIFAR10DataModule(root=str(root), image_size=32, batch_size=8, num_workers=0)
    sweep, pin = AuxiliarySweep(start_epoch=0, epochs=2, head="paper", cut_points=cuts, optimizer=optimizer), PinHeads()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[sweep, pin])
    trainer.fit(module, datamodule=data)
    return pin.initial, {k: dict(module.aux_heads.heads[str(k)].state_dict()) for k in cuts}


@pytest.mark.parametrize("optimizer", ["adam", None])  # the sweep's default, and the model's SGD with momentum
def test_heads_trained_in_one_fit_end_where_each_trained_alone_ends(tmp_path: Path, optimizer: str | None) -> None:
    """The premise of the one-run sweep: on a frozen backbone the heads share no parameter and every optimiser
    here updates each parameter from its own gradient, so one fit of all heads trains each exactly as a fit of
    that head alone would (same initial weights, same batches). What separates the one-run column from
    per-point heads is then the run's randomness and its length, never the joint training itself."""
    root = fake_data.make_image_folder(tmp_path / "cifar", {"train": 8, "test": 4})
    module = ImageClassifier(num_classes=3, width_mult=0.25)
    trained_like(module.net)
    ckpt = save_checkpoint(module, tmp_path / "baseline.ckpt")
    initial, together = fit_heads(ckpt, root, [1, 4, 9], optimizer)
    for k in (1, 9):
        alone = fit_heads(ckpt, root, [k], optimizer)[1][k]
        assert alone.keys() == together[k].keys()
        for name, tensor in alone.items():
            torch.testing.assert_close(together[k][name], tensor, rtol=1e-5, atol=1e-6, msg=f"head {k} {name}")
        assert not torch.equal(initial[k]["fc.weight"], together[k]["fc.weight"])  # the heads did train


def test_the_longest_sweep_stands_as_converged_heads_once_half_as_long_a_sweep_is_within_a_point() -> None:
    """The default sweep is judged against the longest one-run sweep only when the step to it from the next
    shorter one moved every cut point by under a point; else the Findings cannot tell."""
    from experiments.reports.sweep_reference import converged_findings, converged_reference, reference_text

    costs = {str(k): {"params": 10 * (k + 1), "macs": 10 * (k + 1)} for k in range(4)}

    def check(*sweeps: tuple[int, list[float]]) -> dict:
        columns = {"per_point": dict(zip("0123", [0.30, 0.50, 0.60, 0.62], strict=True))}
        for epochs, accs in sweeps:
            columns["default_sweep" if epochs == 1 else f"sweep_{epochs}_epochs"] = dict(zip("0123", accs, strict=True))
        rules = {name: {"tolerance": 3, "knee": 1} for name in columns}
        return {"_name": "c", "columns": columns, "rules": rules, "costs": costs}

    climbing = check((1, [0.30, 0.50, 0.60, 0.62]), (2, [0.40, 0.55, 0.61, 0.62]))
    assert converged_reference(climbing) == (None, "1 → 2 epochs moves cut 0 by 10.00 pp, the most of any cut point")
    assert converged_findings([climbing])[0].endswith("| cannot tell (no converged reference) |")
    assert reference_text(climbing).startswith("No column stands as converged heads yet")
    assert reference_text(climbing).endswith("by sweep length: 1 epoch: tolerance 3, knee 1; 2 epochs: tolerance 3, knee 1")
    settled = check((1, [0.30, 0.50, 0.60, 0.62]), (2, [0.40, 0.55, 0.61, 0.62]), (4, [0.405, 0.556, 0.612, 0.621]))
    assert converged_reference(settled)[0] == "sweep_4_epochs"
    row = converged_findings([settled])[0]
    assert "ρ 1.000 against one run, the default's optimiser for 4 epochs" in row and row.endswith("| holds |")
    # the default ranks cuts 2 and 3 the other way round: ρ 0.8 < 0.9
    swapped = check((1, [0.30, 0.50, 0.63, 0.62]), (2, [0.40, 0.55, 0.61, 0.62]), (4, [0.405, 0.556, 0.612, 0.621]))
    assert converged_findings([swapped])[0].endswith("| does not hold |")
    # a check without a reference is listed but decides nothing
    row = converged_findings([settled, climbing])[0]
    assert row.endswith("| holds |") and "`c`: no converged reference (1 → 2 epochs" in row
    # the reference needs a sweep of half its epochs or fewer: 3 → 4 epochs shows nothing
    close = check((1, [0.30, 0.50, 0.60, 0.62]), (3, [0.40, 0.55, 0.61, 0.62]), (4, [0.405, 0.556, 0.612, 0.621]))
    assert converged_reference(close) == (None, "1 → 4 epochs moves cut 0 by 10.50 pp, the most of any cut point")
    assert converged_findings([check((1, [0.3, 0.4, 0.5, 0.6]))]) == []


def test_a_faster_learning_rate_can_stand_as_converged_heads_judged_only_against_its_own_lengths() -> None:
    """Lengths are compared at one learning rate: a candidate rate measured at 4 and 8 epochs that agree
    within a point is a converged reference even where the default rate's lengths still climb; a lone
    length at a rate shows nothing, and the default's rate is preferred when both settled."""
    from experiments.reports.sweep_reference import (
        converged_findings,
        converged_reference,
        reference_gap,
        reference_text,
    )

    costs = {str(k): {"params": 10 * (k + 1), "macs": 10 * (k + 1)} for k in range(4)}

    def check(columns: dict[str, list[float]]) -> dict:
        columns = {"per_point": [0.30, 0.50, 0.60, 0.62], **columns}
        return {"_name": "c", "columns": {n: dict(zip("0123", a, strict=True)) for n, a in columns.items()},
                "rules": {n: {"tolerance": 3, "knee": 1} for n in columns}, "costs": costs}

    climbing = {"default_sweep": [0.30, 0.50, 0.60, 0.62], "sweep_2_epochs": [0.40, 0.55, 0.61, 0.62]}
    fast = {"sweep_4_epochs_lr0.01": [0.50, 0.60, 0.63, 0.64], "sweep_8_epochs_lr0.01": [0.505, 0.602, 0.631, 0.64]}
    both = check({**climbing, **fast})
    assert converged_reference(both) == ("sweep_8_epochs_lr0.01",
                                         "at lr 0.01, 4 → 8 epochs moves cut 0 by 0.50 pp, the most of any cut point")
    assert converged_findings([both])[0].endswith("| holds |")  # same cuts, same order as the default
    assert reference_gap(both) == ("sweep_8_epochs_lr0.01", "0", pytest.approx(0.205))
    assert "at lr 0.01, 4 epochs: tolerance 3, knee 1; 8 epochs" not in reference_text(both)  # it stands: no listing
    unsettled = check({**climbing, "sweep_4_epochs_lr0.01": [0.50, 0.60, 0.63, 0.63],
                       "sweep_8_epochs_lr0.01": [0.56, 0.60, 0.63, 0.63]})
    assert converged_reference(unsettled) == (None, "1 → 2 epochs moves cut 0 by 10.00 pp, the most of any cut point; "
                                              "at lr 0.01, 4 → 8 epochs moves cut 0 by 6.00 pp, the most of any cut point")
    assert reference_text(unsettled).endswith("; at lr 0.01, 4 epochs: tolerance 3, knee 1; 8 epochs: tolerance 3, knee 1")
    # accuracies still moving but the decision not: the Findings say so beside the default's cuts
    row = converged_findings([unsettled])[0]
    assert "but 1 and 2 epochs choose the same cuts, tolerance 3 and knee 1; 4 and 8 epochs at lr 0.01 choose the " \
           "same cuts, tolerance 3 and knee 1; the default: tolerance 3, knee 1" in row
    assert row.endswith("| cannot tell (no converged reference) |")
    unsettled["rules"]["sweep_8_epochs_lr0.01"] = {"tolerance": 2, "knee": 1}
    assert "at lr 0.01 choose" not in converged_findings([unsettled])[0]
    lone = check({**climbing, "sweep_8_epochs_lr0.01": [0.505, 0.602, 0.631, 0.64]})
    assert converged_reference(lone)[0] is None  # one length at that rate: no halving step
    settled = {"sweep_4_epochs": [0.41, 0.55, 0.61, 0.62]}
    assert converged_reference(check({**climbing, **settled, **fast}))[0] == "sweep_4_epochs"  # the default's rate first


def test_the_check_trains_on_the_data_the_baseline_was_trained_on(tmp_path: Path) -> None:
    """A baseline trained on Imagenette at 40 px is checked on Imagenette at 40 px (its checkpoint records its
    data module) without data options: never on CIFAR-10 at 32 px, the defaults of a CIFAR-only check."""
    source = fake_data.make_imagenette_folder(tmp_path / "src", n_train=4, n_val=2)
    module = ImageClassifier(num_classes=3, width_mult=0.25)
    trained_like(module.net)
    ckpt = save_checkpoint(module, tmp_path / "baseline.ckpt")
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    recorded = {"_class_path": "datamodules.ImagenetteDataModule", "root": str(source.parent), "image_size": 40,
                "val_fraction": 0.0, "cache_dir": str(tmp_path / "cache"), "batch_size": 64, "num_workers": 2}
    torch.save(saved | {"datamodule_hyper_parameters": recorded}, ckpt)
    common = ["--baseline_ckpt", str(ckpt), "--cuts", "0", "3", "--epochs", "1", "--batch_size", "4"]
    own = sweep_check.main(common)
    at_32 = sweep_check.main([*common, "--image_size", "32"])
    macs = {k: own["costs"][k]["macs"] for k in ("0", "3")}
    assert all(macs[k] > at_32["costs"][k]["macs"] for k in macs)  # 40 px, not 32
    assert own["baseline_val_acc"] is not None

    torch.save(saved | {"datamodule_hyper_parameters": {"_class_path": "elsewhere.DataModule"}}, ckpt)
    with pytest.raises(SystemExit) as exit_info:
        sweep_check.main(common)
    message = str(exit_info.value.code)
    assert message.startswith("error: --baseline_ckpt") and "elsewhere.DataModule" in message and "\n" not in message


def test_two_networks_under_one_checkpoint_path_are_told_apart_in_the_report() -> None:
    from experiments.reports.sweep_check import namesake_text

    per_point = {"0": 0.30, "1": 0.50, "2": 0.730}
    old = {**check_record("sweep_check_b", 1, per_point, per_point), "baseline_val_acc": 0.7391}
    rerun = {**check_record("sweep_check_brerun", 1, per_point, per_point), "baseline_val_acc": 0.7427,
             "baseline_weights_sha256": "f00"}
    assert namesake_text(old, [old]) == []
    text = namesake_text(rerun, [old, rerun])[0]
    assert text.startswith("**Another network under the same path.** `sweep_check_b` (73.91 %)")
    assert namesake_text(old, [old, {**old, "_name": "sweep_check_b_seed2", "seed": 2}]) == []  # a seed repeat
