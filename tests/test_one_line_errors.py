"""Property: every entry point answers every bad argument or file with exactly one ``error:`` line.

The cases are generated: each file option of each entry point is given every kind of bad file
(:data:`BAD_FILES`), each numeric option a set of values that cannot work, plus stop conditions that end a
run before its stage. For every case: exit status != 0, exactly one line starting with ``error:`` on
stderr (or as the ``SystemExit`` message, which Python prints there), no traceback, and every file that
existed before byte-identical after. Runs in-process (``main(args)``); two cases go through a real process.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from experiments import depth_prune, fit_budget, sweep_check, train, width_prune
from experiments.bench import latency as bench_latency
from experiments.bench import profile_model
from experiments.bench import startup as bench_startup
from experiments.bench import sweep as bench_sweep
from experiments.bench import throughput as bench_throughput
from experiments.reports import deploy as deploy_report
from experiments.reports import results as report
from lightning_modules.deploy.tflite_file import TFLITE_MODULES
from tests.helpers import fake_data
from tests.helpers.cli_args import base_args

REPO = Path(__file__).resolve().parent.parent


@dataclass
class World:
    tmp: Path
    data: Path
    checkpoint: Path  # last.ckpt of an earlier run, id "earlier"
    out: Path  # that run's --trainer.default_root_dir
    guarded: list[Path]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, session_cache_dir: Path) -> World:
    tmp = tmp_path_factory.mktemp("one-line")
    data = fake_data.make_image_folder(tmp / "data", {"train": 6, "test": 2})
    summary = train.main([*base_args(data, tmp / "earlier"), "--trainer.logger.init_args.id", "earlier"])
    return World(tmp, data, summary.parent / "checkpoints" / "last.ckpt", tmp / "earlier",
                 [tmp / "data", tmp / "earlier", session_cache_dir])


def snapshot(paths: list[Path]) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest()
            for base in paths for p in sorted(base.rglob("*")) if p.is_file() and "wandb" not in p.parts}


# ------------------------------------------------------------------------------ bad files, generated
def _missing(w: World, d: Path) -> Path:
    return d / "no-such-file.ckpt"


def _folder(w: World, d: Path) -> Path:
    (d / "a-folder").mkdir()
    return d / "a-folder"


def _random_bytes(w: World, d: Path) -> Path:
    (d / "random.ckpt").write_bytes(os.urandom(4096))
    return d / "random.ckpt"


def _truncated(w: World, d: Path) -> Path:
    (d / "cut.ckpt").write_bytes(w.checkpoint.read_bytes()[: w.checkpoint.stat().st_size // 3])
    return d / "cut.ckpt"


def _text(w: World, d: Path) -> Path:
    (d / "notes.txt").write_text("trainer: [unclosed\n")
    return d / "notes.txt"


BAD_FILES: dict[str, Callable[[World, Path], Path]] = {
    "missing": _missing, "folder": _folder, "random bytes": _random_bytes, "truncated": _truncated, "text": _text,
}

Args = Callable[[World, Path], list[str]]


def run_args(*extra: str) -> Args:
    return lambda w, d: [*base_args(w.data, d / "run"), *extra]


def file_case(option: str, make: Callable[[World, Path], Path], *extra: str, prefix: str = "") -> Args:
    return lambda w, d: [*extra, option, f"{prefix}{make(w, d)}"]


def run_file_case(option: str, make: Callable[[World, Path], Path], *extra: str) -> Args:
    return lambda w, d: [*base_args(w.data, d / "run"), *extra, option, str(make(w, d))]


DEPTH = ("--trainer.max_epochs", "4", "--sweep.start_epoch", "2", "--sweep.epochs", "1", "--prune.epoch", "3",
         "--sweep.head", "[16, 8]")
WIDTH = ("--trainer.max_epochs", "3", "--trainer.callbacks+=callbacks.OneShotPrune", "--trainer.callbacks.epoch", "2")


def _cases() -> dict[str, tuple[Callable, Args]]:
    cases: dict[str, tuple[Callable, Args]] = {}
    for kind, make in BAD_FILES.items():
        cases[f"train --ckpt_path {kind}"] = (train.main, run_file_case("--ckpt_path", make))
        cases[f"depth_prune --baseline_ckpt {kind}"] = (depth_prune.main, run_file_case("--baseline_ckpt", make, *DEPTH))
        cases[f"width_prune --baseline_ckpt {kind}"] = (width_prune.main, run_file_case("--baseline_ckpt", make))
        cases[f"profile_model --ckpt {kind}"] = (profile_model.main, file_case("--ckpt", make, "--image_size", "32"))
        cases[f"deploy_report --net {kind}"] = (deploy_report.main, file_case("--net", make, prefix="n="))
        if kind != "truncated":
            cases[f"train --config {kind}"] = (train.main, run_file_case("--config", make))
        cases[f"sweep_check --baseline_ckpt {kind}"] = (sweep_check.main, file_case("--baseline_ckpt", make))
        if kind != "truncated":
            cases[f"sweep_check --per_point_from {kind}"] = (sweep_check.main, lambda w, d, make=make: [
                "--baseline_ckpt", str(w.checkpoint), "--data_root", str(w.data), "--default_sweep",
                "--per_point_from", str(make(w, d))])
    for name, text in (("a list", "[1, 2]"), ("another JSON", '{"rows": []}')):
        cases[f"sweep_check --per_point_from {name}"] = (sweep_check.main, lambda w, d, text=text: [
            "--baseline_ckpt", str(w.checkpoint), "--data_root", str(w.data), "--default_sweep",
            "--per_point_from", str(_write(d / "check.json", text))])
    for option, value in (("--cuts", "14"), ("--cuts", "-1"), ("--lr", "0"), ("--lr", "nan"), ("--tolerance", "-3"),
                          ("--epochs", "0"), ("--sweep_epochs", "0"), ("--train_subset", "0"),
                          ("--num_workers", "-1")):
        cases[f"sweep_check {option} {value}"] = (sweep_check.main, lambda w, d, o=option, v=value: [
            "--baseline_ckpt", str(w.checkpoint), "--data_root", str(w.data), o, v])
    cases["fit_budget --baseline_ckpt truncated"] = (fit_budget.main, run_file_case("--baseline_ckpt", _truncated))
    numeric = {"--model.lr": ["0", "-0.1", "fast"], "--trainer.max_epochs": ["0", "-3"],
               "--trainer.max_steps": ["0"], "--trainer.limit_train_batches": ["0"],
               "--data.batch_size": ["0", "-4", "x"], "--data.image_size": ["0", "8", "-32"],
               "--model.in_chans": ["1", "4"]}  # the loaders decode every image to RGB
    for option, value in ((o, v) for o, values in numeric.items() for v in values):
        cases[f"train {option} {value}"] = (train.main, run_args(option, value))
    for main, name, extra in ((depth_prune.main, "depth_prune", DEPTH), (width_prune.main, "width_prune", WIDTH)):
        for limit in ("--trainer.max_steps 2", "--trainer.max_epochs 1"):  # stops before the stage
            base = (lambda w, d, extra=extra: ["--baseline_ckpt", str(w.checkpoint), *extra]) \
                if name == "width_prune" else (lambda w, d, extra=extra: list(extra))
            cases[f"{name} {limit}"] = (main, lambda w, d, base=base, limit=limit: [
                *base_args(w.data, d / "run"), *base(w, d), *limit.split()])
    cases["train reuses run id"] = (train.main, lambda w, d: [*base_args(w.data, w.out),
                                                             "--trainer.logger.init_args.id", "earlier"])
    cases["train unknown flag"] = (train.main, run_args("--trainer.max_epochz", "2"))
    for flag, value in itertools.product(("--backbone", "--backbone_kwargs", "--image_size", "--width_mult"),
                                         ("no_such_net", "{not json")):
        cases[f"profile_model {flag} {value}"] = (profile_model.main, lambda w, d, f=flag, v=value: [f, v])
    cases["deploy_report --net without NAME="] = (deploy_report.main, lambda w, d: ["--net", str(w.checkpoint)])
    cases["report truncated summary"] = (report.main, lambda w, d: _summary_dir(d, '{"stage": "depth_pr'))
    cases["report summary not an object"] = (report.main, lambda w, d: _summary_dir(d, "[1, 2]"))
    cases["report nothing complete"] = (report.main, lambda w, d: _summary_dir(
        d, json.dumps({"stage": "depth_prune", "chosen_cut": None, "sweep": [], "epochs": 4})))
    for main, args in ((bench_throughput.main, ["--steps", "0"]), (bench_throughput.main, ["--root", "/nonexistent"]),
                       (bench_sweep.main, ["--epochs", "0"]), (bench_sweep.main, ["--cut", "x"]),
                       (bench_latency.main, ["--runs", "-1"]), (bench_latency.main, ["--only", "no_such_row"]),
                       (bench_startup.main, ["--runs", "0"])):
        cases[f"{main.__module__.split('.')[-1]} {' '.join(args)}"] = (main, lambda w, d, a=args: list(a))
    return cases


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _summary_dir(d: Path, text: str) -> list[str]:
    (d / "runs" / "r1").mkdir(parents=True)
    (d / "runs" / "r1" / "summary.json").write_text(text)
    return ["--runs", str(d / "runs"), "--out", str(d / "RESULTS.md"), "--latency_runs", "0"]


CASES = _cases()


def assert_one_line_failure(status: object, err: str, name: str) -> str:
    text = err + (f"\n{status}" if isinstance(status, str) else "")
    assert status not in (0, None), f"{name}: exit status {status!r}\n{text}"
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, f"{name}: {len(errors)} error lines\n{text}"
    assert "Traceback" not in text, f"{name}: a traceback\n{text}"
    return errors[0]


@pytest.mark.parametrize("name", list(CASES))
def test_every_bad_input_is_one_error_line(name: str, world: World, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    main, make_args = CASES[name]
    args = make_args(world, tmp_path)
    before = snapshot(world.guarded)
    capsys.readouterr()
    try:
        main(args)
        status: object = 0
    except SystemExit as exc:
        status = exc.code
    line = assert_one_line_failure(status, capsys.readouterr().err, name)
    print(f"{name}: {line}")
    assert snapshot(world.guarded) == before, f"{name}: an earlier file changed"
    assert not list((tmp_path / "run").rglob("summary.json")), f"{name}: a failed run wrote a summary"


def test_deploy_report_without_the_optional_packages_is_one_line(world: World, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    for module in TFLITE_MODULES:
        monkeypatch.setitem(sys.modules, module, None)  # import fails, as when the extra is not installed
    with pytest.raises(SystemExit) as exc:
        deploy_report.main(["--net", f"n={world.checkpoint}"])
    line = assert_one_line_failure(exc.value.code, capsys.readouterr().err, "deploy_report without tflite")
    assert "uv sync --extra tflite" in line


@pytest.mark.parametrize("script, args", [
    ("experiments/reports/results.py", lambda w, d: _summary_dir(d, "{")),
    ("experiments/train.py", lambda w, d: [*base_args(w.data, w.out), "--trainer.logger.init_args.id", "earlier"]),
])
def test_a_real_process_exits_1_with_one_line(script: str, args: Args, world: World, tmp_path: Path) -> None:
    before = snapshot(world.guarded)
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    done = subprocess.run([sys.executable, script, *args(world, tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert_one_line_failure(done.returncode, done.stderr, script)
    assert snapshot(world.guarded) == before


def test_offline_pretrained_weights_fail_at_once_naming_the_cache(world: World, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty hub cache
    with pytest.raises(SystemExit) as exc:
        args = base_args(world.data, tmp_path / "run")
        del args[args.index("--model.width_mult"):args.index("--model.width_mult") + 2]  # MobileNetV1's own
        train.main([*args, "--model.backbone", "resnet10t", "--model.backbone_kwargs", '{"pretrained": true}'])
    line = assert_one_line_failure(exc.value.code, capsys.readouterr().err, "offline pretrained")
    assert str(tmp_path / "hub" / "models--timm--resnet10t") in line and "nothing is downloaded" in line
    assert not (tmp_path / "hub").exists()  # nothing was fetched or created


def test_a_fixed_input_size_network_runs_at_its_size_or_is_refused(world: World, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from experiments.run.checks import ExperimentError, check_resolution
    from lightning_modules.image_classifier import ImageClassifier

    class Data:  # the only part of a datamodule the check reads
        class hparams:  # noqa: N801
            image_size = 32

    fixed = ImageClassifier(backbone="vit_tiny_patch16_224", num_classes=3)
    with pytest.raises(ExperimentError, match=r"--data.image_size 32 .*224x224 inputs only.*img_size") as exc:
        check_resolution(fixed, Data())
    assert "\n" not in str(exc.value)
    built_for_32 = ImageClassifier(backbone="vit_tiny_patch16_224", num_classes=3, backbone_kwargs={"img_size": 32})
    check_resolution(built_for_32, Data())  # built for 32 px: runs
    Data.hparams.image_size = 64  # the hint names the size the net was built for, not its pretrained config's
    with pytest.raises(ExperimentError, match=r"--data.image_size 64 .*32x32 inputs only: use --data.image_size 32"):
        check_resolution(built_for_32, Data())
    # the cut points are measured at the size the net takes (a 64-px probe would trip its patch embedding)
    points = built_for_32.adapter.cut_points(built_for_32.net)
    assert len(points) == 12 and {p.stride for p in points} == {16} and points[-1].channels == 192
