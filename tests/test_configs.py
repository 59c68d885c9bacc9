"""Every shipped config parses and instantiates through its experiment's CLI (nothing is trained)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

from callbacks.pruning_base import check_pruning, width_pruners
from experiments import depth_prune, train, width_prune
from experiments.run.cli import ExperimentCLI, build_cli
from lightning_modules.image_classifier import ImageClassifier

CONFIGS = Path(__file__).resolve().parent.parent / "experiments" / "configs"


def instantiate(config: Path, tmp_path: Path) -> ExperimentCLI:
    if config.parent.parent.name == "width" or config.stem.startswith("width_"):
        script, cli_class = width_prune, width_prune.PruningCLI
    elif config.name.startswith("depth_"):
        script, cli_class = depth_prune, depth_prune.DepthPruneCLI
    else:
        script, cli_class = train, ExperimentCLI
    return build_cli(ImageClassifier, script.ImageFolderDataModule, script.DEFAULT_CONFIG,
                     ["--config", str(config), "--trainer.logger.init_args.save_dir", str(tmp_path)],
                     cli_class=cli_class)


@pytest.mark.parametrize("config", sorted([*CONFIGS.glob("*.yaml"), *CONFIGS.glob("timm/*.yaml")]),
                         ids=lambda p: p.stem)
def test_config_instantiates(config: Path, tmp_path: Path) -> None:
    cli = instantiate(config, tmp_path)
    size = cli.datamodule.hparams.image_size
    assert size == (32 if "_32" in config.stem else 128 if "_128" in config.stem else 224)
    assert cli.model.hparams.num_classes == (1000 if config.stem == "baseline_imagenet" else 10)
    if config.name.startswith("depth_"):
        sweep = next(cb for cb in cli.trainer.callbacks if isinstance(cb, depth_prune.AuxiliarySweep))
        prune = next(cb for cb in cli.trainer.callbacks if isinstance(cb, depth_prune.DepthPrune))
        depth_prune.check_stages(cli.trainer, sweep, prune, cli.model.net, size)
        assert prune.init == ("random" if "random" in config.stem else "original")


def test_every_depth_row_of_the_replication_has_a_config() -> None:
    names = {p.stem for p in CONFIGS.glob("depth_*.yaml")}
    for dataset in ("cifar10_224", "imagenette", "imagewoof"):
        assert {f"depth_{dataset}_cut6_original", f"depth_{dataset}_cut6_random"} <= names
    assert "depth_imagenette_sweep" in names and "depth_cifar10_32" in names


WIDTH_CONFIGS = sorted((CONFIGS / "width").glob("*/*.yaml"))
#: The rows of TinyNeuralNetwork's CIFAR-10 tables: (sparsity, method, criterion, distillation).
CIFAR_ROWS = {
    (0.5, "oneshot", c, False) for c in ("random", "l1_norm", "l2_norm", "fpgm", "hrank")
} | {(0.5, "bn_slimming", "bn_scale", False)} | {
    (0.75, "oneshot", c, False) for c in ("random", "l1_norm", "l2_norm", "hrank", "fpgm")
} | {(0.75, "oneshot", "l2_norm", True), (0.75, "admm", "l2_norm", False), (0.75, "gradual", "l2_norm", False),
     (0.75, "resrep", "l2_norm", True)}


def width_row(cli: ExperimentCLI) -> tuple[float, str, str, bool]:
    (pruner,) = width_pruners(cli.trainer)
    sparsity = getattr(pruner, "final_sparsity", pruner.sparsity)
    distill = any(type(cb).__name__ == "Distillation" for cb in cli.trainer.callbacks)
    return (sparsity, pruner.method, pruner.criterion, distill)


@pytest.mark.parametrize("config", WIDTH_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_width_config_instantiates(config: Path, tmp_path: Path) -> None:
    cli = instantiate(config, tmp_path)
    scale = config.parent.name
    assert cli.datamodule.hparams.image_size == (32 if scale == "cifar10_32" else 224)
    assert cli.model.hparams.num_classes == (1000 if scale == "imagenet" else 10)
    assert cli.model.arch["channels"] is None and cli.model.hparams.width_mult == 1.0  # prunes MobileNetV1-1.0
    check_pruning(cli.trainer, cli.model.net, cli.datamodule.hparams.image_size)  # settings fit MobileNetV1-1.0


@pytest.mark.parametrize("scale", ["cifar10_32", "cifar10_224"])
def test_every_row_of_the_width_tables_has_a_config_at_both_scales(scale: str, tmp_path: Path) -> None:
    """TinyNeuralNetwork's 15 rows, each once; a method outside its tables (e.g. SFP) may add a row."""
    rows = [width_row(instantiate(c, tmp_path)) for c in WIDTH_CONFIGS if c.parent.name == scale]
    assert len(rows) == len(set(rows)) and CIFAR_ROWS <= set(rows)


@pytest.mark.parametrize("config", [c for c in WIDTH_CONFIGS if c.parent.name == "cifar10_32"], ids=lambda p: p.stem)
def test_width_callback_gets_only_its_own_arguments_and_class_defaults(config: Path, tmp_path: Path) -> None:
    """Nothing leaks from the default config into a row's callback (e.g. BNSlimming's global ranking)."""
    given = yaml.safe_load(config.read_text())["trainer"]["callbacks"][0]["init_args"]
    (pruner,) = width_pruners(instantiate(config, tmp_path).trainer)
    for name, param in inspect.signature(type(pruner)).parameters.items():
        value = getattr(pruner, name)
        expected = given.get(name, param.default)
        assert value == expected or (expected is None and value == []), name


def test_width_prune_without_a_callback_prunes_one_shot(tmp_path: Path) -> None:
    cli = instantiate(width_prune.DEFAULT_CONFIG, tmp_path)
    assert width_pruners(cli.trainer) == []  # the default config names no method; main() adds OneShotPrune()
