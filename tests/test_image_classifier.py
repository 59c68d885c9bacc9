"""ImageClassifier: optimiser/schedule choices, precision and memory format, freezing, checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules.image_classifier import ImageClassifier


def tiny_loader(n: int = 16, size: int = 32, classes: int = 4) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g))
    return DataLoader(data, batch_size=8)


def fit(module: ImageClassifier, epochs: int = 1, **trainer_kwargs) -> L.Trainer:
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, **trainer_kwargs)
    trainer.fit(module, tiny_loader(), tiny_loader())
    return trainer


@pytest.mark.parametrize(("name", "cls", "nesterov"), [
    ("sgd", torch.optim.SGD, False), ("nesterov", torch.optim.SGD, True),
    ("adam", torch.optim.Adam, None), ("adamw", torch.optim.AdamW, None),
])
def test_optimizer_choice(name: str, cls: type, nesterov: bool | None) -> None:
    module = ImageClassifier(num_classes=4, width_mult=0.25, optimizer=name, lr=0.01, scheduler="none")
    trainer = fit(module)
    opt = trainer.optimizers[0]
    assert isinstance(opt, cls)
    if nesterov is not None:
        assert opt.param_groups[0]["nesterov"] is nesterov
    # biases and BatchNorm parameters carry no weight decay
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 5e-4]


def test_cosine_schedule_with_warmup_steps_per_update() -> None:
    module = ImageClassifier(num_classes=4, width_mult=0.25, lr=0.1, warmup_epochs=1, warmup_lr=1e-4)
    lrs: list[float] = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, *_):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    fit(module, epochs=4, callbacks=[Record()])
    assert lrs[0] == pytest.approx(1e-4)  # warm-up starts low
    assert max(lrs) == pytest.approx(0.1, rel=0.05)  # reaches the base LR after warm-up
    assert lrs[-1] < 0.06  # then decays along the cosine
    assert len(set(lrs)) == len(lrs)  # stepped every update, not every epoch


def test_bf16_mixed_and_channels_last_train() -> None:
    module = ImageClassifier(num_classes=4, width_mult=0.25, channels_last=True)
    fit(module, precision="bf16-mixed")
    weight = module.net.blocks[0].pw[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(weight).all()


def _nhwc_activations(run: Callable[[], object], module: torch.nn.Module) -> set[bool]:
    """For every convolution output of ``module`` with several channels and pixels while ``run()`` runs:
    is it laid out NHWC (channel stride 1)? (Weights cannot tell: 1x1 and depthwise kernels are both.)"""
    seen: set[bool] = set()
    def record(_m: torch.nn.Module, _i: object, out: torch.Tensor) -> None:
        if out.shape[1] > 1 and out.shape[2] * out.shape[3] > 1:
            seen.add(out.stride(1) == 1)

    hooks = [m.register_forward_hook(record) for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    run()
    for hook in hooks:
        hook.remove()
    return seen


@pytest.mark.parametrize("channels_last", [True, False])
def test_memory_format_default_and_heads_follow_it(channels_last: bool, tmp_path: Path) -> None:
    """NHWC unless asked otherwise; the auxiliary heads and a checkpoint's reload keep the run's layout."""
    module = ImageClassifier(num_classes=4, width_mult=0.25) if channels_last else \
        ImageClassifier(num_classes=4, width_mult=0.25, channels_last=False)
    module.attach_aux_heads((8,), cut_points=[2, 5])
    fit(module)
    x = torch.randn(2, 3, 32, 32)
    module.eval()
    assert _nhwc_activations(lambda: module.forward_with_aux(x), module.net) == {channels_last}
    assert _nhwc_activations(lambda: module.forward_with_aux(x), module.aux_heads) == {channels_last}
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    again = ImageClassifier.load_from_checkpoint(tmp_path / "m.ckpt")
    again.eval()
    assert again.hparams.channels_last is channels_last
    assert _nhwc_activations(lambda: again.forward_with_aux(x), again) == {channels_last}
    assert torch.equal(module.forward_with_aux(x)[1][5], again.forward_with_aux(x)[1][5])


def test_label_smoothing_changes_the_loss() -> None:
    logits, y = torch.tensor([[4.0, 0.0, 0.0, 0.0]]), torch.tensor([0])
    plain = ImageClassifier(num_classes=4, width_mult=0.25).criterion(logits, y)
    smooth = ImageClassifier(num_classes=4, width_mult=0.25, label_smoothing=0.1).criterion(logits, y)
    assert smooth > plain


def test_freeze_head_only_finetuning() -> None:
    module = ImageClassifier(num_classes=4, width_mult=0.25, num_blocks=6, head_channels=[16, 8])
    module.freeze_modules(["net.stem", "net.blocks"])
    before = {k: v.clone() for k, v in module.net.state_dict().items()}
    fit(module)
    after = module.net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("head.") for k in changed)


def test_a_network_left_in_eval_mode_trains_in_train_mode() -> None:
    module = ImageClassifier(num_classes=4, width_mult=0.25, num_blocks=6, head_channels=[16, 8])
    module.freeze_modules(["net.stem"])
    module.net.eval()  # e.g. after an export or an evaluation outside Lightning
    modes: list[dict[str, bool]] = []

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, pl_module: ImageClassifier, batch: object, i: int) -> None:
            modes.append({"blocks": pl_module.net.blocks.training, "stem": pl_module.net.stem.training})

    stem_stats = module.net.stem[1].running_mean.clone()
    block_stats = module.net.blocks[0].dw[1].running_mean.clone()
    fit(module, epochs=2, callbacks=[Probe()])  # validation in between must not leave eval mode behind
    assert modes and all(m == {"blocks": True, "stem": False} for m in modes), modes
    assert not torch.equal(module.net.blocks[0].dw[1].running_mean, block_stats)  # BatchNorm statistics learn
    assert torch.equal(module.net.stem[1].running_mean, stem_stats)  # the frozen stem's stay fixed


def test_checkpoint_rebuilds_a_changed_architecture(tmp_path: Path) -> None:
    module = ImageClassifier(num_classes=4, width_mult=0.25)
    trainer = fit(module)
    module.rebuild_net(num_blocks=3, head_channels=[16], channels=module.net.channels[:4])
    trainer.save_checkpoint(tmp_path / "cut.ckpt")
    loaded = ImageClassifier.load_from_checkpoint(tmp_path / "cut.ckpt")
    assert len(loaded.net.blocks) == 3 and loaded.hparams.head_channels == [16]
    for key, value in module.net.state_dict().items():
        assert torch.equal(value, loaded.net.state_dict()[key]), key


def test_throughput_is_logged_per_epoch() -> None:
    from callbacks.throughput import Throughput, images_per_second

    assert images_per_second(100, 2.0) == 50.0 and images_per_second(5, 0.0) == 0.0
    module = ImageClassifier(num_classes=4, width_mult=0.25)
    trainer = fit(module, callbacks=[Throughput()])
    assert trainer.callback_metrics["train/img_per_s"] > 0
