"""Files written by other tools: an inferred manifest, every servable dataset served.

The file is written with plain h5py, as a user's other tools would, and
holds what such files hold: nested groups, big-endian and compound data,
compression, a scalar, and datasets shmstore cannot serve (variable-length
strings, references, a null dataspace), which must not stop it opening.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import shmstore

BIG_ENDIAN = np.arange(24, dtype=">i4").reshape(12, 2)
COMPOUND = np.array(
    [(1.5, (1, 2, 3), b"ab"), (-2.0, (4, 5, 6), b"cd"), (np.inf, (0, 0, 7), b"")],
    dtype=[("t", ">f8"), ("xyz", "<i2", (3,)), ("tag", "S2")],
)
GZIPPED = np.linspace(0, 1, 500).reshape(100, 5)
GROWABLE = np.arange(6, dtype="<i8").reshape(3, 2)
COMPACT = np.arange(4, dtype="<i4")
CHUNKED_3D = np.arange(2 * 3 * 4, dtype="<u2").reshape(2, 3, 4)

SERVED: dict[str, tuple[np.ndarray, str]] = {
    "group/sub/big_endian": (BIG_ENDIAN, "contiguous"),
    "group/compound": (COMPOUND, "contiguous"),
    "gzipped": (GZIPPED, "chunked"),
    "growable": (GROWABLE, "chunked"),
    "compact": (COMPACT, "compact"),
    "group/chunked 3d": (CHUNKED_3D, "chunked"),
    "fixed_utf8": (np.array([b"caf\xc3\xa9", b"tea"], dtype="S5"), "contiguous"),
    "enum": (np.array([0, 1, 1, 0], dtype="<i1"), "contiguous"),
    "group/opaque": (np.array([b"abcd"] * 3).view("V4"), "contiguous"),
    # h5py's own way to store datetimes: opaque data tagged "NUMPY:<M8[s]"
    "h5py_datetimes": (np.array(["2026-01-01T00:00:00", "1970-01-01"], dtype="<M8[s]"), "chunked"),
}
UNSUPPORTED = {
    "text": "variable-length strings",
    "refs": "HDF5 references",
    "nothing": "null dataspace",
    "bad_tag": "numpy cannot represent",
    "array_type": "HDF5 array type",
}


def write_foreign(path: Path, **file_options: Any) -> Path:
    """A file as another tool writes it: plain h5py, no manifest."""
    with h5py.File(path, "w", **file_options) as file:
        file.create_dataset("group/sub/big_endian", data=BIG_ENDIAN)
        file.create_dataset("group/compound", data=COMPOUND)
        file.create_dataset("gzipped", data=GZIPPED, compression="gzip", shuffle=True)
        file.create_dataset("growable", data=GROWABLE, maxshape=(None, 2), chunks=(2, 2))
        file.create_dataset("group/chunked 3d", data=CHUNKED_3D, chunks=(1, 3, 2))
        utf8 = file.create_dataset("fixed_utf8", shape=(2,), dtype=h5py.string_dtype("utf-8", 5))
        # numpy's "S" is ASCII to HDF5: write the bytes as the file's own UTF-8 type
        utf8.id.write(h5py.h5s.ALL, h5py.h5s.ALL, SERVED["fixed_utf8"][0], utf8.id.get_type())
        file.create_dataset(
            "enum",
            data=SERVED["enum"][0],
            dtype=h5py.enum_dtype({"OFF": 0, "ON": 1}, basetype="i1"),
        )
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.COMPACT)
        space = h5py.h5s.create_simple(COMPACT.shape)
        h5py.h5d.create(file.id, b"compact", h5py.h5t.STD_I32LE, space, dcpl=dcpl)
        file["compact"][...] = COMPACT
        file.create_dataset("scalar", data=2.5)
        file.create_dataset("unwritten", shape=(5, 2), dtype="<f4", fillvalue=-1.0)
        file.create_dataset("text", data=["a", "bb"], dtype=h5py.string_dtype())
        file.create_dataset("refs", data=[file["gzipped"].ref], dtype=h5py.ref_dtype)
        file.create_dataset("nothing", data=h5py.Empty("f4"))
        file.create_dataset("group/opaque", data=SERVED["group/opaque"][0])
        datetimes = SERVED["h5py_datetimes"][0]
        file.create_dataset(
            "h5py_datetimes",
            data=datetimes.astype(h5py.opaque_dtype(datetimes.dtype)),
            chunks=(1,),
            compression="gzip",
        )
        opaque = h5py.h5t.create(h5py.h5t.OPAQUE, 4)
        opaque.set_tag(b"NUMPY:not-a-dtype")
        h5py.h5d.create(file.id, b"bad_tag", opaque, h5py.h5s.create_simple((3,)))
        file.create_dataset("array_type", shape=(3,), dtype=np.dtype(("<i4", (2,))))
        file.attrs["title"] = "written by another tool"
    return path


@pytest.fixture
def foreign(tmp_path: Path) -> Path:
    return write_foreign(tmp_path / "foreign.h5")


def test_a_file_without_manifest_opens_with_an_inferred_one(foreign: Path) -> None:
    with shmstore.open(foreign) as store:
        assert store.manifest.inferred is True
        assert store.format_version == 0
        assert set(store.manifest.arrays) == {*SERVED, "scalar", "unwritten"}


def test_every_dataset_is_named_the_unsupported_ones_too(foreign: Path) -> None:
    with shmstore.open(foreign) as store:
        assert store.names() == sorted([*SERVED, "scalar", "unwritten", *UNSUPPORTED])
        assert all(name in store for name in UNSUPPORTED)
        assert len(store) == len(SERVED) + 2 + len(UNSUPPORTED)


@pytest.mark.parametrize("name", sorted(SERVED))
def test_every_supported_dataset_reads_exactly(foreign: Path, name: str) -> None:
    expected, layout = SERVED[name]
    with shmstore.open(foreign) as store:
        info = store.info(name)
        assert (info.shape, info.dtype, info.layout) == (expected.shape, expected.dtype, layout)
        got = store.read(name)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(store.read(name, (1, -1)), expected[1:-1])


@pytest.mark.parametrize(
    "name", sorted(n for n, (_, layout) in SERVED.items() if layout == "contiguous")
)
def test_contiguous_foreign_datasets_memory_map(foreign: Path, name: str) -> None:
    expected, _ = SERVED[name]
    with shmstore.open(foreign) as store:
        got = store.memmap(name, (1, None))
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected[1:])


@pytest.mark.parametrize(
    ("name", "layout"), [("gzipped", "chunked, compressed with gzip"), ("compact", "compact")]
)
def test_chunked_and_compact_foreign_datasets_are_not_contiguous(
    foreign: Path, name: str, layout: str
) -> None:
    with (
        shmstore.open(foreign) as store,
        pytest.raises(shmstore.NotContiguousError, match=f"stored {layout}"),
    ):
        store.memmap(name)


def test_the_compression_of_a_foreign_dataset_is_named(foreign: Path) -> None:
    with shmstore.open(foreign) as store:
        info = store.info("gzipped")
    assert (info.compression, info.compression_opts) == ("gzip", 4)


def test_a_scalar_reads_without_rows(foreign: Path) -> None:
    with shmstore.open(foreign) as store:
        assert store.info("scalar").shape == ()
        assert store.read("scalar") == 2.5
        assert store.memmap("scalar") == 2.5
        with pytest.raises(shmstore.RowsError, match="scalar"):
            store.read("scalar", (0, 1))


def test_a_dataset_never_written_reads_its_fill_value_but_does_not_map(foreign: Path) -> None:
    with shmstore.open(foreign) as store:
        np.testing.assert_array_equal(store.read("unwritten"), np.full((5, 2), -1.0))
        with pytest.raises(shmstore.LayoutError, match="never written"):
            store.memmap("unwritten")


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_datasets_raise_when_asked_for_saying_what_they_hold(
    foreign: Path, name: str
) -> None:
    with shmstore.open(foreign) as store:
        for access in (store.info, store.read, store.memmap):
            with pytest.raises(shmstore.UnsupportedDtypeError, match=UNSUPPORTED[name]) as caught:
                access(name)
            assert isinstance(caught.value, TypeError)
        with pytest.raises(shmstore.UnsupportedDtypeError):
            store.view(name, mode="memory").__enter__()


def test_opening_for_writing_without_a_change_leaves_the_foreign_file_alone(
    foreign: Path,
) -> None:
    before = foreign.read_bytes()
    with shmstore.open(foreign, "a") as store:
        store.read("gzipped")
    assert foreign.read_bytes() == before


def test_appending_to_a_foreign_chunked_unlimited_dataset_works(foreign: Path) -> None:
    with shmstore.open(foreign, "a") as store:
        assert store.info("growable").appendable
        grown = store.append("growable", np.full((2, 2), 9, dtype="<i8"))
        assert grown.shape == (5, 2)
    with shmstore.open(foreign) as store:
        assert store.manifest.inferred is False
        np.testing.assert_array_equal(store.read("growable"), np.vstack([GROWABLE, [[9, 9]] * 2]))
        np.testing.assert_array_equal(store.read("group/compound"), COMPOUND)
        assert "text" in store  # still listed, still refused
    with h5py.File(foreign) as file:  # and still what other tools expect
        assert file.attrs["title"] == "written by another tool"
        assert file["growable"].shape == (5, 2)


def test_appending_to_a_fixed_size_foreign_dataset_is_a_layout_error(foreign: Path) -> None:
    with (
        shmstore.open(foreign, "a") as store,
        pytest.raises(shmstore.LayoutError, match="fixed size"),
    ):
        store.append("gzipped", GZIPPED[:1])


def test_a_file_in_the_latest_hdf5_format_opens_and_appends(tmp_path: Path) -> None:
    path = write_foreign(tmp_path / "latest.h5", libver="latest")
    with shmstore.open(path, "a") as store:
        store.append("growable", GROWABLE)
        store.write("ours", BIG_ENDIAN)
    with shmstore.open(path) as store:
        np.testing.assert_array_equal(store.read("growable"), np.vstack([GROWABLE, GROWABLE]))
        np.testing.assert_array_equal(store.read("ours"), BIG_ENDIAN)


def test_shmstore_writes_beside_foreign_data_and_can_delete_it(foreign: Path) -> None:
    with shmstore.open(foreign, "a") as store:
        store.write("ours", BIG_ENDIAN)
        store.delete("text")
        store.delete("gzipped")
    with shmstore.open(foreign) as store:
        assert "text" not in store
        assert "gzipped" not in store
        np.testing.assert_array_equal(store.read("ours"), BIG_ENDIAN)
        np.testing.assert_array_equal(store.read("group/sub/big_endian"), BIG_ENDIAN)


def test_a_dataset_added_by_another_tool_is_served(tmp_path: Path) -> None:
    path = tmp_path / "mixed.h5"
    with shmstore.open(path, "w") as store:
        store.write("ours", BIG_ENDIAN)
    with h5py.File(path, "a") as file:
        file.create_dataset("theirs/data", data=COMPOUND, compression="gzip")
    with shmstore.open(path) as store:
        assert store.manifest.inferred is False
        info = store.info("theirs/data")
        assert (info.version, info.layout, info.dtype) == (0, "chunked", COMPOUND.dtype)
        np.testing.assert_array_equal(store.read("theirs/data"), COMPOUND)
        np.testing.assert_array_equal(store.read("ours"), BIG_ENDIAN)
    with shmstore.open(path, "a") as store:  # the next change records it
        store.write("more", GZIPPED)
    with shmstore.open(path) as store:
        np.testing.assert_array_equal(store.read("theirs/data"), COMPOUND)


def test_a_foreign_external_dataset_over_two_files_appends_into_the_right_one(
    tmp_path: Path,
) -> None:
    first = np.arange(5, dtype="<f8")
    second = np.arange(100, 105, dtype="<f8")
    first.tofile(tmp_path / "first.bin")
    second.tofile(tmp_path / "second.bin")
    path = tmp_path / "external.h5"
    with h5py.File(path, "w") as file:
        try:
            file.create_dataset(
                "x",
                shape=(10,),
                dtype="<f8",
                maxshape=(None,),
                external=[("first.bin", 0, 40), ("second.bin", 0, h5py.h5f.UNLIMITED)],
            )
        except ValueError as err:  # older h5py forces chunks on an unlimited axis
            pytest.skip(f"this h5py cannot make an unlimited external dataset: {err}")
    with shmstore.open(path, "a") as store:
        np.testing.assert_array_equal(store.read("x"), np.concatenate([first, second]))
        with pytest.raises(shmstore.NotContiguousError, match="2 external files"):
            store.memmap("x")
        store.append("x", np.array([-1.0, -2.0]))
    with shmstore.open(path) as store:
        np.testing.assert_array_equal(store.read("x"), [*first, *second, -1.0, -2.0])
    assert (tmp_path / "first.bin").read_bytes() == first.tobytes()


def test_a_dataset_held_open_by_h5py_in_this_process_still_opens_and_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HDF5 refuses a second external-file prefix for a dataset already open in the process.

    shmstore opens it with the prefix it has; memmap, shared views and reads of
    data with checksums (checked on the way, so read by shmstore, not HDF5) find
    the raw file themselves.
    """
    path = tmp_path / "held.h5"
    values = np.arange(30.0).reshape(10, 3)
    with shmstore.open(path, "w") as store:
        store.append("x", values)
    monkeypatch.chdir(tmp_path.parent)  # h5py's own prefix (the cwd) does not find the raw file
    with h5py.File(path, "r") as f:
        held = f["x"]
        with shmstore.open(path) as store:
            np.testing.assert_array_equal(store.read("x", (2, 5)), values[2:5])
            np.testing.assert_array_equal(store.memmap("x"), values)
            with store.view("x", mode="shared") as shared:
                np.testing.assert_array_equal(shared, values)
        assert held.shape == (10, 3)


def test_a_store_opens_while_another_thread_holds_one_of_its_datasets_open(
    tmp_path: Path,
) -> None:
    """A load in another thread holds the dataset open with shmstore's ``${ORIGIN}`` prefix.

    Opening the store again must not open that dataset with HDF5's default
    prefix (HDF5 refuses a second prefix): it lists datasets without opening them.
    """
    from shmstore import _hdf5

    path = tmp_path / "busy.h5"
    with shmstore.open(path, "w") as store:
        store.write("grp/x", np.arange(12.0).reshape(4, 3))
        store.write("y", np.ones((2, 2)), chunks=(1, 2))
    with h5py.File(path, "r") as f:
        loading = _hdf5.open_dataset(f, "grp/x")  # as a load in progress has it
        with shmstore.open(path) as again:
            assert again.names() == ["grp/x", "y"]
            np.testing.assert_array_equal(again.read("grp/x", (1, 3)), [[3, 4, 5], [6, 7, 8]])
        assert loading.shape == (4, 3)
