"""Views and handles: rows of a store shared through the node cache.

Real HDF5 files, a real cache directory on /dev/shm, real spawned processes.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import filelock
import h5py
import numpy as np
import pytest

import shmstore
from tests import _children_views

SHM = Path("/dev/shm")
pytestmark = pytest.mark.skipif(not SHM.is_dir(), reason="needs /dev/shm")


@pytest.fixture
def cache() -> Iterator[shmstore.Cache]:
    directory = SHM / f"shmstore-test-{uuid.uuid4().hex[:12]}"
    yield shmstore.Cache(directory=directory)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def data() -> np.ndarray:
    return np.arange(12_000, dtype="<f8").reshape(2_000, 6)


@pytest.fixture
def store_path(tmp_path: Path, data: np.ndarray) -> Path:
    path = tmp_path / "views.h5"
    with shmstore.open(path, "w") as store:
        store.write("contiguous", data)
        store.write("chunked", data, compression="gzip", chunks=(100, 6))
        store.append("external", data[:1_000])
        store.append("external", data[1_000:])
    return path


LAYOUTS = ["contiguous", "chunked", "external"]


@pytest.mark.parametrize("name", LAYOUTS)
@pytest.mark.parametrize("mode", ["shared", "memory", "auto"])
def test_every_view_mode_gives_the_rows_asked_for(
    store_path: Path, cache: shmstore.Cache, data: np.ndarray, name: str, mode: str
) -> None:
    with (
        shmstore.open(store_path, cache=cache) as store,
        store.view(name, (-700, 1_900), mode) as arr,
    ):  # type: ignore[arg-type]
        np.testing.assert_array_equal(arr, data[-700:1_900])
        assert arr.dtype == data.dtype


@pytest.mark.parametrize("mode", ["shared", "memmap", "memory", "auto"])
def test_views_are_read_only(store_path: Path, cache: shmstore.Cache, mode: str) -> None:
    with (
        shmstore.open(store_path, cache=cache) as store,
        store.view("contiguous", mode=mode) as arr,
    ):  # type: ignore[arg-type]
        assert not arr.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            arr[0, 0] = -1.0


def test_memmap_view_of_a_chunked_dataset_is_refused(
    store_path: Path, cache: shmstore.Cache
) -> None:
    with (
        shmstore.open(store_path, cache=cache) as store,
        pytest.raises(shmstore.NotContiguousError),
        store.view("chunked", mode="memmap"),
    ):
        pass


def test_an_unknown_view_mode_is_refused(store_path: Path, cache: shmstore.Cache) -> None:
    with (
        shmstore.open(store_path, cache=cache) as store,
        pytest.raises(shmstore.ArgumentError, match="mode"),
        store.view("contiguous", mode="fast"),
    ):  # type: ignore[arg-type]
        pass


def test_a_second_shared_view_maps_the_same_segment(
    store_path: Path, cache: shmstore.Cache
) -> None:
    with shmstore.open(store_path, cache=cache) as store:
        with (
            store.view("contiguous", (0, 500), "shared") as first,
            store.view("contiguous", (0, 500), "shared") as second,
        ):
            assert np.shares_memory(first, second)
        assert len(cache.entries()) == 1


# -- invariant 3: never stale ----------------------------------------------------


def test_invariant_3_overwrite_through_shmstore_is_never_served_stale(
    store_path: Path, cache: shmstore.Cache, data: np.ndarray
) -> None:
    with (
        shmstore.open(store_path, cache=cache) as store,
        store.view("contiguous", mode="shared") as arr,
    ):
        np.testing.assert_array_equal(arr, data)
    with shmstore.open(store_path, "a") as store:
        store.write("contiguous", -data, overwrite=True)
    with (
        shmstore.open(store_path, cache=cache) as store,
        store.view("contiguous", mode="shared") as arr,
    ):
        np.testing.assert_array_equal(arr, -data)


def test_invariant_3_append_through_shmstore_is_never_served_stale(
    store_path: Path, cache: shmstore.Cache, data: np.ndarray
) -> None:
    with shmstore.open(store_path, cache=cache) as store:
        handle = store.handle("external")
    with handle.view("shared") as arr:
        assert len(arr) == len(data)
    with shmstore.open(store_path, "a") as store:
        store.append("external", data[:10] + 0.5)
    with (
        shmstore.open(store_path, cache=cache) as store,
        store.view("external", mode="shared") as arr,
    ):
        assert len(arr) == len(data) + 10
        np.testing.assert_array_equal(arr[-10:], data[:10] + 0.5)
    with handle.view("shared") as arr:  # the handle's rows are unchanged and still current
        np.testing.assert_array_equal(arr, data)
    assert handle.version > 0


def test_invariant_3_a_delete_through_shmstore_is_never_served(
    store_path: Path, cache: shmstore.Cache
) -> None:
    with shmstore.open(store_path, cache=cache) as store:
        handle = store.handle("contiguous")
        with handle.view("shared"):
            pass
    with shmstore.open(store_path, "a") as store:
        store.delete("contiguous")
    with pytest.raises(shmstore.ArrayNotFoundError), handle.view("shared"):
        pass


def test_invariant_3_a_rewrite_with_plain_h5py_is_never_served_stale(
    store_path: Path, cache: shmstore.Cache, data: np.ndarray
) -> None:
    with shmstore.open(store_path, cache=cache) as store:
        handle = store.handle("contiguous", (0, 100))
    with handle.view("shared") as arr:
        np.testing.assert_array_equal(arr, data[:100])
    # The identity includes the mtime in ns, which the kernel advances per
    # clock tick: another tool's rewrite a tick later is always seen.
    time.sleep(0.02)
    with h5py.File(store_path, "r+") as file:
        file["contiguous"][:100] = 7.0
    # Never the old rows: the new bytes fail the checksums until they are sealed.
    with pytest.raises(shmstore.IntegrityError, match="rows 0:"), handle.view("shared"):
        pass
    with shmstore.open(store_path, "a") as store:
        store.seal("contiguous")
    with handle.view("shared") as arr:
        np.testing.assert_array_equal(arr, np.full((100, 6), 7.0))


def test_invariant_3_a_file_replaced_by_another_is_never_served_stale(
    store_path: Path, cache: shmstore.Cache, data: np.ndarray, tmp_path: Path
) -> None:
    with shmstore.open(store_path, cache=cache) as store:
        handle = store.handle("contiguous", (0, 100))
    with handle.view("shared"):
        pass
    replacement = tmp_path / "replacement.h5"
    with shmstore.open(replacement, "w") as store:
        store.write("contiguous", data * 3)
    os.replace(replacement, store_path)
    with handle.view("shared") as arr:
        np.testing.assert_array_equal(arr, data[:100] * 3)


# -- handles in other processes --------------------------------------------------


def test_a_handle_pickles_small_without_array_data(store_path: Path, cache: shmstore.Cache) -> None:
    with shmstore.open(store_path, cache=cache) as store:
        handle = store.handle("contiguous")
        handle.pin()
    blob = pickle.dumps(handle)
    assert len(blob) < 2_000
    clone = pickle.loads(blob)
    assert (clone.name, clone.rows, clone.shape) == ("contiguous", (0, 2_000), (2_000, 6))


def test_spawned_workers_read_the_right_rows_from_one_copy(
    store_path: Path, cache: shmstore.Cache, data: np.ndarray
) -> None:
    with shmstore.open(store_path, cache=cache) as store:
        handle = store.handle("chunked", (100, 1_100))
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        results = pool.map(_children_views.view_rows, [handle] * 6)
    assert {total for _, total, _ in results} == {float(data[100:1_100].sum())}
    assert not any(writeable for _, _, writeable in results)
    assert len(cache.entries()) == 1


def test_handle_view_does_not_open_the_hdf5_file_when_the_node_has_the_slice(
    store_path: Path, cache: shmstore.Cache, data: np.ndarray
) -> None:
    with shmstore.open(store_path, cache=cache) as store:
        handle = store.handle("contiguous", (0, 10))
    with handle.view("shared"):
        pass
    # Holding the store's exclusive lock without touching the file: anything
    # that opened the store would wait for it (and time out).
    lock = filelock.ReadWriteLock(f"{store_path}.lock", is_singleton=False)
    lock.acquire_write()
    try:
        code = (
            "import pickle, sys; h = pickle.loads(sys.stdin.buffer.read()); "
            "print(h.view().__enter__().sum())"
        )
        result = subprocess.run(
            [sys.executable, "-c", code],
            input=pickle.dumps(handle),
            capture_output=True,
            timeout=20,
            check=False,
        )
    finally:
        lock.close()
    assert result.returncode == 0, result.stderr.decode()
    assert float(result.stdout) == float(data[:10].sum())


def test_invariant_6_a_worker_writing_into_its_view_gets_an_error_and_data_is_unchanged(
    store_path: Path, cache: shmstore.Cache, data: np.ndarray
) -> None:
    with shmstore.open(store_path, cache=cache) as store:
        handle = store.handle("contiguous")
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply(_children_views.try_to_write, (handle,)) == "ValueError"
    with handle.view("shared") as arr:
        np.testing.assert_array_equal(arr, data)


# -- a full cache ----------------------------------------------------------------


def test_auto_falls_back_to_memmap_or_memory_when_the_cache_is_full(
    store_path: Path, tmp_path: Path, data: np.ndarray
) -> None:
    tiny = shmstore.Cache(directory=SHM / f"shmstore-test-{uuid.uuid4().hex[:12]}", budget=4096)
    try:
        with shmstore.open(store_path, cache=tiny) as store:
            with store.view("contiguous", mode="auto") as arr:
                assert isinstance(arr, np.memmap)
                np.testing.assert_array_equal(arr, data)
            with store.view("chunked", mode="auto") as arr:
                np.testing.assert_array_equal(arr, data)
                assert not arr.flags.writeable
            with pytest.raises(shmstore.CacheFullError), store.view("contiguous", mode="shared"):
                pass
    finally:
        shutil.rmtree(tiny.directory, ignore_errors=True)


# -- loading straight into shared memory -----------------------------------------


@pytest.mark.parametrize("layout", ["contiguous", "gzip"])
def test_a_loader_private_memory_stays_small_next_to_a_256_mib_slice(
    tmp_path: Path, cache: shmstore.Cache, layout: str
) -> None:
    path = tmp_path / "big.h5"
    rows = np.arange(256 * 1024 * 1024 // 8, dtype="<f8").reshape(-1, 1024)  # 256 MiB
    with shmstore.open(path, "w") as store:
        if layout == "gzip":
            store.write(
                "big",
                rows,
                chunks=(256, 1024),
                compression={"compression": "gzip", "compression_opts": 1},
            )
        else:
            store.write("big", rows)
    del rows
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        growth, nbytes = pool.apply(
            _children_views.load_and_measure, (str(path), "big", str(cache.directory))
        )
    assert nbytes == 256 * 1024 * 1024
    assert growth < nbytes // 8, f"the loader's private memory grew by {growth} bytes"


def test_a_repeated_view_is_a_new_array_on_the_same_pages(
    store_path: Path, cache: shmstore.Cache, data: np.ndarray
) -> None:
    with shmstore.open(store_path, cache=cache) as store:
        handle = store.handle("contiguous", (10, 20))
    with handle.view("shared") as first:
        kept = first
    with handle.view("shared") as second:
        assert second is not kept
        assert np.shares_memory(second, kept)
        second.shape = (60,)  # reshaping one caller's array leaves the other's alone
    assert kept.shape == (10, 6)
    np.testing.assert_array_equal(kept, data[10:20])
    assert not kept.flags.writeable


def test_a_views_with_block_gives_the_array_and_lets_it_go_after(
    store_path: Path, cache: shmstore.Cache
) -> None:
    with shmstore.open(store_path, cache=cache) as store:
        context = store.handle("contiguous").view("shared")
    with context as array:
        assert array.shape == (2_000, 6)
    del array
    with pytest.raises(RuntimeError, match="entered once"), context:
        pass
