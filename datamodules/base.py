"""Shared LightningDataModule for classification datasets stored as image folders (or archives of them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from datamodules import transforms as T
from datamodules.archive import cache_entry, locate_dataset_dir, resolve_root
from datamodules.datasets import ImageFileDataset, ImageTensorDataset, InMemoryImageDataset, collate_batch
from datamodules.errors import DatasetError
from datamodules.folder import (
    Split,
    check_same_classes,
    has_split_dirs,
    scan_image_folder,
    stratified_split,
    stratified_subset,
)
from datamodules.identity import check_identity
from datamodules.memory import cache_file_for, load_or_decode

__all__ = ["ImageFolderDataModule"]

_STAGE_SPLITS: dict[str | None, tuple[str, ...]] = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("test",),
    None: ("train", "val", "test"),
}


class ImageFolderDataModule(LightningDataModule):
    """Image classification data in ImageFolder layout: ``<root>/train/<class>/*`` + ``<root>/val|test/<class>/*``.

    ``root`` is a folder or a ``.tar``/``.tar.gz``/``.tgz`` archive (extracted once into a cache, see
    :func:`datamodules.resolve_root`); the splits may sit one folder down (``<root>/<name>/train``).
    Classes are the sorted class-folder names; jpg/jpeg/png files are read, other files ignored.

    Splits: ``val`` is the dataset's test/val split unless ``val_fraction > 0``, which holds out a
    class-stratified, seeded fraction of train as ``val``; ``test`` is always the test/val split.
    ``train_subset``/``eval_subset`` keep that many images per split (class-stratified, seeded).

    With ``in_memory=True`` every image is decoded once into a uint8 tensor (saved as a ``.pt`` file in
    the cache, reused by later runs); batches leave the DataLoader as uint8 and are augmented and
    normalised on the training device in :meth:`on_after_batch_transfer`, per image. With
    ``in_memory=False`` images are decoded and transformed per sample in DataLoader workers.
    Either way the model receives ``(float32 normalised NCHW images, int64 labels)``.

    This base class applies ImageNet-style transforms; subclasses set defaults, the split names, the
    transforms and the loading of their own formats. A subclass's ``__init__`` only changes defaults
    (``root``, ``image_size``) and passes ``**kwargs`` on: the CLI follows ``**kwargs`` into this signature.

    Args:
        root: dataset folder or archive file.
        image_size: side of the square images given to the model.
        batch_size: training batch size.
        eval_batch_size: validation/test batch size (``batch_size`` if ``None``).
        num_workers: DataLoader worker processes for the streaming path (in memory uses none).
        val_fraction: fraction of train held out as validation (0: validate on the test/val split).
        in_memory: decode everything once into memory and augment on the device.
        train_subset: keep only this many training images (class-stratified), e.g. for quick runs.
        eval_subset: keep only this many validation and test images (class-stratified).
        seed: seed of the held-out split and subset selection (not of augmentation or shuffling, which
            use the global torch RNG).
        cache_dir: cache folder for extracted archives and decoded tensors (default:
            ``$TINYML_CACHE_DIR`` or ``~/.cache/tinyml-pruning/datasets``).
        download: download the dataset into ``root`` if it is not there (where supported).
        check_counts: for a published dataset (CIFAR-10, Imagenette, Imagewoof) found with all its classes,
            require its published image counts (an archive missing images is refused); ``False`` accepts
            a reduced copy made on purpose. Foreign class names are refused either way.
    """

    train_split_names: ClassVar[tuple[str, ...]] = ("train",)
    eval_split_names: ClassVar[tuple[str, ...]] = ("val", "test")
    nominal_num_classes: ClassVar[int] = 0
    #: Key of :data:`datamodules.identity.KNOWN_DATASETS` the data must match (``None``: any dataset).
    known_dataset: ClassVar[str | None] = None
    supports_in_memory: ClassVar[bool] = True
    supports_download: ClassVar[bool] = False
    #: Channels of every image the loaders yield: files are decoded to RGB (grey, RGBA and CMYK converted).
    channels: ClassVar[int] = 3
    mean: ClassVar[tuple[float, float, float]] = T.IMAGENET_MEAN
    std: ClassVar[tuple[float, float, float]] = T.IMAGENET_STD
    #: The training and evaluation transforms, per sample and per batch.
    transforms: ClassVar[T.TransformFamily] = T.IMAGENET_TRANSFORMS

    def __init__(
        self,
        root: str = "data",
        image_size: int = 224,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        val_fraction: float = 0.0,
        in_memory: bool = True,
        train_subset: int | None = None,
        eval_subset: int | None = None,
        seed: int = 0,
        cache_dir: str | None = None,
        download: bool = False,
        check_counts: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        name = type(self).__name__
        if image_size <= 0 or batch_size <= 0 or (eval_batch_size is not None and eval_batch_size <= 0):
            raise DatasetError(f"{name}: image_size, batch_size and eval_batch_size must be positive, got "
                               f"{image_size}, {batch_size}, {eval_batch_size}")
        if not 0.0 <= val_fraction < 1.0:
            raise DatasetError(f"{name}: val_fraction must be in [0, 1), got {val_fraction}")
        for arg, value in (("train_subset", train_subset), ("eval_subset", eval_subset)):
            if value is not None and value <= 0:
                raise DatasetError(f"{name}: {arg} must be positive or None, got {value}")
        if in_memory and not self.supports_in_memory:
            raise DatasetError(
                f"{name} (root {root}) streams images from disk; in_memory=True is not supported"
            )
        if download and not self.supports_download:
            raise DatasetError(
                f"{name} cannot download its dataset; prepare it at {root} and use download=False"
            )
        self.classes: list[str] = []
        self._num_classes: int = self.nominal_num_classes  # replaced by the count found on disk
        self.dataset_dir: Path | None = None
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None
        self._splits: dict[str, Split] = {}
        self._views: dict[str, tuple[str, Tensor | None]] = {}

    @property
    def num_classes(self) -> int:
        """The number of classes found on disk (the splits are read on first use, so the experiment CLIs
        can give it to the model before training: ``link_arguments("data.num_classes", ...)``)."""
        if not self._splits:
            missing = not Path(self.hparams.root).expanduser().exists() and not self.hparams.download
            if missing and self.nominal_num_classes:
                return self.nominal_num_classes  # nothing to read here: setup() raises the clear DatasetError
            self._read_splits()
        return self._num_classes

    # ----------------------------------------------------------- dataset-specific hooks

    def has_layout(self, folder: Path) -> bool:
        """Whether ``folder`` holds this dataset's splits."""
        return has_split_dirs(folder, self.train_split_names, self.eval_split_names)

    def expected_layout(self) -> str:
        """Human description of :meth:`has_layout`, for error messages."""
        evals = " or ".join(f"{n}/" for n in self.eval_split_names)
        return f"{self.train_split_names[0]}/<class>/<image> and {evals}<class>/<image> folders"

    def load_splits(self, dataset_dir: Path) -> tuple[Split, Split]:
        """Read the (train, test/val) splits of the dataset found at ``dataset_dir``."""
        train_name = next(n for n in self.train_split_names if (dataset_dir / n).is_dir())
        eval_name = next(n for n in self.eval_split_names if (dataset_dir / n).is_dir())
        return scan_image_folder(dataset_dir / train_name), scan_image_folder(dataset_dir / eval_name)

    def download_dataset(self, root: Path) -> None:
        """Download the dataset into the folder ``root`` (only called when it is not there yet)."""
        raise DatasetError(f"{type(self).__name__} cannot download; prepare the dataset at {root}")

    def stored_size(self, source: str = "train") -> tuple[int, int]:
        """(shorter side, square crop) at which in-memory images of split ``source`` are stored."""
        resize_to = T.eval_resize_size(self.hparams.image_size)
        return (resize_to, resize_to) if source == "train" else (resize_to, self.hparams.image_size)

    def train_transform(self) -> Any:
        """Per-sample training transform of the streaming path."""
        return self.transforms.train(self.hparams.image_size, self.mean, self.std)

    def eval_transform(self) -> Any:
        """Per-sample evaluation transform of the streaming path."""
        return self.transforms.eval(self.hparams.image_size, self.mean, self.std)

    def train_batch_transform(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Training augmentation + normalisation of a uint8 batch (in-memory path)."""
        return self.transforms.train_batch(images, self.hparams.image_size, self.mean, self.std, generator)

    def eval_batch_transform(self, images: Tensor) -> Tensor:
        """Evaluation transform + normalisation of a uint8 batch (in-memory path)."""
        return self.transforms.eval_batch(images, self.hparams.image_size, self.mean, self.std)

    # ----------------------------------------------------------------- Lightning hooks

    def prepare_data(self) -> None:
        """Download (if asked) and extract the archive into the cache; called once per node."""
        self._locate()

    def setup(self, stage: str | None = None) -> None:
        """Read the splits and build the datasets needed by ``stage`` (all of them for ``None``)."""
        if not self._splits:
            self._read_splits()
        for name in _STAGE_SPLITS.get(stage, _STAGE_SPLITS[None]):
            if getattr(self, f"{name}_dataset") is None:
                setattr(self, f"{name}_dataset", self._make_dataset(name))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int = 0) -> Any:
        """Augment (training) or resize (evaluation) and normalise uint8 batches on their device.

        Float batches (streaming path) and bare tensors (the model summary's example input) pass unchanged.
        Without an attached trainer, batches are treated as evaluation batches.
        """
        if isinstance(batch, Tensor):
            return batch
        images, labels = batch
        if images.dtype != torch.uint8:
            return batch
        training = self.trainer is not None and bool(self.trainer.training)
        return self.transform_batch(images, train=training), labels

    def transform_batch(
        self, images: Tensor, train: bool = False, generator: torch.Generator | None = None
    ) -> Tensor:
        """Apply the training or evaluation batch transform to uint8 images."""
        return self.train_batch_transform(images, generator) if train else self.eval_batch_transform(images)

    # ------------------------------------------------------------------------ internals

    def _locate(self) -> Path:
        root = Path(self.hparams.root).expanduser()
        if self.hparams.download and not self._holds_dataset(root):
            root.mkdir(parents=True, exist_ok=True)
            self.download_dataset(root)
        folder = resolve_root(root, self.hparams.cache_dir)
        return locate_dataset_dir(folder, self.has_layout, self.expected_layout(), source=root)

    def _holds_dataset(self, root: Path) -> bool:
        if root.is_file():
            return True  # an archive: nothing to download, it is read as it is
        try:
            return root.is_dir() and locate_dataset_dir(root, self.has_layout) is not None
        except DatasetError:
            return False

    def _read_splits(self) -> None:
        self.dataset_dir = self._locate()
        train, evaluation = self.load_splits(self.dataset_dir)
        check_same_classes(train, evaluation)
        if self.known_dataset is not None:
            check_identity(self.known_dataset, train.classes, (len(train), len(evaluation)),
                           self.hparams.root, self.hparams.check_counts)
        self.classes, self._num_classes = list(train.classes), len(train.classes)
        self._splits = {"train": train, "eval": evaluation}
        hp = self.hparams
        train_idx: Tensor | None = None
        val_view: tuple[str, Tensor | None] = ("eval", None)
        if hp.val_fraction > 0:
            train_idx, held_out = stratified_split(train.labels, hp.val_fraction, hp.seed)
            val_view = ("train", held_out)
        self._views = {
            "train": ("train", self._subset(train.labels, train_idx, hp.train_subset)),
            "val": (val_view[0], self._subset(self._splits[val_view[0]].labels, val_view[1], hp.eval_subset)),
            "test": ("eval", self._subset(evaluation.labels, None, hp.eval_subset)),
        }

    def _subset(
        self, labels: Tensor, indices: Tensor | None = None, size: int | None = None
    ) -> Tensor | None:
        if size is None:
            return indices
        base = torch.arange(labels.numel()) if indices is None else indices
        return base[stratified_subset(labels[base], size, self.hparams.seed)]

    def _make_dataset(self, name: str) -> Dataset:
        source, indices = self._views[name]
        full = self._splits[source]
        split = full.subset(indices)
        if self.hparams.in_memory:
            return InMemoryImageDataset(self._decoded(source, full, indices), split.labels)
        transform = self.train_transform() if name == "train" else self.eval_transform()
        if split.images is not None:
            return ImageTensorDataset(split.images, split.labels, transform)
        return ImageFileDataset(split.paths or [], split.labels, transform)

    def _decoded(self, source: str, full: Split, indices: Tensor | None = None) -> Tensor:
        """uint8 images of ``full[indices]``, from the tensor cache when possible.

        A subset is indexed out of the whole split's cache file when that exists; otherwise only the
        subset is decoded (and cached under its own key).
        """
        if full.images is not None:
            return full.images if indices is None else full.images[indices]
        resize_to, crop_to = self.stored_size(source)
        tensor_dir = cache_entry(Path(self.hparams.root).expanduser(), self.hparams.cache_dir) / "tensors"
        split_name = Path(full.location).name
        full_file = cache_file_for(full, split_name, resize_to, crop_to, tensor_dir)
        part = full if indices is None or full_file.is_file() else full.subset(indices)
        cache_file = (
            full_file if part is full else cache_file_for(part, split_name, resize_to, crop_to, tensor_dir)
        )
        root_name = Path(self.hparams.root).name
        description = f"Decoding {root_name} {split_name} ({len(part)} images, {crop_to} px)"
        images = load_or_decode(part, cache_file, resize_to, crop_to, description)
        return images[indices] if part is full and indices is not None else images

    def _train_sampler(self, dataset: Dataset) -> Sampler:
        """Shuffle as a function of (seed, epoch): a resumed run sees the same order as an uninterrupted
        one. ``DistributedSampler`` with one replica is exactly that; Lightning calls its ``set_epoch``
        every epoch. With several processes Lightning installs its own distributed sampler instead."""
        if self.trainer is not None and self.trainer.world_size > 1:
            return RandomSampler(dataset)
        return DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=self.hparams.seed)

    def _check_train_size(self, size: int, batch_size: int) -> None:
        """A training batch needs two images at least (BatchNorm), and a batch larger than the training set
        would make every epoch one short batch of a different size than asked."""
        hp = self.hparams
        if size < 2:
            raise DatasetError(
                f"the training split of {hp.root} has {size} image(s) (train_subset={hp.train_subset}); "
                f"BatchNorm needs at least 2 images per training batch, use --data.train_subset 2 or more"
            )
        if batch_size > size:
            raise DatasetError(
                f"batch_size {batch_size} is larger than the {size} training images of {hp.root}; use "
                f"--data.batch_size {size} or less (or more training images)"
            )

    def _loader(self, name: str) -> DataLoader:
        dataset = getattr(self, f"{name}_dataset")
        if dataset is None:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[name])
            dataset = getattr(self, f"{name}_dataset")
        train = name == "train"
        hp = self.hparams
        batch_size = hp.batch_size if train else (hp.eval_batch_size or hp.batch_size)
        if train:
            self._check_train_size(len(dataset), batch_size)
        in_memory = isinstance(dataset, InMemoryImageDataset)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self._train_sampler(dataset) if train else None,
            shuffle=False if train else None,
            # a private generator: making the loader's iterator never consumes the global RNG
            generator=torch.Generator().manual_seed(hp.seed),
            num_workers=0 if in_memory else hp.num_workers,
            collate_fn=collate_batch if in_memory else None,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
            # a trailing batch of one image breaks BatchNorm in training; drop only that case
            drop_last=train and len(dataset) > 1 and len(dataset) % batch_size == 1,
        )
