"""Checkpoint files (and run summaries, reports: :func:`write_json`) that survive a full disk or a crash,
checkpoints read without running code, and the data module a checkpoint was trained with
(:func:`checkpoint_datamodule`).

:class:`AtomicCheckpointIO` is the Lightning ``CheckpointIO`` of every experiment (``experiments/run/cli.py``
adds it to the trainer). Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction but never
fsyncs, and a failed write surfaces as a raw ``OSError`` from deep inside the fit; here a checkpoint is
written to a temporary file in the same folder, flushed and fsynced, then renamed over the old one
(``os.replace`` is atomic on POSIX), so ``last.ckpt`` is always either the previous or the new complete
file. Reading forces ``weights_only=True`` (tensors and plain containers only) and names the file in
every error.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

__all__ = ["AtomicCheckpointIO", "CheckpointError", "atomic_write", "check_checkpoint_file", "checkpoint_datamodule",
           "write_bytes", "write_json"]

#: Bytes per ``write`` call.
CHUNK_BYTES: int = 1 << 22


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read; the message names the file and says what to do."""


def check_checkpoint_file(path: str | Path = "", option: str = "--ckpt_path") -> Path:
    """Raise :class:`CheckpointError` unless ``path`` is an existing, complete checkpoint file.

    ``torch.save`` writes a zip archive whose directory sits at the end: a file cut short has none,
    which ``zipfile.is_zipfile`` sees without reading the tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise CheckpointError(
            f"checkpoint {path} ({option}) {what}; pass the path of a .ckpt file, e.g. "
            f"<run dir>/checkpoints/last.ckpt"
        )
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"checkpoint {path} ({option}) is truncated or not a PyTorch checkpoint (no zip directory at its "
            f"end, {path.stat().st_size:,} bytes); use an earlier checkpoint of the run"
        )
    return path


def write_bytes(f: io.BufferedWriter, data: bytes) -> None:
    """Write ``data`` to ``f`` in chunks of :data:`CHUNK_BYTES`."""
    view = memoryview(data)
    for start in range(0, len(view), CHUNK_BYTES):
        f.write(view[start:start + CHUNK_BYTES])


def atomic_write(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, flushed, fsynced and renamed
    over ``path``: a reader sees the old file or the new one, never part of one. Raises ``OSError``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _file_mode(path))
            write_bytes(f, data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def write_json(path: str | Path, document: Any, default: Callable[[Any], Any] | None = str) -> Path:
    """``document`` as indented JSON (values JSON lacks through ``default``), written by :func:`atomic_write`:
    a summary or report that a run stopped while writing is its previous version, not a torn file."""
    return atomic_write(path, (json.dumps(document, indent=2, default=default) + "\n").encode())


def _file_mode(path: Path) -> int:
    """Mode for the new file: the old file's, else what ``open`` would give (0o666 less the umask);
    ``mkstemp`` alone would leave it readable by its owner only."""
    if path.is_file():
        return path.stat().st_mode & 0o7777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened or synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic, durable writes and weights-only reads (see the module doc)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        path = Path(path)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # serialise first: a failure here leaves no file at all
        try:
            atomic_write(path, buffer.getbuffer().tobytes())
        except OSError as err:
            raise self._write_error(path, err) from err

    @staticmethod
    def _write_error(path: Path, err: OSError) -> CheckpointError:
        previous = (f"the previous {path.name} is intact: resume with --ckpt_path {path}" if path.is_file()
                    else "no earlier version of it exists")
        return CheckpointError(
            f"could not write checkpoint {path}: {err.strerror or err}; the run stopped and {previous} once "
            f"the problem is fixed (free disk space, or pass a writable --trainer.default_root_dir)"
        )

    def load_checkpoint(
        self,
        path: _PATH,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        path = check_checkpoint_file(path)
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
            raise CheckpointError(f"cannot read checkpoint {path}: {str(err).splitlines()[0]}; "
                                  f"use another checkpoint of the run") from err


def weights_digest(ckpt: str | Path) -> str:
    """SHA-256 of a checkpoint's weights (every ``state_dict`` entry's name, dtype, shape and bytes, in name
    order): equal for two files only when they hold the same network, whatever else the files carry."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True).get("state_dict") or {}
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


#: Data module arguments a saved checkpoint may carry that the caller replaces (loading, subsets).
_LOADER_ARGS = ("batch_size", "eval_batch_size", "num_workers", "train_subset", "eval_subset")


def checkpoint_datamodule(ckpt: str | Path, root: str | None = None, image_size: int | None = None,
                          default_root: str = "../shared/data/cifar10-jpg.tar.gz",
                          **loader: Any) -> Any:
    """The datamodule ``ckpt`` was trained with, from its saved datamodule hyper-parameters (Lightning keeps
    them under ``datamodule_hyper_parameters`` with the class path), or a CIFAR-10 datamodule when the
    checkpoint has none. ``root`` / ``image_size`` replace the saved ones when given; ``loader``
    (``batch_size``, ``num_workers``, subsets) always does. Only classes of :mod:`datamodules` are built."""
    import datamodules

    saved = torch.load(ckpt, map_location="cpu", weights_only=True).get("datamodule_hyper_parameters") or {}
    class_path = str(saved.get("_class_path", "datamodules.CIFAR10DataModule"))
    name = class_path.rsplit(".", 1)[-1]
    if not class_path.startswith("datamodules.") or name not in datamodules.__all__ or not name.endswith("DataModule"):
        raise ValueError(f"{ckpt}: its data module {class_path} is not one of this project's (datamodules.*DataModule)")
    cls = getattr(datamodules, name)
    accepted = set(inspect.signature(datamodules.ImageFolderDataModule.__init__).parameters) - {"self"}
    kwargs = {k: v for k, v in saved.items() if k in accepted and k not in _LOADER_ARGS}
    kwargs.setdefault("root", default_root)
    if root is not None:
        kwargs["root"] = root
    if image_size is not None:
        kwargs["image_size"] = image_size
    return cls(**{**kwargs, **loader})
