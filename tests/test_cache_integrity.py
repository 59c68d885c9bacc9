"""The decoded-image cache is checked at every load, keyed by the archive's bytes, and a cache location
that cannot be written is one error naming ``TINYML_CACHE_DIR``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from datamodules import CIFAR10DataModule, DatasetError, archive
from tests.helpers import fake_data


def _cifar(root: Path, cache: Path | None) -> CIFAR10DataModule:
    dm = CIFAR10DataModule(root=str(root), cache_dir=None if cache is None else str(cache), num_workers=0)
    dm.setup()
    return dm


@pytest.fixture
def packed(tmp_path: Path) -> Path:
    source = fake_data.make_image_folder(tmp_path / "src" / "cifar10", {"train": 5, "test": 2})
    return fake_data.make_archive(source, tmp_path / "shelf" / "cifar.tar.gz")


def overwrite_middle(path: Path, fill: bytes = b"\xff") -> None:
    """Overwrite a stretch in the middle of a file, its size unchanged (a bad sector, a stray write)."""
    data = bytearray(path.read_bytes())
    start = len(data) // 2
    data[start:start + 256] = fill * 256
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["overwritten", "truncated"])
def test_a_damaged_decoded_cache_is_rebuilt_with_a_notice(damage: str, packed: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    clean = _cifar(packed, tmp_path / "c").train_dataset.images.clone()
    cache_file = next(p for p in (tmp_path / "c").rglob("train-*.pt"))
    if damage == "overwritten":
        overwrite_middle(cache_file)
    else:
        cache_file.write_bytes(cache_file.read_bytes()[: cache_file.stat().st_size // 2])
    capsys.readouterr()
    again = _cifar(packed, tmp_path / "c").train_dataset.images
    notices = [line for line in capsys.readouterr().err.splitlines() if line.startswith("notice:")]
    assert len(notices) == 1 and str(cache_file) in notices[0], notices
    assert ("checksum" if damage == "overwritten" else "unreadable") in notices[0]
    assert torch.equal(again, clean)  # the images trained on are the decoded ones, not the damaged bytes
    assert torch.equal(torch.load(cache_file, weights_only=True)["images"], clean)  # and the cache is whole again


def test_the_cache_key_is_the_archive_content_not_its_path(packed: Path, tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "renamed.tar.gz"
    copy.parent.mkdir()
    shutil.copy2(packed, copy)
    spelled = tmp_path / "shelf" / ".." / "shelf" / "cifar.tar.gz"
    entry = archive.cache_entry(packed, tmp_path / "c")
    assert archive.cache_entry(spelled, tmp_path / "c") == entry
    assert archive.cache_entry(copy, tmp_path / "c").name.split("-")[-1] == entry.name.split("-")[-1]
    overwrite_middle(copy)
    assert archive.cache_entry(copy, tmp_path / "c").name.split("-")[-1] != entry.name.split("-")[-1]


@pytest.mark.parametrize("where", ["a file", "below a file"])
def test_a_cache_dir_that_cannot_be_written_names_the_variable(where: str, packed: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    target = blocker if where == "a file" else blocker / "cache"
    monkeypatch.setenv(archive.CACHE_ENV_VAR, str(target))
    with pytest.raises(DatasetError) as exc:
        _cifar(packed, None)
    message = str(exc.value)
    assert f"{archive.CACHE_ENV_VAR}={target}" in message and "writable" in message, message
    assert blocker.read_text() == ""
