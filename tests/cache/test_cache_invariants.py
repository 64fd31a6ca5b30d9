"""Invariants 1, 2, 4, 5 and 6 of the cache (docs/design.md), with real processes on /dev/shm."""

from __future__ import annotations

import fcntl
import gc
import hashlib
import multiprocessing
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shmstore._cache import Cache
from shmstore._segment import PAGE
from shmstore.errors import CacheFullError
from tests import _cache_children as children
from tests._cache_children import (
    F8,
    ROWS,
    SHAPE,
    WIDTH,
    evicted_keys,
    expected,
    fill_expected,
    forkserver,
    make_source,
    names,
    removed_names,
    result_of,
    segment_file,
)

SEGMENT_FILE = PAGE + ROWS * WIDTH * 8  # bytes of one segment file of SHAPE


# -- 1. one copy per node --------------------------------------------------------------


# Slow: 8 spawned processes.  Not slow: the threads test below, and
# tests/sharing/test_blocks.py::test_processes_asking_at_once_load_each_block_exactly_once.
@pytest.mark.slow
def test_invariant_1_one_copy_per_node_under_stampede(
    cache: Cache, origin: Path, tmp_path: Path
) -> None:
    processes = 8
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results = context.Queue()
    log = tmp_path / "loads.txt"
    source = make_source(origin)
    workers = [
        context.Process(
            target=children.stampede,
            args=(str(cache.directory), source.model_dump_json(), str(log), barrier, results),
        )
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    reports = [result_of(workers, results) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0

    assert len(log.read_text().splitlines()) == 1, "exactly one process loads"
    keys, digests, inodes = ({r[i] for r in reports} for i in (1, 2, 3))
    assert keys == {cache.key(source)}
    assert digests == {hashlib.sha256(expected().tobytes()).hexdigest()}
    assert len(inodes) == 1, "every process maps the same file, so the same pages"
    assert None not in inodes
    segments = [name for name in names(cache.directory) if name.endswith(".seg")]
    assert segments == [f"{cache.key(source)}.seg"]


def test_invariant_1_one_load_when_threads_of_one_process_ask_at_once(
    cache: Cache, origin: Path
) -> None:
    source = make_source(origin)
    loads: list[int] = []
    start = threading.Barrier(6)
    arrays: list[np.ndarray[Any, Any]] = []

    def fill(out: np.ndarray[Any, Any]) -> None:
        loads.append(threading.get_ident())
        time.sleep(0.1)
        out[...] = expected()

    def ask() -> None:
        start.wait()
        arrays.append(cache.get(source, F8, SHAPE, fill))

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1
    assert len(arrays) == 6
    assert len({a.ctypes.data for a in arrays}) == 1, "one mapping shared in the process"
    np.testing.assert_array_equal(arrays[0], expected())


# -- 2. never partial ------------------------------------------------------------------


# Slow: 24 loaders killed.  Not slow: one killed loader, in
# test_a_loader_killed_mid_load_leaves_nothing_mapped_and_the_next_process_loads_it
# (tests/sharing/test_blocks.py) and test_a_killed_loaders_leftover_counts_against_no_budget
# (tests/cache/test_hardening_cache_faults.py).
@pytest.mark.slow
def test_invariant_2_never_partial_when_the_loader_is_killed(cache: Cache, origin: Path) -> None:
    context = forkserver()
    rng = random.Random(20260525)
    unpublished = 0
    removed_by_gc: list[str] = []
    for run in range(24):
        source = make_source(origin, version=run)
        key = cache.key(source)
        started = context.Event()
        loader = context.Process(
            target=children.slow_loader,
            args=(str(cache.directory), source.model_dump_json(), run, started),
        )
        loader.start()
        assert started.wait(30), "the loader never began to fill"
        time.sleep(rng.uniform(0.0, 0.12))  # the fill takes about 0.1 s
        if run == 0:
            # While the loader lives, gc leaves its file alone.
            assert removed_names(cache.gc()) == []
        loader.kill()  # SIGKILL
        loader.join()

        # Nothing partial can be attached: either nothing, or the whole copy.
        found = cache.lookup(source)
        if found is None:
            unpublished += 1
        else:
            np.testing.assert_array_equal(found, expected(run))
        del found
        if run % 2:
            # odd runs: gc cleans up; even: the next load does
            removed_by_gc += removed_names(cache.gc())
        # The next request loads (again, if need be) and gets the whole copy.
        array = cache.get(source, F8, SHAPE, fill_expected(run))
        np.testing.assert_array_equal(array, expected(run))
        assert array.flags.writeable is False
        del array

    assert unpublished >= 5, f"only {unpublished} of 24 kills hit a load in progress"
    assert any(name.endswith(".tmp") for name in removed_by_gc), "gc removed no leftover"
    cache.gc()
    left = names(cache.directory)
    segments = {name[: -len(".seg")] for name in left if name.endswith(".seg")}
    assert len(segments) == 24
    for name in left:
        key = name.split(".")[0]
        assert name == "budget.lock" or name in (f"{key}.seg", f"{key}.lock"), name
        assert name == "budget.lock" or key in segments, f"{name}: not of a published segment"


def test_invariant_2_a_failing_fill_publishes_nothing(cache: Cache, origin: Path) -> None:
    source = make_source(origin)

    def fail(out: np.ndarray[Any, Any]) -> None:
        out[: ROWS // 2] = 1.0
        raise RuntimeError("the source could not be read")

    with pytest.raises(RuntimeError, match="could not be read"):
        cache.get(source, F8, SHAPE, fail)
    assert cache.lookup(source) is None
    assert [n for n in names(cache.directory) if n.endswith((".tmp", ".seg"))] == []
    np.testing.assert_array_equal(cache.get(source, F8, SHAPE, fill_expected()), expected())


# -- 4. never SIGBUS --------------------------------------------------------------------


def _get(cache: Cache, source: Any) -> np.ndarray[Any, Any]:
    return cache.get(source, F8, SHAPE, fill_expected(source.version))


def test_invariant_4_budget_evicts_least_recently_used_unmapped_segment(
    cache_dir: Path, origin: Path
) -> None:
    cache = Cache(directory=cache_dir, budget=3 * SEGMENT_FILE)
    a, b, c, d = (make_source(origin, version=v) for v in range(4))
    _get(cache, a)
    _get(cache, b)
    _get(cache, c)
    time.sleep(0.2)
    _get(cache, a)  # a is now more recent than b and c
    _get(cache, d)  # room for d: b, the least recently used, goes
    assert {e.key for e in cache.entries()} == {cache.key(s) for s in (a, c, d)}


def test_invariant_4_budget_never_evicts_a_mapped_segment_to_make_room(
    cache_dir: Path, origin: Path
) -> None:
    cache = Cache(directory=cache_dir, budget=2 * SEGMENT_FILE)
    a, b, c = (make_source(origin, version=v) for v in range(3))
    held = _get(cache, a)  # the oldest, but mapped
    _get(cache, b)
    _get(cache, c)
    assert {e.key for e in cache.entries()} == {cache.key(a), cache.key(c)}
    np.testing.assert_array_equal(held, expected(0))


def test_invariant_4_cache_full_error_names_bytes_needed_and_holders(
    cache_dir: Path, origin: Path
) -> None:
    cache = Cache(directory=cache_dir, budget=2 * SEGMENT_FILE)
    a, b, c = (make_source(origin, version=v) for v in range(3))
    held = [_get(cache, a), _get(cache, b)]
    with pytest.raises(CacheFullError) as caught:
        _get(cache, c)
    message = str(caught.value)
    assert f"needs {SEGMENT_FILE} bytes" in message
    assert cache.key(a) in message
    assert cache.key(b) in message
    assert f"{ROWS * WIDTH * 8} bytes of {origin}:data[0:{ROWS}]" in message
    assert isinstance(caught.value, OSError)
    assert not any(n.endswith(".tmp") for n in names(cache_dir))
    assert cache.lookup(c) is None
    np.testing.assert_array_equal(held[0], expected(0))
    del held
    gc.collect()
    np.testing.assert_array_equal(_get(cache, c), expected(2))  # room once they are let go


def test_invariant_4_a_slice_larger_than_the_budget_is_refused_before_loading(
    cache_dir: Path, origin: Path
) -> None:
    cache = Cache(directory=cache_dir, budget=SEGMENT_FILE - 1)
    with pytest.raises(
        CacheFullError, match=f"needs {SEGMENT_FILE} bytes.*whole budget of {SEGMENT_FILE - 1}"
    ):
        _get(cache, make_source(origin))
    assert not any(n.endswith((".tmp", ".seg")) for n in names(cache_dir))


def test_invariant_4_full_tmpfs_gives_cache_full_error_never_sigbus(small_tmpfs: Path) -> None:
    (small_tmpfs / "filler.bin").write_bytes(b"\1" * (3 << 20))  # other files share the tmpfs
    context = forkserver()
    results = context.Queue()
    child = context.Process(
        target=children.fill_a_small_tmpfs, args=(str(small_tmpfs / "cache"), results)
    )
    child.start()
    outcome = result_of(child, results)
    child.join(timeout=30)
    assert child.exitcode == 0, f"the loader died (exit code {child.exitcode}; -7 is SIGBUS)"
    first, second, third, files = outcome
    assert first == f"loaded {2 << 20}"
    assert second == f"loaded {4 << 20}; segments 1", "the unused segment was evicted to fit"
    assert third.startswith("CacheFullError: the file system holding the cache")
    assert f"needs {(4 << 20) + PAGE} bytes" in third
    assert "1 segments in use" in third
    assert not any(".tmp" in name for name in files)


# -- 5. never evict what is in use -----------------------------------------------------


def test_invariant_5_a_segment_mapped_by_another_process_is_not_evicted(
    cache: Cache, origin: Path
) -> None:
    source = make_source(origin)
    _get(cache, source)
    key = cache.key(source)
    gc.collect()
    context = forkserver()
    ready, results = context.Event(), context.Queue()
    holder = context.Process(target=children.hold, args=(str(cache.directory), key, ready, results))
    holder.start()
    try:
        assert ready.wait(30)
        assert result_of(holder, results) == float(expected().sum())
        assert evicted_keys(cache.evict([key])) == []
        assert evicted_keys(cache.clear()) == []
        assert removed_names(cache.gc()) == []
        assert [e.in_use for e in cache.entries()] == [True]
    finally:
        holder.kill()  # SIGKILL
        holder.join()
    # The lock died with the process.
    assert [e.in_use for e in cache.entries()] == [False]
    assert evicted_keys(cache.evict([key])) == [key]
    assert not segment_file(cache, key).exists()


def test_invariant_5_dropping_the_last_array_releases_the_mapping(
    cache: Cache, origin: Path
) -> None:
    source = make_source(origin)
    key = cache.key(source)
    array = _get(cache, source)
    rows = array[10:20]  # a view keeps the mapping as well
    again = cache.attach(key)
    del array
    gc.collect()
    assert evicted_keys(cache.evict([key])) == []
    del again
    gc.collect()
    assert evicted_keys(cache.evict([key])) == [], "the view still maps it"
    np.testing.assert_array_equal(rows, expected()[10:20])
    del rows
    gc.collect()
    assert evicted_keys(cache.evict([key])) == [key]


def test_invariant_5_attach_racing_an_eviction_does_not_map_the_evicted_file(
    cache: Cache, origin: Path
) -> None:
    source = make_source(origin)
    _get(cache, source)
    gc.collect()
    path = segment_file(cache, cache.key(source))
    # Play the evictor by hand, stopped between its lock and its unlink.
    evictor = os.open(path, os.O_RDONLY)
    fcntl.flock(evictor, fcntl.LOCK_EX)
    found: list[Any] = []
    attacher = threading.Thread(target=lambda: found.append(cache.lookup(source)))
    attacher.start()
    time.sleep(0.1)  # the attacher has opened the file and waits for the lock
    assert attacher.is_alive()
    os.unlink(path)
    os.close(evictor)
    attacher.join(timeout=10)
    assert found == [None]


def test_invariant_5_attach_racing_an_eviction_and_reload_maps_the_new_segment(
    cache: Cache, origin: Path
) -> None:
    source = make_source(origin)
    _get(cache, source)
    gc.collect()
    path = segment_file(cache, cache.key(source))
    evictor = os.open(path, os.O_RDONLY)
    fcntl.flock(evictor, fcntl.LOCK_EX)
    found: list[Any] = []
    attacher = threading.Thread(target=lambda: found.append(cache.lookup(source)))
    attacher.start()
    time.sleep(0.1)
    os.unlink(path)
    reloaded = cache.get(source, F8, SHAPE, fill_expected(5))  # another copy, other values
    os.close(evictor)
    attacher.join(timeout=10)
    assert len(found) == 1
    assert found[0] is not None
    np.testing.assert_array_equal(found[0], reloaded)
    np.testing.assert_array_equal(found[0], expected(5))


# -- 6. workers cannot corrupt shared data -----------------------------------------------


def test_invariant_6_a_worker_cannot_write_into_its_array(cache: Cache, origin: Path) -> None:
    source = make_source(origin)
    mine = _get(cache, source)
    context = forkserver()
    results = context.Queue()
    worker = context.Process(
        target=children.try_to_write, args=(str(cache.directory), cache.key(source), results)
    )
    worker.start()
    errors = result_of(worker, results)
    worker.join(timeout=30)
    assert worker.exitcode == 0
    assert errors[0] == "ValueError: assignment destination is read-only"
    assert errors[1] == "ValueError: assignment destination is read-only"
    assert errors[2] == "ValueError: cannot set WRITEABLE flag to True of this array"
    assert errors[3] == "ValueError: assignment destination is read-only"
    assert errors[4].startswith("TypeError: mmap can't modify a readonly memory map")
    np.testing.assert_array_equal(mine, expected())


def test_invariant_6_pages_are_mapped_read_only_even_behind_numpys_back(
    cache: Cache, origin: Path
) -> None:
    source = make_source(origin)
    mine = _get(cache, source)
    context = forkserver()
    worker = context.Process(target=children.poke, args=(str(cache.directory), cache.key(source)))
    worker.start()
    worker.join(timeout=30)
    assert worker.exitcode == -signal.SIGSEGV
    np.testing.assert_array_equal(mine, expected())


def test_invariant_6_every_array_handed_out_is_read_only(cache: Cache, origin: Path) -> None:
    source = make_source(origin)
    arrays = [_get(cache, source), cache.attach(cache.key(source)), cache.lookup(source)]
    for array in arrays:
        assert array is not None
        assert not array.flags.writeable
        with pytest.raises(ValueError, match="WRITEABLE"):
            array.flags.writeable = True
        with pytest.raises(ValueError, match="read-only"):
            array[0, 0] = 1.0
