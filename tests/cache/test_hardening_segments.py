"""Damaged and planted files in the cache directory (issue 8, hardening).

Each is refused with a ``ShmStoreError`` or ignored, never mapped.  The
broader fuzz is ``reliability/_segments.py``; these are its regressions.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest

from shmstore._cache import Cache
from shmstore._segment import SegmentSource, forget_headers
from shmstore.errors import SegmentError
from tests._cache_children import F8, SHAPE, SHM, evicted_keys, expected, fill_expected, make_source


def _published(cache: Cache, origin: Path, version: int = 0) -> tuple[str, Path]:
    source = make_source(origin, version=version)
    cache.get(source, F8, SHAPE, fill_expected(version))
    key = cache.key(source)
    return key, cache.directory / f"{key}.seg"


def _replace_in_header(path: Path, old: bytes, new: bytes) -> None:
    with open(path, "r+b") as segment:
        head = segment.read(4096)
        assert old in head
        segment.seek(0)
        segment.write(head.replace(old, new, 1))
    forget_headers()  # as a process that never validated it


def test_a_header_byte_flip_that_still_validates_is_refused_by_the_checksum(
    cache: Cache, origin: Path
) -> None:
    key, path = _published(cache, origin)
    _replace_in_header(path, b"origin.bin", b"orig\x69n.bin".replace(b"i", b"j", 1))
    with pytest.raises(SegmentError, match="checksum"):
        cache.header(key)


def test_a_byte_order_flipped_in_the_header_never_maps_byte_swapped_data(
    cache: Cache, origin: Path
) -> None:
    key, path = _published(cache, origin)
    _replace_in_header(path, b'"<f8"', b'">f8"')
    with pytest.raises(SegmentError, match="checksum"):
        cache.attach(key)


def test_random_header_flips_are_refused_or_read_as_the_true_header(
    cache: Cache, origin: Path
) -> None:
    key, path = _published(cache, origin)
    pristine = path.read_bytes()
    truth = cache.header(key)
    end = 16 + int.from_bytes(pristine[8:12], "little")
    for seed in range(60):
        rng = random.Random(seed)
        damaged = bytearray(pristine)
        for _ in range(rng.randint(1, 3)):
            damaged[rng.randrange(end)] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(damaged))
        forget_headers()
        try:
            header = cache.header(key)
        except SegmentError as err:
            message = str(err)
        else:
            assert header == truth, f"seed {seed}: damaged header read as {header!r}"
            continue
        assert message


def test_a_segment_written_without_a_checksum_is_still_mapped(cache: Cache, origin: Path) -> None:
    key, path = _published(cache, origin)
    with open(path, "r+b") as segment:
        segment.seek(12)
        segment.write(bytes(4))  # as written before checksums: reserved zero bytes
    forget_headers()
    np.testing.assert_array_equal(cache.attach(key), expected())


def test_a_cache_directory_replaced_by_a_link_is_not_followed(
    cache: Cache, origin: Path, tmp_path: Path
) -> None:
    key, path = _published(cache, origin)
    elsewhere = SHM / f"shmstore-cachetest-{uuid.uuid4().hex[:12]}"
    try:
        elsewhere.mkdir(mode=0o700)
        shutil.copy(path, elsewhere / path.name)  # valid, and of the right key
        shutil.rmtree(cache.directory)
        cache.directory.symlink_to(elsewhere)
        with pytest.raises(SegmentError, match="directory is a symbolic link"):
            cache.attach(key)
        with pytest.raises(SegmentError):
            cache.get(make_source(origin), F8, SHAPE, fill_expected())
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)


def test_evict_does_not_remove_files_through_a_directory_replaced_by_a_link(
    cache: Cache, origin: Path
) -> None:
    key, path = _published(cache, origin)
    elsewhere = SHM / f"shmstore-cachetest-{uuid.uuid4().hex[:12]}"
    try:
        elsewhere.mkdir(mode=0o700)
        shutil.copy(path, elsewhere / path.name)
        shutil.rmtree(cache.directory)
        cache.directory.symlink_to(elsewhere)
        assert evicted_keys(cache.evict([key])) == []
        assert (elsewhere / path.name).exists()
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)


def _as_nobody(directory: str, source_json: str, results: multiprocessing.Queue[str]) -> None:
    try:
        os.setgid(65534)
        os.setuid(65534)
        cache = Cache(directory=directory, budget="64M")
        source = SegmentSource.model_validate_json(source_json)
        array = cache.get(source, F8, SHAPE, fill_expected())
        results.put("ok" if np.array_equal(array, expected()) else "wrong data")
    except Exception as err:
        results.put(f"{type(err).__name__}: {err}")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")
def test_ownership_is_checked_against_the_uid_after_privileges_are_dropped(
    cache_dir: Path, origin: Path
) -> None:
    source = make_source(origin).model_dump_json()
    context = multiprocessing.get_context("fork")
    results: multiprocessing.Queue[str] = context.Queue()
    child = context.Process(target=_as_nobody, args=(str(cache_dir), source, results))
    child.start()
    outcome = results.get(timeout=60)
    child.join(30)
    assert outcome == "ok"
    assert cache_dir.stat().st_uid == 65534
