"""Invariant 7 (docs/design.md): nobody else gets in (modes, owners, links, names), on /dev/shm."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import stat
import threading
from pathlib import Path

import numpy as np
import pytest

from shmstore._cache import Cache
from shmstore._segment import forget_headers
from shmstore.errors import SegmentError, SegmentNotFoundError
from tests._cache_children import (
    F8,
    SHAPE,
    evicted_keys,
    expected,
    fill_expected,
    make_source,
    names,
    removed_names,
)

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


def _published(cache: Cache, origin: Path, version: int = 0) -> tuple[str, Path]:
    """Load a segment, drop every array on it; its key and file."""
    source = make_source(origin, version=version)
    cache.get(source, F8, SHAPE, fill_expected(version))
    key = cache.key(source)
    return key, cache.directory / f"{key}.seg"


# -- the directory -----------------------------------------------------------------------


def test_invariant_7_directory_is_created_0700_and_segments_0600_of_this_user(
    cache: Cache, origin: Path
) -> None:
    _key, path = _published(cache, origin)
    directory = os.lstat(cache.directory)
    assert stat.S_IMODE(directory.st_mode) == 0o700
    assert directory.st_uid == os.getuid()
    segment = os.lstat(path)
    assert stat.S_IMODE(segment.st_mode) == 0o600
    assert segment.st_uid == os.getuid()
    for name in names(cache.directory):
        assert stat.S_IMODE(os.lstat(cache.directory / name).st_mode) == 0o600, name


def test_invariant_7_segments_are_0600_whatever_the_umask(cache: Cache, origin: Path) -> None:
    previous = os.umask(0o277)  # would leave the owner without write, and 0400 files
    try:
        _key, path = _published(cache, origin)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600


def test_invariant_7_an_existing_directory_open_to_others_is_tightened(
    cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache_dir.mkdir(mode=0o755)
    os.chmod(cache_dir, 0o755)
    with caplog.at_level(logging.WARNING, logger="shmstore"):
        Cache(directory=cache_dir)
    assert stat.S_IMODE(os.lstat(cache_dir).st_mode) == 0o700
    assert "had mode 755" in caplog.text


@needs_root
def test_invariant_7_a_directory_of_another_user_is_refused(cache_dir: Path) -> None:
    cache_dir.mkdir(mode=0o700)
    os.chown(cache_dir, NOBODY, NOBODY)
    with pytest.raises(SegmentError, match=f"belongs to uid {NOBODY}.*SHMSTORE_DIR"):
        Cache(directory=cache_dir)


def test_invariant_7_a_directory_that_is_a_symbolic_link_is_refused(
    cache_dir: Path, tmp_path: Path
) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    cache_dir.symlink_to(real)
    with pytest.raises(SegmentError, match="is a symbolic link"):
        Cache(directory=cache_dir)


def test_invariant_7_a_directory_that_is_a_file_is_refused(cache_dir: Path) -> None:
    cache_dir.write_bytes(b"not a directory")
    try:
        with pytest.raises(SegmentError, match="is not a directory"):
            Cache(directory=cache_dir)
    finally:
        cache_dir.unlink()


# -- names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "../x",
        "a/b",
        "",
        "/etc/passwd",
        "0" * 31,
        "0" * 33,
        "A" * 32,
        "0" * 31 + "/",
        "../" + "0" * 29,
        "0" * 32 + "\n",
        "0" * 16 + "\x00" + "0" * 15,
    ],
)
def test_invariant_7_a_key_that_is_not_32_hex_digits_is_refused(cache: Cache, key: str) -> None:
    with pytest.raises(SegmentError, match="is not a cache key"):
        cache.attach(key)
    with pytest.raises(SegmentError, match="is not a cache key"):
        cache.evict([key])
    with pytest.raises(SegmentError, match="is not a cache key"):
        cache.find(key)


def test_invariant_7_a_key_of_another_type_is_refused(cache: Cache) -> None:
    with pytest.raises(SegmentError, match="is not a cache key"):
        cache.attach(12345)  # type: ignore[arg-type]


def test_an_absent_segment_raises_segment_not_found_a_key_error(cache: Cache) -> None:
    with pytest.raises(SegmentNotFoundError, match="never loaded or was evicted") as caught:
        cache.attach("0" * 32)
    assert isinstance(caught.value, KeyError)
    assert cache.find("0" * 32) is None


# -- files planted or damaged in the directory -----------------------------------------


def test_invariant_7_a_symbolic_link_named_as_a_segment_is_never_mapped(
    cache: Cache, origin: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key, path = _published(cache, origin)
    target = tmp_path / "elsewhere.seg"
    shutil.copy(path, target)  # a perfectly valid segment, but behind a link
    os.chmod(target, 0o600)
    path.unlink()
    path.symlink_to(target)
    with pytest.raises(SegmentError, match="symbolic link"):
        cache.attach(key)
    with caplog.at_level(logging.WARNING, logger="shmstore"):
        assert cache.entries() == []
    assert "symbolic link" in caplog.text
    assert removed_names(cache.gc()) == [f"{key}.seg", f"{key}.lock"]
    assert not path.is_symlink()
    assert target.exists(), "gc removes the link, never its target"


@needs_root
def test_invariant_7_a_segment_of_another_user_is_never_mapped(
    cache: Cache, origin: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key, path = _published(cache, origin)
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(SegmentError, match=f"belongs to uid {NOBODY}"):
        cache.attach(key)
    with caplog.at_level(logging.WARNING, logger="shmstore"):
        assert cache.entries() == []
        assert removed_names(cache.gc()) == []
        assert evicted_keys(cache.evict([key])) == []
    assert f"belongs to uid {NOBODY}" in caplog.text
    assert "gc left" in caplog.text
    assert path.exists(), "a file of another user is left alone"


@pytest.mark.parametrize("mode", [0o644, 0o660, 0o606, 0o640])
def test_invariant_7_a_segment_open_to_others_is_never_mapped(
    cache: Cache, origin: Path, mode: int
) -> None:
    key, path = _published(cache, origin)
    os.chmod(path, mode)
    with pytest.raises(SegmentError, match=f"has mode {mode:o}"):
        cache.attach(key)
    assert removed_names(cache.gc()) == [f"{key}.seg", f"{key}.lock"], (
        "an unsafe segment of ours is removed by gc"
    )


def test_invariant_7_a_fifo_named_as_a_segment_neither_blocks_nor_maps(cache: Cache) -> None:
    key = "f" * 32
    os.mkfifo(cache.directory / f"{key}.seg", 0o600)
    outcome: list[BaseException] = []

    def attach() -> None:
        try:
            cache.attach(key)
        except SegmentError as err:
            outcome.append(err)

    worker = threading.Thread(target=attach, daemon=True)
    worker.start()
    worker.join(timeout=5)
    assert not worker.is_alive(), "opening the FIFO blocked"
    assert "not a regular file" in str(outcome[0])


def test_invariant_7_a_garbage_file_named_as_a_segment_is_refused_and_collected(
    cache: Cache, caplog: pytest.LogCaptureFixture
) -> None:
    key = "a" * 32
    path = cache.directory / f"{key}.seg"
    path.write_bytes(b"\0" * 10000)
    os.chmod(path, 0o600)
    with pytest.raises(SegmentError, match="not a shmstore segment"):
        cache.attach(key)
    with caplog.at_level(logging.WARNING, logger="shmstore"):
        assert cache.entries() == []
    assert "not a shmstore segment" in caplog.text
    assert removed_names(cache.gc()) == [f"{key}.seg"]


def test_invariant_7_a_segment_under_another_keys_name_is_refused(
    cache: Cache, origin: Path
) -> None:
    key, path = _published(cache, origin)
    other = "b" * 32
    shutil.copy(path, cache.directory / f"{other}.seg")
    with pytest.raises(SegmentError, match=f"holds the segment of key {key}, not {other}"):
        cache.attach(other)


def test_invariant_7_a_truncated_segment_is_refused(cache: Cache, origin: Path) -> None:
    key, path = _published(cache, origin)
    os.truncate(path, path.stat().st_size - 8)
    with pytest.raises(SegmentError, match="damaged: it holds"):
        cache.attach(key)
    assert removed_names(cache.gc()) == [f"{key}.seg", f"{key}.lock"]


def test_invariant_7_a_segment_with_a_forged_header_is_refused(cache: Cache, origin: Path) -> None:
    key, path = _published(cache, origin)
    with open(path, "r+b") as segment:
        head = segment.read(4096)
        forged = head.replace(b'"data_offset":4096', b'"data_offset":4095')
        assert forged != head
        segment.seek(0)
        segment.write(forged)
    forget_headers()  # as a process that never validated it (the memo is per process)
    with pytest.raises(SegmentError, match="invalid header"):
        cache.attach(key)


def test_invariant_7_stray_files_and_directories_are_ignored_and_left_alone(
    cache: Cache, origin: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key, _path = _published(cache, origin)
    (cache.directory / "notes.txt").write_text("someone's notes")
    (cache.directory / "sub").mkdir()
    with caplog.at_level(logging.WARNING, logger="shmstore"):
        assert [e.key for e in cache.entries()] == [key]
        assert removed_names(cache.gc()) == []
    assert "notes.txt alone: not a file shmstore makes" in caplog.text
    assert "sub alone" in caplog.text
    assert (cache.directory / "notes.txt").exists()
    assert (cache.directory / "sub").is_dir()


def test_invariant_7_a_symbolic_link_as_a_lock_file_is_refused_not_followed(
    cache: Cache, origin: Path, tmp_path: Path
) -> None:
    source = make_source(origin)
    victim = tmp_path / "victim.txt"
    victim.write_text("must stay")
    (cache.directory / f"{cache.key(source)}.lock").symlink_to(victim)
    with pytest.raises(SegmentError, match="symbolic link"):
        cache.get(source, F8, SHAPE, fill_expected())
    assert victim.read_text() == "must stay"
    assert removed_names(cache.gc()) == [f"{cache.key(source)}.lock"]
    np.testing.assert_array_equal(cache.get(source, F8, SHAPE, fill_expected()), expected())


def test_a_lock_held_by_a_loader_is_kept_by_gc(cache: Cache) -> None:
    lock = cache.directory / f"{'c' * 32}.lock"
    lock.touch(mode=0o600)
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert removed_names(cache.gc()) == []
    finally:
        os.close(fd)
    assert removed_names(cache.gc()) == [lock.name], (
        "an orphaned lock file goes once nobody holds it"
    )
