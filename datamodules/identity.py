"""Which dataset a folder holds: class names and per-split image counts of the published datasets.

A datamodule given the wrong dataset (Imagewoof's archive for CIFAR-10: ten classes too) would train
without complaint on the wrong images, and an archive missing some of its images would train on less
data. :func:`check_identity` compares what was found with what the dataset is known to contain.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from datamodules.errors import DatasetError

__all__ = ["KNOWN_DATASETS", "KnownDataset", "check_identity"]


@dataclass(frozen=True)
class KnownDataset:
    """A published dataset: its class-folder names and image counts per split (train, test/val)."""

    name: str
    datamodule: str
    classes: tuple[str, ...]
    counts: tuple[int, int]


KNOWN_DATASETS: dict[str, KnownDataset] = {
    known.name: known
    for known in (
        KnownDataset(
            "CIFAR-10", "datamodules.CIFAR10DataModule",
            ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
            (50_000, 10_000),
        ),
        KnownDataset(  # the imagenette2 split (fastai), any resolution
            "Imagenette", "datamodules.ImagenetteDataModule",
            ("n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916", "n03417042",
             "n03425413", "n03445777", "n03888257"),
            (9_469, 3_925),
        ),
        KnownDataset(  # the imagewoof2 split (fastai), any resolution
            "Imagewoof", "datamodules.ImagewoofDataModule",
            ("n02086240", "n02087394", "n02088364", "n02089973", "n02093754", "n02096294", "n02099601",
             "n02105641", "n02111889", "n02115641"),
            (9_025, 3_929),
        ),
    )
}


def _guess(classes: list[str]) -> KnownDataset | None:
    return next((k for k in KNOWN_DATASETS.values() if set(classes) <= set(k.classes)), None)


def check_identity(
    expected: str = "CIFAR-10",
    classes: list[str] | None = None,
    counts: tuple[int, int] = (0, 0),
    root: str | Path = "",
    check_counts: bool = True,
) -> None:
    """Raise :class:`DatasetError` unless the data at ``root`` is (a class subset of) ``expected``.

    Args:
        expected: a key of :data:`KNOWN_DATASETS`.
        classes: class-folder names found (sorted).
        counts: images found in the training and the test/val split.
        root: the dataset root the user gave, for the message.
        check_counts: when every class is present, the counts must be the published ones (an archive
            missing images is incomplete); ``False`` accepts a reduced copy of the whole dataset.
            A subset of the classes (a dataset made from some of them) is always accepted.
    """
    known, classes = KNOWN_DATASETS[expected], list(classes or [])
    foreign = [c for c in classes if c not in known.classes]
    if foreign:
        other = _guess(classes)
        hint = (f"it looks like {other.name}: use {other.datamodule} (--data.class_path {other.datamodule})"
                if other else "for a dataset of your own use --data.class_path datamodules.ImageFolderDataModule")
        raise DatasetError(
            f"{root} is not {expected}: its classes {classes[:4]}{'...' if len(classes) > 4 else ''} include "
            f"{foreign[0]!r}, which is not a {expected} class ({', '.join(known.classes[:4])}, ...); {hint}, "
            f"or point --data.root at {expected}"
        )
    if check_counts and set(classes) == set(known.classes) and tuple(counts) != known.counts:
        raise DatasetError(
            f"{root} holds {counts[0]:,} training and {counts[1]:,} test/val images, but {expected} has "
            f"{known.counts[0]:,} and {known.counts[1]:,}: the copy is incomplete or altered; download or "
            f"copy it again (--data.train_subset / --data.eval_subset select fewer images; "
            f"--data.check_counts false accepts a reduced copy on purpose)"
        )
