"""Structured ADMM: the projection, penalty and updates on tensors; ADMMPrune inside a real fit."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from callbacks.admm_prune import HOOK_NAME, ADMMPrune
from lightning_modules.image_classifier import ImageClassifier
from lightning_modules.models.mobilenet_v1 import mobilenet_v1_channels
from lightning_modules.pruning import admm
from lightning_modules.pruning.width import keep_count
from tests.helpers.tiny_fit import tiny_datamodule, tiny_module, tiny_trainer

pytestmark = pytest.mark.usefixtures("one_thread")  # the tiny fits are faster on one thread


# ------------------------------------------------------------------------------------------ the maths
def test_projection_keeps_exactly_the_largest_rows_untouched_and_zeroes_the_rest() -> None:
    torch.manual_seed(0)
    w = torch.randn(10, 4, 3, 3) * torch.linspace(0.1, 2.0, 10).view(-1, 1, 1, 1)[torch.randperm(10)]
    z = admm.project_rows(w, 3)
    zero = (z.flatten(1).abs().sum(1) == 0)
    assert int(zero.sum()) == 10 - 3
    largest = set(torch.topk(admm.row_norms(w), 3).indices.tolist())
    assert set(torch.nonzero(~zero).flatten().tolist()) == largest
    assert torch.equal(z[~zero], w[~zero])  # kept rows copied bit for bit
    assert admm.zero_rows(z) == sorted(set(range(10)) - largest)
    assert admm.kept_rows(w, 3).tolist() == sorted(largest)
    assert torch.equal(admm.project_rows(w, 10), w)
    assert not admm.project_rows(w, 0).any()
    with pytest.raises(ValueError, match="keep must be in"):
        admm.project_rows(w, 11)


def test_penalty_is_the_augmented_lagrangian_term_and_its_gradient() -> None:
    torch.manual_seed(1)
    W = {"a": torch.randn(6, 3, requires_grad=True), "b": torch.randn(4, 2, 1, 1, requires_grad=True)}
    Z = {n: admm.project_rows(w, 2) for n, w in W.items()}
    U = {n: torch.randn_like(w) for n, w in W.items()}
    rho = 0.3
    penalty = admm.admm_penalty(W, Z, U, rho)
    expected = sum(rho / 2 * ((W[n] - Z[n] + U[n]) ** 2).sum() for n in W)
    torch.testing.assert_close(penalty, expected)
    penalty.backward()
    for n, w in W.items():
        torch.testing.assert_close(w.grad, rho * (w - Z[n] + U[n]).detach())


def test_update_projects_w_plus_u_and_accumulates_the_residual() -> None:
    torch.manual_seed(2)
    W, U = torch.randn(8, 5), torch.randn(8, 5) * 0.1
    Z, U_new = admm.admm_update(W, torch.zeros_like(W), U, 3)
    torch.testing.assert_close(Z, admm.project_rows(W + U, 3))
    assert len(admm.zero_rows(Z)) == 5
    torch.testing.assert_close(U_new, U + W - Z)
    with pytest.raises(ValueError, match="differ in shape"):
        admm.admm_update(W, torch.zeros(3, 5), U, 3)


def test_minimising_only_the_penalty_drives_w_onto_the_sparse_set() -> None:
    torch.manual_seed(3)
    w = nn.Parameter(torch.randn(16, 8, 3, 3))
    keep, rho = 4, 1.0
    Z, U = {"w": admm.project_rows(w, keep)}, {"w": torch.zeros_like(w)}
    initial = admm.primal_residual({"w": w}, Z)
    optimizer = torch.optim.SGD([w], lr=0.2)
    for _ in range(5):  # ADMM rounds: SGD on the penalty (the W-step), then the Z/U updates
        for _ in range(20):
            optimizer.zero_grad()
            admm.admm_penalty({"w": w}, Z, U, rho).backward()
            optimizer.step()
        Z["w"], U["w"] = admm.admm_update(w, Z["w"], U["w"], keep)
    final = admm.primal_residual({"w": w}, Z)
    assert final < 1e-3 * initial
    assert len(admm.zero_rows(Z["w"])) == 16 - keep
    # the filters outside the support have (almost) vanished from W itself
    assert admm.row_norms(w)[admm.zero_rows(Z["w"])].max() < 1e-3


# -------------------------------------------------------------------------------- inside a real fit
class Probe(L.Callback):
    """Records the loss hooks of each epoch and the root weights just before and just after the prune."""

    def __init__(self) -> None:
        self.hooks: dict[int, list[str]] = {}
        self.before: dict[str, torch.Tensor] = {}
        self.after: dict[str, torch.Tensor] = {}

    def on_before_prune(self, trainer: L.Trainer, pl_module: ImageClassifier) -> None:
        self.before = conv_weights(pl_module.net)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: ImageClassifier) -> None:
        self.hooks[trainer.current_epoch] = list(pl_module.loss_hooks)
        if self.before and not self.after:
            self.after = conv_weights(pl_module.net)


def conv_weights(net: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in net.named_modules() if isinstance(m, nn.Conv2d)}


def test_admm_prunes_onto_z_support_reloads_and_resumes_exactly(folder: Path, tmp_path: Path) -> None:
    def run(out: Path, ckpt: Path | None = None) -> tuple[ImageClassifier, ADMMPrune, Probe]:
        module, callback, probe = tiny_module(), ADMMPrune(start_epoch=0, prune_epoch=2, rho=1e-2), Probe()
        tiny_trainer(out, 3, [callback, probe]).fit(module, tiny_datamodule(folder), ckpt_path=ckpt)
        return module, callback, probe

    module, callback, probe = run(tmp_path)
    full = mobilenet_v1_channels(0.25)
    assert module.arch["channels"] == module.net.channels == [keep_count(c, 0.75) for c in full]
    assert callback.done and callback.result["epoch"] == 2 and callback.result["updates"] == 2
    assert callback.result["after"]["params"] < callback.result["before"]["params"]
    assert 0.0 < callback.result["flops_preserve_rate"] < 0.15
    assert probe.hooks == {0: [HOOK_NAME], 1: [HOOK_NAME], 2: []}
    assert HOOK_NAME not in module.loss_hooks

    # the prune removes exactly the zero rows of Z and keeps the rest of W as it was
    names = list(callback.Z)
    assert names[0] == "stem.0" and len(names) == len(full)
    for i, name in enumerate(names):
        support = sorted(set(range(callback.Z[name].shape[0])) - set(admm.zero_rows(callback.Z[name])))
        assert len(support) == callback.keep[name] == keep_count(full[i], 0.75)
        assert callback.result["plan"][name] == admm.zero_rows(callback.Z[name])
        rows = probe.before[name][support]
        if i > 0:  # the input channels follow the previous group's support (through the depthwise conv)
            previous = callback.Z[names[i - 1]]
            rows = rows[:, sorted(set(range(previous.shape[0])) - set(admm.zero_rows(previous)))]
        assert torch.equal(probe.after[name], rows)

    # the checkpoint after the prune rebuilds the pruned net with the same outputs
    reloaded = ImageClassifier.load_from_checkpoint(tmp_path / "epoch=2.ckpt", map_location="cpu")
    assert reloaded.arch == module.arch
    x = torch.randn(2, 3, 32, 32)
    module.eval(), reloaded.eval()
    torch.testing.assert_close(reloaded(x), module(x))

    # killed after epoch 0 (mid-ADMM): the resumed run restores Z/U and ends where the full run did
    state = torch.load(tmp_path / "epoch=0.ckpt", weights_only=True)["callbacks"][callback.state_key]
    assert state["updates"] == 0 and not state["result"] and set(state["Z"]) == set(names)
    resumed, again, resumed_probe = run(tmp_path / "resumed", tmp_path / "epoch=0.ckpt")
    assert resumed_probe.hooks == {1: [HOOK_NAME], 2: []}
    assert again.result["epoch"] == 2 and again.updates == 2
    assert resumed.arch == module.arch
    assert again.result["plan"] == callback.result["plan"]
    for name in names:
        torch.testing.assert_close(again.Z[name], callback.Z[name])
        torch.testing.assert_close(again.U[name], callback.U[name])
    resumed.eval()
    torch.testing.assert_close(resumed(x), module(x))


def test_ignored_layers_keep_their_channels(folder: Path, tmp_path: Path) -> None:
    module = tiny_module()
    callback = ADMMPrune(start_epoch=0, prune_epoch=1, sparsity={"default": 0.5, "blocks.12.pw.0": 0.0},
                         ignore=["stem.0"])
    tiny_trainer(tmp_path, 2, [callback]).fit(module, tiny_datamodule(folder))
    full = mobilenet_v1_channels(0.25)
    assert "stem.0" not in callback.Z
    assert module.arch["channels"] == [full[0], *(keep_count(c, 0.5) for c in full[1:-1]), full[-1]]
