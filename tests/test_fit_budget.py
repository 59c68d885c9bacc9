"""The budget search on any backbone: the candidates it sizes are the nets the run builds, a latency budget
is predicted from instruction counts and verified on the emulated core, and every refusal is one line
before any training."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lightning_modules.deploy import cortexm
from lightning_modules.deploy.mcu_latency import latency_ms
from lightning_modules.pruning.budget import KB, Budget, measured_overshoot
from tests.helpers import fake_data
from tests.helpers.cli_args import cli_args

BUDGET_ARGS = ["--search.proxy_steps", "2", "--search.proxy_images", "8", "--deploy.calib_images", "16",
               "--data.num_workers", "0"]


def tflite_installed() -> None:
    from lightning_modules.deploy.tflite_file import MissingDependency, require_tflite

    try:
        require_tflite()
    except MissingDependency as err:
        pytest.skip(f"optional dependency group not installed: {err}")


def trained_baseline(tmp_path: Path, backbone: str, extra: list[str] = ()) -> tuple[list[str], str]:
    """A one-epoch baseline of ``backbone`` on a tiny fake CIFAR folder: the common arguments and its checkpoint."""
    from experiments import train

    root = fake_data.make_image_folder(tmp_path / "cifar", {"train": 16, "test": 4})
    common = [*cli_args(root, tmp_path / "logs", backbone), *extra]
    base = json.loads(train.main([*common, "--trainer.max_epochs", "1"]).read_text())
    return common, base["last_checkpoint"]


# ------------------------------------------------------------------------------------------- refusals
def test_measured_overshoot_covers_every_limit() -> None:
    measured = {"flash_bytes": 50 * KB, "arena_bytes": 40 * KB, "macs": 3_000_000, "latency_ms": 250.0}
    ratios = measured_overshoot(measured, Budget(flash_kb=100, ram_kb=32, macs=2_000_000, latency_ms=500))
    assert ratios == pytest.approx({"flash": 0.5, "ram": 1.25, "macs": 1.5, "latency": 0.5})
    assert set(measured_overshoot(measured, Budget(flash_kb=100, ram_kb=64))) == {"flash", "ram"}


def test_latency_budget_without_the_toolchain_stops_before_training(tmp_path: Path, monkeypatch) -> None:
    tflite_installed()
    from experiments import fit_budget

    monkeypatch.setenv("TINYML_MCU_BUNDLE", str(tmp_path / "no-such-archive.tar.gz"))
    root = fake_data.make_image_folder(tmp_path / "cifar", {"train": 2, "test": 1})
    with pytest.raises(SystemExit) as exit_info:
        fit_budget.main(["--baseline_ckpt", str(tmp_path / "never_read.ckpt"), "--budget.flash_kb", "256",
                         "--budget.ram_kb", "64", "--budget.latency_ms", "100", "--data.root", str(root),
                         "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)])
    message = str(exit_info.value.code)  # a string: printed on stderr, exit status 1
    assert message.startswith("error: Cortex-M firmware needs") and "\n" not in message
    assert "no-such-archive.tar.gz" in message
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--search.cuts", "[0, 99]"], r"error: --search.cuts \[99\]: this mobilenet_v1 has cut points 0\.\.13$"),
    (["--budget.clock_mhz", "0"], r"error: invalid configuration: budget.clock_mhz must be positive, got 0.0$"),
    (["--budget.latency_ms", "100", "--budget.core", "cortex-m0"], r"error: no instruction-count table for cortex-m0 \(fitted: "),
])
def test_bad_search_settings_are_one_line_before_training(tmp_path: Path, flags: list[str], message: str) -> None:
    tflite_installed()
    from experiments import fit_budget

    root = fake_data.make_image_folder(tmp_path / "cifar", {"train": 2, "test": 1})
    with pytest.raises(SystemExit) as exit_info:
        fit_budget.main(["--baseline_ckpt", str(tmp_path / "never_read.ckpt"), "--budget.flash_kb", "256",
                         "--budget.ram_kb", "64", "--search.widths", "[1.0]", *flags, "--data.root", str(root), "--trainer.logger", "false",
                         "--trainer.default_root_dir", str(tmp_path)])
    text = str(exit_info.value.code)  # a string: printed on stderr, exit status 1
    assert "\n" not in text and re.match(message, text), text


# ------------------------------------------------------------------------------------------ real runs
@pytest.mark.slow
def test_a_timm_net_fits_a_budget_as_the_candidate_it_chose(tmp_path: Path) -> None:
    """resnet10t through sweep → choice → cut → width stage → int8 TFLM: the net the run ends with is the
    candidate sized before training (same description, same predicted flash and arena), and TFLM's
    figures are within the estimator's tolerance of the prediction."""
    tflite_installed()
    from experiments import fit_budget

    common, baseline = trained_baseline(tmp_path, "resnet10t")
    summary = json.loads(fit_budget.main([
        *common, *BUDGET_ARGS, "--baseline_ckpt", baseline, "--budget.flash_kb", "120", "--budget.ram_kb", "64",
        "--search.cuts", "[1, 2]", "--search.widths", "[1.0, 0.5]"]).read_text())
    result = summary["fit_budget"]
    chosen, measured = result["chosen"], result["measured"]
    assert [c["name"] for c in result["candidates"]] == [f"cut{k}_w{w:g}_32px" for k in (1, 2) for w in (1.0, 0.5)]
    assert summary["arch"] == json.loads(json.dumps(chosen["arch"]))
    assert (measured["est_flash_bytes"], measured["est_arena_bytes"]) == (chosen["flash_bytes"], chosen["ram_bytes"])
    assert measured["arena_bytes"] == pytest.approx(chosen["ram_bytes"], rel=0.01)
    assert measured["flash_bytes"] == pytest.approx(chosen["flash_bytes"], rel=0.05)
    assert result["fits_measured"] and chosen["flash_bytes"] <= 120 * KB


@pytest.mark.slow
def test_a_latency_budget_chooses_fine_tunes_and_verifies_in_emulation(tmp_path: Path) -> None:
    """MobileNetV1-0.25 under flash, RAM and a Cortex-M4 latency: every candidate has predicted
    instructions, the chosen one's firmware runs on the emulated core with the host interpreter's output,
    its measured instructions are within the cost model's tolerance of the prediction, and the latency is
    the calibrated conversion of the count."""
    tflite_installed()
    missing = cortexm.missing_toolchain()
    if missing:
        pytest.skip(f"Cortex-M toolchain incomplete: {'; '.join(missing)}")
    from experiments import fit_budget
    from lightning_modules.deploy.mcu_cost import COEFFICIENTS

    if "cortex-m4" not in COEFFICIENTS:  # fitted by experiments/bench/fit_mcu_cost.py
        pytest.skip("no fitted Cortex-M4 instruction-count table in lightning_modules/deploy/mcu_cost.py yet")

    common, baseline = trained_baseline(tmp_path, "mobilenet_v1", ["--model.width_mult", "0.25"])
    summary = json.loads(fit_budget.main([
        *common, *BUDGET_ARGS, "--baseline_ckpt", baseline, "--budget.flash_kb", "200", "--budget.ram_kb", "64",
        "--budget.latency_ms", "60", "--budget.clock_mhz", "120", "--search.cuts", "[2, 4, 13]",
        "--search.widths", "[1.0, 0.5]"]).read_text())
    result = summary["fit_budget"]
    chosen, measured = result["chosen"], result["measured"]
    assert all(c["instructions"] > 0 and c["latency_ms"] == pytest.approx(latency_ms(c["instructions"], 120))
               for c in result["candidates"])
    assert chosen["latency_ms"] <= 60
    assert measured["instructions"] == pytest.approx(chosen["instructions"], rel=0.05)  # the model's stated bound
    assert measured["latency_ms"] == pytest.approx(latency_ms(measured["instructions"], 120))
    assert measured["firmware"]["flash_bytes"] > measured["flash_bytes"]  # the runtime and kernels on top
    record = json.loads(Path(measured["firmware_dir"], "firmware.json").read_text())
    assert record["target"]["instructions"] == measured["instructions"]
    assert record["target"]["outputs"] == record["expected_output"]
    assert result["fits_measured"] == (result["measured_overshoot"]["latency"] <= 1.0
                                       and result["measured_overshoot"]["flash"] <= 1.0
                                       and result["measured_overshoot"]["ram"] <= 1.0)
