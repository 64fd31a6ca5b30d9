"""Invariant 10: a flipped byte in stored data is an IntegrityError, never a wrong value.

Every ``write`` and ``append`` records CRC32C checksums (per 1 MiB range of
contiguous and raw-file data, per stored chunk of chunked data) in a hidden
dataset its record names; loads into the cache, ``read`` and ``verify`` check
them (``docs/design.md``, "Checksums").  Blocks here are 16 pages, so most
ranges straddle a block's edge and the loader reads the rest of the range.
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import shmstore
from shmstore import IntegrityError

MIB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHMSTORE_BLOCK", str(16 * PAGE))


@pytest.fixture
def data() -> np.ndarray:
    """3 MiB and a bit: 4 ranges of checksums; rows of 24 bytes straddle range edges."""
    return np.arange(400_000 * 3, dtype="<f8").reshape(400_000, 3)


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x20]))


def _data_offset(path: Path, name: str) -> int:
    with h5py.File(path, "r") as f:
        return int(f[name].id.get_offset())


def _chunk(path: Path, name: str, index: int) -> Any:
    with h5py.File(path, "r") as f:
        return f[name].id.get_chunk_info(index)


def _raw_file(path: Path) -> Path:
    (raw,) = (path.parent / f"{path.name}.raw").iterdir()
    return raw


def _segments(cache: shmstore.Cache) -> list[Path]:
    return [p for p in cache.directory.iterdir() if p.suffix == ".seg"]


# -- what is recorded ---------------------------------------------------------------------


def test_write_records_a_checksum_per_mib_of_contiguous_data(
    store_path: Path, data: np.ndarray
) -> None:
    with shmstore.open(store_path, "w") as store:
        info = store.write("x", data)
    assert info.verified
    assert info.checksums is not None
    assert (info.checksums.per, info.checksums.range_nbytes) == ("range", MIB)
    assert info.checksums.count == -(-data.nbytes // MIB)


def test_write_records_a_checksum_per_stored_chunk(store_path: Path, data: np.ndarray) -> None:
    with shmstore.open(store_path, "w") as store:
        info = store.write("x", data, chunks=(10_000, 3), compression="gzip")
        with h5py.File(store_path, "r") as f:
            stored = f["x"].id.get_num_chunks()
    assert info.checksums is not None
    assert (info.checksums.per, info.checksums.count) == ("chunk", stored)


def test_the_checksums_are_hidden_from_the_datasets_listed(
    store_path: Path, data: np.ndarray
) -> None:
    with shmstore.open(store_path, "w") as store:
        store.write("x", data)
        assert store.names() == ["x"]
        assert ".shmstore_sums" not in store
        with pytest.raises(shmstore.ArgumentError, match="reserved"):
            store.write(".shmstore_sums/y", data)


def test_an_append_adds_checksums_and_leaves_those_of_earlier_rows_alone(
    store_path: Path, data: np.ndarray
) -> None:
    with shmstore.open(store_path, "w") as store:
        first = store.write("x", data[:1000], appendable=True)
        assert first.checksums is not None
        before = _sums_table(store_path, first.checksums.location)[: first.checksums.count]
        grown = store.append("x", data[1000:])
        assert grown.checksums is not None
        assert grown.checksums.location == first.checksums.location  # written in place
        after = _sums_table(store_path, grown.checksums.location)
        np.testing.assert_array_equal(after[: first.checksums.count], before)
        assert grown.checksums.count > first.checksums.count
        assert store.verify("x") == data.nbytes


def _sums_table(path: Path, location: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return np.asarray(f[location][()])


def test_appends_past_the_room_for_checksums_move_them_and_all_still_verify(
    store_path: Path,
) -> None:
    rows = np.arange(500, dtype="<f8").reshape(-1, 1)  # the table moves three times
    with shmstore.open(store_path, "w") as store:
        first = store.write("x", rows[:1], appendable=True)
        for i in range(1, len(rows)):  # one range per append: the room (64) runs out
            store.append("x", rows[i : i + 1])
        info = store.info("x")
        assert info.checksums is not None
        assert first.checksums is not None
        assert info.checksums.location != first.checksums.location
        assert info.checksums.count == len(rows)
        assert store.verify("x") == rows.nbytes
        np.testing.assert_array_equal(store.read("x"), rows)


def test_appends_to_a_chunked_dataset_sum_its_rewritten_last_chunk_again(
    store_path: Path, data: np.ndarray
) -> None:
    with shmstore.open(store_path, "w") as store:
        store.write("x", data[:1_500], chunks=(1_000, 3), appendable=True)
        store.append("x", data[1_500:2_700])
        assert store.verify("x") > 0
        np.testing.assert_array_equal(store.read("x"), data[:2_700])


def test_overwrite_and_delete_leave_no_checksums_behind(store_path: Path, data: np.ndarray) -> None:
    with shmstore.open(store_path, "w") as store:
        store.write("x", data)
        store.write("x", data[:10], overwrite=True)
        store.write("y", data, appendable=True)
        store.delete("y")
    with h5py.File(store_path, "r") as f:
        assert len(f[".shmstore_sums"]) == 1


# -- flipped bytes ---------------------------------------------------------------------------


def test_a_flipped_byte_in_contiguous_data_fails_a_shared_view_and_caches_nothing(
    store_path: Path, data: np.ndarray, cache: shmstore.Cache
) -> None:
    with shmstore.open(store_path, "w") as store:
        store.write("x", data)
    _flip(store_path, _data_offset(store_path, "x") + 2 * MIB + 5)
    with shmstore.open(store_path, cache=cache) as store:
        with pytest.raises(IntegrityError) as caught, store.view("x", mode="shared"):
            pass
        message = str(caught.value)
        assert "'x'" in message
        assert str(store_path) in message
        assert f"bytes {_data_offset(store_path, 'x') + 2 * MIB}:" in message
        assert f"rows {2 * MIB // 24}:" in message
        assert "shmstore seal" in message
        # The blocks before the damaged range may be loaded; none over it is.
        bad_row = (2 * MIB + 5) // 24
        with pytest.raises(IntegrityError), store.view("x", (bad_row, bad_row + 1), "shared"):
            pass


def test_a_flipped_byte_fails_read_and_verify_but_not_rows_away_from_it(
    store_path: Path, data: np.ndarray
) -> None:
    with shmstore.open(store_path, "w") as store:
        store.write("x", data)
    _flip(store_path, _data_offset(store_path, "x") + 3 * MIB + 100)
    with shmstore.open(store_path) as store:
        with pytest.raises(IntegrityError, match="rows 131072:"):
            store.read("x")
        with pytest.raises(IntegrityError):
            store.verify("x", (140_000, 140_010))
        np.testing.assert_array_equal(store.read("x", (0, 1_000)), data[:1_000])
        with store.view("x", (0, 1_000), mode="shared") as arr:
            np.testing.assert_array_equal(arr, data[:1_000])
        assert store.verify("x", (0, 1_000)) == 1_000 * 24  # the bytes of the rows asked for


def test_a_flipped_byte_in_a_raw_file_is_an_integrity_error(
    store_path: Path, data: np.ndarray
) -> None:
    with shmstore.open(store_path, "w") as store:
        store.write("x", data[:100_000], appendable=True)
        store.append("x", data[100_000:])
    _flip(_raw_file(store_path), 2_500_000)
    with shmstore.open(store_path) as store:
        with pytest.raises(IntegrityError, match=r"\.raw"):
            store.read("x")
        with pytest.raises(IntegrityError), store.view("x", mode="shared"):
            pass


@pytest.mark.parametrize("compression", [None, "gzip"], ids=["uncompressed", "gzip"])
def test_a_flipped_byte_in_a_stored_chunk_is_an_integrity_error(
    store_path: Path, data: np.ndarray, compression: str | None
) -> None:
    with shmstore.open(store_path, "w") as store:
        store.write("x", data, chunks=(10_000, 3), compression=compression)
    chunk = _chunk(store_path, "x", 7)
    _flip(store_path, chunk.byte_offset + chunk.size // 2)
    with shmstore.open(store_path) as store:
        for attempt in (
            lambda: store.read("x"),
            lambda: store.verify("x"),
            lambda: store.view("x", mode="shared").__enter__(),
        ):
            with pytest.raises(IntegrityError, match="the chunk of rows 70000:80000"):
                attempt()
        np.testing.assert_array_equal(store.read("x", (0, 70_000)), data[:70_000])


def test_a_chunk_hdf5_decodes_itself_is_checked_before_hdf5_reads_it(
    store_path: Path, data: np.ndarray
) -> None:
    """lzf is decoded by HDF5, not by shmstore: the stored chunk is checked first."""
    with shmstore.open(store_path, "w") as store:
        store.write("x", data, chunks=(10_000, 3), compression="lzf")
    chunk = _chunk(store_path, "x", 3)
    _flip(store_path, chunk.byte_offset + chunk.size - 1)
    with shmstore.open(store_path) as store:
        with pytest.raises(IntegrityError), store.view("x", mode="shared"):
            pass
        with pytest.raises(IntegrityError):
            store.read("x", (30_000, 30_001))


def test_a_worker_handle_view_of_damaged_rows_raises_and_is_never_served(
    store_path: Path, data: np.ndarray, cache: shmstore.Cache
) -> None:
    with shmstore.open(store_path, "w") as store:
        store.write("x", data)
    _flip(store_path, _data_offset(store_path, "x") + 10)
    with shmstore.open(store_path, cache=cache) as store:
        handle = pickle.loads(pickle.dumps(store.handle("x", (0, 100))))
    for _ in range(2):  # nothing was published by the first attempt
        with pytest.raises(IntegrityError), handle.view():
            pass
    assert handle.cached() is None


def test_damaged_checksums_are_an_error_not_unverified_data(
    store_path: Path, data: np.ndarray
) -> None:
    with shmstore.open(store_path, "w") as store:
        info = store.write("x", data)
    assert info.checksums is not None
    _flip(store_path, _data_offset(store_path, info.checksums.location) + 16 + 3)  # a key
    with shmstore.open(store_path) as store, pytest.raises(IntegrityError, match="damaged"):
        store.read("x")


def test_integrity_error_is_an_invalid_store_error_and_pickles() -> None:
    err = IntegrityError("rows 0:1 of 'x' do not match")
    assert isinstance(err, shmstore.InvalidStoreError)
    assert isinstance(err, OSError)
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is IntegrityError
    assert str(again) == str(err)


# -- no false alarm ----------------------------------------------------------------------------


@given(
    width=st.integers(1, 700),
    rows=st.integers(1, 3_000),
    layout=st.sampled_from(["contiguous", "appendable", "chunked"]),
    windows=st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=4),
    pieces=st.integers(1, 4),
)
def test_intact_data_always_pass_their_checksums_through_every_path(
    tmp_path_factory: pytest.TempPathFactory,
    *,
    width: int,
    rows: int,
    layout: str,
    windows: list[tuple[float, float]],
    pieces: int,
) -> None:
    """Rows of 1 to 700 bytes over ranges, blocks and appends that cut rows anywhere."""
    directory = tmp_path_factory.mktemp("intact")
    path = directory / "x.h5"
    data = np.random.default_rng(rows * width).integers(0, 255, (rows, width), dtype="u1")
    data = data.view("<i8") if width % 8 == 0 else data
    with shmstore.open(path, "w") as store:
        if layout == "appendable":
            cuts = np.linspace(0, rows, pieces + 1).astype(int)
            store.write("x", data[: cuts[1]], appendable=True)
            for lo, hi in itertools.pairwise(cuts[1:]):
                store.append("x", data[lo:hi])
        else:
            store.write(
                "x",
                data,
                chunks=(max(1, rows // 3), data.shape[1]) if layout == "chunked" else None,
            )
    cache = shmstore.Cache(directory / "cache")
    with shmstore.open(path, cache=cache) as store:
        assert store.info("x").verified
        assert store.verify("x") > 0
        for a, b in windows:
            lo, hi = sorted((int(a * rows), int(b * rows)))
            np.testing.assert_array_equal(store.read("x", (lo, hi)), data[lo:hi])
            with store.view("x", (lo, hi), mode="shared") as arr:
                np.testing.assert_array_equal(arr, data[lo:hi])
    cache.clear()


# -- datasets without checksums, and seal -------------------------------------------------------


@pytest.fixture
def foreign(tmp_path: Path, data: np.ndarray) -> Path:
    path = tmp_path / "foreign.h5"
    with h5py.File(path, "w") as f:
        f["c"] = data
        f.create_dataset("z", data=data, chunks=(10_000, 3), compression="gzip")
    return path


def test_a_file_of_another_tool_loads_unverified_and_says_so(
    foreign: Path, data: np.ndarray
) -> None:
    with shmstore.open(foreign) as store:
        assert not store.info("c").verified
        assert store.verify("c") == 0
        with store.view("c", mode="shared") as arr:
            np.testing.assert_array_equal(arr, data)


def test_seal_records_checksums_of_data_already_there_and_they_are_checked(
    foreign: Path, data: np.ndarray
) -> None:
    with shmstore.open(foreign, "a") as store:
        sealed = store.seal()
        assert sorted(info.name for info in sealed) == ["c", "z"]
        assert all(info.verified for info in sealed)
        assert store.verify("c") == data.nbytes
    _flip(foreign, _data_offset(foreign, "c") + 77)
    with shmstore.open(foreign) as store:
        with pytest.raises(IntegrityError):
            store.read("c")
        np.testing.assert_array_equal(store.read("z"), data)


def test_seal_after_a_change_by_another_tool_serves_the_new_values(
    store_path: Path, data: np.ndarray
) -> None:
    with shmstore.open(store_path, "w") as store:
        store.write("x", data)
    with h5py.File(store_path, "r+") as f:
        f["x"][5] = [-1.0, -2.0, -3.0]
    with shmstore.open(store_path, "a") as store:
        with pytest.raises(IntegrityError, match="shmstore seal"):
            store.read("x", (5, 6))
        store.seal("x")
        np.testing.assert_array_equal(store.read("x", (5, 6)), [[-1.0, -2.0, -3.0]])


def test_seal_refuses_a_read_only_store_and_names_it_needs_writing(foreign: Path) -> None:
    with shmstore.open(foreign) as store, pytest.raises(shmstore.ReadOnlyError, match="seal"):
        store.seal("c")


def test_seal_of_an_unknown_name_is_array_not_found(foreign: Path) -> None:
    with shmstore.open(foreign, "a") as store, pytest.raises(shmstore.ArrayNotFoundError):
        store.seal("nope")


def _served(store: shmstore.Store, name: str) -> bool:
    try:
        store.info(name)
    except shmstore.ShmStoreError:
        return False
    return True


def test_a_format_1_store_loads_unverified_and_can_be_sealed(tmp_path: Path) -> None:
    source = Path(__file__).resolve().parents[1] / "data" / "format1"
    for item in source.iterdir():
        target = tmp_path / item.name
        if item.is_dir():
            target.mkdir()
            for inner in item.iterdir():
                (target / inner.name).write_bytes(inner.read_bytes())
        else:
            target.write_bytes(item.read_bytes())
    path = tmp_path / "format1.h5"
    with shmstore.open(path, "a") as store:
        names = [n for n in store.names() if _served(store, n)]
        assert names
        assert not any(store.info(n).verified for n in names)
        store.seal(*names)
        assert all(store.info(n).verified for n in names)
        assert all(store.verify(n) >= 0 for n in names)


def test_an_interrupted_append_keeps_its_checksums_and_later_appends_extend_them(
    store_path: Path, data: np.ndarray
) -> None:
    """A writer killed after the extent grew, before the record: its rows and checksums stay."""
    with shmstore.open(store_path, "w") as store:
        store.write("x", data[:100], appendable=True)
    with h5py.File(store_path, "r") as f:
        old_records = {k: f["x"].attrs[k] for k in ("shmstore_record", "shmstore_record_backup")}
    with shmstore.open(store_path, "a") as store:
        store.append("x", data[100:200])
    with h5py.File(store_path, "r+") as f:  # the record as it was before that append
        for key, value in old_records.items():
            f["x"].attrs[key] = value
    with shmstore.open(store_path, "a") as store:
        assert store.info("x").rows == 200  # kept, and recorded with its checksums
        store.append("x", data[200:300])
        assert store.verify("x") == 300 * 24
        np.testing.assert_array_equal(store.read("x"), data[:300])


def test_seal_names_a_dataset_whose_bytes_lie_in_several_raw_files(tmp_path: Path) -> None:
    path = tmp_path / "multi.h5"
    for part in ("a.bin", "b.bin"):
        np.arange(50, dtype="<f8").tofile(tmp_path / part)
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "x", shape=(100,), dtype="<f8", external=[("a.bin", 0, 400), ("b.bin", 0, 400)]
        )
        f["y"] = np.ones(3)
    with shmstore.open(path, "a") as store:
        with pytest.raises(shmstore.LayoutError, match="2 external files"):
            store.seal("x")
        assert [info.name for info in store.seal()] == ["y"]  # x is skipped


@pytest.mark.parametrize("chunks", [None, (10_000, 3)], ids=["contiguous", "chunked"])
def test_a_store_open_across_a_rename_over_its_file_checks_the_file_it_reads(
    tmp_path: Path, data: np.ndarray, chunks: tuple[int, int] | None
) -> None:
    """read checks the bytes of the file it opened, not of the one now at its path."""
    path = tmp_path / "x.h5"
    with shmstore.open(path, "w") as store:
        store.write("x", data, chunks=chunks)
    (tmp_path / "new").mkdir()
    with shmstore.open(tmp_path / "new" / "x.h5", "w") as store:
        store.write("pad", np.ones(12_345))  # moves "x" elsewhere in the new file
        store.write("x", -data, chunks=chunks)
    with shmstore.open(path) as old:
        old.info("x")
        os.replace(tmp_path / "new" / "x.h5", path)
        np.testing.assert_array_equal(old.read("x", (0, 50_000)), data[:50_000])


def test_a_chunk_stored_after_the_checksums_were_recorded_is_refused(tmp_path: Path) -> None:
    """A chunk another tool wrote later has no checksum: refused, never served unchecked.

    (The digest of the chunk index sees it first; a chunk without a checksum
    is an IntegrityError of its own behind that.)
    """
    path = tmp_path / "sparse.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", shape=(1_000, 4), dtype="<f8", chunks=(100, 4))
        f["x"][:100] = 1.0  # only the first chunk is stored
    with shmstore.open(path, "a") as store:
        store.seal("x")
    with h5py.File(path, "r+") as f:
        f["x"][500:600] = 2.0  # a chunk that was never stored before
    with shmstore.open(path) as store, pytest.raises(shmstore.InvalidStoreError, match=r"'x'"):
        store.read("x", (500, 600))


def test_a_stored_chunk_without_a_checksum_is_an_integrity_error(tmp_path: Path) -> None:
    """A table of checksums that does not cover the dataset's chunks never lets one through."""
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.ones((1_000, 4)), chunks=(100, 4))
        f.create_dataset("y", shape=(2_000, 4), dtype="<f8", chunks=(100, 4))
        f["y"][1_000:] = 2.0  # chunks 10 to 19 stored, 0 to 9 not
    with shmstore.open(path, "a") as store:
        store.seal()
        other = store.info("y").checksums
    assert other is not None
    with h5py.File(path, "r+") as f:  # x's record now names y's table
        for key in ("shmstore_record", "shmstore_record_backup"):
            record = json.loads(bytes(f["x"].attrs[key]).decode())
            record["checksums"]["location"] = other.location
            f["x"].attrs[key] = np.bytes_(json.dumps(record).encode())
    with shmstore.open(path) as store, pytest.raises(IntegrityError, match="has no checksum"):
        store.read("x", (0, 100))
