"""Dataset roots: folders or ``.tar``/``.tar.gz``/``.tgz`` archives extracted once into a cache.

An archive is never extracted next to itself (its folder may be read-only). It is unpacked into
``<cache root>/<archive name>-<hash>/data``, where the hash is the SHA-256 of the archive's bytes (not its
path: every copy or spelling of the same archive shares one entry), so an archive that changes (rewritten,
truncated, replaced by another of the same size) gets a fresh cache entry and is read again. Extraction
goes to a temporary folder that is renamed to ``data`` only once complete (the tar's end-of-archive
marker reached): a killed or failed extraction never looks finished and leaves nothing behind.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import hashlib
import lzma
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import rich.progress

from datamodules.errors import DatasetError

__all__ = [
    "ARCHIVE_SUFFIXES",
    "CACHE_ENV_VAR",
    "cache_entry",
    "cache_root",
    "cache_write_error",
    "content_key",
    "extract_archive",
    "is_archive",
    "locate_dataset_dir",
    "resolve_root",
]

ARCHIVE_SUFFIXES: tuple[str, ...] = (".tar.gz", ".tgz", ".tar")
CACHE_ENV_VAR: str = "TINYML_CACHE_DIR"
DEFAULT_CACHE_ROOT: str = "~/.cache/tinyml-pruning/datasets"
EXTRACTED_DIRNAME: str = "data"
#: Archives at least this large remember their content hash (see :func:`content_key`).
MEMO_MIN_BYTES: int = 1 << 30


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Return the folder that holds all cache entries.

    Args:
        cache_dir: explicit cache folder; if ``None``, the ``TINYML_CACHE_DIR`` environment variable,
            else ``~/.cache/tinyml-pruning/datasets``.
    """
    chosen = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE_ROOT
    return Path(chosen).expanduser().absolute()


def is_archive(path: str | Path = "") -> bool:
    """Whether ``path`` names a file with a supported archive suffix."""
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def _archive_stem(path: Path) -> str:
    name = path.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def cache_entry(path: str | Path = "", cache_dir: str | Path | None = None) -> Path:
    """Return the cache folder that belongs to a dataset archive or folder (not created here).

    Archives are keyed by :func:`content_key` (their bytes alone); folders by absolute path (the
    decoded-tensor files inside are keyed by the images' sizes and times themselves).
    """
    path = Path(path).expanduser().absolute()
    if path.is_file():
        key, stem = content_key(path), _archive_stem(path)
    else:
        key, stem = str(path), path.name or "root"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_root(cache_dir) / f"{stem}-{digest}"


def content_key(path: str | Path = "") -> str:
    """SHA-256 of a file's bytes (about 0.1 s per 50 MB). Files over :data:`MEMO_MIN_BYTES` remember their
    hash in :func:`cache_root`'s ``.keys`` folder under their path, size, inode and change times, so a
    multi-GB archive is read in full only once (any rewrite changes its change time)."""
    path = Path(path).absolute()
    stat = path.stat()
    memo = None
    if stat.st_size >= MEMO_MIN_BYTES:
        identity = f"{path}|{stat.st_size}|{stat.st_ino}|{stat.st_mtime_ns}|{stat.st_ctime_ns}"
        memo = cache_root() / ".keys" / hashlib.sha256(identity.encode()).hexdigest()[:24]
        if memo.is_file():
            return memo.read_text().strip()
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    key = digest.hexdigest()
    if memo is not None:
        with contextlib.suppress(OSError):  # a memo that cannot be written costs a re-read next time
            memo.parent.mkdir(parents=True, exist_ok=True)
            memo.write_text(key + "\n")
    return key


def cache_write_error(err: OSError, folder: Path) -> DatasetError:
    """The one-line error for a cache that cannot be written (not a folder, read-only, full disk), naming
    the folder and where its location came from."""
    source = (f"{CACHE_ENV_VAR}={os.environ[CACHE_ENV_VAR]}" if os.environ.get(CACHE_ENV_VAR)
              else f"the default {DEFAULT_CACHE_ROOT}")
    return DatasetError(
        f"cannot write the dataset cache in {folder}: {err.strerror or err} (cache root from {source}); "
        f"point {CACHE_ENV_VAR} (or --data.cache_dir) at a writable folder with free space"
    )


_DECOMPRESSORS = ((b"\x1f\x8b", gzip.open), (b"BZh", bz2.open), (b"\xfd7zXZ", lzma.open))


def check_archive_complete(archive: str | Path = "") -> None:
    """Raise ``EOFError`` if ``archive`` is cut short.

    ``tarfile`` takes a truncated member header for the end of the archive and stops without an error,
    so the compressed stream is read to its end-of-stream marker (gzip, bz2 and xz raise ``EOFError``
    without it), and an uncompressed tar must be a whole number of 512-byte blocks.
    """
    archive = Path(archive)
    with archive.open("rb") as f:
        magic = f.read(6)
    for signature, opener in _DECOMPRESSORS:
        if magic.startswith(signature):
            with opener(archive, "rb") as stream:
                while stream.read(1 << 22):
                    pass
            return
    if archive.stat().st_size % tarfile.BLOCKSIZE:
        raise EOFError(f"size is not a multiple of {tarfile.BLOCKSIZE} bytes")


class IncompleteArchiveError(tarfile.TarError):
    """The tar stream ended without its end-of-archive marker (cut short at a member boundary)."""


def _extract_members(archive: Path, folder: Path) -> int:
    """Unpack ``archive`` into ``folder`` with ``tarfile``'s ``"data"`` filter; returns the member count.

    ``tarfile`` treats a stream that ends exactly between two members like a finished archive; a real
    end is a zero block, which ``tarfile`` has read (the stream is one block past the last header
    offset) only when the marker was there.
    """
    with (
        rich.progress.open(archive, "rb", description=f"Extracting {archive.name}") as stream,
        tarfile.open(fileobj=stream, mode="r|*") as tar,
    ):
        count = 0
        for member in tar:
            tar.extract(member, folder, filter="data")
            count += 1
        if tar.fileobj.tell() < tar.offset + tarfile.BLOCKSIZE:
            raise IncompleteArchiveError(
                f"the tar stream ends after {count} members without its end-of-archive marker"
            )
    return count


def extract_archive(archive: str | Path = "", target: str | Path = "") -> Path:
    """Extract ``archive`` into the folder ``target`` atomically, with a progress bar.

    The members are unpacked with ``tarfile``'s ``"data"`` filter (no absolute paths, no escaping links,
    no device files) into a temporary sibling of ``target``, which is renamed to ``target`` at the end.
    On any failure the temporary folder (and the cache entry, if it was created for this) is removed.
    If another process finished the same extraction first, its result is kept.

    Raises:
        DatasetError: the archive is truncated, corrupt or holds unsafe members.
    """
    archive, target = Path(archive), Path(target)
    entry_existed = target.parent.is_dir()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    except OSError as err:
        raise cache_write_error(err, target.parent) from err

    def clean_up() -> None:
        shutil.rmtree(partial, ignore_errors=True)
        if not entry_existed:
            with contextlib.suppress(OSError):
                target.parent.rmdir()  # only if empty

    try:
        check_archive_complete(archive)
        _extract_members(archive, partial)
    except tarfile.FilterError as err:
        clean_up()
        raise DatasetError(
            f"refusing to extract archive {archive}: member {err.tarinfo.name!r} is unsafe ({err}); "
            f"the archive tries to write outside its folder or holds links/devices, so it is not a dataset "
            f"archive to trust. Nothing was extracted; use an archive from the dataset's official source"
        ) from err
    except OSError as err:
        clean_up()
        if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
            raise cache_write_error(err, target.parent) from err
        raise DatasetError(
            f"cannot extract archive {archive}: {err}. The file is truncated or corrupt; download or copy it "
            f"again, or pass root=<folder> with the extracted dataset"
        ) from err
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as err:
        clean_up()
        raise DatasetError(
            f"cannot extract archive {archive}: {err}. The file is truncated or corrupt (or the disk is "
            f"full); download or copy it again, or pass root=<folder> with the extracted dataset"
        ) from err
    except BaseException:
        clean_up()
        raise
    try:
        os.rename(partial, target)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        if not target.is_dir():
            raise
    return target


def resolve_root(root: str | Path = "", cache_dir: str | Path | None = None) -> Path:
    """Return a folder holding the dataset given as a folder or an archive file.

    A folder is returned as it is. An archive is extracted once into its cache entry
    (see :func:`cache_entry`) and the extracted folder is returned; later calls reuse it.

    Args:
        root: dataset folder, or ``.tar``/``.tar.gz``/``.tgz`` archive file.
        cache_dir: cache folder for extracted archives (see :func:`cache_root`).

    Raises:
        DatasetError: ``root`` is missing, is not a folder or archive, or the archive is corrupt.
    """
    path = Path(root).expanduser()
    if path.is_dir():
        return path.absolute()
    if not path.exists():
        raise DatasetError(
            f"dataset root {path} does not exist; pass root=<dataset folder or .tar/.tar.gz/.tgz archive>, "
            f"or download=True where the dataset supports it"
        )
    if not is_archive(path):
        raise DatasetError(
            f"dataset root {path} is a file but not a .tar/.tar.gz/.tgz archive; pass a dataset folder "
            f"or one of those archives"
        )
    target = cache_entry(path, cache_dir) / EXTRACTED_DIRNAME
    if not target.is_dir():
        extract_archive(path, target)
    return target


def _is_visible_dir(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith((".", "__MACOSX"))


def locate_dataset_dir(
    folder: str | Path = "",
    has_layout: Callable[[Path], bool] = _is_visible_dir,
    expected: str = "train/ and val/ folders",
    source: str | Path = "",
) -> Path:
    """Find the folder that holds a dataset's splits: ``folder`` itself or one sub-folder of it.

    Archives commonly wrap the dataset in one top-level folder (``cifar10/train/...``); this finds it.

    Args:
        folder: where to look.
        has_layout: predicate telling whether a folder holds the expected splits.
        expected: description of the expected layout, used in the error message.
        source: the path the user gave (folder or archive), used in the error message.

    Raises:
        DatasetError: no folder, or more than one, has the expected layout.
    """
    folder = Path(folder)
    source = source or folder
    if has_layout(folder):
        return folder
    children = sorted(p for p in folder.iterdir() if _is_visible_dir(p))
    matches = [child for child in children if has_layout(child)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        names = ", ".join(m.name for m in matches)
        raise DatasetError(
            f"{source} holds several datasets ({names}); pass root=<one of them> so it is unambiguous"
        )
    found = (
        ", ".join(p.name + ("/" if p.is_dir() else "") for p in sorted(folder.iterdir())[:12]) or "nothing"
    )
    raise DatasetError(
        f"{source} does not have the expected layout: expected {expected} directly inside it or inside "
        f"one sub-folder, found {found}; point root at the dataset folder (or an archive of it)"
    )
