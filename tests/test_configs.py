"""Every shipped config parses and instantiates through its experiment's CLI (nothing is trained)."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments import depth_prune, train
from lightning_modules.cli import ExperimentCLI, build_cli
from lightning_modules.image_classifier import ImageClassifier

CONFIGS = Path(__file__).resolve().parent.parent / "experiments" / "configs"


def instantiate(config: Path, tmp_path: Path) -> ExperimentCLI:
    script = depth_prune if config.name.startswith("depth_") else train
    cli_class = depth_prune.DepthPruneCLI if script is depth_prune else ExperimentCLI
    return build_cli(ImageClassifier, script.ImageFolderDataModule, script.DEFAULT_CONFIG,
                     ["--config", str(config), "--trainer.logger.init_args.save_dir", str(tmp_path)],
                     cli_class=cli_class)


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_config_instantiates(config: Path, tmp_path: Path) -> None:
    cli = instantiate(config, tmp_path)
    size = cli.datamodule.hparams.image_size
    assert size == (32 if "_32" in config.stem else 224)
    assert cli.model.hparams.num_classes == 10
    if config.name.startswith("depth_"):
        sweep = next(cb for cb in cli.trainer.callbacks if isinstance(cb, depth_prune.AuxiliarySweep))
        prune = next(cb for cb in cli.trainer.callbacks if isinstance(cb, depth_prune.DepthPrune))
        depth_prune.check_stages(cli.trainer, sweep, prune)
        assert prune.init == ("random" if "random" in config.stem else "original")


def test_every_depth_row_of_the_replication_has_a_config() -> None:
    names = {p.stem for p in CONFIGS.glob("depth_*.yaml")}
    for dataset in ("cifar10_224", "imagenette", "imagewoof"):
        assert {f"depth_{dataset}_cut6_original", f"depth_{dataset}_cut6_random"} <= names
    assert "depth_imagenette_sweep" in names and "depth_cifar10_32" in names
