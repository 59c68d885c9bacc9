"""Every bad input ends the run with one clear message and exit status != 0, and damages nothing.

Each case runs an experiment's ``main`` in-process on tiny generated data, after an earlier run left a
checkpoint, a dataset cache and extracted data behind; it asserts a non-zero exit, a message that names
the problem, and that every earlier file is byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from experiments import depth_prune, train, width_prune
from tests.helpers import fake_data
from tests.helpers.cli_args import base_args

Main = Callable[[list[str]], object]


@dataclass
class World:
    """The earlier state every case must leave alone, and the inputs the cases are built from."""

    root: Path
    folder: Path  # a 3-class CIFAR-layout image folder
    archive: Path  # the same, as .tar.gz
    checkpoint: Path  # last.ckpt of an earlier 1-epoch run
    cache: Path
    guarded: list[Path] = field(default_factory=list)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, session_cache_dir: Path) -> World:
    root = tmp_path_factory.mktemp("bad-inputs")
    folder = fake_data.make_image_folder(root / "data", {"train": 6, "test": 2})
    archive = fake_data.make_archive(folder, root / "shelf" / "tiny.tar.gz", arcname="tiny")
    summary = train.main(base_args(archive, root / "earlier"))  # extracts, decodes, checkpoints
    checkpoint = next((summary.parent / "checkpoints").glob("last.ckpt"))
    return World(root, folder, archive, checkpoint, session_cache_dir,
                 guarded=[root / "data", root / "shelf", root / "earlier", session_cache_dir])


def snapshot(paths: list[Path]) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest()
            for base in paths for p in sorted(base.rglob("*")) if p.is_file() and "wandb" not in p.parts}


# ------------------------------------------------------------------------------- the inputs


def _cifar_folder(w: World, out: Path, **kwargs: int) -> Path:
    return fake_data.make_image_folder(out / "d", {"train": 6, "test": 2}, **kwargs)


def truncated_archive(w: World, out: Path) -> Path:
    copy = out / "cut.tar.gz"
    copy.write_bytes(w.archive.read_bytes())
    return fake_data.truncate(copy, keep=0.5)


def tar_cut_at_member_boundary(w: World, out: Path) -> Path:
    whole = fake_data.make_archive(w.folder, out / "whole.tar", arcname="tiny")
    with tarfile.open(whole) as tar:
        boundary = tar.getmembers()[-5].offset
    cut = out / "cut.tar"
    cut.write_bytes(whole.read_bytes()[:boundary])
    return cut


def unsafe_archive(w: World, out: Path) -> Path:
    return fake_data.make_unsafe_archive(out / "evil.tar.gz")


class _Marker:
    """Unpickling this creates a file: what a hostile batch file would do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (self.path, "w"))


def hostile_cifar_batches(w: World, out: Path) -> Path:
    folder = fake_data.make_cifar_batches(out / "src", per_batch=2, n_test=2)
    marker = out / "MARKER"
    content = {"data": _Marker(str(marker)), "labels": [0, 1]}
    (folder / "data_batch_1").write_bytes(pickle.dumps(content, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": _Marker(str(marker))}, protocol=2))
    return fake_data.make_archive(folder, out / "cifar-10-python.tar.gz")


def corrupt_jpeg(w: World, out: Path) -> Path:
    folder = _cifar_folder(w, out)
    fake_data.corrupt_image(folder / "train" / "bird" / "0003.jpg")
    return folder


def empty_class(w: World, out: Path) -> Path:
    folder = _cifar_folder(w, out)
    for split in ("train", "test"):
        fake_data.make_empty_class(folder, split, "cat")
    return folder


def splits_disagree(w: World, out: Path) -> Path:
    folder = _cifar_folder(w, out)
    fake_data.make_image_folder(folder, {"train": 2}, classes=("deer",))
    return folder


def wrong_layout(w: World, out: Path) -> Path:
    fake_data.make_image_folder(out / "d", {"training": 2, "testing": 1})
    return out / "d"


def imagewoof_for_cifar(w: World, out: Path) -> Path:
    return fake_data.make_image_folder(out / "woof", {"train": 3, "test": 1},
                                       classes=("n02086240", "n02087394", "n02088364"))


def incomplete_cifar(w: World, out: Path) -> Path:
    return fake_data.make_image_folder(out / "c10", {"train": 2, "test": 1}, classes=fake_data.CIFAR_CLASSES)


def text_file(w: World, out: Path) -> Path:
    (out / "data.txt").write_text("not data")
    return out / "data.txt"


def truncated_checkpoint(w: World, out: Path) -> Path:
    copy = out / "last.ckpt"
    copy.write_bytes(w.checkpoint.read_bytes()[: w.checkpoint.stat().st_size // 2])
    return copy


def yaml_syntax_error(w: World, out: Path) -> Path:
    (out / "bad.yaml").write_text("trainer:\n  max_epochs: [1\n")
    return out / "bad.yaml"


def yaml_misspelled_key(w: World, out: Path) -> Path:
    (out / "typo.yaml").write_text("trainer:\n  max_epoch: 1\n")
    return out / "typo.yaml"


def read_only_dir(w: World, out: Path) -> Path:
    """A folder nothing can be written to. Permissions bind only non-root users; as root the folder
    lies below a regular file, which fails the same way for everyone."""
    if os.geteuid() != 0:
        folder = out / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    (out / "a-file").write_text("")
    return out / "a-file" / "ro"


# ------------------------------------------------------------------------------- the cases


@dataclass
class Case:
    main: Main
    args: Callable[[World, Path], list[str]]
    needles: tuple[str, ...]
    xfail: str | None = None


def data(make: Callable[[World, Path], Path], *extra: str) -> Callable[[World, Path], list[str]]:
    return lambda w, out: [*base_args(make(w, out), out / "run"), *extra]


def tiny(*extra: str) -> Callable[[World, Path], list[str]]:
    return lambda w, out: [*base_args(w.folder, out / "run"), *extra]


def with_baseline(*extra: str) -> Callable[[World, Path], list[str]]:
    return lambda w, out: [*base_args(w.folder, out / "run"), "--baseline_ckpt", str(w.checkpoint), *extra]


DEPTH = ("--trainer.max_epochs", "3", "--sweep.start_epoch", "1", "--sweep.epochs", "1", "--prune.epoch", "2",
         "--sweep.head", "[16, 8]")

CASES: dict[str, Case] = {
    "missing root": Case(train.main, tiny("--data.root", "/nonexistent/cifar.tar.gz"),
                         ("/nonexistent/cifar.tar.gz", "does not exist")),
    "root is a plain file": Case(train.main, data(text_file), ("data.txt", "not a .tar")),
    "truncated archive": Case(train.main, data(truncated_archive), ("cut.tar.gz", "truncated or corrupt")),
    "tar cut at a member boundary": Case(train.main, data(tar_cut_at_member_boundary),
                                         ("cut.tar", "end-of-archive marker")),
    "path traversal in archive": Case(train.main, data(unsafe_archive), ("evil.tar.gz", "unsafe", "../escaped")),
    "hostile CIFAR pickle": Case(train.main, data(hostile_cifar_batches),
                                 ("refusing to read", "io.open", "could run code")),
    "corrupt JPEG": Case(train.main, data(corrupt_jpeg), ("0003.jpg", "cannot decode")),
    "empty class folder": Case(train.main, data(empty_class), ("cat", "holds no images")),
    "splits disagree on classes": Case(train.main, data(splits_disagree), ("deer", "disagree")),
    "wrong folder layout": Case(train.main, data(wrong_layout), ("expected layout", "training/")),
    "Imagewoof given as CIFAR-10": Case(train.main, data(imagewoof_for_cifar),
                                        ("is not CIFAR-10", "n02086240", "ImagewoofDataModule")),
    "CIFAR-10 copy missing images": Case(train.main, data(incomplete_cifar),
                                         ("50,000", "incomplete")),
    "num_classes given by hand": Case(train.main, tiny("--model.num_classes", "7"), ("model.num_classes", "data.num_classes")),
    "image_size 8": Case(train.main, tiny("--data.image_size", "8"), ("image_size 8", "stride")),
    "image_size 1": Case(train.main, tiny("--data.image_size", "1"), ("image_size 1", "stride")),
    "image_size 0": Case(train.main, tiny("--data.image_size", "0"), ("image_size", "positive")),
    "train_subset 1": Case(train.main, tiny("--data.train_subset", "1"), ("1 image", "BatchNorm")),
    "batch larger than the dataset": Case(train.main, tiny("--data.batch_size", "64"),
                                          ("batch_size 64", "18 training images")),
    "val_fraction 1.5": Case(train.main, tiny("--data.val_fraction", "1.5"), ("val_fraction", "1.5")),
    "eval_subset 0": Case(train.main, tiny("--data.eval_subset", "0"), ("eval_subset", "positive")),
    "GPU requested, none present": Case(train.main, tiny("--trainer.accelerator", "gpu"),
                                        ("--trainer.accelerator gpu", "no usable GPU")),
    "ckpt_path missing": Case(train.main, tiny("--ckpt_path", "/nonexistent/last.ckpt"),
                              ("/nonexistent/last.ckpt", "does not exist")),
    "ckpt_path truncated": Case(train.main, lambda w, out: [*tiny()(w, out), "--ckpt_path",
                                                            str(truncated_checkpoint(w, out))],
                                ("last.ckpt", "truncated")),
    "ckpt_path not a checkpoint": Case(train.main, lambda w, out: [*tiny()(w, out), "--ckpt_path",
                                                                   str(text_file(w, out))],
                                       ("data.txt", "not a PyTorch checkpoint")),
    "read-only default_root_dir": Case(train.main, lambda w, out: [
        *base_args(w.folder, out / "x"), "--trainer.default_root_dir", str(read_only_dir(w, out))],
        ("cannot write to the output folder", "default_root_dir")),
    "unknown flag": Case(train.main, tiny("--trainer.max_epochz", "3"), ("max_epochz",)),
    "YAML syntax error": Case(train.main, lambda w, out: [*tiny()(w, out), "--config",
                                                          str(yaml_syntax_error(w, out))], ("bad.yaml",)),
    "YAML misspelled key": Case(train.main, lambda w, out: [*tiny()(w, out), "--config",
                                                            str(yaml_misspelled_key(w, out))], ("max_epoch",)),
    "unknown datamodule class": Case(train.main, tiny("--data.class_path", "datamodules.NoSuchDataModule"),
                                     ("NoSuchDataModule",)),
    "baseline checkpoint missing": Case(depth_prune.main, tiny(*DEPTH, "--baseline_ckpt", "/nonexistent/b.ckpt"),
                                        ("/nonexistent/b.ckpt", "does not exist")),
    "arch-mismatched baseline checkpoint": Case(depth_prune.main, with_baseline(*DEPTH, "--model.width_mult",
                                                                                "0.5"),
                                                ("architecture", "width_mult")),
    "sweep and cut epochs disagree": Case(depth_prune.main, tiny(*DEPTH[:-4], "--prune.epoch", "1", *DEPTH[-2:]),
                                          ("--prune.epoch", "--sweep.start_epoch")),
    "cut block out of range": Case(depth_prune.main, tiny(*DEPTH, "--prune.block", "20"), ("block", "20")),
    "sweep learning rate 0": Case(depth_prune.main, tiny(*DEPTH, "--sweep.lr", "0"), ("--sweep.lr", "positive")),
    "unknown sweep optimiser": Case(depth_prune.main, tiny(*DEPTH, "--sweep.optimizer", "lion"),
                                    ("sweep.optimizer", "lion")),
    "width prune without a baseline": Case(width_prune.main, tiny(), ("--baseline_ckpt",)),
    "two pruning callbacks": Case(width_prune.main, with_baseline(
        "--trainer.callbacks+=callbacks.OneShotPrune", "--trainer.callbacks+=callbacks.GradualPrune"),
        ("exactly one pruning callback",)),
    "sparsity 1.0": Case(width_prune.main, with_baseline(
        "--trainer.callbacks+=callbacks.OneShotPrune", "--trainer.callbacks.sparsity", "1.0"),
        ("sparsity", "1.0")),
    "sparsity names an unknown layer": Case(width_prune.main, with_baseline(
        "--trainer.callbacks+=callbacks.OneShotPrune", "--trainer.callbacks.sparsity",
        '{"default": 0.5, "blocks.99.pw.0": 0.3}'), ("blocks.99.pw.0",)),
    "unknown criterion": Case(width_prune.main, with_baseline(
        "--trainer.callbacks+=callbacks.OneShotPrune", "--trainer.callbacks.criterion", "l7_norm"),
        ("l7_norm",)),
}


def _params() -> list:
    return [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=case.xfail)) if case.xfail else name
            for name, case in CASES.items()]


@pytest.mark.parametrize("name", _params())
def test_bad_input_is_one_clear_error(name: str, world: World, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    case = CASES[name]
    before = snapshot(world.guarded)
    logs_before = Path("logs").exists()
    args = case.args(world, tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        case.main(args)
    code = exc.value.code
    message = code if isinstance(code, str) else capsys.readouterr().err
    print(f"MESSAGE {name}: {message.strip().splitlines()[-1] if message.strip() else ''}")
    assert code not in (0, None), f"{name}: exit status {code!r}"
    if isinstance(code, str):
        assert code.startswith("error: ") and "\n" not in code, code  # one line
    for needle in case.needles:
        assert needle in message, f"{name}: {needle!r} not in {message!r}"
    after = snapshot(world.guarded)
    assert {p: after.get(p) for p in before} == before, f"{name}: an earlier file changed or vanished"
    assert not list(tmp_path.rglob("summary.json")), f"{name}: the failed run wrote a summary"
    assert not list((tmp_path / "run").rglob("*.ckpt")), f"{name}: the failed run wrote a checkpoint"
    assert Path("logs").exists() == logs_before, f"{name}: the run wrote to ./logs"
    assert not (tmp_path / "MARKER").exists(), "a batch file's code ran"


def test_the_matrix_is_large_enough() -> None:
    assert len(CASES) >= 30
