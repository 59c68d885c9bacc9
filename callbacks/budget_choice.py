"""The budget search's choice, made inside the run at the cut epoch: predict every candidate's accuracy
from the auxiliary sweep and the width proxies, take the most accurate one that fits, and set the cut
and the width stage to it."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from callbacks.auxiliary_sweep import AuxiliarySweep
from callbacks.depth_prune import DepthPrune
from callbacks.one_shot_prune import OneShotPrune
from datamodules.batches import float_batches
from lightning_modules.pruning.budget import KB, Budget, Candidate, choose, combined_accuracy
from lightning_modules.pruning.criteria import make_criterion
from lightning_modules.pruning.width import ignored_modules, prune_model


@dataclass
class SearchSpace:
    """Candidates and the width-accuracy proxy.

    Args:
        widths: fractions of channels kept (1.0 = no width pruning).
        cuts: cut points (0 = the first one, e.g. MobileNetV1's stem); ``None``: every cut point of the sweep.
        proxy_steps: fine-tuning steps of each width proxy (one-shot l2 on the full net).
        proxy_lr: their SGD learning rate.
        proxy_images: validation images the proxies are measured on.
    """

    widths: list[float] = field(default_factory=lambda: [1.0, 0.75, 0.5, 0.25])
    cuts: list[int] | None = None
    proxy_steps: int = 50
    proxy_lr: float = 0.01
    proxy_images: int = 1000


def width_proxy_accuracy(net: torch.nn.Module, data: L.LightningDataModule, width: float, steps: int,
                         lr: float, images: int, round_to: int = 1, ignore: Sequence[str] = (),
                         seed: int = 0) -> float:
    """Accuracy of a copy of ``net`` pruned one-shot l2 to ``width`` (the width stage's ``round_to`` and
    ``ignore``) and fine-tuned ``steps`` SGD steps on augmented training batches, on the first ``images``
    validation images. ``net`` is left as it was."""
    device = next(net.parameters()).device
    model = copy.deepcopy(net).requires_grad_(True)
    size = int(data.hparams.image_size)
    in_chans = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).in_channels
    if width < 1.0:
        example = torch.zeros(1, in_chans, size, size, device=device)
        prune_model(model.eval(), make_criterion("l2_norm"), 1.0 - width, example, round_to=round_to,
                    ignore=ignored_modules(model, ignore))
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    done = 0
    while done < steps:
        for batch, labels in data.train_dataloader():
            if done >= steps:
                break
            batch = batch.to(device)
            if batch.dtype == torch.uint8:  # in-memory data: augmented on the device
                batch = data.transform_batch(batch, train=True, generator=generator)
            loss = torch.nn.functional.cross_entropy(model(batch), labels.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
    model.eval()
    correct = seen = 0
    with torch.no_grad():
        for batch, labels in float_batches(data, "val", images, device=device):
            correct += int((model(batch).argmax(1).cpu() == labels.cpu()).sum())
            seen += len(labels)
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
                pl_module.net, trainer.datamodule, w, s.proxy_steps, s.proxy_lr, s.proxy_images,
                self.width.round_to, self.width.ignore)
            rank_zero_info(f"width proxy: keep {w:g} of the channels → {self.width_acc[w]:.4f}")
        reference = self.width_acc[1.0] or max(self.width_acc.values())
        if reference <= 0:  # no proxy classified anything: rank by the cut's head alone
            rank_zero_info("width proxy: every width scored 0; predicting accuracy from the cut heads alone")
        for c in self.candidates:
            retained = self.width_acc[c.width] if reference > 0 else 1.0
            c.acc = combined_accuracy(self.sweep.accuracies[c.cut], retained, reference if reference > 0 else 1.0)
        self.chosen = choose(self.candidates, self.budget)
        latency = "" if self.chosen.latency_ms is None else f", {self.chosen.latency_ms:.1f} ms"
        rank_zero_info(f"budget choice: {self.chosen.name} (predicted acc {self.chosen.acc:.4f}, "
                       f"flash {self.chosen.flash_bytes / KB:.1f} KB, arena {self.chosen.ram_bytes / KB:.1f} KB"
                       f"{latency})")
        self.prune.block = self.chosen.cut
        if self.chosen.width < 1.0:
            self.width.sparsity = 1.0 - self.chosen.width
        else:  # no width stage: mark it done so it never slices
            self.width.result = {"skipped": "the chosen candidate keeps every channel"}
