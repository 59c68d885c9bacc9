"""Knowledge distillation from a frozen teacher network into the (pruned) student.

Hinton et al., *Distilling the Knowledge in a Neural Network*, arXiv:1503.02531 (2015). The training loss
becomes ``(1 − α)·task_loss + α·T²·KL(softmax(teacher/T) ‖ softmax(student/T))``.

The teacher is, by order of preference:

1. the teacher restored from a checkpoint of this run (the callback's own state);
2. the network of ``teacher_ckpt``, an :class:`~lightning_modules.image_classifier.ImageClassifier`
   checkpoint;
3. the unpruned network: a copy of ``pl_module.net`` taken the first time a pruning callback announces a
   prune (see :func:`callbacks.pruning_base.notify_before_prune`);
4. the current network, when distillation starts before anything was pruned.

The teacher is kept on the callback, not on the LightningModule: it is neither in the module's
``state_dict`` nor in the optimiser. The callback's own state carries the teacher's architecture and
weights, so a resumed run distils from exactly the same teacher without ``teacher_ckpt`` at hand.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from callbacks.loss_term import LossTermCallback
from callbacks.stages import sync_from_rank_zero
from lightning_modules.backbones import build_net, check_same_architecture

if TYPE_CHECKING:
    from lightning_modules.image_classifier import ImageClassifier

#: Key of the distillation term in ``ImageClassifier.loss_hooks``.
HOOK_NAME = "distillation"


# ------------------------------------------------------------------------------------------ the maths
def soft_target_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 6.0
) -> torch.Tensor:
    """``KL(softmax(teacher/T) ‖ softmax(student/T))`` summed over classes, averaged over the batch.

    Half-precision logits are compared in float32.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs "
            f"{tuple(teacher_logits.shape)} (do both networks have the same number of classes?)"
        )
    student_logits, teacher_logits = _upcast(student_logits), _upcast(teacher_logits)
    return F.kl_div(
        F.log_softmax(student_logits / temperature, dim=-1),
        F.log_softmax(teacher_logits / temperature, dim=-1),
        log_target=True,
        reduction="batchmean",
    )


def mix_losses(
    task_loss: torch.Tensor, kl: torch.Tensor, alpha: float = 0.3, temperature: float = 6.0
) -> torch.Tensor:
    """``(1 − α)·task_loss + α·T²·kl``; the ``T²`` keeps the soft-target gradients' scale independent of T."""
    return (1.0 - alpha) * task_loss + alpha * temperature**2 * kl


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    task_loss: torch.Tensor,
    alpha: float = 0.3,
    temperature: float = 6.0,
) -> torch.Tensor:
    """The distillation loss ``(1 − α)·task_loss + α·T²·KL(softmax(teacher/T) ‖ softmax(student/T))``.

    Args:
        student_logits: ``(batch, classes)`` outputs of the network being trained.
        teacher_logits: ``(batch, classes)`` outputs of the teacher (no gradient is needed through them).
        task_loss: the ordinary loss on the labels (e.g. cross-entropy).
        alpha: weight of the soft-target term; ``0`` gives back ``task_loss``.
        temperature: softmax temperature ``T`` of both distributions.
    """
    return mix_losses(
        task_loss, soft_target_kl(student_logits, teacher_logits, temperature), alpha, temperature
    )


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


# ---------------------------------------------------------------------------------- the teacher
def freeze(net: nn.Module) -> nn.Module:
    """Put ``net`` in eval mode with no trainable parameters and no stale gradients; returns ``net``."""
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
        p.grad = None
    return net


def frozen_copy(net: nn.Module) -> nn.Module:
    """A frozen deep copy of ``net``: later changes to ``net`` (pruning, training) do not reach it."""
    return freeze(copy.deepcopy(net))


def build_teacher(arch: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """A frozen network described by ``arch`` (any backbone) carrying the weights ``state_dict``.

    The throw-away initialisation draws from a forked RNG, so building the teacher on resume leaves the
    global random stream (data order, augmentation) exactly where an uninterrupted run has it."""
    with torch.random.fork_rng(devices=[]):
        net = build_net(arch)
    check_same_architecture(state_dict, net.state_dict(), "the teacher's weights")
    net.load_state_dict(state_dict)
    return freeze(net)


# ---------------------------------------------------------------------------------- the callback
class Distillation(LossTermCallback):
    """Add a knowledge-distillation term to the training loss from ``start_epoch`` on.

    From the training epoch ``start_epoch`` the callback installs ``pl_module.loss_hooks["distillation"]``,
    which replaces the loss by :func:`distillation_loss` of the student's and the teacher's logits and
    logs ``train/distill_kl`` (the KL divergence, before the ``α·T²`` weighting). Before ``start_epoch``
    the hook is absent. The teacher is frozen, in eval mode, on the module's device; where it comes from
    is told in this module's docstring.

    Args:
        start_epoch: first training epoch with the distillation term.
        alpha: weight of the soft-target term, in ``[0, 1]``.
        temperature: softmax temperature ``T`` (> 0).
        teacher_ckpt: an ``ImageClassifier`` checkpoint whose network is the teacher; ``None`` distils
            from the unpruned network.
    """

    hook_name = HOOK_NAME
    penalty_name = "distill_kl"

    def __init__(
        self,
        start_epoch: int = 0,
        alpha: float = 0.3,
        temperature: float = 6.0,
        teacher_ckpt: str | None = None,
    ) -> None:
        if start_epoch < 0:
            raise ValueError(f"start_epoch must be >= 0, got {start_epoch}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.start_epoch = start_epoch
        self.alpha = alpha
        self.temperature = temperature
        self.teacher_ckpt = teacher_ckpt
        self.teacher: nn.Module | None = None
        #: Constructor arguments of the teacher network (``pl_module.arch`` when it was taken).
        self.teacher_arch: dict[str, Any] | None = None
        # Teacher weights restored by ``load_state_dict``, built once the module's device is known.
        self._restored_weights: dict[str, torch.Tensor] | None = None
        self._placed: tuple[torch.device, torch.dtype] | None = None

    @property
    def has_teacher(self) -> bool:
        """Whether a teacher exists, built or restored from a checkpoint and awaiting its device."""
        return self.teacher is not None or self._restored_weights is not None

    # ------------------------------------------------------------------------------------- hooks
    def on_before_prune(self, trainer: L.Trainer, pl_module: ImageClassifier) -> None:
        """Keep the unpruned network as the teacher (only at the first prune, and without ``teacher_ckpt``)."""
        if self.teacher_ckpt is None and not self.has_teacher:
            self._set_teacher(frozen_copy(pl_module.net), pl_module.arch)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: ImageClassifier) -> None:
        if trainer.current_epoch < self.start_epoch:
            self.set_loss_term(pl_module, False)
            return
        if not self.has_teacher and self.teacher_ckpt is None:  # the current network becomes the teacher:
            sync_from_rank_zero(trainer, pl_module)  # rank 0's, buffers included, on every rank
        self.ensure_teacher(pl_module, epoch=trainer.current_epoch)
        self.set_loss_term(pl_module, True)

    def penalty_term(self, pl_module: ImageClassifier, images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``KL(softmax(teacher/T) ‖ softmax(student/T))`` with the teacher's logits on ``images``."""
        with torch.no_grad():
            teacher_logits = self.ensure_teacher(pl_module)(images)
        return soft_target_kl(logits, teacher_logits, self.temperature)

    def combine(self, task_loss: torch.Tensor, term: torch.Tensor) -> torch.Tensor:
        """:func:`mix_losses`: ``(1 − α)·task_loss + α·T²·KL``."""
        return mix_losses(task_loss, term, self.alpha, self.temperature)

    # ----------------------------------------------------------------------------------- teacher
    def ensure_teacher(self, pl_module: ImageClassifier, epoch: int | None = None) -> nn.Module:
        """The teacher, built if needed and placed on the module's device and dtype."""
        if self.teacher is None:
            if self._restored_weights is not None:
                assert self.teacher_arch is not None
                self._set_teacher(build_teacher(self.teacher_arch, self._restored_weights), self.teacher_arch)
            elif self.teacher_ckpt is not None:
                self._set_teacher(*self._load_teacher_ckpt(self.teacher_ckpt))
            else:
                rank_zero_info(
                    f"Distillation: nothing pruned yet and no teacher_ckpt at epoch {epoch}; the current "
                    f"network ({_describe(pl_module.arch)}) is the teacher."
                )
                self._set_teacher(frozen_copy(pl_module.net), pl_module.arch)
        assert self.teacher is not None
        target = (pl_module.device, pl_module.dtype)
        if self._placed != target:
            self.teacher.to(device=target[0], dtype=target[1])
            if pl_module.hparams.get("channels_last", False):
                self.teacher.to(memory_format=torch.channels_last)
            self._placed = target
        if self.teacher.training:  # never trained, whoever switched it
            self.teacher.eval()
        return self.teacher

    def _set_teacher(self, teacher: nn.Module, arch: dict[str, Any]) -> None:
        self.teacher = teacher
        self.teacher_arch = copy.deepcopy(dict(arch))
        self._restored_weights = None
        self._placed = None

    @staticmethod
    def _load_teacher_ckpt(path: str) -> tuple[nn.Module, dict[str, Any]]:
        from lightning_modules.image_classifier import ImageClassifier

        source = ImageClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=True)
        rank_zero_info(f"Distillation: teacher loaded from {path} ({_describe(source.arch)}).")
        return freeze(source.net), source.arch

    # ----------------------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """The teacher's constructor arguments and weights (empty while there is no teacher)."""
        if self.teacher is not None:
            weights = {k: v.detach().cpu() for k, v in self.teacher.state_dict().items()}
        elif self._restored_weights is not None:
            weights = self._restored_weights
        else:
            return {}
        return {"teacher_arch": copy.deepcopy(self.teacher_arch), "teacher_state_dict": weights}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the saved teacher; it is rebuilt on the module's device by the next hook."""
        if "teacher_arch" not in state_dict:
            return
        self.teacher = None
        self.teacher_arch = dict(state_dict["teacher_arch"])
        self._restored_weights = dict(state_dict["teacher_state_dict"])
        self._placed = None


def _describe(arch: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in arch.items() if v not in (None, ()))
