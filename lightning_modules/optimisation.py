"""The classifier's optimiser and learning-rate schedule (both built by timm), and how long the first
training stage lasts.

:meth:`~lightning_modules.image_classifier.ImageClassifier.configure_optimizers` calls
:func:`configure_optimisation`; a pruning callback that starts a new stage calls
:meth:`~lightning_modules.image_classifier.ImageClassifier.start_stage` and rebuilds both, so each stage's
schedule spans that stage only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn

from lightning_modules.models.layers import Compactor

#: Optimiser names accepted on the command line → timm optimiser names.
OPTIMIZERS: dict[str, str] = {"sgd": "momentum", "nesterov": "nesterov", "adam": "adam", "adamw": "adamw"}


def first_stage_epochs(callbacks: Sequence[Any]) -> int | None:
    """Epochs of the first training stage: up to the earliest epoch at which a callback restarts the LR
    schedule (callbacks that do say when through ``stage_restarts()``); ``None`` when none does or the
    first restart is at epoch 0 (the schedule then spans the fit, or is replaced at once)."""
    restarts = [int(e) for cb in callbacks if hasattr(cb, "stage_restarts") for e in cb.stage_restarts()]
    return min(restarts) if restarts and min(restarts) > 0 else None


def parameter_groups(module: nn.Module) -> list[dict[str, Any]]:
    """The trainable parameters of ``module`` in two groups, empty ones left out: weights with weight
    decay, and biases and normalisation parameters (``ndim <= 1``, as timm's own filter has it) without.
    Frozen parameters (callbacks may freeze parts of the net) stay out of the optimiser; ResRep's
    compactors are not decayed either: their group-lasso penalty is the only shrinkage."""
    compactors = {id(p) for m in module.modules() if isinstance(m, Compactor) for p in m.parameters()}
    trainable = [p for p in module.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim > 1 and id(p) not in compactors]
    no_decay = [p for p in trainable if p.ndim <= 1 or id(p) in compactors]
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


#: The optimisation settings a stage may set for itself (:func:`stage_settings`).
STAGE_KEYS: tuple[str, ...] = ("optimizer", "lr", "weight_decay", "momentum", "scheduler", "warmup_epochs",
                               "warmup_lr", "min_lr")


def stage_settings(module: L.LightningModule) -> dict[str, Any]:
    """The optimisation settings of the current stage: the module's hyper-parameters, with what the stage
    set for itself (``module.stage_optimizer``, e.g. the auxiliary sweep's Adam for its heads) on top."""
    settings = {key: module.hparams[key] for key in STAGE_KEYS}
    overrides = getattr(module, "stage_optimizer", None) or {}
    unknown = set(overrides) - set(STAGE_KEYS)
    if unknown:
        raise ValueError(f"unknown stage optimisation settings {sorted(unknown)}; expected some of {list(STAGE_KEYS)}")
    if "optimizer" in overrides and overrides["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"unknown optimiser {overrides['optimizer']!r}; expected one of {list(OPTIMIZERS)}")
    return settings | overrides


def configure_optimisation(module: L.LightningModule, stage_epochs: int | None = None) -> dict[str, Any]:
    """``configure_optimizers``' answer for ``module``: the optimiser named by its hyper-parameters and,
    unless ``scheduler`` is ``none``, a schedule stepped every update that spans ``stage_epochs`` epochs
    (the whole fit when ``None``)."""
    hp = stage_settings(module)
    optimizer = create_optimizer_v2(
        parameter_groups(module),
        opt=OPTIMIZERS[hp["optimizer"]],
        lr=hp["lr"],
        weight_decay=hp["weight_decay"],
        momentum=hp["momentum"],
    )
    if hp["scheduler"] == "none":
        return {"optimizer": optimizer}
    total_epochs = max(int(module.trainer.max_epochs or 1), 1)
    epochs = stage_epochs or total_epochs
    steps_per_epoch = max(int(module.trainer.estimated_stepping_batches) // total_epochs, 1)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=hp["scheduler"],
        num_epochs=epochs,
        decay_epochs=max(epochs // 3, 1),
        warmup_epochs=hp["warmup_epochs"],
        warmup_lr=hp["warmup_lr"],
        warmup_prefix=True,  # the cosine starts at the base LR once warm-up ends
        min_lr=hp["min_lr"],
        step_on_epochs=False,
        updates_per_epoch=steps_per_epoch,
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
