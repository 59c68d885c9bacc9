"""Prune a trained network to fit a microcontroller's flash, RAM and latency, then prove it fits.

    python experiments/fit_budget.py --baseline_ckpt PATH --budget.flash_kb 256 --budget.ram_kb 64
    python experiments/fit_budget.py --baseline_ckpt PATH --budget.flash_kb 64 --budget.ram_kb 32 \\
        --budget.latency_ms 150 --budget.clock_mhz 120 --search.widths '[1.0, 0.5, 0.25]'

Any backbone with an adapter (``--model.backbone``: MobileNetV1 or a timm CNN). One ``fit`` (one W&B run),
from the baseline checkpoint:

1. **sizes** (before any training): every candidate cut point (the net up to cut point k + the sweep's
   head) × width ratio (one-shot pruning keeping that fraction of every prunable layer's channels) is
   built as the run will build it and its TFLM arena and ``.tflite`` size predicted
   (:mod:`lightning_modules.pruning.budget_search`); with ``--budget.latency_ms`` also its Cortex-M
   instructions (:mod:`lightning_modules.deploy.mcu_cost`) and the latency they give at
   ``--budget.clock_mhz``. Nothing fits → exit with what the smallest candidate needs.
2. **accuracy** (epoch 0): the auxiliary sweep trains a head at every cut point on the frozen backbone;
   at the cut epoch :class:`~callbacks.budget_choice.BudgetChoice` prunes copies of the full net to each
   width, fine-tunes them ``--search.proxy_steps`` steps and predicts each candidate's accuracy as cut
   head accuracy × width retention.
3. **choice**: the most accurate candidate that fits; the net is cut there (``DepthPrune``), fine-tuned,
   thinned (``OneShotPrune``) and fine-tuned again.
4. **proof**: the best checkpoint is tested, exported fully int8 and run in TFLite Micro (int8 accuracy,
   arena, flatbuffer bytes); with a latency budget (or ``--deploy.firmware true``) its firmware is built
   for ``--budget.core``, run in QEMU (output equal to the host interpreter's) and its instructions
   counted. ``summary.json`` and ``fit_budget.png`` hold every candidate, the choice and the measured
   figures. A chosen net whose measured figures break the budget ends with an ``error:`` line (exit 1).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from callbacks.auxiliary_sweep import AuxiliarySweep
from callbacks.budget_choice import BudgetChoice, SearchSpace
from callbacks.depth_prune import DepthPrune
from callbacks.one_shot_prune import OneShotPrune
from callbacks.progress import metric
from callbacks.pruning_base import width_pruners
from callbacks.stages import run_dir
from datamodules import ImageFolderDataModule
from datamodules.batches import float_batches
from experiments.depth_prune import DepthPruneCLI, check_stages
from experiments.reports.deploy import plot_budget
from experiments.run.cli import (
    build_cli,
    close_logger,
    exits_cleanly,
    fit_and_test,
    load_baseline,
    write_summary,
)
from lightning_modules.deploy.cortexm import FirmwareRunError, ToolchainMissing, require_toolchain
from lightning_modules.deploy.firmware import FirmwareError
from lightning_modules.deploy.tflite_file import MissingDependency, require_tflite
from lightning_modules.deploy.verify import deploy_net, measure_on_target
from lightning_modules.image_classifier import ImageClassifier
from lightning_modules.pruning.budget import Budget, NothingFits, feasible, fits, measured_overshoot
from lightning_modules.pruning.budget_search import size_candidates

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "budget" / "cifar10_32.yaml"


@dataclass
class DeployOptions:
    """The int8 export and TFLM check of the chosen net.

    Args:
        calib_images: training images that calibrate the int8 activation ranges.
        eval_images: test images of the int8 accuracy in TFLM (``None``: the whole test split).
        firmware: build the chosen net's firmware and run it on the emulated core; ``None``: when the
            budget limits latency.
    """

    calib_images: int = 256
    eval_images: int | None = None
    firmware: bool | None = None


class FitBudgetCLI(DepthPruneCLI):
    """The depth-pruning CLI plus ``--budget.*``, ``--search.*`` and ``--deploy.*``."""

    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_class_arguments(Budget, "budget")
        parser.add_class_arguments(SearchSpace, "search")
        parser.add_class_arguments(DeployOptions, "deploy")


def budget_callbacks(trainer: L.Trainer) -> tuple[AuxiliarySweep, DepthPrune, OneShotPrune]:
    """The sweep, the cut and the one width stage the search sets; an error naming what is missing."""
    sweep = next(cb for cb in trainer.callbacks if isinstance(cb, AuxiliarySweep))
    prune = next(cb for cb in trainer.callbacks if isinstance(cb, DepthPrune))
    widths = [cb for cb in width_pruners(trainer) if isinstance(cb, OneShotPrune)]
    if len(widths) != 1 or sweep.epochs < 1:
        raise SystemExit("error: fit_budget needs the sweep (--sweep.epochs ≥ 1) and one OneShotPrune "
                         "callback (the config's width stage)")
    if widths[0].global_ranking:
        raise SystemExit("error: fit_budget sizes each width before training, which needs per-layer ranking: "
                         "set the width stage's global_ranking to false")
    return sweep, prune, widths[0]


@exits_cleanly
def main(args: list[str] | None = None) -> Path:
    """Search, choose, prune, fine-tune, export and check in TFLM (and on the emulated core); returns the
    ``summary.json`` path."""
    started = time.time()
    try:
        require_tflite()
        cli = build_cli(ImageClassifier, ImageFolderDataModule, DEFAULT_CONFIG, args, cli_class=FitBudgetCLI)
        config = cli.config
        budget = Budget(**config.budget.as_dict())
        search, deploy = SearchSpace(**config.search.as_dict()), DeployOptions(**config.deploy.as_dict())
        firmware = deploy.firmware if deploy.firmware is not None else budget.latency_ms is not None
        if firmware:
            require_toolchain()  # before any training: one line naming the missing programs
        if budget.latency_ms is not None:
            from lightning_modules.deploy.mcu_cost import coefficients

            coefficients(budget.core)  # a core the instruction-count model was fitted on
    except (MissingDependency, ToolchainMissing, ValueError) as err:
        raise SystemExit(f"error: {err}") from err
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    if not config.baseline_ckpt:
        raise SystemExit("error: --baseline_ckpt is required (a network trained by experiments/train.py)")
    sweep, prune, width = budget_callbacks(trainer)
    image_size = int(data.hparams.image_size)
    in_chans = int(model.hparams.get("in_chans", 3))
    check_stages(trainer, sweep, prune, model.net, image_size)
    points = len(model.adapter.cut_points(model.net, in_chans))
    cuts = search.cuts if search.cuts is not None else list(range(points))
    bad = [k for k in cuts if not 0 <= k < points]
    if bad:
        raise SystemExit(f"error: --search.cuts {bad}: this {model.hparams.backbone} has cut points 0..{points - 1}")
    try:
        candidates = size_candidates(model.net, model.arch, cuts, search.widths, sweep.head_channels, image_size,
                                     budget, in_chans, width.round_to, width.ignore, progress=rank_zero_info)
        feasible(candidates, budget)
    except (NothingFits, ValueError) as err:
        raise SystemExit(f"error: {err}") from err
    load_baseline(model, config.baseline_ckpt)
    sweep.cut_points = cuts
    choice = BudgetChoice(budget, candidates, search, sweep, prune, width)
    trainer.callbacks.insert(trainer.callbacks.index(prune), choice)
    checkpoints = fit_and_test(cli)
    chosen = choice.chosen
    run = run_dir(trainer)
    run.mkdir(parents=True, exist_ok=True)
    measured = deploy_net(model.net, data, run / "model_int8.tflite", deploy.calib_images, deploy.eval_images)
    measured["fp32_test_acc"] = metric(trainer.callback_metrics, "test/acc")
    if firmware:
        try:
            image = next(float_batches(data, "test", 1))[0][0].numpy()
            measured |= measure_on_target(Path(measured["tflite_path"]), run / "firmware", image, budget.core,
                                          budget.clock_mhz)
        except (FirmwareError, FirmwareRunError, ToolchainMissing) as err:
            raise SystemExit(f"error: the chosen net's firmware: {str(err).splitlines()[0]}") from err
    if budget.latency_ms is not None and "latency_ms" not in measured:
        raise SystemExit("error: a latency budget needs the firmware run (--deploy.firmware false was given)")
    overshoot = measured_overshoot(measured, budget)
    result = {
        "stage": "fit_budget",
        "budget": asdict(budget),
        "search": asdict(search),
        "deploy": asdict(deploy),
        "width_proxy_acc": {str(k): v for k, v in choice.width_acc.items()},
        "sweep_acc": {str(k): v for k, v in sweep.accuracies.items()},
        "baseline_acc": sweep.baseline.get("acc"),
        "candidates": [c.as_dict() for c in candidates],
        "chosen": chosen.as_dict() if chosen else None,
        "measured": measured,
        "measured_overshoot": overshoot,
        "fits_measured": all(r <= 1.0 for r in overshoot.values()),
        "fits_predicted": bool(chosen and fits(chosen, budget)),
        "baseline_ckpt": config.baseline_ckpt,
        "command": "python experiments/fit_budget.py " + " ".join(sys.argv[1:] if args is None else args),
    }
    plot_budget(candidates, budget, chosen, measured, run / "fit_budget.png")
    path = write_summary(trainer, model, data, started, checkpoints, {"stage": "fit_budget", "fit_budget": result})
    close_logger(trainer)
    latency = "" if budget.latency_ms is None else \
        f", {measured['instructions']:,} instructions = {measured['latency_ms']:.1f} ms at {budget.clock_mhz:g} MHz"
    line = (f"chosen {chosen.name if chosen else None}: TFLM arena {measured['arena_bytes']:,} B, "
            f".tflite {measured['flash_bytes']:,} B, int8 acc {measured['int8_acc']:.4f}{latency}")
    if not result["fits_measured"]:
        over = ", ".join(f"{k} {v:.0%} of its limit" for k, v in overshoot.items() if v > 1.0)
        raise SystemExit(f"error: the chosen net does not fit the budget as measured ({over}); {line}; "
                         f"see {path}")
    print(f"{line} → fits {budget.flash_kb:g} KB flash / {budget.ram_kb:g} KB RAM"
          + ("" if budget.latency_ms is None else f" / {budget.latency_ms:g} ms"))
    return path


if __name__ == "__main__":
    main()
