"""``shmstore.shared_numpy_store``: the original module's API, end to end, and its defects fixed.

Real HDF5 files, a real cache directory on /dev/shm, real spawned processes.
Tests marked "regression" each pin one defect of the original module.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import shmstore
from shmstore import shared_numpy_store as sns
from tests._cache_children import evicted_keys
from tests.dtype_strategies import FIXED_DTYPES, array_of, field_bytes

from . import _children_sns as children

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
SPAWN = multiprocessing.get_context("spawn")
ROW_RANGES = [(None, None), (2, 5), (-3, None), (None, 1), (4, 4)]


@pytest.fixture
def data() -> np.ndarray[Any, Any]:
    """Ten rows of three floats, every value distinct."""
    return np.arange(30, dtype=np.float64).reshape(10, 3)


@pytest.fixture
def store(tmp_path: Path, cache: shmstore.Cache) -> sns.SharedNumpyStore:
    """An empty SharedNumpyStore in a directory of the test, with the test's own cache."""
    return sns.SharedNumpyStore(tmp_path / "db", cache=cache)


def _at_once(target: Any, args: tuple[Any, ...], workers: int = 4) -> list[Any]:
    """Run *target(*args, barrier, results)* in *workers* spawned processes released together."""
    barrier, results = SPAWN.Barrier(workers), SPAWN.Queue()
    processes = [
        SPAWN.Process(target=target, args=(*args, barrier, results)) for _ in range(workers)
    ]
    for process in processes:
        process.start()
    try:
        return [results.get(timeout=120) for _ in processes]
    finally:
        for process in processes:
            process.join(60)


def _load(
    store: sns.SharedNumpyStore, name: str, mode: str, rows: tuple[int | None, int | None]
) -> np.ndarray[Any, Any]:
    return store.load(name, mode=mode, start_row=rows[0], end_row=rows[1], allow_create_shm=True)


# -- the original's usage, end to end ------------------------------------------------


@pytest.mark.parametrize("mode", ["shared_memory", "memmap", "memory"])
@pytest.mark.parametrize("rows", ROW_RANGES)
def test_save_then_load_gives_the_rows_in_every_mode(
    store: sns.SharedNumpyStore,
    data: np.ndarray[Any, Any],
    mode: str,
    rows: tuple[int | None, int | None],
) -> None:
    store.save(data, "x")
    np.testing.assert_array_equal(_load(store, "x", mode, rows), data[rows[0] : rows[1]])


@pytest.mark.parametrize("mode", ["shared_memory", "memmap", "memory"])
@pytest.mark.parametrize("rows", ROW_RANGES)
def test_append_save_after_save_then_load_gives_all_rows_in_every_mode(
    store: sns.SharedNumpyStore,
    data: np.ndarray[Any, Any],
    mode: str,
    rows: tuple[int | None, int | None],
) -> None:
    store.save(data[:4], "x")
    store.append_save(data[4:7], "x")
    store.append_save(data[7:], "x")
    np.testing.assert_array_equal(_load(store, "x", mode, rows), data[rows[0] : rows[1]])


def _block_inodes(cache: shmstore.Cache) -> dict[str, int]:
    return {p.name: p.stat().st_ino for p in cache.directory.glob("*.seg")}


def test_rows_loaded_before_an_append_save_stay_shared_after_it(
    store: sns.SharedNumpyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHMSTORE_BLOCK", "4K")  # 4,096-byte blocks: ~170 rows of 24 bytes
    data = np.arange(3000, dtype=np.float64).reshape(1000, 3)
    store.save(data, "x")
    loaded = store.load("x", "shared_memory", 0, 600, allow_create_shm=True)
    before = _block_inodes(store.cache)
    assert len(before) == 4  # bytes [0, 14400) of the rows: blocks 0-3
    del loaded
    store.append_save(data[:50] + 1e6, "x")
    # No load allowed, yet the rows are there: the blocks survived the append.
    again = store.load("x", "shared_memory", 0, 600, allow_create_shm=False)
    np.testing.assert_array_equal(again, data[:600])
    assert _block_inodes(store.cache) == before


def test_an_append_save_reloads_only_the_tail_block_of_the_whole_array(
    store: sns.SharedNumpyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHMSTORE_BLOCK", "4K")
    data = np.arange(3000, dtype=np.float64).reshape(1000, 3)  # 24,000 bytes: 6 blocks
    store.save(data, "x")
    store.load("x", "shared_memory", allow_create_shm=True)
    before = _block_inodes(store.cache)
    store.append_save(data[:10], "x")  # 240 bytes: the 6th block grows, still under 4 KiB
    whole = store.load("x", "shared_memory", allow_create_shm=True)
    np.testing.assert_array_equal(whole, np.concatenate([data, data[:10]]))
    after = _block_inodes(store.cache)
    kept = set(before.items()) & set(after.items())
    assert len(kept) == 5  # the five full blocks, same files
    assert len(after) == 6  # and a new tail: the old one was retired, unmapped


@given(
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=3),
    dtype=st.sampled_from(["u1", "<i2", ">f4", "c8", "?", "S2", "i4,f2"]),
    bounds=st.tuples(st.integers(-5, 5) | st.none(), st.integers(-5, 5) | st.none()),
    split=st.integers(0, 5),
)
def test_any_array_saved_and_appended_loads_back_in_every_mode(
    shape: list[int], dtype: str, bounds: tuple[int | None, int | None], split: int
) -> None:
    arr = np.arange(int(np.prod(shape)) * np.dtype(dtype).itemsize, dtype=np.uint8)
    arr = arr.view(dtype).reshape(shape)
    split = min(split, shape[0])
    with tempfile.TemporaryDirectory() as directory:
        store = sns.SharedNumpyStore(directory)
        store.save(arr[:split], "a")
        store.append_save(arr[split:], "a")
        try:
            expected = arr[slice(*bounds)]
            sns._get_offset_and_size_in_bytes(*bounds, arr.shape, arr.dtype)
        except shmstore.RowsError:
            with pytest.raises(shmstore.RowsError):
                store.load("a", "memory", *bounds)
            return
        for mode in ("shared_memory", "memmap", "memory"):
            loaded = store.load("a", mode, *bounds, allow_create_shm=True)
            assert loaded.dtype == arr.dtype
            assert loaded.tobytes() == expected.tobytes()
            assert loaded.shape == expected.shape
        store.close()


@given(dtype=FIXED_DTYPES, seed=st.integers(0, 2**32 - 1), autoflush=st.booleans())
def test_every_fixed_size_dtype_round_trips_byte_for_byte_in_every_load_mode(
    dtype: np.dtype[Any], seed: int, autoflush: bool
) -> None:
    """Unicode, datetimes, raw bytes and records of them, as the original saved them."""
    parts = [array_of(dtype, (3, 2), seed), array_of(dtype, (2, 2), seed + 1)]
    parts.append(array_of(dtype, (1, 2), seed + 2))
    with (
        tempfile.TemporaryDirectory() as directory,
        tempfile.TemporaryDirectory(dir="/dev/shm") as cache_dir,
    ):
        cache = shmstore.Cache(directory=Path(cache_dir) / "cache", budget="64M")
        store = sns.SharedNumpyStore(directory, cache=cache)
        store.save(parts[0], "a")
        store.append_save(parts[1], "a", autoflush=autoflush)
        store.append_save(parts[2], "a", autoflush=autoflush)
        store.flush()
        for mode in ("shared_memory", "memmap", "memory"):
            loaded = store.load("a", mode, allow_create_shm=True)
            assert loaded.dtype == dtype
            assert loaded.shape == (6, 2)
            for part, got in zip(parts, np.split(loaded, [3, 5]), strict=True):
                assert field_bytes(got) == field_bytes(part)
        store.close()


def test_append_save_of_a_new_name_saves_it(
    store: sns.SharedNumpyStore, data: np.ndarray[Any, Any]
) -> None:
    store.append_save(data, "fresh")
    np.testing.assert_array_equal(store.load("fresh", mode="memmap"), data)


def test_save_replaces_an_array_of_the_same_name(
    store: sns.SharedNumpyStore, data: np.ndarray[Any, Any]
) -> None:
    store.save(data, "x")
    store.save(data[:2] * -1, "x")
    np.testing.assert_array_equal(store.load("x", mode="memory"), data[:2] * -1)


def test_rows_appended_without_autoflush_appear_at_flush(
    store: sns.SharedNumpyStore, data: np.ndarray[Any, Any]
) -> None:
    store.save(data[:2], "x")
    store.append_save(data[2:5], "x", autoflush=False)
    store.append_save(data[5:], "x", autoflush=False)
    assert store.load("x", mode="memory").shape == (2, 3)
    store.flush()
    np.testing.assert_array_equal(store.load("x", mode="memory"), data)


def test_rows_waiting_for_flush_are_a_copy(
    store: sns.SharedNumpyStore, data: np.ndarray[Any, Any]
) -> None:
    buffer = data[:3].copy()
    store.append_save(buffer, "x", autoflush=False)
    buffer[:] = -1  # the caller reuses its buffer before the flush
    store.flush()
    np.testing.assert_array_equal(store.load("x", mode="memory"), data[:3])


def test_close_writes_rows_waiting_for_flush(
    store: sns.SharedNumpyStore, data: np.ndarray[Any, Any]
) -> None:
    store.append_save(data, "x", autoflush=False)
    store.close()
    np.testing.assert_array_equal(store.load("x", mode="memory"), data)


def test_a_store_dropped_with_unflushed_rows_warns(
    tmp_path: Path, data: np.ndarray[Any, Any]
) -> None:
    store = sns.SharedNumpyStore(tmp_path / "db")
    store.append_save(data, "x", autoflush=False)
    with pytest.warns(ResourceWarning, match="never flushed"):
        del store  # the last reference: the store is finalised at once


def test_append_save_of_rows_of_another_shape_is_a_value_error(
    store: sns.SharedNumpyStore, data: np.ndarray[Any, Any]
) -> None:
    store.save(data, "x")
    for autoflush in (True, False):
        with pytest.raises(ValueError, match=r"\(n, \.\.\.\(3,\)\)|shape"):
            store.append_save(np.zeros((2, 4)), "x", autoflush=autoflush)
    store.flush()  # the refused rows were not left waiting
    np.testing.assert_array_equal(store.load("x", mode="memory"), data)


def test_append_save_of_rows_of_another_dtype_is_a_type_error(
    store: sns.SharedNumpyStore, data: np.ndarray[Any, Any]
) -> None:
    store.save(data, "x")
    for autoflush in (True, False):
        with pytest.raises(TypeError, match="astype"):
            store.append_save(data.astype("i4"), "x", autoflush=autoflush)
    store.flush()
    np.testing.assert_array_equal(store.load("x", mode="memory"), data)


def test_get_expected_file_length_is_the_bytes_of_the_array(
    store: sns.SharedNumpyStore, data: np.ndarray[Any, Any]
) -> None:
    store.save(data, "x")
    assert store.get_expected_file_length("x") == data.nbytes
    store.append_save(data[:2], "x")
    assert store.get_expected_file_length("x") == data.nbytes + data[:2].nbytes


def test_arrays_live_in_one_hdf5_file_in_the_working_directory(
    store: sns.SharedNumpyStore, data: np.ndarray[Any, Any]
) -> None:
    store.save(data, "x")
    store.save(data[:1], "y")
    assert store.path == Path(store.working_dir).resolve() / sns.STORE_FILE
    with shmstore.open(store.path) as opened:
        assert opened.names() == ["x", "y"]
        assert opened.info("x").appendable
    assert {p.name for p in Path(store.working_dir).iterdir()} >= {sns.STORE_FILE}
    assert not [p for p in Path(store.working_dir).iterdir() if "__" in p.name]


def test_a_shared_memory_load_is_read_only(
    store: sns.SharedNumpyStore, data: np.ndarray[Any, Any]
) -> None:
    store.save(data, "x")
    arr = store.load("x", allow_create_shm=True)
    with pytest.raises(ValueError, match="read-only"):
        arr[0, 0] = 1.0


def test_a_memory_load_is_a_private_writeable_copy(
    store: sns.SharedNumpyStore, data: np.ndarray[Any, Any]
) -> None:
    store.save(data, "x")
    arr = store.load("x", mode="memory")
    arr[0, 0] = -5.0
    assert store.load("x", mode="memory")[0, 0] == data[0, 0]


def test_a_worker_attaches_what_the_parent_loaded(
    store: sns.SharedNumpyStore, data: np.ndarray[Any, Any], cache: shmstore.Cache
) -> None:
    store.save(data, "x")
    store.load("x", allow_create_shm=True)
    with SPAWN.Pool(1) as pool:
        values, writeable = pool.apply(children.load_attached_only, (store.working_dir, "x", cache))
    assert values == data.ravel().tolist()
    assert not writeable


def test_a_store_pickles_as_its_directory_not_its_arrays(
    store: sns.SharedNumpyStore, data: np.ndarray[Any, Any]
) -> None:
    big = np.zeros((100_000, 3))
    store.save(big, "big")
    store.load("big", allow_create_shm=True)
    store.append_save(big, "waiting", autoflush=False)
    copy = pickle.loads(pickle.dumps(store))
    assert len(pickle.dumps(store)) < 2048
    assert copy.working_dir == store.working_dir
    assert copy.load("big").shape == (100_000, 3)  # attaches the node's copy
    assert copy.names() == ["big"]
    store.close()


def test_without_allow_create_shm_and_no_copy_on_the_node_load_is_a_clear_value_error(
    store: sns.SharedNumpyStore, data: np.ndarray[Any, Any]
) -> None:
    store.save(data, "x")
    with pytest.raises(sns.NotInSharedMemoryError, match="allow_create_shm=True") as raised:
        store.load("x", start_row=1, end_row=3)
    assert isinstance(raised.value, ValueError)
    assert "rows 1:3 of 'x'" in str(raised.value)


def test_loading_a_name_never_saved_is_a_key_and_value_error(
    store: sns.SharedNumpyStore, data: np.ndarray[Any, Any]
) -> None:
    with pytest.raises(sns.ArrayNotInStoreError, match="nothing was saved"):
        store.load("x", mode="memory")
    store.save(data, "x")
    with pytest.raises(KeyError, match="'nope'"):
        store.load("nope", mode="memmap")
    with pytest.raises(ValueError, match="'nope'"):
        store.get_expected_file_length("nope")


@pytest.mark.parametrize("name", ["Loader.pickle", "Loader.json", "a__b", "__x"])
def test_reserved_names_are_refused(
    store: sns.SharedNumpyStore, data: np.ndarray[Any, Any], name: str
) -> None:
    with pytest.raises(shmstore.ArgumentError, match=r"reserved|double underscore"):
        store.save(data, name)
    with pytest.raises(shmstore.ArgumentError, match=r"reserved|double underscore"):
        store.append_save(data, name)
    assert store.names() == []


@pytest.mark.parametrize("name", [".hidden", "run1/voltages", "x_", "a.b-c"])
def test_names_the_docstring_allows_are_saved_and_loaded(
    store: sns.SharedNumpyStore, data: np.ndarray[Any, Any], name: str
) -> None:
    store.save(data, name)
    np.testing.assert_array_equal(store.load(name, mode="memory"), data)
    assert store.names() == [name]


@pytest.mark.parametrize(
    ("name", "why"),
    [("a b", "letters, digits"), ("/abs", "absolute"), ("", "empty"), ("a/../b", "'..'")],
)
def test_names_the_store_refuses_are_refused_at_once_also_without_autoflush(
    store: sns.SharedNumpyStore, data: np.ndarray[Any, Any], name: str, why: str
) -> None:
    with pytest.raises(shmstore.ArgumentError, match=re.escape(why)):
        store.save(data, name)
    with pytest.raises(shmstore.ArgumentError, match=re.escape(why)):
        store.append_save(data, name, autoflush=False)
    store.flush()
    assert store.names() == []


def test_names_lists_the_saved_arrays(
    store: sns.SharedNumpyStore, data: np.ndarray[Any, Any]
) -> None:
    assert store.names() == []
    store.save(data, "b")
    store.append_save(data, "a")
    assert store.names() == ["a", "b"]
    assert "a" in store
    assert "c" not in store


def test_close_frees_the_shared_copies_no_process_maps(
    store: sns.SharedNumpyStore, data: np.ndarray[Any, Any], cache: shmstore.Cache
) -> None:
    store.save(data, "x")
    store.load("x", allow_create_shm=True)
    kept = store.load("x", start_row=0, end_row=2, allow_create_shm=True)
    (block,) = cache.entries()  # the rows of both loads lie in one block, shared
    store.close()
    (left,) = cache.entries()
    assert left.key == block.key  # the array still referenced here keeps its block
    del kept
    store.close()
    np.testing.assert_array_equal(store.load("x", allow_create_shm=True), data)


def _write_original(directory: Path, name: str, arr: np.ndarray[Any, Any]) -> Path:
    """A file as the original module saved *arr*: ``<name>__<shape>__<dtype>``, raw bytes."""
    path = directory / f"{name}__{'_'.join(map(str, arr.shape))}__{arr.dtype}"
    arr.tofile(path)
    return path


def test_import_original_saves_the_originals_raw_files_into_the_store(
    tmp_path: Path, data: np.ndarray[Any, Any]
) -> None:
    directory = tmp_path / "db"
    directory.mkdir()
    _write_original(directory, "voltages", data)
    _write_original(directory, "ids", np.arange(7, dtype="int32"))
    with (directory / "spikes__2_3__float64").open("wb") as f:  # 1 unflushed row past its name
        data[:3].tofile(f)
    store = sns.SharedNumpyStore(directory)
    with pytest.raises(ValueError, match="import_original"):
        store.load("voltages", mode="memory")
    assert store.import_original().imported == ["ids", "spikes", "voltages"]
    np.testing.assert_array_equal(store.load("voltages", mode="memmap"), data)
    np.testing.assert_array_equal(store.load("ids", mode="memory"), np.arange(7, dtype="int32"))
    np.testing.assert_array_equal(store.load("spikes", mode="memory"), data[:2])
    store.append_save(data[:1], "voltages")  # appendable, as the original's files were
    again = store.import_original()
    assert again.imported == []
    assert {f.name for f in again.skipped} == {"ids", "spikes", "voltages"}  # already there


def test_import_original_refuses_a_file_shorter_than_its_name_says(tmp_path: Path) -> None:
    (tmp_path / "short__10_3__float64").write_bytes(bytes(16))
    store = sns.SharedNumpyStore(tmp_path)
    (refused,) = store.import_original().refused
    assert (refused.file, refused.name) == ("short__10_3__float64", "short")
    assert re.search(r"16 bytes, fewer than the 240 its name promises.*damaged", refused.reason)
    assert store.names() == []


# -- shared arrays by name -----------------------------------------------------------


def test_shared_array_from_numpy_round_trips_through_another_process(
    cache: shmstore.Cache,
) -> None:
    values = np.linspace(0, 1, 12, dtype=np.float32).reshape(4, 3)
    handle, shared = sns.shared_array_from_numpy(values, "weights", cache=cache)
    np.testing.assert_array_equal(shared, values)
    assert handle.name == "weights"
    assert handle.size == values.nbytes
    with SPAWN.Pool(1) as pool:
        seen, writeable, dtype = pool.apply(children.attach_by_name, ("weights", cache))
    assert seen == values.ravel().tolist()
    assert writeable  # as the original's: made writable, attached writable
    assert dtype == "float32"


def test_shared_array_from_numpy_without_a_name_makes_a_unique_one(cache: shmstore.Cache) -> None:
    first, _ = sns.shared_array_from_numpy(np.zeros(3), cache=cache)
    second, _ = sns.shared_array_from_numpy(np.zeros(3), cache=cache)
    assert first.name != second.name
    _, attached = sns.shared_array_from_shared_mem_name(second.name, cache=cache)
    assert attached.shape == (3,)


def test_a_name_taken_already_is_a_file_exists_error(cache: shmstore.Cache) -> None:
    sns.shared_array_from_numpy(np.ones(3), "taken", cache=cache)
    with pytest.raises(FileExistsError, match="exists already"):
        sns.shared_array_from_numpy(np.zeros(5), "taken", cache=cache)
    _, still = sns.shared_array_from_shared_mem_name("taken", cache=cache)
    np.testing.assert_array_equal(still, np.ones(3))


def test_shared_array_from_shared_mem_name_reads_shape_and_dtype_from_the_segment(
    cache: shmstore.Cache,
) -> None:
    values = np.arange(24, dtype=">i2").reshape(2, 3, 4)
    sns.shared_array_from_numpy(values, "cube", cache=cache)
    _, attached = sns.shared_array_from_shared_mem_name("cube", cache=cache)
    assert attached.shape == (2, 3, 4)
    assert attached.dtype == np.dtype(">i2")
    _, same = sns.shared_array_from_shared_mem_name("cube", (2, 3, 4), ">i2", cache=cache)
    np.testing.assert_array_equal(same, values)


@pytest.mark.parametrize(
    ("shape", "dtype", "wrong"),
    [((4, 6), None, "shape (4, 6)"), (None, "float64", "dtype float64"), (24, "i2", "shape (24,)")],
)
def test_a_wrong_shape_or_dtype_for_a_named_array_is_a_value_error(
    cache: shmstore.Cache, shape: Any, dtype: Any, wrong: str
) -> None:
    sns.shared_array_from_numpy(np.arange(24, dtype=">i2").reshape(2, 3, 4), "cube", cache=cache)
    with pytest.raises(ValueError, match=re.escape(f"not the {wrong}")):
        sns.shared_array_from_shared_mem_name("cube", shape, dtype, cache=cache)


def test_attaching_a_name_never_made_is_a_file_not_found_error(cache: shmstore.Cache) -> None:
    with pytest.raises(FileNotFoundError, match="no shared array named 'ghost'"):
        sns.shared_array_from_shared_mem_name("ghost", cache=cache)


def test_unlink_removes_the_name_and_the_mapped_array_stays_valid(cache: shmstore.Cache) -> None:
    handle, shared = sns.shared_array_from_numpy(np.arange(5.0), "gone", cache=cache)
    handle.unlink()
    handle.unlink()  # idempotent
    with pytest.raises(FileNotFoundError):
        sns.shared_array_from_shared_mem_name("gone", cache=cache)
    handle.close()
    assert shared.sum() == 10.0  # the pages outlive the name and the handle: no SIGBUS


def test_a_name_unlinked_and_made_again_serves_the_new_contents(cache: shmstore.Cache) -> None:
    handle, old = sns.shared_array_from_numpy(np.zeros(4), "reused", cache=cache)
    handle.unlink()
    sns.shared_array_from_numpy(np.ones(4), "reused", cache=cache)
    _, attached = sns.shared_array_from_shared_mem_name("reused", cache=cache)
    np.testing.assert_array_equal(attached, np.ones(4))
    np.testing.assert_array_equal(old, np.zeros(4))


def test_close_of_a_handle_lets_the_cache_evict_the_array(cache: shmstore.Cache) -> None:
    handle, shared = sns.shared_array_from_numpy(np.arange(4.0), "evictable", cache=cache)
    assert evicted_keys(cache.evict([handle.key])) == []  # mapped: kept
    handle.close()
    del shared
    with pytest.raises(ValueError, match="closed"):
        _ = handle.buf
    assert evicted_keys(cache.evict([handle.key])) == [handle.key]


def test_a_handle_pickles_and_attaches_in_another_process(cache: shmstore.Cache) -> None:
    handle, _ = sns.shared_array_from_numpy(np.arange(6.0), "pickled", cache=cache)
    assert len(pickle.dumps(handle)) < 1024
    with SPAWN.Pool(1) as pool:
        assert pool.apply(children.sum_of_handle, (handle,)) == 15.0


@pytest.mark.parametrize("rows", ROW_RANGES)
def test_shared_array_from_disk_of_a_raw_file_round_trips(
    tmp_path: Path,
    cache: shmstore.Cache,
    data: np.ndarray[Any, Any],
    rows: tuple[int | None, int | None],
) -> None:
    path = tmp_path / "raw.bin"
    data.tofile(path)
    _, shared = sns.shared_array_from_disk(path, (10, 3), "float64", None, *rows, cache=cache)
    np.testing.assert_array_equal(shared, data[rows[0] : rows[1]])
    assert not shared.flags.writeable


@pytest.mark.parametrize("rows", ROW_RANGES)
def test_shared_array_from_disk_of_a_npy_file_reads_shape_and_dtype_from_its_header(
    tmp_path: Path, cache: shmstore.Cache, rows: tuple[int | None, int | None]
) -> None:
    values = np.arange(40, dtype="<u2").reshape(10, 2, 2)
    np.save(tmp_path / "a.npy", values)
    _, shared = sns.shared_array_from_disk(
        tmp_path / "a.npy", start_row=rows[0], end_row=rows[1], cache=cache
    )
    np.testing.assert_array_equal(shared, values[rows[0] : rows[1]])
    assert shared.dtype == np.dtype("<u2")


def test_shared_array_from_disk_under_a_name_is_attachable_by_it(
    tmp_path: Path, cache: shmstore.Cache, data: np.ndarray[Any, Any]
) -> None:
    np.save(tmp_path / "a.npy", data)
    handle, _ = sns.shared_array_from_disk(tmp_path / "a.npy", name="from-disk", cache=cache)
    assert handle.name == "from-disk"
    with SPAWN.Pool(1) as pool:
        seen, _, _ = pool.apply(children.attach_by_name, ("from-disk", cache))
    assert seen == data.ravel().tolist()


def test_a_raw_file_whose_size_disagrees_with_shape_and_dtype_is_a_value_error(
    tmp_path: Path, cache: shmstore.Cache, data: np.ndarray[Any, Any]
) -> None:
    path = tmp_path / "raw.bin"
    data.tofile(path)
    with pytest.raises(
        ValueError, match=r"240 bytes, but shape \(10, 4\) of dtype float64 needs 320"
    ):
        sns.shared_array_from_disk(path, (10, 4), "float64", cache=cache)
    with pytest.raises(ValueError, match="240 bytes"):
        sns.memmap_from_disk(path, (11, 3), "float64")
    assert cache.entries() == []


def test_a_raw_file_without_shape_and_dtype_is_a_value_error(
    tmp_path: Path, cache: shmstore.Cache
) -> None:
    path = tmp_path / "raw.bin"
    path.write_bytes(bytes(64))
    with pytest.raises(ValueError, match="pass both"):
        sns.shared_array_from_disk(path, cache=cache)


def test_a_npy_file_given_another_shape_is_a_value_error(
    tmp_path: Path, cache: shmstore.Cache, data: np.ndarray[Any, Any]
) -> None:
    np.save(tmp_path / "a.npy", data)
    with pytest.raises(ValueError, match=r"shape \(10, 3\) \(not the \(3, 10\) given\)"):
        sns.shared_array_from_disk(tmp_path / "a.npy", (3, 10), cache=cache)


def test_a_missing_file_is_a_file_not_found_error(tmp_path: Path, cache: shmstore.Cache) -> None:
    with pytest.raises(FileNotFoundError, match="no file at"):
        sns.shared_array_from_disk(tmp_path / "absent.npy", cache=cache)
    with pytest.raises(FileNotFoundError, match="no file at"):
        sns.memmap_from_disk(tmp_path / "absent.npy")


def test_a_named_array_of_another_file_is_not_served_for_this_one(
    tmp_path: Path, cache: shmstore.Cache, data: np.ndarray[Any, Any]
) -> None:
    np.save(tmp_path / "a.npy", data)
    np.save(tmp_path / "b.npy", data * 2)
    sns.shared_array_from_disk(tmp_path / "a.npy", name="slot", cache=cache)
    with pytest.raises(FileExistsError, match=r"holds rows 0:10 of .*a\.npy"):
        sns.shared_array_from_disk(tmp_path / "b.npy", name="slot", cache=cache)


@pytest.mark.parametrize("rows", ROW_RANGES)
@pytest.mark.parametrize("kind", ["raw", "npy"])
def test_memmap_from_disk_maps_the_rows_read_only(
    tmp_path: Path, data: np.ndarray[Any, Any], rows: tuple[int | None, int | None], kind: str
) -> None:
    """Regression: the original's memmap_from_disk used an undefined variable and always failed."""
    if kind == "raw":
        path = tmp_path / "raw.bin"
        data.tofile(path)
        mapped = sns.memmap_from_disk(path, (10, 3), "float64", None, *rows)
    else:
        path = tmp_path / "a.npy"
        np.save(path, data)
        mapped = sns.memmap_from_disk(path, start_row=rows[0], end_row=rows[1])
    np.testing.assert_array_equal(mapped, data[rows[0] : rows[1]])
    assert not mapped.flags.writeable


def test_segments_go_to_job_shmtmpdir_when_shmstore_dir_is_unset(tmp_path: Path) -> None:
    job_dir = Path("/dev/shm") / f"shmstore-test-job-{os.getpid()}-{tmp_path.name}"
    job_dir.mkdir(mode=0o700)
    try:
        env = {k: v for k, v in os.environ.items() if k != "SHMSTORE_DIR"}
        env["JOB_SHMTMPDIR"] = str(job_dir)
        script = textwrap.dedent(
            """
            import numpy as np
            from shmstore import shared_numpy_store as sns
            handle, _ = sns.shared_array_from_numpy(np.arange(3.0), "job")
            print(handle.key)
            """
        )
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        key = out.stdout.strip()
        assert (job_dir / "shmstore" / f"{key}.seg").is_file()
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)


# -- the original's helpers ----------------------------------------------------------


@given(
    shape=st.lists(st.integers(0, 6), min_size=1, max_size=4),
    dtype=st.sampled_from(["u1", "<i2", ">f4", "f8", "c16", "S3", "i4,f2"]),
    bounds=st.tuples(st.integers(-8, 8) | st.none(), st.integers(-8, 8) | st.none()),
)
def test_offset_and_size_in_bytes_agree_with_numpy_slicing(
    shape: list[int], dtype: str, bounds: tuple[int | None, int | None]
) -> None:
    arr = np.zeros(shape, dtype=dtype)
    length = shape[0]
    first = 0 if bounds[0] is None else bounds[0] + length * (bounds[0] < 0)
    last = length if bounds[1] is None else bounds[1] + length * (bounds[1] < 0)
    if not (0 <= first <= length and 0 <= last <= length and first <= last):
        with pytest.raises(shmstore.RowsError):
            sns._get_offset_and_size_in_bytes(*bounds, tuple(shape), dtype)
        return
    result = sns._get_offset_and_size_in_bytes(*bounds, tuple(shape), dtype)
    rows = arr[first:last]
    assert result == (first, last, arr[:first].nbytes, rows.nbytes, rows.shape)


def test_check_filesize_matches_shape_accepts_the_right_size_and_names_both_otherwise(
    tmp_path: Path,
) -> None:
    path = tmp_path / "raw.bin"
    np.zeros((4, 5), dtype="i4").tofile(path)
    sns._check_filesize_matches_shape(path, (4, 5), "i4")
    with pytest.raises(ValueError, match=r"80 bytes, but shape \(4, 6\) of dtype int32 needs 96"):
        sns._check_filesize_matches_shape(path, (4, 6), "i4")


def test_uninterruptible_is_shmstores() -> None:
    assert sns.Uninterruptible is shmstore.Uninterruptible


# -- the data base's plug-in protocol ------------------------------------------------


def test_check_accepts_none_and_a_store_and_nothing_else(tmp_path: Path) -> None:
    """Regression: the original's check called isinstance(obj, None) and raised TypeError."""
    assert sns.check(None)
    assert sns.check(sns.SharedNumpyStore(tmp_path))
    assert not sns.check(np.zeros(3))
    assert not sns.check(str(tmp_path))


def test_dump_then_loader_get_gives_the_store_of_the_directory(
    tmp_path: Path, data: np.ndarray[Any, Any]
) -> None:
    savedir = tmp_path / "db"
    sns.dump(None, savedir)
    store = sns.Loader().get(savedir)
    assert isinstance(store, sns.SharedNumpyStore)
    store.save(data, "x")
    np.testing.assert_array_equal(
        sns.Loader().get(savedir).load("x", mode="memory", start_row=3), data[3:]
    )


def _data_base_load(savedir: Path) -> object:
    """The data base's own ``load(savedir)``, step for step, as the framework does it."""
    with (savedir / "Loader.json").open() as f:
        loader_init_kwargs = json.load(f)
    loader = loader_init_kwargs["Loader"]
    del loader_init_kwargs["Loader"]
    if (savedir / "object_meta.json").exists():
        loader_init_kwargs["meta"] = json.loads((savedir / "object_meta.json").read_text())
    myloader = importlib.import_module(loader).Loader(**loader_init_kwargs)
    return myloader.get(str(savedir))


@pytest.mark.parametrize("with_meta", [False, True], ids=["no-meta", "object_meta.json"])
def test_the_data_bases_own_load_gives_the_dumped_store(
    tmp_path: Path, data: np.ndarray[Any, Any], with_meta: bool
) -> None:
    savedir = tmp_path / "db"
    store = sns.SharedNumpyStore(savedir)
    store.save(data, "x")
    sns.dump(store, savedir)
    if with_meta:
        (savedir / "object_meta.json").write_text('{"time": 1715000000, "dumper": "sns"}')
    loaded = _data_base_load(savedir)
    assert isinstance(loaded, sns.SharedNumpyStore)
    np.testing.assert_array_equal(loaded.load("x", mode="memory"), data)


def test_the_loader_keeps_the_meta_the_data_base_passes() -> None:
    meta = {"time": 1715000000, "dumper": "sns"}
    assert sns.Loader(meta=meta).meta == meta
    assert sns.Loader().meta is None


@pytest.mark.parametrize(
    ("description", "named"),
    [
        ({"format_version": 2}, "format_version"),
        ({"store": "other.h5"}, "store"),
        ({"format": "npy"}, "format"),
        ({"unknown": 1}, "unknown"),
    ],
    ids=["newer-version", "other-store", "other-format", "unknown-key"],
)
def test_the_loader_refuses_a_description_dump_does_not_write(
    description: dict[str, object], named: str
) -> None:
    with pytest.raises(shmstore.ManifestError, match=rf"{named}.*dump\(None, savedir\)"):
        sns.Loader(**description)


def test_dump_of_a_store_elsewhere_copies_its_arrays(
    tmp_path: Path, data: np.ndarray[Any, Any]
) -> None:
    source = sns.SharedNumpyStore(tmp_path / "elsewhere")
    source.save(data, "x")
    source.append_save(data[:2], "y", autoflush=False)
    sns.dump(source, tmp_path / "db")
    copied = sns.Loader().get(tmp_path / "db")
    assert copied.names() == ["x", "y"]
    np.testing.assert_array_equal(copied.load("x", mode="memmap"), data)
    np.testing.assert_array_equal(copied.load("y", mode="memory"), data[:2])
    copied.append_save(data[2:4], "y")  # still appendable
    assert copied.get_expected_file_length("y") == data[:4].nbytes


def test_dump_of_a_store_into_its_own_directory_keeps_its_arrays(
    tmp_path: Path, data: np.ndarray[Any, Any]
) -> None:
    store = sns.SharedNumpyStore(tmp_path / "db")
    store.save(data, "x")
    sns.dump(store, tmp_path / "db")
    np.testing.assert_array_equal(sns.Loader().get(tmp_path / "db").load("x", mode="memory"), data)


def test_dump_refuses_what_check_refuses(tmp_path: Path) -> None:
    with pytest.raises(shmstore.ArgumentError, match="None or a SharedNumpyStore"):
        sns.dump(np.zeros(3), tmp_path)  # type: ignore[arg-type]
    assert not (tmp_path / sns.LOADER_FILE).exists()


def test_the_loader_description_is_json_valid_against_its_schema(tmp_path: Path) -> None:
    sns.dump(None, tmp_path)
    description = json.loads((tmp_path / sns.LOADER_FILE).read_text())
    schema = json.loads((SCHEMAS / "loader.schema.json").read_text())
    jsonschema.validate(description, schema)
    assert description["Loader"] == "shmstore.shared_numpy_store"
    assert not list(tmp_path.glob("*.pickle"))


def test_loader_get_without_a_description_is_a_file_not_found_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no Loader.json in .*dump\(None"):
        sns.Loader().get(tmp_path)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "{}",
        '{"Loader": "some.other.module"}',
        "[1, 2]",
        '{"Loader": "shmstore.shared_numpy_store", "x": 1}',
    ],
)
def test_loader_get_with_an_invalid_description_is_a_value_error(tmp_path: Path, text: str) -> None:
    (tmp_path / sns.LOADER_FILE).write_text(text)
    with pytest.raises(shmstore.ManifestError, match="not a description of a shared numpy store"):
        sns.Loader().get(tmp_path)


def test_loader_get_never_unpickles_the_originals_loader_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (os.mkdir, (str(marker),))

    (tmp_path / "Loader.pickle").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(FileNotFoundError, match="never loads"):
        sns.Loader().get(tmp_path)
    assert not marker.exists()


# -- regressions of the original's defects -------------------------------------------


def test_load_serves_the_same_array_again_without_opening_the_store(
    store: sns.SharedNumpyStore, data: np.ndarray[Any, Any]
) -> None:
    """Regression: the original stored a loaded buffer under one key and looked it up
    under another, so every call attached again.

    The second load must return the very array of the first, and must not even
    open the HDF5 file: a writer holding the store's lock would block an open.
    """
    store.save(data, "x")
    first = store.load("x", start_row=2, end_row=6, allow_create_shm=True)
    ready, release = SPAWN.Event(), SPAWN.Event()
    writer = SPAWN.Process(target=children.hold_writer_lock, args=(str(store.path), ready, release))
    writer.start()
    try:
        assert ready.wait(60)
        assert store.load("x", start_row=2, end_row=6) is first
    finally:
        release.set()
        writer.join(60)


def test_many_processes_loading_the_same_rows_at_once_load_them_once(
    store: sns.SharedNumpyStore, data: np.ndarray[Any, Any], cache: shmstore.Cache
) -> None:
    """Regression: two jobs creating the same segment raced (one failed or read half of it)."""
    store.save(data, "x")
    results = _at_once(children.load_shared_at_once, (store.working_dir, "x", (1, 9), cache))
    assert all(values == data[1:9].ravel().tolist() for values, _, _ in results)
    assert not any(writeable for _, writeable, _ in results)
    assert len({origin for _, _, origin in results}) == 1  # one loader, one file
    assert len(cache.entries()) == 1


def test_many_processes_sharing_a_file_at_once_load_it_once(
    tmp_path: Path, cache: shmstore.Cache, data: np.ndarray[Any, Any]
) -> None:
    np.save(tmp_path / "a.npy", data)
    results = _at_once(children.from_disk_at_once, (str(tmp_path / "a.npy"), None, cache))
    assert len({name for name, _, _ in results}) == 1
    assert all(values == data.ravel().tolist() for _, values, _ in results)
    assert len({origin for _, _, origin in results}) == 1


def test_a_save_from_another_process_is_served_at_the_next_load(
    store: sns.SharedNumpyStore, data: np.ndarray[Any, Any]
) -> None:
    """Regression: the original kept serving a shared copy after the file changed."""
    store.save(data, "x")
    before = store.load("x", allow_create_shm=True)
    np.testing.assert_array_equal(before, data)
    with SPAWN.Pool(1) as pool:
        pool.apply(children.save, (store.working_dir, "x", [7.0, 8.0, 9.0]))
    np.testing.assert_array_equal(store.load("x", allow_create_shm=True), [7.0, 8.0, 9.0])
    np.testing.assert_array_equal(before, data)  # the old array stays valid where held


def test_a_store_file_replaced_on_disk_is_served_new(
    tmp_path: Path, cache: shmstore.Cache, data: np.ndarray[Any, Any]
) -> None:
    store = sns.SharedNumpyStore(tmp_path / "db", cache=cache)
    store.save(data, "x")
    store.load("x", allow_create_shm=True)
    other = sns.SharedNumpyStore(tmp_path / "other", cache=cache)
    other.save(data[:3] + 100, "x")
    # Another file in its place, its appendable data moved along with it.
    shutil.rmtree(f"{store.path}.raw")
    os.rename(f"{other.path}.raw", f"{store.path}.raw")
    os.replace(other.path, store.path)
    np.testing.assert_array_equal(store.load("x", allow_create_shm=True), data[:3] + 100)


def test_an_append_is_served_at_the_next_load(
    store: sns.SharedNumpyStore, data: np.ndarray[Any, Any]
) -> None:
    store.save(data[:5], "x")
    assert store.load("x", allow_create_shm=True).shape == (5, 3)
    store.append_save(data[5:], "x")
    np.testing.assert_array_equal(store.load("x", allow_create_shm=True), data)


@pytest.mark.parametrize("mode", ["shm", "SHARED_MEMORY", "", "mmap", None, 3])
def test_an_unknown_mode_is_refused(
    store: sns.SharedNumpyStore, data: np.ndarray[Any, Any], mode: Any
) -> None:
    """Regression: the original's `elif 'shared_memory':` was always true, so any mode loaded."""
    store.save(data, "x")
    with pytest.raises(
        ValueError, match="load mode must be one of 'shared_memory', 'memmap', 'memory'"
    ):
        store.load("x", mode=mode, allow_create_shm=True)


@pytest.mark.parametrize(("start", "end"), [(5, 2), (0, 11), (-11, None), (None, 12)])
def test_rows_outside_the_array_are_a_rows_error(
    store: sns.SharedNumpyStore, data: np.ndarray[Any, Any], start: Any, end: Any
) -> None:
    store.save(data, "x")
    for mode in ("shared_memory", "memmap", "memory"):
        with pytest.raises(shmstore.RowsError):
            store.load("x", mode=mode, start_row=start, end_row=end, allow_create_shm=True)
    with pytest.raises(shmstore.RowsError):
        sns._get_offset_and_size_in_bytes(start, end, (10, 3), "f8")


def test_rows_are_checked_even_with_python_optimisations(tmp_path: Path) -> None:
    """Regression: the original checked rows with assert, which ``python -O`` removes."""
    script = textwrap.dedent(
        f"""
        import numpy as np
        from shmstore import shared_numpy_store as sns
        store = sns.SharedNumpyStore({str(tmp_path / "db")!r})
        store.save(np.zeros((4, 2)), "x")
        for call in (
            lambda: store.load("x", mode="memory", start_row=3, end_row=1),
            lambda: sns._get_offset_and_size_in_bytes(0, 9, (4, 2), "f8"),
        ):
            try:
                call()
            except IndexError as err:
                print(type(err).__name__)
        """
    )
    out = subprocess.run(
        [sys.executable, "-O", "-c", script], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["RowsError", "RowsError"]
