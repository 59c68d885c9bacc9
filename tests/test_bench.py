"""The benchmark scripts' logic on tiny step counts (no timing is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.bench import sweep as bench_sweep
from experiments.bench import throughput as bench_throughput
from experiments.bench.throughput import fraction_of_peak, pipelines, summarise, training_flops_per_image


def tiny(real_data_dir: Path, *extra: str) -> list[str]:
    return ["--root", str(real_data_dir / "cifar10-jpg.tar.gz"), "--device", "cpu", "--train_subset", "64",
            "--batch_size", "16", *extra]


def test_summary_takes_ratios_round_by_round() -> None:
    runs = [{"round": 0, "pipeline": "plain", "img_per_s": 100.0}, {"round": 0, "pipeline": "ours", "img_per_s": 150.0},
            {"round": 0, "pipeline": "ours_heads", "img_per_s": 120.0},
            {"round": 1, "pipeline": "plain", "img_per_s": 50.0}, {"round": 1, "pipeline": "ours", "img_per_s": 100.0},
            {"round": 1, "pipeline": "ours_heads", "img_per_s": 50.0}]
    out = summarise(runs, [1e9, 1e9], 1_000_000, pipelines("both"))
    assert out["ratio_ours_vs_plain"] == pytest.approx((1.5 + 2.0) / 2)  # not 125 / 75
    assert out["heads_overhead"] == pytest.approx((0.25 + 1.0) / 2)
    assert out["img_per_s"] == {"plain": 75.0, "ours": 125.0, "ours_heads": 85.0}
    assert out["fraction_of_peak"]["ours"] == pytest.approx(125.0 * 6e6 / 1e9)
    assert training_flops_per_image(10) == 60.0
    assert fraction_of_peak(1.0, 10, 0.0) == 0.0


def test_pipelines_per_heads_mode() -> None:
    assert pipelines("off", compiled=True, nchw=True) == ["plain", "ours", "ours_compiled", "ours_nchw"]
    assert pipelines("off") == ["plain", "ours"]
    assert pipelines("on") == ["plain", "ours_heads"]
    assert pipelines("both") == ["plain", "ours", "ours_heads"]


def test_bench_throughput_runs_every_pipeline_in_turn(real_data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = bench_throughput.main(tiny(real_data_dir, "--steps", "2", "--warmup", "1", "--rounds", "2",
                                        "--matmul_size", "64", "--workers", "0", "--nchw", "--out", str(out)))
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert [(r["round"], r["pipeline"]) for r in result["runs"]] == [
        (i, n) for i in range(2) for n in ("plain", "ours", "ours_heads", "ours_nchw")]
    for run in result["runs"]:
        assert run["images"] == 2 * 16  # exactly the timed steps, warm-up excluded
        assert run.get("nhwc") == {"plain": None, "ours_nchw": False}.get(run["pipeline"], True)
        assert run["img_per_s"] > 0
    assert result["mode"] == "cpu-32px" and result["precision_ours"] == "fp32"
    assert result["macs_per_image"] == 11_596_288
    assert len(result["peak_flops"]) == 2 and set(result["fraction_of_peak"]) == {"plain", "ours", "ours_nchw"}
    assert {"ratio_ours_vs_plain", "heads_overhead"} <= result.keys()


def test_bench_throughput_on_a_timm_backbone(real_data_dir: Path) -> None:
    """The plain loop and ours train the same timm network, the one the pipeline builds, in either layout."""
    from lightning_modules.backbones import build_net
    from lightning_modules.deploy.profiling import model_cost

    result = bench_throughput.main(tiny(real_data_dir, "--backbone", "resnet10t", "--steps", "1", "--warmup", "1",
                                        "--rounds", "1", "--heads", "off", "--nchw", "--matmul_size", "64",
                                        "--workers", "0"))
    assert result["backbone"] == "resnet10t"
    assert result["macs_per_image"] == model_cost(build_net({"backbone": "resnet10t", "num_classes": 10}), 32)["macs"]
    assert [(r["pipeline"], r.get("nhwc")) for r in result["runs"]] == [
        ("plain", None), ("ours", True), ("ours_nchw", False)]


def test_bench_throughput_refuses_more_steps_than_an_epoch(real_data_dir: Path) -> None:
    with pytest.raises(SystemExit, match="exceed one epoch of 4 batches"):
        bench_throughput.main(tiny(real_data_dir, "--steps", "4", "--warmup", "1"))


@pytest.mark.parametrize("bad", [["--warmup", "0"], ["--steps", "0"], ["--device", "cuda"]])
def test_bench_throughput_bad_arguments(bad: list[str], capsys: pytest.CaptureFixture) -> None:
    if bad == ["--device", "cuda"]:
        pytest.importorskip("torch")
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit) as err:
        bench_throughput.parse(bad)
    message = str(err.value.code)  # one line, exit status 1
    assert message.startswith("error: ") and "\n" not in message and bad[0] in message, message
    assert "usage:" not in capsys.readouterr().err


def test_gpu_mode_defaults_to_224_px(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    opts = bench_throughput.parse(["--device", "auto"])
    assert (opts.device, opts.image_size, opts.matmul_size) == ("cuda", 224, 8192)
    assert bench_throughput.parse(["--device", "cpu"]).image_size == 32


def test_bench_sweep_times_all_heads_and_one(real_data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep.json"
    result = bench_sweep.main(tiny(real_data_dir, "--eval_subset", "20", "--cut", "3", "1", "--out", str(out)))
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    runs = result["runs"]
    assert [(r["run"], r["heads"]) for r in runs] == [("sweep", 14), ("one_head@1", 1), ("one_head@3", 1)]
    assert {r["steps"] for r in runs} == {4}  # the same epoch for all
    assert result["ratio_sweep_vs_one_head"]["3"] == pytest.approx(runs[0]["seconds"] / runs[2]["seconds"])
    assert "ratio_separate_vs_sweep" not in result  # only when every cut point is timed


def test_bench_sweep_summary_adds_up_the_separate_runs() -> None:
    runs = [{"round": i, "run": "sweep", "seconds": 10.0 * (i + 1)} for i in range(2)]
    runs += [{"round": i, "run": f"one_head@{k}", "seconds": (i + 1) * (1.0 + k)} for i in range(2) for k in range(14)]
    out = bench_sweep.summarise(runs, list(range(14)), 2)
    assert out["ratio_sweep_vs_one_head"]["0"] == pytest.approx(10.0)
    assert out["separate_runs_s"] == pytest.approx((105.0 + 210.0) / 2)
    assert out["ratio_separate_vs_sweep"] == pytest.approx(10.5)  # per round: 105 / 10 and 210 / 20
    assert "14, as in the paper" in bench_sweep.format_result(
        {**out, "mode": "cpu-32px", "epochs": 1, "train_images": 64, "val_images": 20, "batch_size": 16,
         "head": "replication", "rounds": 2, "note": ""})


@pytest.mark.parametrize("bad", [["--cut", "14"], ["--cut", "x"], ["--cut", "all", "3"]])
def test_bench_sweep_refuses_a_cut_outside_the_net(bad: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as err:
        bench_sweep.parse(bad)
    message = str(err.value.code)  # one line, exit status 1
    assert message.startswith("error: --cut") and "\n" not in message, message


def test_bench_sweep_all_cuts() -> None:
    assert bench_sweep.parse(["--cut", "all"]).cut == list(range(14))
    assert bench_sweep.parse(["--cut", "13", "6", "6"]).cut == [6, 13]


def test_sweep_training_forward_stops_at_the_deepest_head() -> None:
    """On a frozen backbone the training pass runs the blocks up to the deepest head only; the heads'
    outputs are those of the full pass (same weights, same batch)."""
    import torch

    from lightning_modules.backbones.mobilenet_v1 import tap_features
    from lightning_modules.image_classifier import ImageClassifier

    torch.manual_seed(0)
    model = ImageClassifier(num_classes=10, width_mult=0.25)
    model.attach_aux_heads((8,), cut_points=[3])
    model.freeze_modules(["net"])
    model.train()
    ran: list[int] = []
    for k, block in enumerate(model.net.feature_modules):
        block.register_forward_hook(lambda *_, k=k: ran.append(k))
    x = torch.randn(4, 3, 32, 32)
    logits, aux = model.forward_with_aux(x)
    assert logits is None and ran == [0, 1, 2, 3]
    with torch.no_grad():
        full = tap_features(model.net.feature_modules, x)
    assert torch.equal(aux[3], model.aux_heads.heads["3"](full[3]))
    model.eval()
    ran.clear()
    logits, _ = model.forward_with_aux(x)
    assert logits is not None and ran == list(range(14))  # evaluation still reports the backbone's accuracy
