"""Writable named shared arrays of ``shmstore.shared_numpy_store``, as the original's were.

``shared_array_from_numpy`` and ``shared_array_empty`` make arrays every
process of the node attaches by name and writes in place (output buffers
that workers fill); ``writable=False`` gives read-only ones; copies of files
and store loads stay read-only.  Real shared memory, real spawned processes.
"""

from __future__ import annotations

import gc
import multiprocessing
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import shmstore
from shmstore import shared_numpy_store as sns
from tests._cache_children import removed_names

from . import _children_sns as children

SPAWN = multiprocessing.get_context("spawn")


def test_workers_fill_a_named_array_in_place_and_the_parent_sees_every_row(
    cache: shmstore.Cache,
) -> None:
    handle, out = sns.shared_array_empty((8, 3), "<f8", "results", cache=cache)
    with SPAWN.Pool(2) as pool:
        writable = pool.starmap(
            children.fill_rows, [("results", cache, 0, 4), ("results", cache, 4, 8)]
        )
    assert writable == [True, True]
    np.testing.assert_array_equal(out, np.repeat(np.arange(8.0), 3).reshape(8, 3))
    handle.unlink()


def test_shared_array_from_numpy_is_writable_and_a_write_is_seen_by_name(
    cache: shmstore.Cache,
) -> None:
    handle, shared = sns.shared_array_from_numpy(np.arange(6.0), "buffer", cache=cache)
    assert handle.writable
    shared[0] = -1.0
    _, again = sns.shared_array_from_shared_mem_name("buffer", cache=cache)
    assert again[0] == -1.0
    assert again.flags.writeable


def test_shared_array_empty_is_zeros_of_the_shape_and_dtype_asked(cache: shmstore.Cache) -> None:
    _, zeros = sns.shared_array_empty((5, 2), "<M8[s]", cache=cache)
    assert (zeros.shape, zeros.dtype) == ((5, 2), np.dtype("<M8[s]"))
    assert (zeros.view("<i8") == 0).all()


def test_writable_false_makes_it_read_only_for_every_process(cache: shmstore.Cache) -> None:
    handle, shared = sns.shared_array_from_numpy(
        np.arange(3), "frozen", writable=False, cache=cache
    )
    assert not shared.flags.writeable
    assert not handle.writable
    with SPAWN.Pool(1) as pool:
        refused = pool.apply(children.attach_writable, ("frozen", cache))
    assert refused.startswith("ReadOnlyError ShmStoreError PermissionError")
    _, attached = sns.shared_array_from_shared_mem_name("frozen", cache=cache)
    assert not attached.flags.writeable


def test_a_writable_array_attached_with_writable_false_is_read_only(
    cache: shmstore.Cache,
) -> None:
    sns.shared_array_from_numpy(np.arange(3.0), "rw", cache=cache)
    handle, view = sns.shared_array_from_shared_mem_name("rw", writable=False, cache=cache)
    assert not handle.writable
    with pytest.raises(ValueError, match="read-only"):
        view[0] = 1.0


def test_a_copy_of_a_file_cannot_be_attached_writable(
    tmp_path: Path, cache: shmstore.Cache
) -> None:
    np.save(tmp_path / "a.npy", np.arange(4.0))
    sns.shared_array_from_disk(tmp_path / "a.npy", name="copy", cache=cache)
    with pytest.raises(PermissionError, match=r"'copy' is a copy of a file.*writable=False"):
        sns.shared_array_from_shared_mem_name("copy", writable=True, cache=cache)
    _, attached = sns.shared_array_from_shared_mem_name("copy", cache=cache)  # as made
    assert not attached.flags.writeable


def test_a_named_array_outlives_its_handles_and_mappings_until_unlinked(
    cache: shmstore.Cache,
) -> None:
    handle, shared = sns.shared_array_from_numpy(np.full(5 << 20, 3.0), "kept", cache=cache)
    handle.close()
    del shared
    gc.collect()  # 40 MiB of a 64 MiB budget that no process maps
    with pytest.raises(shmstore.CacheFullError, match="named arrays"):
        sns.shared_array_empty(30 << 17, "f8", "big", cache=cache)  # 30 MiB more
    again, attached = sns.shared_array_from_shared_mem_name("kept", cache=cache)
    assert (attached == 3.0).all()
    again.unlink()
    with pytest.raises(FileNotFoundError):
        sns.shared_array_from_shared_mem_name("kept", cache=cache)


def test_gc_removes_a_named_array_once_the_processes_using_it_are_gone(
    cache: shmstore.Cache,
) -> None:
    with SPAWN.Pool(1) as pool:
        key = pool.apply(children.make_named_and_exit, ("orphan", cache))
    ready, release = SPAWN.Event(), SPAWN.Event()
    holder = SPAWN.Process(target=children.hold_named, args=("orphan", cache, ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        assert f"{key}.seg" not in removed_names(cache.gc())  # a process maps it
    finally:
        release.set()
        holder.join(60)
    assert f"{key}.seg" in removed_names(cache.gc())
    with pytest.raises(FileNotFoundError):
        sns.shared_array_from_shared_mem_name("orphan", cache=cache)


def test_a_pickled_writable_handle_attaches_writable(cache: shmstore.Cache) -> None:
    handle, shared = sns.shared_array_from_numpy(np.zeros(3), "pickled-rw", cache=cache)
    copy = pickle.loads(pickle.dumps(handle))
    assert copy.writable
    np.frombuffer(copy.buf, dtype=copy.dtype)[1] = 9.0  # buf is writable, as the original's
    assert shared[1] == 9.0


def test_a_shared_memory_load_of_a_store_stays_read_only_beside_writable_arrays(
    tmp_path: Path, cache: shmstore.Cache
) -> None:
    store = sns.SharedNumpyStore(tmp_path / "db", cache=cache)
    store.save(np.arange(4.0), "x")
    sns.shared_array_from_numpy(np.arange(4.0), "x", cache=cache)  # a name of its own kind
    loaded = store.load("x", allow_create_shm=True)
    with pytest.raises(ValueError, match="read-only"):
        loaded[0] = 1.0
    store.close()


@pytest.mark.parametrize(
    ("shape", "dtype", "message"),
    [
        ((-1, 2), "f8", "negative size"),
        ((2,), "not-a-dtype", "not a numpy dtype"),
        ((2,), object, "Python objects"),
    ],
)
def test_shared_array_empty_with_a_bad_shape_or_dtype_is_refused_saying_which(
    cache: shmstore.Cache, shape: Any, dtype: Any, message: str
) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        sns.shared_array_empty(shape, dtype, "bad", cache=cache)
    assert cache.entries() == []


def test_a_taken_name_is_refused_by_shared_array_empty_too(cache: shmstore.Cache) -> None:
    sns.shared_array_from_numpy(np.ones(2), "taken", cache=cache)
    with pytest.raises(sns.SharedArrayExistsError, match="exists already"):
        sns.shared_array_empty((5,), "f8", "taken", cache=cache)
    _, kept = sns.shared_array_from_shared_mem_name("taken", cache=cache)
    assert kept.tolist() == [1.0, 1.0]
