"""LightningModule training an image classifier: MobileNetV1 (ours) or any timm CNN.

The network is rebuilt from the hyper-parameters that describe it (its backbone adapter's ``arch_keys``:
MobileNetV1's constructor arguments, or a timm name, its arguments and a ``structure``). Pruning callbacks
change the network and call :meth:`ImageClassifier.rebuild_net` with :meth:`ImageClassifier.describe_net`
of the new network, so a checkpoint saved after pruning carries the pruned architecture:
``load_from_checkpoint`` and ``trainer.fit(ckpt_path=…)`` rebuild it before loading weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import lightning as L
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_modules.backbones import (
    MOBILENET_V1,
    BackboneAdapter,
    adapter_for,
    check_backbone_arguments,
    check_same_architecture,
    normalise_arch,
)
from lightning_modules.backbones.base import ArchitectureMismatch, untouched_rng
from lightning_modules.backbones.mobilenet_v1 import ARCH_KEYS
from lightning_modules.models.aux_heads import AuxiliaryHeads
from lightning_modules.models.fusion import FoldedEvalCopy
from lightning_modules.models.mobilenet_v1 import NUM_BLOCKS
from lightning_modules.optimisation import OPTIMIZERS, configure_optimisation, first_stage_epochs

__all__ = ["ARCH_KEYS", "OPTIMIZERS", "ImageClassifier", "first_stage_epochs"]

#: A loss term added by a callback: (module, images, labels, logits, task_loss) → new loss.
LossHook = Callable[["ImageClassifier", torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class ImageClassifier(L.LightningModule):
    """Image classification with a MobileNetV1 or timm backbone.

    Args:
        backbone: ``mobilenet_v1`` (ours) or any timm model name (e.g. ``resnet18``, ``efficientnet_b0``,
            ``convnext_atto``); never downloads weights.
        backbone_kwargs: further ``timm.create_model`` arguments (e.g. ``{"drop_path_rate": 0.1}``, or
            ``{"pretrained": true, "pretrained_cfg_overlay": {"file": "weights.safetensors"}}``).
        structure: a cut and/or width-pruned timm network, and ResRep's compactors while they train (set
            by the pruning callbacks, see :mod:`lightning_modules.backbones.timm`).
        num_classes: outputs of the classifier (the CLI takes it from the data).
        width_mult, channels, stem_stride, num_blocks, head_channels, dropout:
            MobileNetV1's arguments (see :class:`~lightning_modules.models.mobilenet_v1.MobileNetV1`);
            ``in_chans`` and ``dropout`` apply to timm networks too.
        compactors: the network carries ResRep compactors (set by the
            :class:`~callbacks.rep_prune.RepPrune` callback while it trains them, so that its checkpoints
            rebuild them; folded away at its prune).
        optimizer: ``sgd`` (momentum), ``nesterov``, ``adam`` or ``adamw``; built by timm, with no
            weight decay on biases and BatchNorm parameters.
        lr, momentum, weight_decay: optimiser settings.
        scheduler: ``cosine`` (with linear warm-up), ``step`` or ``none``; built by timm and stepped
            every optimiser update.
        warmup_epochs, warmup_lr, min_lr: schedule settings.
        schedule_span: ``stage`` (default): the first LR schedule ends where the first stage callback
            restarts it (the sweep's start, a cut, a structural width prune), so the baseline converges on
            its own schedule before it is read, and every later stage gets its own; ``fit``: the first
            schedule spans the whole fit (the protocol of runs archived before the per-stage one).
        label_smoothing: of the cross-entropy loss.
        channels_last: train in NHWC memory format: on by default, 1.7x faster than NCHW for a training
            step on the CPU and what bf16 convolutions want on a GPU (NHWC kernels round differently).
        compile: ``torch.compile`` the network's plain forward (on the first batch and after every rebuild);
            off by default (see the README's speed options for what it costs and gains).
        fuse_eval: validate and test on a copy of the network with every BatchNorm folded into its
            convolution (:class:`~lightning_modules.models.fusion.FoldedEvalCopy`); outputs agree to float
            rounding. Off by default, so that validation accuracies (and the best checkpoint they pick)
            come from exactly the trained operators.
    """

    def __init__(
        self,
        backbone: str = MOBILENET_V1,
        backbone_kwargs: dict[str, Any] | None = None,
        structure: dict[str, Any] | None = None,
        num_classes: int = 10,
        width_mult: float = 1.0,
        channels: list[int] | None = None,
        stem_stride: int = 2,
        num_blocks: int = NUM_BLOCKS,
        head_channels: Sequence[int] = (),
        dropout: float = 0.0,
        in_chans: int = 3,
        compactors: bool = False,
        optimizer: Literal["sgd", "nesterov", "adam", "adamw"] = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        scheduler: Literal["cosine", "step", "none"] = "cosine",
        warmup_epochs: int = 0,
        warmup_lr: float = 1e-5,
        min_lr: float = 0.0,
        schedule_span: Literal["stage", "fit"] = "stage",
        label_smoothing: float = 0.0,
        channels_last: bool = True,
        compile: bool = False,
        fuse_eval: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_backbone_arguments(self.hparams)
        self.adapter: BackboneAdapter = adapter_for(self.hparams)
        self.net = self.adapter.build(self.arch)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.metrics = nn.ModuleDict(
            {f"{split}_acc": MulticlassAccuracy(num_classes, average="micro") for split in ("train", "val", "test")}
        )
        if num_classes >= 100:
            for split in ("val", "test"):
                self.metrics[f"{split}_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
        # Auxiliary classifiers at cut points (depth-pruning sweep) and frozen submodules (by name).
        self.aux_heads: AuxiliaryHeads | None = None
        self.aux_metrics = nn.ModuleDict()
        self.frozen: list[str] = []
        # Loss terms added by callbacks (distillation, sparsity penalties); not part of the state.
        self.loss_hooks: dict[str, LossHook] = {}
        # The LR schedule covers the current training stage; pruning callbacks start a new stage.
        self.stage_start_step = 0
        self.stage_epochs: int | None = None
        self.stage_optimizer: dict[str, Any] | None = None  # this stage's own optimiser settings, if any
        # The BatchNorm-folded copy validated and tested on (``fuse_eval``); not part of the state.
        self.folded_eval = FoldedEvalCopy()

    # ----------------------------------------------------------------------------------- architecture
    @property
    def arch(self) -> dict[str, Any]:
        """The network's description (the adapter's architecture keys), taken from the hyper-parameters."""
        keys = self.adapter.arch_keys
        return normalise_arch({k: self.hparams[k] for k in keys if k in self.hparams})

    def describe_net(self, net: nn.Module) -> dict[str, Any]:
        """The architecture hyper-parameters of ``net`` (e.g. a pruned copy of ``self.net``), for
        :meth:`rebuild_net`."""
        return self.adapter.describe(net)

    def rebuild_net(self, net: nn.Module | None = None, **arch: Any) -> None:
        """Replace the network: update the architecture hyper-parameters and install ``net``.

        ``net`` (e.g. a pruned copy carrying trained weights) must match ``arch``
        (:class:`~lightning_modules.backbones.ArchitectureMismatch` names the first layer that does
        not); when it is ``None`` a freshly initialised network is built from the updated hyper-parameters.
        """
        self.hparams.update(normalise_arch(arch))
        device = next(self.parameters()).device
        if net is not None:
            with untouched_rng():
                expected = self.adapter.build(self.arch)
            check_same_architecture(net.state_dict(), expected.state_dict(), "the new network's layers")
        self.net = (net if net is not None else self.adapter.build(self.arch)).to(device)
        if self.hparams.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    def attach_aux_heads(self, head_channels: Sequence[int], cut_points: Sequence[int] | None = None) -> None:
        """Put an auxiliary classifier at each cut point (all of them by default: 14 for MobileNetV1)."""
        device = next(self.parameters()).device
        points = self.adapter.cut_points(self.net, self.hparams.in_chans)
        self.aux_heads = AuxiliaryHeads([p.channels for p in points], self.hparams.num_classes, head_channels,
                                        cut_points)
        self.aux_cut_modules = {k: points[k].module for k in self.aux_heads.cut_points}
        self.aux_heads.to(device)
        if self.hparams.channels_last:  # the features arrive NHWC: NCHW head weights would cost 1.3x per step
            self.aux_heads.to(memory_format=torch.channels_last)
        self.aux_metrics = nn.ModuleDict(
            {f"{split}_{k}": MulticlassAccuracy(self.hparams.num_classes, average="micro").to(device)
             for split in ("val", "test") for k in self.aux_heads.cut_points}
        )

    def _check_aux_cut_modules(self, saved: list[str] | None) -> None:
        """The auxiliary heads of a checkpoint sit where the network's cut points of the same index are
        (cut points are numbered per block: a numbering that differs is an error, never a wrong head)."""
        ours = [self.aux_cut_modules[k] for k in self.aux_heads.cut_points]
        if saved is None and self.hparams.backbone != MOBILENET_V1:
            raise ArchitectureMismatch("the checkpoint's auxiliary heads do not record which modules they sit after "
                                       f"(saved with stage-level cut points); the network's cut points are {ours}: "
                                       "restart the sweep from the baseline checkpoint")
        if saved is not None and list(saved) != ours:
            raise ArchitectureMismatch(f"the checkpoint's auxiliary heads {self.aux_heads.cut_points} sit after "
                                       f"{list(saved)}, but the network's cut points of those indices are {ours}; "
                                       "restart the sweep from the baseline checkpoint")

    def detach_aux_heads(self) -> None:
        self.aux_heads = None
        self.aux_metrics = nn.ModuleDict()

    def freeze_modules(self, names: Sequence[str] = ()) -> None:
        """Freeze exactly the named submodules (no gradients, BatchNorm statistics fixed); unfreeze the rest."""
        self.frozen = list(names)
        frozen = {id(p) for n in self.frozen for p in self.get_submodule(n).parameters()}
        for p in self.parameters():
            p.requires_grad_(id(p) not in frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> ImageClassifier:
        super().train(mode)
        for name in getattr(self, "frozen", []):  # frozen parts stay in eval mode (fixed BN statistics)
            self.get_submodule(name).eval()
        return self

    # ---------------------------------------------------------------------------------------- forward
    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else x

    def _forward_net(self) -> nn.Module:
        """``self.net``, or its compiled wrapper (kept outside the module tree: no state-dict keys)."""
        if not self.hparams.get("compile", False):
            return self.net
        cached = self.__dict__.get("_compiled_net")
        if cached is None or cached[0] is not self.net:  # first call, or the net was rebuilt
            self.__dict__["_compiled_net"] = cached = (self.net, torch.compile(self.net))
        return cached[1]

    def _eval_net(self) -> nn.Module:
        """The folded copy of this validation/test epoch when there is one, else ``self.net``."""
        return self.folded_eval.get(self.net) if not self.training else self.net

    def _start_eval_epoch(self) -> None:
        self.folded_eval.drop()
        if self.hparams.get("fuse_eval", False) and not self.hparams.get("compile", False):
            self.folded_eval.make(self.net)

    def _end_eval_epoch(self) -> None:
        self.folded_eval.drop()

    def on_train_start(self) -> None:
        # Lightning keeps each submodule's train/eval mode as it finds it at fit start: a network left in
        # eval mode (after an export, a measurement, an evaluation) would train with BatchNorm statistics
        # frozen and dropout off, silently. Training means train mode, except the parts frozen on purpose.
        self.train(True)

    def on_validation_epoch_start(self) -> None:
        self._start_eval_epoch()

    def on_validation_epoch_end(self) -> None:
        self._end_eval_epoch()

    def on_test_epoch_start(self) -> None:
        self._start_eval_epoch()

    def on_test_epoch_end(self) -> None:
        self._end_eval_epoch()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self._eval_net()
        return (net if net is not self.net else self._forward_net())(self._prepare(x))

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor | None, dict[int, torch.Tensor]]:
        """Logits of the network and of every auxiliary head. A frozen backbone runs without autograd
        and the heads see detached features, so one pass trains all heads and leaves the backbone as is;
        in training it then stops at the deepest head and the network's logits are ``None``."""
        assert self.aux_heads is not None
        frozen = "net" in self.frozen
        # Training on a frozen backbone needs neither its logits nor the layers after the deepest head.
        want_logits = not (frozen and self.training)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            logits, feats = self.adapter.features(self._eval_net(), self._prepare(x), self.aux_heads.cut_points,
                                                  logits=want_logits)
        aux = self.aux_heads({k: f.detach() if frozen else f for k, f in feats.items()})
        return logits, aux

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        found = getattr(datamodule, "num_classes", None)
        if found is not None and int(found) != int(self.hparams.num_classes):
            raise ValueError(f"the dataset has {found} classes but the model is built for {self.hparams.num_classes}; "
                             "the experiment CLIs take num_classes from the data")
        # An example input: Lightning's model summary counts the network's FLOPs on it (about 1 s at start-up).
        size = int(getattr(getattr(datamodule, "hparams", None), "image_size", 0) or 224)
        self.example_input_array = torch.zeros(1, int(self.hparams.in_chans), size, size)
        if stage == "fit" and self._trainer is not None and self.stage_epochs is None \
                and self.hparams.get("schedule_span", "fit") == "stage":
            self.stage_epochs = first_stage_epochs(self.trainer.callbacks)  # a resumed run's comes from its checkpoint

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.aux_heads is not None:
            return self._aux_training_step(x, y)
        logits = self(x)
        loss = self.criterion(logits, y)
        self.log("train/task_loss", loss.detach(), on_step=False, on_epoch=True)
        for hook in self.loss_hooks.values():
            loss = hook(self, x, y, logits, loss)
        self.metrics["train_acc"](logits.detach(), y)
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.metrics["train_acc"], on_step=False, on_epoch=True)
        return loss

    def _aux_training_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits, aux = self.forward_with_aux(x)
        # Heads have disjoint parameters: summing their losses trains each as if alone.
        loss = torch.stack([self.criterion(out, y) for out in aux.values()]).sum()
        if "net" not in self.frozen:
            loss = loss + self.criterion(logits, y)
        self.log("train/aux_loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        x, y = batch
        if self.aux_heads is None:
            logits = self(x)
        else:
            logits, aux = self.forward_with_aux(x)
            for k, out in aux.items():
                metric = self.aux_metrics[f"{split}_{k}"]
                metric(out, y)
                self.log(f"{split}/aux_{k}/acc", metric, on_step=False, on_epoch=True,
                         metric_attribute=f"aux_metrics.{split}_{k}")
        loss = self.criterion(logits, y)
        self.log(f"{split}/loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        for name in ("acc", "top5"):
            metric = self.metrics[f"{split}_{name}"] if f"{split}_{name}" in self.metrics else None
            if metric is not None:
                metric(logits, y)
                self.log(f"{split}/{name}", metric, on_step=False, on_epoch=True, prog_bar=name == "acc")
        return logits

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    # ----------------------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        """The optimiser and the LR schedule of the current stage (:mod:`lightning_modules.optimisation`)."""
        return configure_optimisation(self, self.stage_epochs)

    def lr_scheduler_step(self, scheduler: Any, metric: Any = None) -> None:
        # timm schedulers are stepped with the number of updates done in the current stage.
        scheduler.step_update(num_updates=self.global_step - self.stage_start_step)

    def start_stage(self, epochs: int | None = None, optimizer: dict[str, Any] | None = None) -> None:
        """Begin a new training stage: the LR schedule restarts and spans ``epochs`` epochs; ``optimizer``
        (keys of :data:`~lightning_modules.optimisation.STAGE_KEYS`) replaces the module's own settings for
        this stage only.

        Call from a callback, then rebuild the optimiser with ``trainer.strategy.setup_optimizers``.
        """
        self.stage_start_step = self.global_step
        self.stage_epochs = epochs
        self.stage_optimizer = dict(optimizer) if optimizer else None

    # ------------------------------------------------------------------------------ checkpointing
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["stage"] = {"start_step": self.stage_start_step, "epochs": self.stage_epochs,
                               "optimizer": self.stage_optimizer}
        checkpoint["frozen"] = list(self.frozen)
        if self.aux_heads is not None:
            checkpoint["aux_heads"] = {
                "cut_points": self.aux_heads.cut_points,
                "head_channels": list(self.aux_heads.head_channels),
                "cut_modules": [self.aux_cut_modules[k] for k in self.aux_heads.cut_points],
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Called before the weights are loaded: rebuild the saved (possibly pruned) architecture.
        saved = checkpoint.get("hyper_parameters", {})
        saved_backbone = saved.get("backbone") or MOBILENET_V1
        if saved_backbone != self.hparams.backbone:
            raise ArchitectureMismatch(f"the checkpoint holds a {saved_backbone} network, the model is a "
                                       f"{self.hparams.backbone}; pass --model.backbone {saved_backbone}")
        saved_arch = normalise_arch({k: saved[k] for k in self.adapter.arch_keys if k in saved})
        if saved_arch and saved_arch != self.arch:
            self.rebuild_net(**saved_arch)
        aux = checkpoint.get("aux_heads")
        if aux is not None:
            self.attach_aux_heads(aux["head_channels"], aux["cut_points"])
            self._check_aux_cut_modules(aux.get("cut_modules"))
        else:
            self.detach_aux_heads()
        if "state_dict" in checkpoint:
            check_same_architecture(checkpoint["state_dict"], self.state_dict(), "the checkpoint's weights")
        self.freeze_modules(checkpoint.get("frozen", []))
        stage = checkpoint.get("stage", {})
        self.stage_start_step = int(stage.get("start_step", 0))
        self.stage_epochs = stage.get("epochs")
        self.stage_optimizer = stage.get("optimizer")
