"""Callbacks that add a term to the training loss while they are active.

``ImageClassifier.training_step`` passes its loss through every hook in ``pl_module.loss_hooks``; a
:class:`LossTermCallback` installs its :meth:`~LossTermCallback.loss_hook` there under ``hook_name`` for
the epochs it is active (distillation, the BN-slimming penalty, ADMM's augmented Lagrangian) and removes
it when it is not, and at the end of ``fit``, so a module never keeps a stale term.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import lightning as L
import torch

if TYPE_CHECKING:
    from lightning_modules.image_classifier import ImageClassifier


class LossTermCallback(L.Callback):
    """Base class: set :attr:`hook_name` and :attr:`penalty_name`, implement :meth:`penalty_term` (the term,
    logged) and, for anything but ``task_loss + penalty_weight · term``, :meth:`combine`."""

    #: Key of the term in ``ImageClassifier.loss_hooks``.
    hook_name: ClassVar[str] = ""
    #: The penalty is logged as ``train/<penalty_name>``.
    penalty_name: ClassVar[str] = ""
    #: Weight of the penalty in the loss.
    penalty_weight: float = 1.0

    def set_loss_term(self, pl_module: ImageClassifier, active: bool) -> None:
        """Install the term (``active``) or remove it."""
        if active:
            pl_module.loss_hooks[self.hook_name] = self.loss_hook
        else:
            pl_module.loss_hooks.pop(self.hook_name, None)

    def teardown(self, trainer: L.Trainer, pl_module: ImageClassifier, stage: str) -> None:
        if stage == "fit":
            self.set_loss_term(pl_module, False)

    def loss_hook(
        self,
        pl_module: ImageClassifier,
        images: torch.Tensor,
        labels: torch.Tensor,
        logits: torch.Tensor,
        task_loss: torch.Tensor,
    ) -> torch.Tensor:
        """The loss with this callback's term, from the batch, the logits and the loss so far: the term of
        :meth:`penalty_term` (logged as ``train/<penalty_name>`` per epoch), joined by :meth:`combine`."""
        term = self.penalty_term(pl_module, images, logits)
        pl_module.log(f"train/{self.penalty_name}", term.detach(), on_step=False, on_epoch=True)
        return self.combine(task_loss, term)

    def penalty_term(self, pl_module: ImageClassifier, images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The term (differentiable in the network's parameters), from the batch's images and logits."""
        raise NotImplementedError

    def combine(self, task_loss: torch.Tensor, term: torch.Tensor) -> torch.Tensor:
        """The loss from the task loss and the term: ``task_loss + penalty_weight · term``."""
        return task_loss + self.penalty_weight * term
