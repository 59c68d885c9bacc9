"""Batches from both data paths, held-out validation, subsets, the tensor cache and the Trainer hooks."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DistributedSampler

from datamodules import CIFAR10DataModule, ImagenetteDataModule, archive, memory
from datamodules.datasets import InMemoryImageDataset
from datamodules.transforms import CIFAR10_MEAN, CIFAR10_STD
from tests.helpers import fake_data


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    """Image-folder CIFAR stand-in: 3 classes, 10 train + 4 test images each."""
    return fake_data.make_image_folder(tmp_path / "cifar", {"train": 10, "test": 4})


def _cifar(root: Path, cache: Path, **kwargs: object) -> CIFAR10DataModule:
    dm = CIFAR10DataModule(root=str(root), cache_dir=str(cache), num_workers=0, **kwargs)
    dm.setup()
    return dm


@pytest.mark.parametrize("image_size", [32, 64])
def test_in_memory_batches(cifar_dir: Path, tmp_path: Path, image_size: int) -> None:
    dm = _cifar(cifar_dir, tmp_path / "c", image_size=image_size, batch_size=8)
    raw_images, raw_labels = next(iter(dm.train_dataloader()))
    assert raw_images.dtype == torch.uint8 and raw_images.shape == (8, 3, 32, 32)
    images, labels = dm.on_after_batch_transfer((raw_images, raw_labels), 0)
    assert images.dtype == torch.float32 and images.shape == (8, 3, image_size, image_size)
    assert labels.dtype == torch.int64 and torch.equal(labels, raw_labels)
    if image_size == 32:  # no trainer attached: evaluation transform = plain normalisation
        mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
        torch.testing.assert_close(images, (raw_images / 255.0 - mean) / std)


@pytest.mark.parametrize("image_size", [32, 48])
def test_streaming_matches_in_memory_for_evaluation(cifar_dir: Path, tmp_path: Path, image_size: int) -> None:
    memory_dm = _cifar(cifar_dir, tmp_path / "c", image_size=image_size, eval_batch_size=64)
    stream_dm = _cifar(cifar_dir, tmp_path / "c", image_size=image_size, eval_batch_size=64, in_memory=False,
                       batch_size=16)
    streamed = next(iter(stream_dm.test_dataloader()))
    assert streamed[0].dtype == torch.float32 and streamed[0].shape == (12, 3, image_size, image_size)
    assert stream_dm.on_after_batch_transfer(streamed, 0) is streamed  # already transformed
    from_memory = memory_dm.on_after_batch_transfer(next(iter(memory_dm.test_dataloader())), 0)
    assert torch.equal(from_memory[1], streamed[1])
    torch.testing.assert_close(from_memory[0], streamed[0], atol=0.05, rtol=0)
    train_images, _ = next(iter(stream_dm.train_dataloader()))
    assert train_images.shape[1:] == (3, image_size, image_size) and train_images.dtype == torch.float32


def test_streaming_with_workers(cifar_dir: Path, tmp_path: Path) -> None:
    dm = _cifar(cifar_dir, tmp_path / "c", in_memory=False, batch_size=5)
    dm.hparams.num_workers = 2
    loader = dm.train_dataloader()
    assert loader.num_workers == 2 and not loader.persistent_workers
    batches = list(loader)
    assert sum(len(labels) for _, labels in batches) == 30


def test_imagenette_paths_agree_for_evaluation(tmp_path: Path) -> None:
    source = fake_data.make_imagenette_folder(tmp_path / "src", n_train=4, n_val=3, height=50, width=40)
    kwargs = {"root": str(source), "image_size": 32, "cache_dir": str(tmp_path / "c"), "num_workers": 0,
              "batch_size": 12}
    in_mem, stream = ImagenetteDataModule(**kwargs), ImagenetteDataModule(in_memory=False, **kwargs)
    in_mem.setup()
    stream.setup()
    a = in_mem.on_after_batch_transfer(next(iter(in_mem.val_dataloader())), 0)
    b = next(iter(stream.val_dataloader()))
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=0)
    train = in_mem.transform_batch(next(iter(in_mem.train_dataloader()))[0], train=True)
    assert train.shape == (12, 3, 32, 32) and train.dtype == torch.float32


def test_val_fraction_is_stratified_and_seeded(cifar_dir: Path, tmp_path: Path) -> None:
    dm = _cifar(cifar_dir, tmp_path / "c", val_fraction=0.2)
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (24, 6, 12)
    assert torch.bincount(dm.val_dataset.labels).tolist() == [2, 2, 2]
    assert torch.bincount(dm.train_dataset.labels).tolist() == [8, 8, 8]
    train_rows = {tuple(x.flatten()[:4].tolist()) + (i,) for i, x in enumerate(dm.train_dataset.images)}
    assert len(train_rows) == 24
    again = _cifar(cifar_dir, tmp_path / "c", val_fraction=0.2)
    other = _cifar(cifar_dir, tmp_path / "c", val_fraction=0.2, seed=1)
    held = dm._views["val"][1]
    assert torch.equal(held, again._views["val"][1]) and not torch.equal(held, other._views["val"][1])
    assert set(held.tolist()).isdisjoint(dm._views["train"][1].tolist())


def test_val_fraction_holdout_uses_evaluation_transform(tmp_path: Path) -> None:
    source = fake_data.make_imagenette_folder(tmp_path / "src", n_train=10, n_val=2)
    dm = ImagenetteDataModule(
        root=str(source), image_size=32, val_fraction=0.3, cache_dir=str(tmp_path / "c")
    )
    dm.setup("fit")
    assert dm.val_dataset.images.shape[-1] == 36  # stored at the training size...
    images, _ = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert images.shape == (9, 3, 32, 32)  # ...and centre-cropped for evaluation


def test_subsets_are_stratified_and_deterministic(cifar_dir: Path, tmp_path: Path) -> None:
    dm = _cifar(cifar_dir, tmp_path / "c", train_subset=7, eval_subset=5)
    assert torch.bincount(dm.train_dataset.labels).tolist() == [3, 2, 2]
    assert torch.bincount(dm.val_dataset.labels).tolist() == [2, 2, 1]
    assert torch.equal(dm.val_dataset.labels, dm.test_dataset.labels)
    again = _cifar(cifar_dir, tmp_path / "c2", train_subset=7, eval_subset=5)
    assert torch.equal(dm.train_dataset.images, again.train_dataset.images)
    big = _cifar(cifar_dir, tmp_path / "c", train_subset=1000)
    assert len(big.train_dataset) == 30


def test_subset_with_val_fraction(cifar_dir: Path, tmp_path: Path) -> None:
    dm = _cifar(cifar_dir, tmp_path / "c", val_fraction=0.5, train_subset=6, eval_subset=3)
    assert torch.bincount(dm.train_dataset.labels).tolist() == [2, 2, 2]
    assert torch.bincount(dm.val_dataset.labels).tolist() == [1, 1, 1]
    assert len(dm.test_dataset) == 3
    assert set(dm._views["train"][1].tolist()).isdisjoint(dm._views["val"][1].tolist())


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    original = memory.read_image
    monkeypatch.setattr(memory, "read_image", lambda path: calls.append(str(path)) or original(path))
    return calls


def test_tensor_cache_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = fake_data.make_image_folder(tmp_path / "src" / "cifar10", {"train": 5, "test": 2})
    packed = fake_data.make_archive(source, tmp_path / "cifar.tar.gz")
    decodes = _count_decodes(monkeypatch)
    extracts: list[Path] = []
    original_extract = archive.extract_archive
    monkeypatch.setattr(archive, "extract_archive", lambda a, t: extracts.append(a) or original_extract(a, t))
    first = _cifar(packed, tmp_path / "c")
    assert len(decodes) == 21 and len(extracts) == 1
    cached = sorted(p.name for p in (tmp_path / "c").rglob("*.pt"))
    assert [name.split("-")[:2] for name in cached] == [["test", "32px"], ["train", "32px"]]
    second = _cifar(packed, tmp_path / "c")
    subset = _cifar(packed, tmp_path / "c", train_subset=6)  # indexed out of the full-split cache
    assert len(decodes) == 21 and len(extracts) == 1
    assert torch.equal(first.train_dataset.images, second.train_dataset.images)
    assert len(subset.train_dataset) == 6


def test_subset_decodes_only_its_images(
    cifar_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decodes = _count_decodes(monkeypatch)
    _cifar(cifar_dir, tmp_path / "c", train_subset=4, eval_subset=3)
    assert len(decodes) == 4 + 3


def test_changed_image_invalidates_cache(
    cifar_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cifar(cifar_dir, tmp_path / "c")
    fake_data.write_image(cifar_dir / "train" / "bird" / "0000.jpg", label=0)
    decodes = _count_decodes(monkeypatch)
    dm = _cifar(cifar_dir, tmp_path / "c")
    assert len(decodes) == 30  # the training split is decoded again, the test split is not
    assert fake_data.label_from_red(dm.train_dataset.images[20, 0].float().mean().item()) == 0


def test_loader_settings(cifar_dir: Path, tmp_path: Path) -> None:
    dm = _cifar(cifar_dir, tmp_path / "c", batch_size=29, eval_batch_size=5)
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert isinstance(train.sampler, DistributedSampler) and train.sampler.num_replicas == 1
    assert train.drop_last  # 30 % 29 == 1: a lone last image would break BatchNorm
    assert not val.drop_last and val.batch_size == 5 and len(val) == 3


def test_shuffle_is_a_function_of_seed_and_epoch(cifar_dir: Path, tmp_path: Path) -> None:
    """Resuming reproduces the data order: it depends on (seed, epoch) only, never on the global RNG."""
    dm = _cifar(cifar_dir, tmp_path / "c", batch_size=30)
    loader = dm.train_dataloader()

    def order(epoch: int) -> torch.Tensor:
        loader.sampler.set_epoch(epoch)
        torch.manual_seed(epoch * 7 + 1)  # the global RNG must not matter
        return torch.tensor(list(iter(loader.sampler)))

    assert torch.equal(order(1), order(1))
    assert not torch.equal(order(0), order(1))
    assert sorted(order(2).tolist()) == list(range(len(loader.dataset)))
    state = torch.get_rng_state()
    iter(dm.train_dataloader())  # making an iterator leaves the global RNG alone
    assert torch.equal(state, torch.get_rng_state())


def test_hyperparameters_are_saved(tmp_path: Path) -> None:
    dm = CIFAR10DataModule(root="somewhere", image_size=64, train_subset=100, cache_dir=str(tmp_path))
    assert dm.hparams.root == "somewhere" and dm.hparams.image_size == 64 and dm.hparams.train_subset == 100
    assert set(dm.hparams) >= {
        "batch_size",
        "eval_batch_size",
        "val_fraction",
        "in_memory",
        "seed",
        "download",
    }


class _Recorder(pl.LightningModule):
    """Records the batches it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 3)
        self.seen: dict[str, list[torch.Tensor]] = {"train": [], "val": []}

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.seen["train"].append(batch[0])
        return self.layer(batch[0].mean((2, 3))).sum()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.seen["val"].append(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_applies_train_and_eval_transforms(cifar_dir: Path, tmp_path: Path) -> None:
    dm = CIFAR10DataModule(
        root=str(cifar_dir), cache_dir=str(tmp_path / "c"), batch_size=30, eval_batch_size=12
    )
    torch.manual_seed(0)
    model = _Recorder()
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(model, datamodule=dm)
    (train_batch,), (val_batch,) = model.seen["train"], model.seen["val"]
    assert train_batch.dtype == val_batch.dtype == torch.float32
    assert train_batch.shape == (30, 3, 32, 32) and val_batch.shape == (12, 3, 32, 32)
    pad_value = ((0.0 - torch.tensor(CIFAR10_MEAN)) / torch.tensor(CIFAR10_STD)).view(3, 1, 1)
    assert torch.isclose(train_batch, pad_value, atol=1e-4).all(dim=1).any()  # padded crops: training
    assert not torch.isclose(val_batch, pad_value, atol=1e-4).all(dim=1).any()  # no padding: evaluation
    assert (
        isinstance(dm.train_dataset, InMemoryImageDataset) and dm.test_dataset is None
    )  # fit: no test split


def test_streaming_pickled_batches(tmp_path: Path) -> None:
    fake_data.make_cifar_batches(tmp_path / "d", per_batch=4, n_test=6)
    dm = _cifar(tmp_path / "d", tmp_path / "c", in_memory=False, image_size=40, batch_size=7, check_counts=False)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (7, 3, 40, 40) and images.dtype == torch.float32 and labels.dtype == torch.int64
    test_images, test_labels = next(iter(dm.test_dataloader()))
    assert test_labels.tolist() == [0, 1, 2, 3, 4, 5]
    red = test_images[:, 0].mean((1, 2)) * CIFAR10_STD[0] + CIFAR10_MEAN[0]  # undo the normalisation
    assert [fake_data.label_from_red(255 * r) for r in red.tolist()] == test_labels.tolist()


@pytest.mark.parametrize("in_memory", [True, False])
def test_a_limited_evaluation_read_samples_every_class(cifar_dir: Path, tmp_path: Path, in_memory: bool) -> None:
    """The test folder is read in class order; 6 of its 12 images must not be the first two classes."""
    from datamodules.batches import float_batches

    dm = _cifar(cifar_dir, tmp_path / "cache", in_memory=in_memory, batch_size=4)
    everything = [y for _, y in float_batches(dm, "test")]
    assert torch.cat(everything).tolist() == [0] * 4 + [1] * 4 + [2] * 4  # the folder's order
    batches = list(float_batches(dm, "test", 6))
    labels = torch.cat([y for _, y in batches])
    assert torch.bincount(labels, minlength=3).tolist() == [2, 2, 2]
    assert all(x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32) for x, _ in batches)
    again = torch.cat([x for x, _ in float_batches(dm, "test", 6)])
    assert torch.equal(again, torch.cat([x for x, _ in batches]))  # the same sample every time
    # the sampled images are the split's own images, normalised as in the full read
    full = torch.cat([x for x, _ in float_batches(dm, "test")])
    assert all(any(torch.equal(image, f) for f in full) for image in again)
