"""Where the cache lives and how much it may hold: arguments and environment variables."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shmstore._cache import Cache, default_directory, parse_budget
from shmstore.errors import ArgumentError, SegmentError, ShmStoreError


def _filesystem_bytes(path: Path) -> int:
    vfs = os.statvfs(path)
    return vfs.f_blocks * vfs.f_frsize


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (4096, 4096),
        ("1000000", 1_000_000),
        ("64K", 64 << 10),
        ("64k", 64 << 10),
        ("3M", 3 << 20),
        ("64G", 64 << 30),
        ("64GiB", 64 << 30),
        ("64GB", 64 << 30),
        ("2T", 2 << 40),
        ("1.5G", 3 << 29),
        (" 512 M ", 512 << 20),
        ("100B", 100),
    ],
)
def test_budget_in_bytes_or_with_binary_suffix(
    tmp_path: Path, value: int | str, expected: int
) -> None:
    assert parse_budget(value, tmp_path) == expected


def test_budget_as_a_percentage_of_the_file_system(cache_dir: Path) -> None:
    cache = Cache(directory=cache_dir, budget="25%")
    assert cache.budget == _filesystem_bytes(cache_dir) // 4


@pytest.mark.parametrize(
    "value", ["", "abc", "-5", "0", "0%", "150%", "12X", "1e9", "5 G B", "%", "G", 0, -1, True, 2.5]
)
def test_an_invalid_budget_names_the_accepted_forms(tmp_path: Path, value: object) -> None:
    with pytest.raises(ArgumentError, match="budget") as caught:
        parse_budget(value, tmp_path)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, ShmStoreError)


def test_budget_defaults_to_half_the_file_system(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHMSTORE_BUDGET", raising=False)
    cache = Cache(directory=cache_dir)
    assert cache.budget == _filesystem_bytes(cache_dir) // 2


def test_budget_from_shmstore_budget(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHMSTORE_BUDGET", "3M")
    assert Cache(directory=cache_dir).budget == 3 << 20
    assert Cache(directory=cache_dir, budget=1 << 20).budget == 1 << 20, "the argument wins"


def test_an_invalid_shmstore_budget_names_the_variable(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHMSTORE_BUDGET", "lots")
    with pytest.raises(
        ArgumentError, match=r"invalid SHMSTORE_BUDGET 'lots': give bytes.*64G.*50%"
    ):
        Cache(directory=cache_dir)


def test_directory_from_shmstore_dir(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHMSTORE_DIR", str(cache_dir))
    monkeypatch.setenv("JOB_SHMTMPDIR", "/nonexistent")
    assert Cache(budget="1M").directory == cache_dir
    assert cache_dir.is_dir()


def test_directory_from_slurm_job_shmtmpdir(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHMSTORE_DIR", raising=False)
    monkeypatch.setenv("JOB_SHMTMPDIR", str(cache_dir))
    assert default_directory() == cache_dir / "shmstore"
    cache = Cache(budget="1M")
    assert cache.directory == cache_dir / "shmstore"
    assert (cache_dir / "shmstore").is_dir()


def test_directory_defaults_to_dev_shm_of_the_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHMSTORE_DIR", raising=False)
    monkeypatch.delenv("JOB_SHMTMPDIR", raising=False)
    assert default_directory() == Path(f"/dev/shm/shmstore-{os.getuid()}")


def test_a_relative_directory_is_made_absolute(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(cache_dir.parent)
    cache = Cache(directory=cache_dir.name, budget="1M")
    assert cache.directory == cache_dir
    assert cache.directory.is_absolute()


def test_an_empty_directory_path_is_refused() -> None:
    with pytest.raises(ArgumentError, match="empty path"):
        Cache(directory="")


def test_a_directory_that_cannot_be_made_is_a_segment_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(SegmentError, match="SHMSTORE_DIR"):
        Cache(directory=blocker / "cache")
