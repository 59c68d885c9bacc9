"""Tiny datasets written in the real on-disk formats, good and broken, for the datamodule tests.

Every image of class ``k`` is a colour whose red channel averages :func:`class_red` ``(k)``, so a loaded
image's label can be checked from its pixels' mean (JPEG keeps the mean within a few levels). Each image
carries its own zero-mean texture (:data:`TEXTURE` levels up or down per pixel): on flat colours every
BatchNorm channel sees almost no variance, so a few steps at a real learning rate leave running statistics
that make the eval-mode network overflow (losses of 1e24 or NaN). The texture alone does not keep a handful of
steps at lr 0.1 finite in eval mode; the entry-point runs on these images train at 0.001
(:func:`tests.helpers.cli_args.base_args`).
"""

from __future__ import annotations

import pickle
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
IMAGENETTE_WNIDS: tuple[str, ...] = ("n01440764", "n02102040", "n02979186")


def class_red(label: int = 0) -> int:
    """Red value of the flat colour used for class ``label``."""
    return 10 + 25 * label


def label_from_red(red_mean: float = 0.0) -> int:
    """Inverse of :func:`class_red`, robust to JPEG error."""
    return round((red_mean - 10) / 25)


#: Levels each pixel sits above or below its class colour (at most ``class_red(0)``, so nothing clips).
TEXTURE = 10


def class_pixels(label: int = 0, height: int = 32, width: int = 32, index: int = 0) -> np.ndarray:
    """uint8 HWC image of class ``label``: its colour plus a texture drawn from ``index`` whose mean is 0
    (as many pixels +:data:`TEXTURE` as -:data:`TEXTURE`; one pixel left flat when their count is odd)."""
    colour = np.array([class_red(label), 128, 250 - class_red(label)], dtype=np.int16)
    n = height * width
    signs = np.array([1, -1] * (n // 2) + [0] * (n % 2), dtype=np.int16)
    texture = np.random.default_rng(index).permutation(signs).reshape(height, width, 1) * TEXTURE
    return (colour + texture).astype(np.uint8)


def write_image(path: Path, label: int = 0, height: int = 32, width: int = 32, index: int = 0) -> Path:
    """Write a class-coloured image; the format follows the suffix (.jpg/.jpeg/.JPEG → JPEG, .png → PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    Image.fromarray(class_pixels(label, height, width, index)).save(path, format=fmt, quality=95)
    return path


def make_image_folder(
    root: Path,
    splits: dict[str, int] | None = None,
    classes: Sequence[str] = CIFAR_CLASSES[:3],
    height: int = 32,
    width: int = 32,
    suffix: str = ".jpg",
    nest: str | None = None,
) -> Path:
    """Write ``<root>[/<nest>]/<split>/<class>/NNNN<suffix>`` with ``splits[split]`` images per class.

    Also drops junk files (``.DS_Store``, a text file, a hidden ``._`` file) that must be ignored.

    Returns:
        the folder holding the splits.
    """
    splits = splits if splits is not None else {"train": 6, "test": 2}
    base = root / nest if nest else root
    for split, per_class in splits.items():
        for label, name in enumerate(classes):
            for i in range(per_class):
                write_image(base / split / name / f"{i:04d}{suffix}", label, height, width, index=i)
            (base / split / name / ".DS_Store").write_bytes(b"\x00\x01junk")
            (base / split / name / f"._{0:04d}{suffix}").write_bytes(b"resource fork")
        (base / split / "notes.txt").write_text("not an image")
    return base


def make_imagenette_folder(
    root: Path,
    n_train: int = 5,
    n_val: int = 2,
    wnids: Sequence[str] = IMAGENETTE_WNIDS,
    height: int = 48,
    width: int = 40,
    nest: str | None = "imagenette2-160",
) -> Path:
    """fastai layout: ``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG`` and a top-level csv."""
    base = make_image_folder(
        root, {"train": n_train, "val": n_val}, wnids, height, width, suffix=".JPEG", nest=nest
    )
    (base / "noisy_imagenette.csv").write_text("path,noisy_labels_0\n")
    return base


def make_cifar_batches(root: Path, per_batch: int = 6, n_test: int = 8) -> Path:
    """torchvision's ``cifar-10-batches-py`` format: pickled dicts with the official key names.

    Labels cycle through CIFAR-10's ten classes; each row is a class-coloured 32x32 image stored as
    1024 red, 1024 green, 1024 blue bytes.

    Returns:
        the ``cifar-10-batches-py`` folder.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(n: int, offset: int, label_text: str) -> dict:
        labels = [(offset + i) % len(CIFAR_CLASSES) for i in range(n)]
        data = np.stack([class_pixels(k, index=offset + i).transpose(2, 0, 1).reshape(-1)
                         for i, k in enumerate(labels)])
        names = [f"fake_{offset + i:05d}.png" for i in range(n)]
        return {"batch_label": label_text, "labels": labels, "data": data, "filenames": names}

    for b in range(1, 6):
        content = batch(per_batch, b * per_batch, f"training batch {b} of 5")
        (folder / f"data_batch_{b}").write_bytes(pickle.dumps(content, protocol=2))
    test = batch(n_test, 0, "testing batch 1 of 1")
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    meta = {"num_cases_per_batch": per_batch, "label_names": list(CIFAR_CLASSES), "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    (folder / "readme.html").write_text("<html></html>")
    return folder


def make_archive(source: Path, archive: Path, arcname: str | None = None) -> Path:
    """Pack the folder ``source`` as ``arcname`` (default its name) into a .tar, .tar.gz or .tgz file."""
    mode = "w" if archive.name.endswith(".tar") else "w:gz"
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, mode) as tar:
        tar.add(source, arcname=arcname if arcname is not None else source.name)
    return archive


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to ``keep`` of its length, as an interrupted download would."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def corrupt_image(path: Path) -> Path:
    """Overwrite an image with bytes that start like a JPEG but cannot be decoded."""
    path.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00garbage" * 16)
    return path


def make_empty_class(root: Path, split: str = "train", name: str = "zebra") -> Path:
    """Add a class folder holding only a junk file."""
    folder = root / split / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".DS_Store").write_bytes(b"junk")
    return folder


def make_unsafe_archive(archive: Path) -> Path:
    """A .tar.gz with a member that would escape the extraction folder (``../escaped.txt``)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    payload = archive.parent / "payload.txt"
    payload.write_text("outside")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(payload, arcname="../escaped.txt")
    payload.unlink()
    return archive
