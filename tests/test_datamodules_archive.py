"""Dataset roots: folders, archives, the extraction cache and broken archives."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from datamodules import DatasetError, archive, resolve_root
from datamodules.archive import cache_entry, cache_root, locate_dataset_dir
from datamodules.folder import has_split_dirs
from tests.helpers import fake_data


def _listing(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_folder_root_is_returned_as_is(tmp_path: Path) -> None:
    dataset = fake_data.make_image_folder(tmp_path / "cifar")
    assert resolve_root(dataset, cache_dir=tmp_path / "cache") == dataset
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tgz"])
def test_archive_is_extracted_into_cache_not_next_to_it(tmp_path: Path, suffix: str) -> None:
    source = fake_data.make_image_folder(tmp_path / "src" / "cifar10")
    shelf = tmp_path / "shelf"
    packed = fake_data.make_archive(source, shelf / f"cifar{suffix}")
    before = _listing(shelf)
    folder = resolve_root(packed, cache_dir=tmp_path / "cache")
    assert _listing(shelf) == before  # nothing written next to the archive
    assert folder.is_relative_to(tmp_path / "cache")
    assert (folder / "cifar10" / "train" / "airplane" / "0000.jpg").is_file()
    assert folder.parent.name.startswith("cifar-")
    assert not [p for p in folder.parent.iterdir() if "partial" in p.name]


def test_extraction_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    packed = fake_data.make_archive(fake_data.make_image_folder(tmp_path / "d"), tmp_path / "d.tar.gz")
    calls: list[Path] = []
    original = archive.extract_archive
    monkeypatch.setattr(archive, "extract_archive", lambda a, t: calls.append(a) or original(a, t))
    first = resolve_root(packed, cache_dir=tmp_path / "cache")
    marker = first / "marker"
    marker.write_text("kept")
    second = resolve_root(packed, cache_dir=tmp_path / "cache")
    assert first == second and marker.read_text() == "kept"
    assert len(calls) == 1


def test_changed_archive_gets_a_new_cache_entry(tmp_path: Path) -> None:
    """The key is the archive's bytes: a new time stamp keeps the entry, new bytes get another."""
    packed = fake_data.make_archive(fake_data.make_image_folder(tmp_path / "d"), tmp_path / "d.tgz")
    first = cache_entry(packed, tmp_path / "cache")
    os.utime(packed, ns=(1_000_000_000, 1_000_000_000))
    assert cache_entry(packed, tmp_path / "cache") == first
    packed.write_bytes(packed.read_bytes() + b"\0" * 512)
    assert cache_entry(packed, tmp_path / "cache") != first


def test_cache_location_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINYML_CACHE_DIR", str(tmp_path / "from-env"))
    assert cache_root() == tmp_path / "from-env"
    assert cache_root(tmp_path / "explicit") == tmp_path / "explicit"
    monkeypatch.delenv("TINYML_CACHE_DIR")
    assert cache_root() == Path("~/.cache/tinyml-pruning/datasets").expanduser()
    monkeypatch.setenv("TINYML_CACHE_DIR", str(tmp_path / "from-env"))
    packed = fake_data.make_archive(fake_data.make_image_folder(tmp_path / "d"), tmp_path / "d.tar")
    assert resolve_root(packed).is_relative_to(tmp_path / "from-env")


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_truncated_archive_raises_and_leaves_no_partial_data(tmp_path: Path, suffix: str) -> None:
    source = fake_data.make_image_folder(tmp_path / "d", {"train": 30, "test": 5})
    packed = fake_data.truncate(fake_data.make_archive(source, tmp_path / f"d{suffix}"), keep=0.5)
    with pytest.raises(DatasetError, match="truncated or corrupt") as info:
        resolve_root(packed, cache_dir=tmp_path / "cache")
    assert str(packed) in str(info.value)
    assert not cache_entry(packed, tmp_path / "cache").exists()  # no partial folder, no empty entry
    assert list((tmp_path / "cache").iterdir()) == []


def test_not_an_archive_at_all(tmp_path: Path) -> None:
    fake = tmp_path / "noise.tar.gz"
    fake.write_bytes(b"this is not gzip data" * 10)
    with pytest.raises(DatasetError, match=str(fake)):
        resolve_root(fake, cache_dir=tmp_path / "cache")


def test_interrupted_extraction_is_not_taken_as_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packed = fake_data.make_archive(fake_data.make_image_folder(tmp_path / "d"), tmp_path / "d.tar.gz")

    def killed(self: tarfile.TarFile, member: tarfile.TarInfo, path: str, **kwargs: object) -> None:
        (Path(path) / "half-written").write_text("x")
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(tarfile.TarFile, "extract", killed)
        with pytest.raises(KeyboardInterrupt):
            resolve_root(packed, cache_dir=tmp_path / "cache")
    assert not (cache_entry(packed, tmp_path / "cache") / "data").exists()
    folder = resolve_root(packed, cache_dir=tmp_path / "cache")
    assert (folder / "d" / "test" / "bird" / "0001.jpg").is_file()


def test_unsafe_member_is_refused(tmp_path: Path) -> None:
    packed = fake_data.make_unsafe_archive(tmp_path / "shelf" / "evil.tar.gz")
    with pytest.raises(DatasetError, match="evil.tar.gz") as info:
        resolve_root(packed, cache_dir=tmp_path / "cache")
    assert not list(tmp_path.rglob("escaped.txt"))
    message = str(info.value)
    assert "../escaped.txt" in message and "unsafe" in message and "download" not in message
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_tar_cut_at_a_member_boundary_is_detected(tmp_path: Path, suffix: str) -> None:
    """A tar that stops exactly between two members reads like a complete, smaller archive to tarfile;
    the missing end-of-archive marker gives it away."""
    import gzip

    source = fake_data.make_image_folder(tmp_path / "src" / "cifar10", {"train": 20, "test": 5})
    whole = fake_data.make_archive(source, tmp_path / "whole.tar")
    with tarfile.open(whole) as tar:
        boundary = tar.getmembers()[-15].offset  # the header of the 15th member from the end
    head = whole.read_bytes()[:boundary]
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(gzip.compress(head) if suffix == ".tar.gz" else head)
    with tarfile.open(cut) as tar:
        assert len(tar.getmembers()) > 0  # tarfile alone accepts it
    with pytest.raises(DatasetError, match="end-of-archive marker") as info:
        resolve_root(cut, cache_dir=tmp_path / "cache")
    assert str(cut) in str(info.value)
    assert list((tmp_path / "cache").iterdir()) == []


def test_same_size_same_mtime_rewrite_gets_a_new_cache_entry(tmp_path: Path) -> None:
    """The cache key covers the archive's bytes, not only its size and time stamp."""
    packed = fake_data.make_archive(fake_data.make_image_folder(tmp_path / "d"), tmp_path / "d.tar")
    before = cache_entry(packed, tmp_path / "cache")
    stat = packed.stat()
    data = bytearray(packed.read_bytes())
    data[-2000] ^= 0xFF  # same length, different content near the end
    packed.write_bytes(bytes(data))
    os.utime(packed, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert packed.stat().st_size == stat.st_size and packed.stat().st_mtime_ns == stat.st_mtime_ns
    assert cache_entry(packed, tmp_path / "cache") != before


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist") as info:
        resolve_root(tmp_path / "nowhere.tar.gz")
    assert str(tmp_path / "nowhere.tar.gz") in str(info.value)


def test_plain_file_root(tmp_path: Path) -> None:
    other = tmp_path / "data.zip"
    other.write_bytes(b"PK")
    with pytest.raises(DatasetError, match="not a .tar"):
        resolve_root(other)


def test_locate_nested_ambiguous_and_wrong_layout(tmp_path: Path) -> None:
    nested = fake_data.make_image_folder(tmp_path / "one", nest="cifar10")
    assert locate_dataset_dir(tmp_path / "one", has_split_dirs) == nested
    fake_data.make_image_folder(tmp_path / "one", nest="other")
    with pytest.raises(DatasetError, match="several datasets"):
        locate_dataset_dir(tmp_path / "one", has_split_dirs)
    (tmp_path / "bad" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DatasetError, match="expected train/ and test/") as info:
        locate_dataset_dir(tmp_path / "bad", has_split_dirs, expected="train/ and test/", source="bad.tgz")
    assert "bad.tgz" in str(info.value) and "train/" in str(info.value)


@pytest.mark.parametrize("suffix", [".tar.gz", ".tar"])
def test_every_truncation_point_is_detected(tmp_path: Path, suffix: str) -> None:
    """tarfile alone accepts some truncated archives as complete; the completeness check never does."""
    from datamodules.archive import check_archive_complete

    source = fake_data.make_image_folder(tmp_path / "src" / "cifar10", {"train": 6, "test": 2})
    packed = fake_data.make_archive(source, tmp_path / f"whole{suffix}")
    check_archive_complete(packed)  # the whole archive passes
    data = packed.read_bytes()
    for fraction in (0.1, 0.3, 0.5, 0.7, 0.9, 0.99):
        cut = tmp_path / f"cut{suffix}"
        cut.write_bytes(data[: int(len(data) * fraction) - 1])
        with pytest.raises(EOFError):
            check_archive_complete(cut)
