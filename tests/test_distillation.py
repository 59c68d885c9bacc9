"""Distillation: the loss on bare tensors, the teacher's provenance and freezing, the loss hook's
schedule in a real fit, and the teacher surviving checkpoints."""

from __future__ import annotations

import io
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import callbacks.distillation as distillation_module
from callbacks.distillation import HOOK_NAME, Distillation, distillation_loss, soft_target_kl
from callbacks.pruning_base import notify_before_prune
from lightning_modules.image_classifier import ImageClassifier

NUM_CLASSES = 4


def tiny_module(**kwargs: Any) -> ImageClassifier:
    return ImageClassifier(num_classes=NUM_CLASSES, width_mult=0.25, **kwargs)


def loader(n: int = 16, batch_size: int = 4, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    data = TensorDataset(
        torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, NUM_CLASSES, (n,), generator=g)
    )
    return DataLoader(data, batch_size=batch_size)


def trainer(max_epochs: int, callbacks: list[L.Callback], **kwargs: Any) -> L.Trainer:
    return L.Trainer(
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        **kwargs,
    )


def prune(module: ImageClassifier, callback: L.Callback) -> None:
    """Stand-in for a pruning callback: announce, then halve every width (fresh weights)."""
    notify_before_prune(SimpleNamespace(callbacks=[object(), L.Callback(), callback]), module)
    module.rebuild_net(channels=[max(c // 2, 1) for c in module.net.channels])


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def snapshot(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def assert_frozen(net: torch.nn.Module) -> None:
    assert not net.training
    assert all(not m.training for m in net.modules())
    assert all(not p.requires_grad for p in net.parameters())


# ------------------------------------------------------------------------------------------ the loss
def test_alpha_zero_is_task_loss() -> None:
    student, teacher = torch.randn(8, 5), torch.randn(8, 5)
    task = torch.tensor(1.234)
    assert soft_target_kl(student, teacher, 6.0) > 0.01  # the term that alpha=0 must drop
    assert torch.allclose(distillation_loss(student, teacher, task, alpha=0.0), task)


def test_identical_logits_leave_scaled_task_loss() -> None:
    logits = torch.randn(8, 5)
    task = F.cross_entropy(logits, torch.randint(0, 5, (8,)))
    assert soft_target_kl(logits, logits.clone(), 3.0).abs() < 1e-6
    assert torch.allclose(
        distillation_loss(logits, logits.clone(), task, alpha=0.3, temperature=3.0), 0.7 * task
    )


def test_hand_computed_example() -> None:
    # T = 2: teacher row 0 → softmax(t/T) = [3/4, 1/4]; student row 0 → [1/2, 1/2]; row 1 agrees (KL 0).
    T = 2.0
    teacher = torch.tensor([[2 * math.log(3.0), 0.0], [1.0, -1.0]], dtype=torch.float64)
    student = torch.tensor([[0.0, 0.0], [1.0, -1.0]], dtype=torch.float64)
    kl_row0 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    kl = kl_row0 / 2  # batchmean: summed over classes, averaged over the 2 rows
    assert soft_target_kl(student, teacher, T).item() == pytest.approx(kl, rel=1e-12)
    task = torch.tensor(0.8, dtype=torch.float64)
    expected = 0.6 * 0.8 + 0.4 * T**2 * kl
    assert distillation_loss(student, teacher, task, alpha=0.4, temperature=T).item() == pytest.approx(
        expected
    )


def test_mismatched_classes_are_rejected() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        soft_target_kl(torch.randn(2, 4), torch.randn(2, 5))


@pytest.mark.parametrize(
    "kwargs", [{"alpha": 1.5}, {"alpha": -0.1}, {"temperature": 0.0}, {"start_epoch": -1}]
)
def test_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Distillation(**kwargs)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_gradient_reaches_student_only() -> None:
    module = tiny_module()
    callback = Distillation(alpha=1.0, temperature=2.0)
    callback.on_before_prune(SimpleNamespace(callbacks=[callback]), module)
    with torch.no_grad():  # make student and teacher disagree
        for p in module.net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, NUM_CLASSES, (4,))
    logits = module(x)
    task = F.cross_entropy(logits, y).detach()  # alpha = 1: every gradient comes through the KL term
    callback.loss_hook(module, x, y, logits, task).backward()
    grads = [p.grad for p in module.net.parameters()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for p in callback.teacher.parameters())
    assert_frozen(callback.teacher)


# --------------------------------------------------------------------------------- the teacher
def test_first_prune_keeps_the_unpruned_teacher() -> None:
    module = tiny_module()
    callback = Distillation()
    unpruned_arch, unpruned = module.arch, snapshot(module.net)
    prune(module, callback)
    first = callback.teacher
    assert first is not None and first is not module.net
    assert same_weights(first.state_dict(), unpruned)
    assert callback.teacher_arch == unpruned_arch
    assert_frozen(first)
    prune(module, callback)  # second prune: the teacher stays the first, unpruned network
    assert callback.teacher is first
    assert same_weights(callback.teacher.state_dict(), unpruned)
    assert callback.teacher_arch == unpruned_arch != module.arch
    # Not a submodule: not among the module's modules or parameters.
    assert all(m is not callback.teacher for m in module.modules())
    assert not {id(p) for p in callback.teacher.parameters()} & {id(p) for p in module.parameters()}


def test_snapshot_is_a_copy() -> None:
    module = tiny_module()
    callback = Distillation()
    callback.on_before_prune(SimpleNamespace(callbacks=[callback]), module)
    with torch.no_grad():
        next(module.net.parameters()).zero_()
    assert next(callback.teacher.parameters()).abs().sum() > 0


def test_teacher_ckpt_wins_over_prune_snapshot(tmp_path: Path) -> None:
    callback = Distillation(teacher_ckpt=str(tmp_path / "never-read.ckpt"))
    callback.on_before_prune(SimpleNamespace(callbacks=[callback]), tiny_module())
    assert not callback.has_teacher


# ----------------------------------------------------------------------------------- in a real fit
class Recorder(L.Callback):
    """Records, per batch, whether the distillation hook is installed, and the net at epoch 1's start."""

    def __init__(self) -> None:
        self.hook_present: list[tuple[int, bool]] = []
        self.net_at_epoch_1: dict[str, torch.Tensor] | None = None
        self.kl_logged: dict[int, bool] = {}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: ImageClassifier) -> None:
        if trainer.current_epoch == 1:
            self.net_at_epoch_1 = snapshot(pl_module.net)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: ImageClassifier, batch: Any, idx: int
    ) -> None:
        self.hook_present.append((trainer.current_epoch, HOOK_NAME in pl_module.loss_hooks))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: ImageClassifier) -> None:
        self.kl_logged[trainer.current_epoch] = "train/distill_kl" in trainer.callback_metrics


def test_hook_installed_from_start_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    messages: list[str] = []
    monkeypatch.setattr(distillation_module, "rank_zero_info", lambda msg, *a, **k: messages.append(msg))
    L.seed_everything(0, verbose=False)
    module = tiny_module(scheduler="none")
    recorder, callback = Recorder(), Distillation(start_epoch=1)
    fit = trainer(2, [recorder, callback])
    fit.fit(module, train_dataloaders=loader())
    assert recorder.hook_present == [(0, False)] * 4 + [(1, True)] * 4
    assert recorder.kl_logged == {0: False, 1: True}
    # Nothing was pruned: the network at epoch 1's start became the teacher, and the user was told.
    assert any("current network" in m and "teacher" in m for m in messages)
    assert same_weights(callback.teacher.state_dict(), recorder.net_at_epoch_1)
    assert not same_weights(module.net.state_dict(), recorder.net_at_epoch_1)  # the student trained on
    assert_frozen(callback.teacher)
    optimised = {id(p) for group in fit.optimizers[0].param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in callback.teacher.parameters()}
    assert HOOK_NAME not in module.loss_hooks  # removed when fit ends


# ------------------------------------------------------------------------------------ checkpoints
def test_state_dict_round_trip_rebuilds_the_teacher() -> None:
    module = tiny_module()
    callback = Distillation()
    prune(module, callback)  # teacher: the width-0.25 net; the module now holds a pruned one
    buffer = io.BytesIO()
    torch.save(callback.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # what Lightning checkpoints allow

    restored = Distillation()
    restored.load_state_dict(state)
    assert restored.has_teacher and restored.teacher is None  # rebuilt lazily
    assert same_weights(
        restored.state_dict()["teacher_state_dict"], callback.state_dict()["teacher_state_dict"]
    )
    teacher = restored.ensure_teacher(module)
    assert restored.teacher_arch == callback.teacher_arch != module.arch
    assert_frozen(teacher)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(teacher(x), callback.teacher(x))
    assert Distillation().state_dict() == {}


def test_resumed_fit_keeps_the_teacher(tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    first = Distillation(start_epoch=0)
    run = trainer(1, [first])
    run.fit(tiny_module(), train_dataloaders=loader())
    ckpt = tmp_path / "last.ckpt"
    run.save_checkpoint(ckpt)
    teacher_weights = snapshot(first.teacher)

    L.seed_everything(1, verbose=False)
    resumed = Distillation(start_epoch=0)
    module = tiny_module()
    trainer(2, [resumed]).fit(module, train_dataloaders=loader(), ckpt_path=ckpt)
    # Without the restored state the teacher would be a copy of the trained net at epoch 1.
    assert same_weights(resumed.teacher.state_dict(), teacher_weights)
    assert_frozen(resumed.teacher)
    assert not any(k.startswith("teacher") for k in module.state_dict())


def test_teacher_from_checkpoint(tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    source = ImageClassifier(num_classes=NUM_CLASSES, width_mult=0.5, scheduler="none")
    source.rebuild_net(channels=[c - 4 for c in source.net.channels])  # a pruned architecture
    run = trainer(1, [], max_steps=1)
    run.fit(source, train_dataloaders=loader())
    ckpt = tmp_path / "teacher.ckpt"
    run.save_checkpoint(ckpt)

    callback = Distillation(teacher_ckpt=str(ckpt))
    student = tiny_module()
    teacher = callback.ensure_teacher(student)
    assert callback.teacher_arch == source.arch
    assert same_weights(teacher.state_dict(), source.net.state_dict())
    assert_frozen(teacher)
    callback.on_before_prune(SimpleNamespace(callbacks=[callback]), student)
    assert callback.teacher is teacher  # a prune does not replace the checkpoint's teacher

    state = callback.state_dict()
    ckpt.unlink()  # a resumed run does not need the file
    restored = Distillation(teacher_ckpt=str(ckpt))
    restored.load_state_dict(state)
    x = torch.randn(2, 3, 16, 16)
    source.net.eval()
    with torch.no_grad():
        assert torch.equal(restored.ensure_teacher(student)(x), source.net(x))
