"""Damage in HDF5 headers that HDF5 itself does not notice is refused, never read as data.

The HDF5 1.6 file format shmstore writes keeps no checksums: a flipped byte
in an object header or a chunk index is read as it is.  Each test here damages
one field the fuzzing of ``reliability/`` found HDF5 serving silently (or
crashing on), at its exact place in the file, and checks that shmstore
refuses it with a ``ShmStoreError`` (or serves the right values), in a child
process where a crash of the interpreter would show.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest

import shmstore

# HDF5 object header messages (file format spec, section IV.A.2).
DATATYPE, FILL_VALUE, LAYOUT, FILTERS = 0x0003, 0x0005, 0x0008, 0x000B


def messages(path: Path, dataset: str) -> dict[int, tuple[int, int]]:
    """Type -> (file offset of the message's data, its size) in *dataset*'s object header.

    A version 1 header (what HDF5 1.6 writes): 16 bytes of prefix, then
    messages of 8 bytes of header (type, size, flags) and their data.
    """
    with h5py.File(path, "r") as file:
        info = h5py.h5o.get_info(file[dataset].id)
        address, total = info.addr, info.hdr.space.total
    content = path.read_bytes()
    assert content[address] == 1, "not a version 1 object header"
    found: dict[int, tuple[int, int]] = {}
    position, end = address + 16, address + 16 + total
    while position + 8 <= end:
        kind, size = struct.unpack_from("<HH", content, position)
        found.setdefault(kind, (position + 8, size))
        position += 8 + size
    return found


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def run_child(code: str, cache_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run *code* in a fresh interpreter; a crash shows as a negative return code."""
    env_code = f"import os; os.environ['SHMSTORE_DIR'] = {str(cache_dir)!r}\n"
    return subprocess.run(
        [sys.executable, "-c", env_code + textwrap.dedent(code)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def first_use(path: Path, name: str = "x") -> None:
    """Open the store and use dataset *name*: its header is checked against its record then."""
    with shmstore.open(path) as store:
        store.info(name)


def test_a_moved_data_address_is_refused_not_read_from_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    data = np.arange(400, dtype="<f8").reshape(100, 4)
    with shmstore.open(path, "w") as store:
        store.write("x", data)
        store.write("y", data * 2)
    start, _ = messages(path, "x")[LAYOUT]
    # Layout message version 3: version, class (1 = contiguous), then the address.
    assert path.read_bytes()[start : start + 2] == b"\x03\x01"
    (address,) = struct.unpack_from("<Q", path.read_bytes(), start + 2)
    patch(path, start + 2, struct.pack("<Q", address - 64))
    with pytest.raises(shmstore.ManifestError, match=r"begin at byte \d+.*header says"):
        first_use(path)


def int64_store(tmp_path: Path) -> tuple[Path, int]:
    """A store of one int64 dataset ``"x"``, and where its datatype message's data begins.

    The message: class and version (1 byte), bit field (3), size in bytes (4);
    then the fixed-point properties: bit offset (2), precision in bits (2).
    """
    path = tmp_path / "s.h5"
    with shmstore.open(path, "w") as store:
        store.write("x", np.arange(-50, 50, dtype="<i8").reshape(25, 4))
    start, _ = messages(path, "x")[DATATYPE]
    return path, start


def test_a_changed_integer_precision_is_refused_not_converted(tmp_path: Path) -> None:
    path, start = int64_store(tmp_path)
    # Fixed-point properties follow 8 bytes of class, bit field and size: offset, precision.
    patch(path, start + 10, struct.pack("<H", 60))
    with h5py.File(path, "r") as file:
        assert file["x"].dtype == np.dtype("<i8")  # h5py still says int64: HDF5 would convert
    with pytest.raises(shmstore.ManifestError, match="HDF5 datatype is not the one"):
        first_use(path)


def test_a_datatype_hdf5_refuses_to_open_is_a_shmstore_error_naming_the_dataset(
    tmp_path: Path,
) -> None:
    path, start = int64_store(tmp_path)
    patch(path, start + 4, struct.pack("<I", 655_362))  # a size of 655362 bytes
    with pytest.raises(shmstore.ShmStoreError, match="'x'"):
        first_use(path)


def test_a_datatype_numpy_cannot_represent_is_a_shmstore_error_naming_the_dataset(
    tmp_path: Path,
) -> None:
    path, start = int64_store(tmp_path)
    # A 3-byte integer of 24 bits: valid HDF5, but h5py has no numpy dtype for it.
    patch(path, start + 4, struct.pack("<I", 3))
    patch(path, start + 10, struct.pack("<H", 24))
    with pytest.raises(shmstore.ShmStoreError, match=r"'x'.*numpy cannot represent"):
        first_use(path)


def test_a_shuffle_filter_for_another_element_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    data = np.arange(800, dtype="<f4").reshape(100, 8)
    with shmstore.open(path, "w") as store:
        store.write("x", data, compression={"compression": "gzip", "shuffle": True})
    start, size = messages(path, "x")[FILTERS]
    content = path.read_bytes()
    # Filter 2 (shuffle): id, name length 8, flags, one client value, its
    # name, then the value: the element size, 4.
    name = content.index(b"shuffle\x00", start, start + size)
    assert struct.unpack_from("<HHHH", content, name - 8) == (2, 8, 1, 1)
    assert struct.unpack_from("<I", content, name + 8) == (4,)
    patch(path, name + 8, struct.pack("<I", 8))
    with pytest.raises(shmstore.ManifestError, match="shuffle filter is set for 8-byte"):
        first_use(path)


def _chunk_address(path: Path, dataset: str, row: int) -> int:
    with h5py.File(path, "r") as file:
        return int(file[dataset].id.get_chunk_info_by_coord((row, 0)).byte_offset)


def _move_chunk(path: Path, row: int, by: int) -> None:
    address = _chunk_address(path, "x", row)
    content = path.read_bytes()
    where = content.index(struct.pack("<Q", address))  # the pointer in the B-tree leaf
    patch(path, where, struct.pack("<Q", address + by))


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_a_chunk_index_pointing_elsewhere_is_refused(
    tmp_path: Path, cache_dir: Path, compression: str | None
) -> None:
    path = tmp_path / "s.h5"
    with shmstore.open(path, "w") as store:
        store.write(
            "x",
            np.arange(2000, dtype="<i2").reshape(200, 10),
            chunks=(16, 10),
            compression=compression,
        )
    _move_chunk(path, 192, 40)  # the last chunk: HDF5 reads 40 bytes later without an error
    with shmstore.open(path, cache=shmstore.Cache(directory=cache_dir)) as store:
        with pytest.raises(shmstore.InvalidStoreError, match="chunks are not where shmstore"):
            store.read("x", (190, 200))
        with pytest.raises(shmstore.InvalidStoreError, match="chunk index of 'x'"):
            store.view("x", (190, 200), mode="shared").__enter__()


def test_a_chunk_of_another_tools_file_overlapping_the_next_is_refused(
    tmp_path: Path, cache_dir: Path
) -> None:
    path = tmp_path / "foreign.h5"
    data = np.arange(2000, dtype="<i2").reshape(200, 10)
    with h5py.File(path, "w") as file:
        file.create_dataset("x", data=data, chunks=(16, 10))
    _move_chunk(path, 0, 40)
    with (
        shmstore.open(path, cache=shmstore.Cache(directory=cache_dir)) as store,
        pytest.raises(shmstore.InvalidStoreError, match="two chunks share the bytes"),
    ):
        store.read("x")


def test_a_damaged_chunk_key_is_refused_not_read_as_fill_values(
    tmp_path: Path, cache_dir: Path
) -> None:
    path = tmp_path / "s.h5"
    data = np.arange(2000, dtype="<f4").reshape(200, 10)
    with shmstore.open(path, "w") as store:
        store.write("x", data, chunks=(16, 10), compression="gzip")
    with h5py.File(path, "r") as file:
        size = file["x"].id.get_chunk_info_by_coord((176, 0)).size
    # The B-tree key of chunk (176, 0): size, filter mask, then one offset per
    # dimension and a last one (the element's) that is always 0.
    key = struct.pack("<IIQQQ", size, 0, 176, 0, 0)
    content = path.read_bytes()
    assert content.count(key) == 1
    patch(path, content.index(key) + 24, struct.pack("<Q", 240))
    with h5py.File(path, "r") as file:  # HDF5 alone: the rows silently read as zeros
        assert not file["x"][176:192].any()
    with shmstore.open(path, cache=shmstore.Cache(directory=cache_dir)) as store:
        with pytest.raises(shmstore.InvalidStoreError, match="HDF5's lookup misses it"):
            store.read("x", (170, 180))
        np.testing.assert_array_equal(store.read("x", (0, 176)), data[:176])
        with store.view("x", (170, 180), mode="shared") as view:  # decoded from the listing
            np.testing.assert_array_equal(view, data[170:180])


def test_a_damaged_fill_value_does_not_crash_a_load(tmp_path: Path, cache_dir: Path) -> None:
    path = tmp_path / "s.h5"
    data = np.arange(2560, dtype="<u4").reshape(160, 16)
    with shmstore.open(path, "w") as store:
        store.write("x", data, chunks=(20, 16), compression=hdf5plugin.Zstd())
    start, _ = messages(path, "x")[FILL_VALUE]
    # The fill value's size, 3.7 GB for a 4-byte type: h5py's Dataset.fillvalue
    # segfaults on it (HDF5 copies that many bytes).
    patch(path, start + 4, struct.pack("<I", 0xDE000000))
    result = run_child(
        f"""
        import numpy as np, shmstore
        with shmstore.open({str(path)!r}) as store:
            try:
                with store.view("x", mode="shared") as view:
                    assert (view == np.arange(2560, dtype="<u4").reshape(160, 16)).all()
                print("served")
            except shmstore.ShmStoreError as err:
                print("refused", type(err).__name__)
        """,
        cache_dir,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[0] in ("served", "refused")


def test_a_store_compressed_by_an_hdf5plugin_filter_reads_without_importing_it(
    tmp_path: Path, cache_dir: Path
) -> None:
    path = tmp_path / "s.h5"
    with shmstore.open(path, "w") as store:
        store.write("x", np.arange(100.0).reshape(25, 4), compression=hdf5plugin.Zstd())
    result = run_child(
        f"""
        import sys, shmstore
        assert "hdf5plugin" not in sys.modules
        with shmstore.open({str(path)!r}) as store:
            print(store.read("x").sum())
        """,
        cache_dir,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout) == float(np.arange(100.0).sum())


def test_a_missing_compression_filter_says_what_to_install(tmp_path: Path, cache_dir: Path) -> None:
    path = tmp_path / "s.h5"
    with shmstore.open(path, "w") as store:
        store.write("x", np.arange(100.0).reshape(25, 4), compression=hdf5plugin.Zstd())
    result = run_child(
        f"""
        import sys, shmstore
        sys.modules["hdf5plugin"] = None  # as if it were not installed
        with shmstore.open({str(path)!r}) as store:
            try:
                store.read("x")
            except shmstore.InvalidStoreError as err:
                print(err)
        """,
        cache_dir,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "'zstd' (filter id 32015)" in result.stdout
    assert "pip install hdf5plugin" in result.stdout
