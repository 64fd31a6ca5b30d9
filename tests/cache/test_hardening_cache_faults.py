"""Faults on the cache side (issue 8, hardening): killed loaders, a directory
that vanishes or turns read-only, a full tmpfs.  Real processes, real tmpfs.

The broader runs are ``reliability/_cache_faults.py``; these are its regressions.
"""

from __future__ import annotations

import gc
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import shmstore
from shmstore._cache import Cache
from shmstore.errors import CacheFullError, SegmentError
from tests import _cache_children as children
from tests._cache_children import (
    F8,
    SHAPE,
    evicted_keys,
    expected,
    fill_expected,
    forkserver,
    make_source,
)

FILE_SIZE = 4096 + expected().nbytes  # one page of header, then the rows


def _read_only(point: Path) -> None:
    done = subprocess.run(
        ["mount", "-o", "remount,ro", str(point)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_a_killed_loaders_leftover_counts_against_no_budget(cache_dir: Path, origin: Path) -> None:
    cache = Cache(directory=cache_dir, budget=FILE_SIZE * 3 // 2)
    source = make_source(origin)
    context = forkserver()
    started = context.Event()
    loader = context.Process(
        target=children.slow_loader,
        args=(str(cache_dir), source.model_dump_json(), 0, started),
    )
    loader.start()
    assert started.wait(30)
    loader.kill()
    loader.join(10)
    assert any(p.name.endswith(".tmp") for p in cache_dir.iterdir())  # killed mid-fill
    # Only room for one segment: the dead loader's file must not keep it.
    other = make_source(origin, dataset="other")
    np.testing.assert_array_equal(cache.get(other, F8, SHAPE, fill_expected(1)), expected(1))
    assert not any(p.name.endswith(".tmp") for p in cache_dir.iterdir())


def test_a_load_whose_directory_is_removed_raises_segment_error(cache: Cache, origin: Path) -> None:
    def fill(out: np.ndarray[Any, Any]) -> None:
        out[...] = expected()
        shutil.rmtree(cache.directory)

    with pytest.raises(SegmentError, match="cannot publish"):
        cache.get(make_source(origin), F8, SHAPE, fill)


def test_a_removed_directory_is_made_again_private_by_the_next_load(
    cache: Cache, origin: Path
) -> None:
    shutil.rmtree(cache.directory)
    array = cache.get(make_source(origin), F8, SHAPE, fill_expected())
    np.testing.assert_array_equal(array, expected())
    assert stat.S_IMODE(cache.directory.lstat().st_mode) == 0o700


def test_a_removed_directory_lists_nothing_and_clears_nothing(cache: Cache, origin: Path) -> None:
    cache.get(make_source(origin), F8, SHAPE, fill_expected())
    shutil.rmtree(cache.directory)
    assert cache.entries() == []
    assert cache.clear() == []
    assert cache.evict(["0" * 32])[0].outcome == "gone"


def test_a_mapping_keeps_its_data_when_the_directory_is_removed(cache: Cache, origin: Path) -> None:
    array = cache.get(make_source(origin), F8, SHAPE, fill_expected())
    shutil.rmtree(cache.directory)
    gc.collect()
    np.testing.assert_array_equal(array, expected())


def test_a_load_in_a_read_only_cache_directory_raises_segment_error(
    small_tmpfs: Path, origin: Path
) -> None:
    cache = Cache(directory=small_tmpfs / "cache", budget="4M")
    _read_only(small_tmpfs)
    with pytest.raises(SegmentError, match="Read-only file system"):
        cache.get(make_source(origin), F8, SHAPE, fill_expected())


def test_a_cached_segment_is_still_attached_on_a_read_only_file_system(
    small_tmpfs: Path, origin: Path
) -> None:
    cache = Cache(directory=small_tmpfs / "cache", budget="4M")
    source = make_source(origin)
    cache.get(source, F8, SHAPE, fill_expected())
    gc.collect()
    path = cache.directory / f"{cache.key(source)}.seg"
    os.utime(path, ns=(1, path.stat().st_mtime_ns))  # so attaching updates the access time
    _read_only(small_tmpfs)
    np.testing.assert_array_equal(cache.get(source, F8, SHAPE, fill_expected()), expected())


def test_evict_and_gc_on_a_read_only_file_system_keep_segments_without_raising(
    small_tmpfs: Path, origin: Path
) -> None:
    cache = Cache(directory=small_tmpfs / "cache", budget="4M")
    source = make_source(origin)
    cache.get(source, F8, SHAPE, fill_expected())
    gc.collect()
    _read_only(small_tmpfs)
    assert evicted_keys(cache.evict([cache.key(source)])) == []
    assert evicted_keys(cache.clear()) == []
    assert (cache.directory / f"{cache.key(source)}.seg").exists()


def test_unlink_on_a_read_only_file_system_raises_segment_error(
    small_tmpfs: Path, origin: Path
) -> None:
    cache = Cache(directory=small_tmpfs / "cache", budget="4M")
    source = make_source(origin)
    cache.get(source, F8, SHAPE, fill_expected())
    _read_only(small_tmpfs)
    with pytest.raises(SegmentError, match="cannot remove"):
        cache.unlink(cache.key(source))


def test_view_auto_reads_the_file_when_the_tmpfs_is_full(small_tmpfs: Path, tmp_path: Path) -> None:
    data = np.arange(512 * 1024, dtype=F8).reshape(512, 1024)  # 4 MiB
    path = tmp_path / "store.h5"
    with shmstore.open(path, "w") as store:
        store.write("x", data)
    with open(small_tmpfs / "filler.bin", "wb") as filler:
        os.posix_fallocate(filler.fileno(), 0, 5 << 20)  # 3 MiB of 8 left
    cache = Cache(directory=small_tmpfs / "cache", budget="1G")
    with shmstore.open(path, "r", cache=cache) as store:
        with pytest.raises(CacheFullError), store.view("x", mode="shared"):
            pass
        with store.view("x", mode="auto") as array:
            np.testing.assert_array_equal(array, data)
    assert not any(p.name.endswith(".tmp") for p in cache.directory.iterdir())
