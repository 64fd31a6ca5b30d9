"""How a slice gets into shared memory: kernel copies of contiguous data, chunks decoded in threads.

Every path must give exactly the bytes h5py reads; the fast paths must be
the ones taken where they apply, and damage must be an error, not a
published segment.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import shmstore
from shmstore._chunk_index import stored_chunks
from shmstore._fill import ENV_THREADS, worker_count
from shmstore._load import chunk_filler


def _shared_equals_h5py(path: Path, name: str, cache: shmstore.Cache, rows: Any = None) -> None:
    with shmstore.open(path, cache=cache) as store:
        expected = store.read(name, rows)
        with store.view(name, rows, mode="shared") as shared:
            assert shared.dtype == expected.dtype
            assert shared.shape == expected.shape
            assert shared.tobytes() == expected.tobytes()


def _takes_the_decoding_path(path: Path, name: str) -> bool:
    with shmstore.open(path) as store, h5py.File(path, "r") as f:
        info = store.info(name)
        return chunk_filler(f[name], info, 0, path, name) is not None


@given(
    shape=st.tuples(st.integers(1, 40), st.integers(1, 6)),
    chunk=st.tuples(st.integers(1, 16), st.integers(1, 6)),
    dtype=st.sampled_from(["<f4", ">f8", "<i2", ">u4", "u1", "?", "<c8"]),
    shuffle=st.booleans(),
    written=st.integers(0, 40),
    rows=st.tuples(st.integers(0, 40), st.integers(0, 40)),
)
def test_chunks_decoded_in_threads_give_the_bytes_hdf5_gives(  # noqa: PLR0917 - hypothesis
    tmp_path_factory: pytest.TempPathFactory,
    shape: tuple[int, int],
    chunk: tuple[int, int],
    dtype: str,
    shuffle: bool,
    written: int,
    rows: tuple[int, int],
) -> None:
    path = tmp_path_factory.mktemp("chunks") / "c.h5"
    chunk = (min(chunk[0], shape[0]), min(chunk[1], shape[1]))
    values = (np.arange(np.prod(shape)) % 251).astype(dtype).reshape(shape)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset(
            "x",
            shape=shape,
            dtype=dtype,
            chunks=chunk,
            compression="gzip",
            shuffle=shuffle,
            fillvalue=np.ones((), dtype)[()],
        )
        if written:  # the chunks past it are never written: HDF5 reads the fill value
            ds[: min(written, shape[0])] = values[:written]
    start, stop = sorted(min(r, shape[0]) for r in rows)
    cache = shmstore.Cache(directory=Path("/dev/shm") / f"shmstore-lp-{os.getpid()}", budget="64M")
    try:
        assert _takes_the_decoding_path(path, "x")
        _shared_equals_h5py(path, "x", cache, (start, stop))
    finally:
        shutil.rmtree(cache.directory, ignore_errors=True)  # lock files too: leave /dev/shm clean


def test_chunks_stored_with_a_filter_skipped_are_decoded_without_it(
    tmp_path: Path, cache: shmstore.Cache
) -> None:
    path = tmp_path / "c.h5"
    values = np.arange(64 * 128, dtype="<i4").reshape(64, 128)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("x", data=values, chunks=(8, 128), compression="gzip")
        # HDF5 skips an optional filter that fails on a chunk, and marks the chunk so.
        ds.id.write_direct_chunk((16, 0), values[16:24].tobytes(), filter_mask=1)
        masks = [c.filter_mask for c in stored_chunks(ds.id)]  # chunk_iter is h5py >= 3.9
    assert sorted(masks)[-1] == 1
    assert _takes_the_decoding_path(path, "x")
    _shared_equals_h5py(path, "x", cache)


def test_zstd_chunks_are_decoded_by_shmstore(tmp_path: Path, cache: shmstore.Cache) -> None:
    path = tmp_path / "z.h5"
    values = np.sin(np.arange(200_000, dtype=np.float32) / 50).reshape(-1, 100)
    with h5py.File(path, "w") as f:
        f.create_dataset("z", data=values, chunks=(300, 100), shuffle=True, **hdf5plugin.Zstd())
    assert _takes_the_decoding_path(path, "z")
    _shared_equals_h5py(path, "z", cache, (17, 1999))


@pytest.mark.parametrize(
    "options",
    [
        {"compression": "lzf"},
        {"compression": "gzip", "fletcher32": True},
        {"scaleoffset": 2},
    ],
    ids=["lzf", "fletcher32", "scaleoffset"],
)
def test_filters_shmstore_does_not_decode_go_through_hdf5(
    tmp_path: Path, cache: shmstore.Cache, options: dict[str, Any]
) -> None:
    path = tmp_path / "c.h5"
    values = np.arange(3000, dtype=np.float64).reshape(-1, 3) / 7
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=values, chunks=(50, 3), **options)
    assert not _takes_the_decoding_path(path, "x")
    _shared_equals_h5py(path, "x", cache, (5, 777))


def test_compound_chunks_go_through_hdf5(tmp_path: Path, cache: shmstore.Cache) -> None:
    path = tmp_path / "c.h5"
    values = np.zeros(500, dtype=[("a", "<i4"), ("b", ">f8")])
    values["a"] = np.arange(500)
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=values, chunks=(64,), compression="gzip")
    assert not _takes_the_decoding_path(path, "x")
    _shared_equals_h5py(path, "x", cache)


def test_a_damaged_chunk_is_an_error_and_nothing_is_published(
    tmp_path: Path, cache: shmstore.Cache
) -> None:
    path = tmp_path / "c.h5"
    values = np.arange(40_000, dtype=np.float32).reshape(-1, 100)
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=values, chunks=(40, 100), compression="gzip", shuffle=True)
        stored = stored_chunks(f["x"].id)
    victim = stored[len(stored) // 2]
    with open(path, "r+b") as f:
        f.seek(victim.byte_offset + victim.size // 2)
        f.write(b"\xff" * 16)
    with (
        shmstore.open(path, cache=cache) as store,
        pytest.raises(shmstore.InvalidStoreError, match=r"cannot be decoded|decodes to"),
    ):
        store.view("x", mode="shared").__enter__()
    assert cache.entries() == []
    assert not list(cache.directory.glob("*.tmp"))


@pytest.mark.parametrize("threads", ["1", "3"])
def test_a_large_contiguous_slice_is_copied_whole_by_any_number_of_threads(
    tmp_path: Path, cache: shmstore.Cache, monkeypatch: pytest.MonkeyPatch, threads: str
) -> None:
    monkeypatch.setenv(ENV_THREADS, threads)
    values = np.random.default_rng(2).random((40_000, 64))  # 20 MiB: split between threads
    path = tmp_path / "c.h5"
    with shmstore.open(path, "w") as store:
        store.write("c", values)
        store.write("e", values, appendable=True)
    for name in ("c", "e"):
        _shared_equals_h5py(path, name, cache, (123, 39_999))


def test_a_truncated_raw_file_is_an_error_and_nothing_is_published(
    tmp_path: Path, cache: shmstore.Cache
) -> None:
    path = tmp_path / "c.h5"
    with shmstore.open(path, "w") as store:
        store.write("e", np.ones((1000, 8)), appendable=True)
        (raw,) = store.source_files("e")[1:]
    os.truncate(raw, 4000)
    with shmstore.open(path, cache=cache) as store, pytest.raises(shmstore.InvalidStoreError):
        store.view("e", mode="shared").__enter__()
    assert cache.entries() == []


def test_the_thread_count_follows_shmstore_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_THREADS, "5")
    assert worker_count() == 5
    monkeypatch.delenv(ENV_THREADS)
    assert 1 <= worker_count() <= min(8, len(os.sched_getaffinity(0)))
    for bad in ("0", "-2", "many"):
        monkeypatch.setenv(ENV_THREADS, bad)
        with pytest.raises(shmstore.ArgumentError, match=ENV_THREADS):
            worker_count()
