"""Prune a trained MobileNetV1 to fit a microcontroller's flash and RAM, then prove it fits in TFLite Micro.

    python experiments/fit_budget.py --baseline_ckpt PATH --budget.flash_kb 256 --budget.ram_kb 64
    python experiments/fit_budget.py --baseline_ckpt PATH --budget.flash_kb 64 --budget.ram_kb 32 \\
        --budget.macs 2000000 --search.widths '[1.0, 0.5, 0.25]'

One ``fit`` (one W&B run), from the baseline checkpoint:

1. **sizes** (before any training): every candidate cut point (stem + blocks ≤ k + the sweep's head)
   × width ratio (one-shot l2 pruning keeping that fraction of every layer's channels) is built and its
   TFLM arena and ``.tflite`` size predicted (:func:`~lightning_modules.deploy.tflm_estimate.estimate_tflm`),
   MACs counted (and latency measured with onnxruntime if ``--budget.latency_ms``). Nothing fits → exit
   with what the smallest candidate needs.
2. **accuracy** (epoch 0): the auxiliary sweep trains a head at every cut point on the frozen backbone
   (``AuxiliarySweep``); at the cut epoch a width proxy prunes a copy of the full net one-shot l2 to each
   width, fine-tunes it ``--search.proxy_steps`` steps and measures it on ``--search.proxy_images``
   validation images; the unpruned net gets the same proxy fine-tuning. Predicted accuracy = cut head
   accuracy × min(1, width proxy accuracy / unpruned proxy accuracy).
3. **choice**: the most accurate candidate that fits (:func:`~lightning_modules.pruning.budget.choose`);
   the net is cut there (``DepthPrune``), fine-tuned, thinned (``OneShotPrune``) and fine-tuned again.
4. **proof**: the best checkpoint is tested, exported fully int8 (``--deploy.calib_images`` training
   images calibrate it) and run in TFLite Micro: int8 accuracy on the test split, the arena TFLM
   allocates and the flatbuffer's bytes, against the budget. ``summary.json`` and ``fit_budget.png``
   (every candidate: flash vs predicted accuracy, budget lines, the choice, the measured result).
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from callbacks.auxiliary_sweep import AuxiliarySweep
from callbacks.depth_prune import DepthPrune
from callbacks.one_shot_prune import OneShotPrune
from callbacks.pruning_base import width_pruners
from datamodules import ImageFolderDataModule
from experiments.depth_prune import DepthPruneCLI, check_stages
from experiments.reports.deploy import deploy_net, plot_budget
from experiments.run.cli import (
    build_cli,
    close_logger,
    exits_cleanly,
    fit_and_test,
    load_baseline,
    write_summary,
)
from lightning_modules.backbones.mobilenet_v1 import (
    mobilenet_cut_arch,
    mobilenet_v1_arch_after_pruning,
    rebuild_mobilenet_v1,
)
from lightning_modules.deploy.profiling import count_macs, measure_latency_onnx
from lightning_modules.deploy.tflite import MissingDependency, require_tflite
from lightning_modules.deploy.tflm_estimate import estimate_tflm
from lightning_modules.image_classifier import ImageClassifier
from lightning_modules.models.mobilenet_v1 import MobileNetV1
from lightning_modules.pruning.budget import (
    KB,
    Budget,
    Candidate,
    NothingFits,
    choose,
    combined_accuracy,
    feasible,
    fits,
    grid,
)
from lightning_modules.pruning.criteria import make_criterion
from lightning_modules.pruning.width import prune_model

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "budget" / "cifar10_32.yaml"


@dataclass
class SearchSpace:
    """Candidates and the width-accuracy proxy.

    Args:
        widths: fractions of channels kept (1.0 = no width pruning).
        cuts: cut points (0 = after the stem … 13); ``None``: every cut point of the sweep.
        proxy_steps: fine-tuning steps of each width proxy (one-shot l2 on the full net).
        proxy_lr: their SGD learning rate.
        proxy_images: validation images the proxies are measured on.
    """

    widths: list[float] = field(default_factory=lambda: [1.0, 0.75, 0.5, 0.25])
    cuts: list[int] | None = None
    proxy_steps: int = 50
    proxy_lr: float = 0.01
    proxy_images: int = 1000


@dataclass
class DeployOptions:
    """The int8 export and TFLM check of the chosen net.

    Args:
        calib_images: training images that calibrate the int8 activation ranges.
        eval_images: test images of the int8 accuracy in TFLM (``None``: the whole test split).
    """

    calib_images: int = 256
    eval_images: int | None = None


class FitBudgetCLI(DepthPruneCLI):
    """The depth-pruning CLI plus ``--budget.*``, ``--search.*`` and ``--deploy.*``."""

    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_class_arguments(Budget, "budget")
        parser.add_class_arguments(SearchSpace, "search")
        parser.add_class_arguments(DeployOptions, "deploy")


# --------------------------------------------------------------------------------------- candidates
def candidate_net(arch: dict, cut: int, width: float, head_channels: tuple[int, ...],
                  image_size: int) -> tuple[MobileNetV1, dict]:
    """The architecture of cut ``cut`` + one-shot pruning keeping ``width`` of every layer's channels
    (as ``OneShotPrune`` slices it; the channel counts do not depend on the weights)."""
    net = MobileNetV1(**mobilenet_cut_arch(arch, cut, head_channels)).eval()
    if width < 1.0:
        example = torch.zeros(1, net.stem[0].in_channels, image_size, image_size)
        prune_model(net, make_criterion("l2_norm"), 1.0 - width, example)
        net, _ = rebuild_mobilenet_v1(net)
    return net.eval(), mobilenet_v1_arch_after_pruning(net)


def size_candidates(arch: dict, cuts: list[int], widths: list[float], head_channels: tuple[int, ...],
                    image_size: int, latency: bool = False) -> list[Candidate]:
    """Every cut × width candidate with its predicted TFLM arena, ``.tflite`` bytes and MACs."""
    rows = []
    for cut, width, size in grid(cuts, widths, [image_size]):
        net, net_arch = candidate_net(arch, cut, width, head_channels, size)
        estimate = estimate_tflm(net, size)
        row = Candidate(cut=cut, width=width, image_size=size, flash_bytes=estimate["flash_bytes"],
                        ram_bytes=estimate["arena_bytes"], macs=count_macs(net, size), arch=net_arch)
        if latency:
            import tempfile

            from lightning_modules.deploy.export import export_onnx

            with tempfile.TemporaryDirectory() as tmp:
                path = export_onnx(net, Path(tmp) / "m.onnx", size)
                row.latency_ms = measure_latency_onnx(path, size, threads=1, warmup=3, runs=10)["median_ms"]
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------- width proxy
def width_proxy_accuracy(net: torch.nn.Module, data: L.LightningDataModule, width: float, steps: int,
                         lr: float, images_count: int, seed: int = 0) -> float:
    """Accuracy of a copy of ``net`` pruned one-shot l2 to ``width`` and fine-tuned ``steps`` SGD steps on
    augmented training batches, on the first ``images`` validation images."""
    device = next(net.parameters()).device
    model = copy.deepcopy(net).requires_grad_(True)
    size = int(data.hparams.image_size)
    if width < 1.0:
        example = torch.zeros(1, 3, size, size, device=device)
        prune_model(model.eval(), make_criterion("l2_norm"), 1.0 - width, example)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    done = 0
    while done < steps:
        for images, labels in data.train_dataloader():
            if done >= steps:
                break
            images = data.transform_batch(images.to(device), train=True, generator=generator) \
                if images.dtype == torch.uint8 else images.to(device)
            loss = torch.nn.functional.cross_entropy(model(images), labels.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
    model.eval()
    correct = seen = 0
    with torch.no_grad():
        for images, labels in data.val_dataloader():
            if images.dtype == torch.uint8:
                images = data.transform_batch(images.to(device), train=False)
            take = min(len(labels), images_count - seen)
            correct += int((model(images[:take].to(device)).argmax(1).cpu() == labels[:take].cpu()).sum())
            seen += take
            if seen >= images_count:
                break
    return correct / max(seen, 1)


class BudgetChoice(L.Callback):
    """At the cut epoch (before ``DepthPrune``): predict every candidate's accuracy from the sweep and
    the width proxies, choose the most accurate one within the budget, and set the cut and the width."""

    def __init__(self, budget: Budget, candidates: list[Candidate], search: SearchSpace, sweep: AuxiliarySweep,
                 prune: DepthPrune, width: OneShotPrune) -> None:
        self.budget, self.candidates, self.search = budget, candidates, search
        self.sweep, self.prune, self.width = sweep, prune, width
        self.width_acc: dict[float, float] = {}
        self.chosen: Candidate | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.chosen is not None or trainer.current_epoch < self.prune.epoch:
            return
        if not self.sweep.accuracies:
            raise RuntimeError("the auxiliary sweep measured no accuracies before the cut epoch")
        s = self.search
        # the unpruned width gets the same proxy fine-tuning as the others, so each ratio compares like
        # with like (a baseline taken mid-schedule gains from any low-LR fine-tuning, pruned or not)
        for w in sorted({c.width for c in self.candidates} | {1.0}):
            self.width_acc[w] = width_proxy_accuracy(
                pl_module.net, trainer.datamodule, w, s.proxy_steps, s.proxy_lr, s.proxy_images)
            rank_zero_info(f"width proxy: keep {w:g} of the channels → {self.width_acc[w]:.4f}")
        reference = self.width_acc[1.0] or max(self.width_acc.values())
        if reference <= 0:  # no proxy classified anything: rank by the cut's head alone
            rank_zero_info("width proxy: every width scored 0; predicting accuracy from the cut heads alone")
        for c in self.candidates:
            retained = self.width_acc[c.width] if reference > 0 else 1.0
            c.acc = combined_accuracy(self.sweep.accuracies[c.cut], retained, reference if reference > 0 else 1.0)
        self.chosen = choose(self.candidates, self.budget)
        rank_zero_info(f"budget choice: {self.chosen.name} (predicted acc {self.chosen.acc:.4f}, "
                       f"flash {self.chosen.flash_bytes / KB:.1f} KB, arena {self.chosen.ram_bytes / KB:.1f} KB)")
        self.prune.block = self.chosen.cut
        if self.chosen.width < 1.0:
            self.width.sparsity = 1.0 - self.chosen.width
        else:  # no width stage: mark it done so it never slices
            self.width.result = {"skipped": "the chosen candidate keeps every channel"}


# ----------------------------------------------------------------------------------------------- main
@exits_cleanly
def main(args: list[str] | None = None) -> Path:
    """Search, choose, prune, fine-tune, export and check in TFLM; returns the ``summary.json`` path."""
    started = time.time()
    try:
        require_tflite()
        cli = build_cli(ImageClassifier, ImageFolderDataModule, DEFAULT_CONFIG, args, cli_class=FitBudgetCLI)
    except MissingDependency as err:
        raise SystemExit(f"error: {err}") from err
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    config = cli.config
    if not config.baseline_ckpt:
        raise SystemExit("error: --baseline_ckpt is required (a MobileNetV1 trained by experiments/train.py)")
    try:
        budget = Budget(**config.budget.as_dict())
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err
    search, deploy = SearchSpace(**config.search.as_dict()), DeployOptions(**config.deploy.as_dict())
    sweep = next(cb for cb in trainer.callbacks if isinstance(cb, AuxiliarySweep))
    prune = next(cb for cb in trainer.callbacks if isinstance(cb, DepthPrune))
    widths = [cb for cb in width_pruners(trainer) if isinstance(cb, OneShotPrune)]
    if len(widths) != 1 or sweep.epochs < 1:
        raise SystemExit("error: fit_budget needs the sweep (--sweep.epochs ≥ 1) and one OneShotPrune "
                         "callback (the config's width stage)")
    if model.hparams.backbone != "mobilenet_v1":
        raise SystemExit(f"error: fit_budget searches MobileNetV1 cut points and widths; --model.backbone "
                         f"{model.hparams.backbone!r} is not supported (use mobilenet_v1)")
    image_size = int(data.hparams.image_size)
    check_stages(trainer, sweep, prune, model.net, image_size)
    cuts = search.cuts if search.cuts is not None else list(range(0, len(model.net.blocks) + 1))
    candidates = size_candidates(model.arch, cuts, search.widths, sweep.head_channels, image_size,
                                 latency=budget.latency_ms is not None)
    try:
        feasible(candidates, budget)
    except NothingFits as err:
        raise SystemExit(f"error: {err}") from err
    load_baseline(model, config.baseline_ckpt)
    sweep.cut_points = cuts
    choice = BudgetChoice(budget, candidates, search, sweep, prune, widths[0])
    trainer.callbacks.insert(trainer.callbacks.index(prune), choice)
    checkpoints = fit_and_test(cli)
    chosen = choice.chosen
    run = Path(write_summary(trainer, model, data, started, checkpoints)).parent
    measured = deploy_net(model.net, data, run / "model_int8.tflite", deploy.calib_images, deploy.eval_images)
    measured["fp32_test_acc"] = _metric(trainer, "test/acc")
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
        "fits_measured": bool(measured["flash_bytes"] <= budget.flash_kb * KB
                              and measured["arena_bytes"] <= budget.ram_kb * KB),
        "fits_predicted": bool(chosen and fits(chosen, budget)),
        "baseline_ckpt": config.baseline_ckpt,
        "command": "python experiments/fit_budget.py " + " ".join(sys.argv[1:] if args is None else args),
    }
    plot_budget(candidates, budget, chosen, measured, run / "fit_budget.png")
    path = write_summary(trainer, model, data, started, checkpoints, {"stage": "fit_budget", "fit_budget": result})
    close_logger(trainer)
    verdict = "fits" if result["fits_measured"] else "does NOT fit"
    print(f"chosen {chosen.name if chosen else None}: TFLM arena {measured['arena_bytes']:,} B, "
          f".tflite {measured['flash_bytes']:,} B, int8 acc {measured['int8_acc']:.4f} → {verdict} "
          f"{budget.flash_kb:g} KB flash / {budget.ram_kb:g} KB RAM")
    return path


def _metric(trainer: L.Trainer, key: str) -> float | None:
    value = trainer.callback_metrics.get(key)
    return None if value is None else float(value)


if __name__ == "__main__":
    main()
