"""Decoding image files into one uint8 tensor, cached as a ``.pt`` file so later runs load it in seconds.

The file carries the SHA-256 of its images' bytes, checked at every load: a cache corrupted on disk is
decoded again (with a one-line notice), never trained on.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import sys
import tempfile
import warnings
from pathlib import Path

import rich.progress
import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image

from datamodules.archive import cache_write_error
from datamodules.errors import DatasetError
from datamodules.folder import Split

__all__ = ["cache_file_for", "decode_images", "fingerprint", "fit_square", "load_or_decode", "read_image"]

CACHE_FORMAT_VERSION: int = 2


def read_image(path: str | Path = "") -> Tensor:
    """Decode an image file into a uint8 RGB tensor ``(3, H, W)`` (grey/RGBA/CMYK are converted).

    Raises:
        DatasetError: the file cannot be read or decoded; the message names it.
    """
    try:
        with warnings.catch_warnings():
            # torchvision 0.29 marks its decoders deprecated in favour of torchcodec; they still work.
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_image(str(path), mode=ImageReadMode.RGB)
    except (RuntimeError, OSError, ValueError) as err:
        raise DatasetError(
            f"cannot decode image {path}: {err}; the file is corrupt or not an image, replace or delete it"
        ) from err


def fit_square(image: Tensor, resize_to: int = 32, crop_to: int = 32) -> Tensor:
    """Resize the shorter side to ``resize_to`` (antialiased) then centre-crop a ``crop_to`` square.

    Images that already are ``crop_to`` squares with ``resize_to == crop_to`` are returned unchanged.
    """
    height, width = image.shape[-2:]
    if height == width == crop_to == resize_to:
        return image
    if min(height, width) != resize_to:
        image = TF.resize(image, [resize_to], antialias=True)
    return TF.center_crop(image, [crop_to, crop_to])


def decode_images(
    paths: list[str] | None = None,
    resize_to: int = 32,
    crop_to: int = 32,
    description: str = "Decoding images",
) -> Tensor:
    """Decode ``paths`` into a uint8 tensor ``(N, 3, crop_to, crop_to)`` with a progress bar.

    Each image goes through :func:`fit_square` so that all have the same size.
    """
    paths = paths or []
    out = torch.empty((len(paths), 3, crop_to, crop_to), dtype=torch.uint8)
    for i, path in enumerate(rich.progress.track(paths, description=description, total=len(paths))):
        out[i] = fit_square(read_image(path), resize_to, crop_to)
    return out


def fingerprint(split: Split, resize_to: int = 32, crop_to: int = 32) -> str:
    """Hash of a split's files (path, size, mtime, label) and the stored resolution."""
    digest = hashlib.sha256(f"v{CACHE_FORMAT_VERSION}|{resize_to}|{crop_to}|{split.classes}".encode())
    for path, label in zip(split.paths or [], split.labels.tolist(), strict=True):
        stat = os.stat(path)
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{label}\n".encode())
    return digest.hexdigest()[:16]


def images_digest(images: Tensor) -> str:
    """SHA-256 of a uint8 image tensor's bytes (C order)."""
    return hashlib.sha256(images.contiguous().numpy()).hexdigest()


def _save_atomic(payload: dict, path: Path) -> None:
    tmp = ""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        os.close(fd)
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError
        oserror = err if isinstance(err, OSError) else OSError(errno.ENOSPC, str(err).splitlines()[0])
        raise cache_write_error(oserror, path.parent) from err
    finally:
        if tmp and os.path.exists(tmp):
            os.remove(tmp)


def cache_file_for(
    split: Split,
    name: str = "train",
    resize_to: int = 32,
    crop_to: int = 32,
    cache_dir: str | Path = "",
) -> Path:
    """Path of the decoded-tensor file of ``split``, keyed by split name, stored resolution and files."""
    size = f"{crop_to}px" if resize_to == crop_to else f"{resize_to}to{crop_to}px"
    return Path(cache_dir) / f"{name}-{size}-{fingerprint(split, resize_to, crop_to)}.pt"


def load_or_decode(
    split: Split,
    cache_file: str | Path = "",
    resize_to: int = 32,
    crop_to: int = 32,
    description: str = "Decoding images",
) -> Tensor:
    """Return the split's images as a uint8 tensor, loaded from ``cache_file`` or decoded and saved there.

    The file is written to a temporary name then renamed, so an interrupted save leaves no bad cache; a
    cache file that is unreadable, of another shape or fails its checksum is decoded again and replaced,
    with a one-line notice on stderr.
    """
    cache_file = Path(cache_file)
    if cache_file.is_file():
        cached, problem = read_cache(cache_file, (len(split), 3, crop_to, crop_to))
        if cached is not None:
            return cached
        print(f"notice: the decoded-image cache {cache_file} {problem}; decoding the images again",
              file=sys.stderr)
    images = decode_images(split.paths, resize_to, crop_to, description)
    _save_atomic({"images": images, "labels": split.labels, "sha256": images_digest(images)}, cache_file)
    return images


def read_cache(cache_file: Path, shape: tuple[int, ...]) -> tuple[Tensor | None, str | None]:
    """The images of a decoded-image cache file that is whole and holds ``shape``, else ``None`` and what
    is wrong with it."""
    try:
        payload = torch.load(cache_file, map_location="cpu", weights_only=True)
        images = payload["images"]
    except (RuntimeError, OSError, EOFError, KeyError, AttributeError, TypeError, pickle.UnpicklingError) as err:
        return None, f"is unreadable ({type(err).__name__})"
    if tuple(images.shape) != shape:
        return None, f"holds images of shape {tuple(images.shape)}, not {shape}"
    if payload.get("sha256") != images_digest(images):
        return None, "fails its checksum (its content changed on disk)"
    return images, None
