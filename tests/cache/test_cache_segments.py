"""Segments: their file format, keys, dtypes and shapes, the process's mappings, entries, gc."""

from __future__ import annotations

import fcntl
import gc
import json
import logging
import multiprocessing
import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shmstore import _mappings
from shmstore._cache import Cache
from shmstore._segment import (
    MAGIC,
    PAGE,
    FileIdentity,
    SegmentHeader,
    SegmentSource,
    forget_headers,
)
from shmstore.errors import ArgumentError, LockTimeoutError, SegmentError
from tests import _cache_children as children
from tests._cache_children import (
    F8,
    ROWS,
    SHAPE,
    evicted_keys,
    expected,
    fill_expected,
    make_source,
    names,
    removed_names,
)

COMPOUND = np.dtype(
    {
        "names": ["id", "position", "flag", "label"],
        "formats": [">u8", (">f4", (3,)), "|b1", "|S5"],
        "offsets": [0, 8, 24, 26],
        "itemsize": 32,
    }
)


def _records(rows: int) -> np.ndarray[Any, Any]:
    data = np.zeros(rows, dtype=COMPOUND)
    data["id"] = np.arange(rows) * 3 + 1
    data["position"] = np.arange(rows * 3, dtype=">f4").reshape(rows, 3) / 7
    data["flag"] = np.arange(rows) % 2 == 0
    data["label"] = [f"r{i}".encode() for i in range(rows)]
    return data


# -- the file ---------------------------------------------------------------------------


def test_segment_file_is_prefix_json_header_then_page_aligned_data(
    cache: Cache, origin: Path
) -> None:
    source = make_source(origin, start=16, stop=16 + ROWS)
    cache.get(source, F8, SHAPE, fill_expected())
    key = cache.key(source)
    raw = (cache.directory / f"{key}.seg").read_bytes()
    magic, length = struct.unpack_from("<8sI", raw)
    assert magic == MAGIC
    header = SegmentHeader.model_validate_json(raw[16 : 16 + length])
    fields = json.loads(raw[16 : 16 + length])
    assert fields["format"] == "shmstore-segment"
    assert fields["format_version"] == 1
    assert header.key == key
    assert header.source == source
    assert header.dtype == F8
    assert header.shape == SHAPE
    assert header.creator_pid == os.getpid()
    assert abs(header.created - time.time()) < 60
    assert header.data_offset % PAGE == 0
    assert header.data_offset >= 16 + length
    assert header.nbytes == expected().nbytes
    assert len(raw) == header.data_offset + header.nbytes
    data = np.frombuffer(raw, dtype=F8, offset=header.data_offset).reshape(SHAPE)
    np.testing.assert_array_equal(data, expected())


def test_compound_big_endian_dtype_is_kept_exactly(cache: Cache, origin: Path) -> None:
    source = make_source(origin, stop=100)
    records = _records(100)

    def fill(out: np.ndarray[Any, Any]) -> None:
        out[...] = records

    loaded = cache.get(source, COMPOUND, (100,), fill)
    assert loaded.dtype == COMPOUND
    del loaded
    gc.collect()
    forget_headers()  # the next mapping reads the dtype back from the header
    attached = cache.attach(cache.key(source))
    assert attached.dtype == COMPOUND
    assert attached.dtype.descr == COMPOUND.descr
    assert attached.dtype.fields == COMPOUND.fields
    assert attached.dtype.itemsize == 32
    np.testing.assert_array_equal(attached, records)
    assert attached["id"].dtype.byteorder == ">"


def test_a_slice_of_zero_rows_is_cached_and_counts_as_in_use(cache: Cache, origin: Path) -> None:
    source = make_source(origin, start=ROWS, stop=ROWS)
    calls: list[tuple[int, ...]] = []
    empty = cache.get(source, F8, (0, 512), lambda out: calls.append(out.shape))
    assert calls == [(0, 512)]
    assert empty.shape == (0, 512)
    assert empty.dtype == F8
    assert not empty.flags.writeable
    key = cache.key(source)
    assert (cache.directory / f"{key}.seg").stat().st_size == PAGE
    assert cache.attach(key).shape == (0, 512)
    assert evicted_keys(cache.evict([key])) == []
    del empty
    gc.collect()
    assert evicted_keys(cache.evict([key])) == [key]


def test_get_of_a_cached_key_with_another_dtype_or_shape_is_refused(
    cache: Cache, origin: Path
) -> None:
    source = make_source(origin)
    cache.get(source, F8, SHAPE, fill_expected())
    with pytest.raises(SegmentError, match="holds float64"):
        cache.get(source, np.dtype(">f8"), SHAPE, fill_expected())
    with pytest.raises(SegmentError, match=r"\(256, 512\)"):
        cache.get(source, F8, (ROWS * 2, 256), fill_expected())


@pytest.mark.parametrize(
    ("dtype", "shape", "match"),
    [(np.dtype(object), (3,), "Python objects"), (F8, (-1, 3), "negative")],
)
def test_unshareable_dtypes_and_negative_shapes_are_refused(
    cache: Cache, origin: Path, dtype: np.dtype[Any], shape: tuple[int, ...], match: str
) -> None:
    with pytest.raises(ArgumentError, match=match):
        cache.get(make_source(origin), dtype, shape, lambda out: None)
    assert not [n for n in names(cache.directory) if n.endswith((".seg", ".tmp"))]


def test_fill_that_keeps_the_writeable_array_does_not_publish(cache: Cache, origin: Path) -> None:
    kept: list[np.ndarray[Any, Any]] = []

    def fill(out: np.ndarray[Any, Any]) -> None:
        out[...] = 1.0
        kept.append(out)

    source = make_source(origin)
    with pytest.raises(SegmentError, match="kept a reference"):
        cache.get(source, F8, SHAPE, fill)
    assert cache.lookup(source) is None
    assert not [n for n in names(cache.directory) if n.endswith((".seg", ".tmp"))]


def test_fill_whose_array_another_thread_holds_for_a_moment_still_publishes(
    cache: Cache, origin: Path
) -> None:
    # As a sampling profiler (distributed's) does: it holds a task thread's
    # frames, and so the array, for a moment after the fill returned.
    released = threading.Event()

    def hold(array: np.ndarray[Any, Any]) -> None:
        time.sleep(0.05)
        del array
        released.set()

    def fill(out: np.ndarray[Any, Any]) -> None:
        fill_expected()(out)
        threading.Thread(target=hold, args=(out,)).start()

    array = cache.get(make_source(origin), F8, SHAPE, fill)
    assert released.is_set()
    np.testing.assert_array_equal(array, expected())
    assert not array.flags.writeable


def test_on_load_runs_once_under_the_lock_and_can_abort(cache: Cache, origin: Path) -> None:
    source = make_source(origin)
    loads: list[str] = []
    cache.get(source, F8, SHAPE, fill_expected(), on_load=lambda: loads.append("load"))
    cache.get(source, F8, SHAPE, fill_expected(), on_load=lambda: loads.append("load"))
    assert loads == ["load"]

    def refuse() -> None:
        raise FileNotFoundError("the source changed")

    other = make_source(origin, version=1)
    with pytest.raises(FileNotFoundError, match="source changed"):
        cache.get(other, F8, SHAPE, fill_expected(), on_load=refuse)
    assert not [n for n in names(cache.directory) if n.endswith(".tmp")]
    assert cache.lookup(other) is None


def test_waiting_for_another_loader_times_out_with_lock_timeout_error(
    cache: Cache, origin: Path
) -> None:
    source = make_source(origin)
    lock = os.open(cache.directory / f"{cache.key(source)}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another loader, as far as the cache can tell
        started = time.monotonic()
        with pytest.raises(LockTimeoutError, match="still loading") as caught:
            cache.get(source, F8, SHAPE, fill_expected(), timeout=0.2)
        assert 0.2 <= time.monotonic() - started < 5
        assert isinstance(caught.value, TimeoutError)
    finally:
        os.close(lock)


# -- keys -------------------------------------------------------------------------------


def test_key_is_the_same_in_another_process(cache: Cache, origin: Path) -> None:
    source = make_source(origin)
    script = (
        "import sys; from shmstore._segment import SegmentSource, segment_key;"
        "print(segment_key(SegmentSource.model_validate_json(sys.stdin.read())))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PYTHONHASHSEED": "123"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=source.model_dump_json(),
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert done.stdout.strip() == cache.key(source)
    assert len(cache.key(source)) == 32


def test_key_changes_with_every_field_of_the_source(cache: Cache, origin: Path) -> None:
    base = make_source(origin)
    identity = base.identity[0]
    variants = [
        base.model_copy(update={"dataset": "other"}),
        base.model_copy(update={"version": 1}),
        base.model_copy(update={"start": 1}),
        base.model_copy(update={"stop": ROWS - 1}),
        base.model_copy(update={"path": "/elsewhere.h5"}),
        base.model_copy(update={"identity": (identity.model_copy(update={"mtime_ns": 1}),)}),
        base.model_copy(update={"identity": (identity.model_copy(update={"size": 1}),)}),
        base.model_copy(update={"identity": (identity.model_copy(update={"ino": 1}),)}),
        base.model_copy(update={"identity": (identity, identity)}),
    ]
    keys = {cache.key(v) for v in variants}
    assert len(keys) == len(variants)
    assert cache.key(base) not in keys


def test_source_rows_must_not_end_before_they_start(origin: Path) -> None:
    with pytest.raises(ValueError, match="end before they start"):
        make_source(origin, start=5, stop=4)


def test_file_identity_of_follows_the_file_and_changes_when_it_does(origin: Path) -> None:
    identity = FileIdentity.of(origin)
    assert identity.path == str(origin)
    assert identity.size == origin.stat().st_size
    assert identity.is_current()
    with origin.open("ab") as more:
        more.write(b"more")
    assert not identity.is_current()
    origin.unlink()
    assert not identity.is_current()


# -- the process's mappings ---------------------------------------------------------------


def test_a_second_attach_in_the_process_reuses_the_mapping(cache: Cache, origin: Path) -> None:
    source = make_source(origin)
    first = cache.get(source, F8, SHAPE, fill_expected())
    second = cache.attach(cache.key(source))
    third = cache.lookup(source)
    assert third is not None
    assert second is not first, "each caller gets its own array object"
    assert first.ctypes.data == second.ctypes.data == third.ctypes.data
    assert first.base is second.base is third.base, "one mapping"
    maps = Path("/proc/self/maps").read_text()
    assert maps.count(f"{cache.directory}/{cache.key(source)}.seg") == 1


def test_a_mapping_is_made_again_once_the_last_array_is_gone(cache: Cache, origin: Path) -> None:
    source = make_source(origin)
    key = cache.key(source)
    cache.get(source, F8, SHAPE, fill_expected())
    gc.collect()
    assert (f"{cache.directory}/{key}.seg", False) not in _mappings.MAPPINGS
    again = cache.attach(key)
    assert (f"{cache.directory}/{key}.seg", False) in _mappings.MAPPINGS
    np.testing.assert_array_equal(again, expected())


def test_a_forked_child_makes_its_own_mappings(cache: Cache, origin: Path) -> None:
    source = make_source(origin)
    mine = cache.get(source, F8, SHAPE, fill_expected())
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(
        target=children.fork_child_registry,
        args=(str(cache.directory), cache.key(source), mine.ctypes.data, results),
    )
    child.start()
    inherited, remapped, total = children.result_of(child, results)
    child.join(timeout=30)
    assert inherited == 0, "the registry is empty after fork"
    assert remapped, "the child mapped the segment itself"
    assert total == float(expected().sum())


# -- entries and gc ---------------------------------------------------------------------------


def test_entries_describe_each_published_segment(cache: Cache, origin: Path) -> None:
    before = time.time()
    held = cache.get(make_source(origin, start=3, stop=3 + ROWS), F8, SHAPE, fill_expected())
    cache.get(make_source(origin, version=2), F8, SHAPE, fill_expected())
    entries = {e.rows: e for e in cache.entries()}
    assert set(entries) == {(3, 3 + ROWS), (0, ROWS)}
    used, unused = entries[(3, 3 + ROWS)], entries[(0, ROWS)]
    assert used.in_use
    assert not unused.in_use
    for entry in (used, unused):
        assert entry.path == str(origin)
        assert entry.dataset == "data"
        assert entry.nbytes == expected().nbytes
        assert before - 1 <= entry.created <= time.time()
        assert before - 1 <= entry.last_access <= time.time() + 1
    assert held is not None


def test_gc_removes_segments_whose_source_changed_unless_mapped(
    cache: Cache, origin: Path, caplog: pytest.LogCaptureFixture
) -> None:
    current = make_source(origin)
    cache.get(current, F8, SHAPE, fill_expected())
    held = cache.get(make_source(origin, version=1), F8, SHAPE, fill_expected())
    with origin.open("ab") as more:
        more.write(b"appended rows")  # the file changed: both copies are stale
    cache.get(make_source(origin, version=2), F8, SHAPE, fill_expected())  # of the new file
    with caplog.at_level(logging.INFO, logger="shmstore"):
        removed = removed_names(cache.gc())
    assert removed == [f"{cache.key(current)}.seg", f"{cache.key(current)}.lock"]
    assert "stale" in caplog.text
    assert "a process holds it" in caplog.text
    del held
    gc.collect()
    assert len(removed_names(cache.gc())) == 2
    assert [e.key for e in cache.entries()] == [cache.key(make_source(origin, version=2))]


def test_gc_removes_segments_whose_source_is_gone(cache: Cache, origin: Path) -> None:
    source = make_source(origin)
    cache.get(source, F8, SHAPE, fill_expected())
    origin.unlink()
    key = cache.key(source)
    assert removed_names(cache.gc()) == [f"{key}.seg", f"{key}.lock"]


def test_gc_keeps_current_segments_and_removes_orphaned_locks(cache: Cache, origin: Path) -> None:
    kept = make_source(origin)
    cache.get(kept, F8, SHAPE, fill_expected())
    evicted = make_source(origin, version=1)
    cache.get(evicted, F8, SHAPE, fill_expected())
    gc.collect()
    assert evicted_keys(cache.evict([cache.key(evicted)])) == [cache.key(evicted)]
    assert removed_names(cache.gc()) == [f"{cache.key(evicted)}.lock"]
    assert names(cache.directory) == sorted(
        ["budget.lock", f"{cache.key(kept)}.seg", f"{cache.key(kept)}.lock"]
    )


def test_evict_needs_keys_or_all(cache: Cache) -> None:
    with pytest.raises(ArgumentError, match="keys to evict, or all=True"):
        cache.evict()
    with pytest.raises(ArgumentError, match="not both"):
        cache.evict(["0" * 32], all=True)


def test_evict_of_a_single_key_string_and_of_absent_keys(cache: Cache, origin: Path) -> None:
    source = make_source(origin)
    cache.get(source, F8, SHAPE, fill_expected())
    gc.collect()
    assert evicted_keys(cache.evict("0" * 32)) == []
    assert evicted_keys(cache.evict(cache.key(source))) == [cache.key(source)]
    assert evicted_keys(cache.clear()) == []


def test_cache_pickles_as_its_directory_and_budget(cache: Cache) -> None:
    import pickle

    copy = pickle.loads(pickle.dumps(cache))
    assert copy.directory == cache.directory
    assert copy.budget == cache.budget


def test_source_models_are_frozen_and_strict(origin: Path) -> None:
    source = make_source(origin)
    with pytest.raises(ValueError, match="frozen"):
        source.start = 3
    with pytest.raises(ValueError, match="Extra inputs"):
        SegmentSource.model_validate({**source.model_dump(), "extra": 1})
