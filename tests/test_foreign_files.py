"""Files written by other tools open: inferred manifest, every servable dataset served."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

import shmstore

COMPOUND = np.array(
    [(1.5, (1, 2, 3), b"ab"), (-2.0, (4, 5, 6), b"cd")],
    dtype=[("t", ">f8"), ("xyz", "<i2", (3,)), ("tag", "S2")],
)
BIG_ENDIAN = np.arange(24, dtype=">i4").reshape(12, 2)
GZIPPED = np.linspace(0, 1, 500).reshape(100, 5)


@pytest.fixture
def foreign(tmp_path: Path) -> Path:
    path = tmp_path / "foreign.h5"
    with h5py.File(path, "w") as file:
        file.create_dataset("group/sub/big_endian", data=BIG_ENDIAN)
        file.create_dataset("group/compound", data=COMPOUND)
        file.create_dataset("gzipped", data=GZIPPED, compression="gzip", shuffle=True)
        file.create_dataset("scalar", data=2.5)
        file.create_dataset("text", data=["a", "bb"], dtype=h5py.string_dtype())
        file.create_dataset("refs", data=[file["gzipped"].ref], dtype=h5py.ref_dtype)
        file.create_dataset("nothing", data=h5py.Empty("f4"))
        file.create_dataset(
            "growable", data=np.arange(6).reshape(3, 2), maxshape=(None, 2), chunks=(2, 2)
        )
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.COMPACT)
        space = h5py.h5s.create_simple((4,))
        h5py.h5d.create(file.id, b"compact", h5py.h5t.STD_I32LE, space, dcpl=dcpl)
        file["compact"][...] = np.arange(4)
    return path


def test_a_file_without_manifest_opens_with_an_inferred_one(foreign: Path) -> None:
    with shmstore.open(foreign) as store:
        assert store.manifest.inferred
        assert "group/sub/big_endian" in store.manifest.arrays
        assert store.names() == sorted(
            [
                "group/sub/big_endian",
                "group/compound",
                "gzipped",
                "scalar",
                "text",
                "refs",
                "nothing",
                "growable",
                "compact",
            ]
        )


@pytest.mark.parametrize(
    ("name", "expected"),
    [("group/sub/big_endian", BIG_ENDIAN), ("group/compound", COMPOUND), ("gzipped", GZIPPED)],
)
def test_nested_compound_big_endian_and_gzip_datasets_read_exactly(
    foreign: Path, name: str, expected: np.ndarray
) -> None:
    with shmstore.open(foreign) as store:
        got = store.read(name)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(store.read(name, (1, -1)), expected[1:-1])


def test_contiguous_foreign_datasets_memory_map(foreign: Path) -> None:
    with shmstore.open(foreign) as store:
        np.testing.assert_array_equal(store.memmap("group/compound"), COMPOUND)
        with pytest.raises(shmstore.NotContiguousError, match="compact"):
            store.memmap("compact")


def test_a_scalar_reads_without_rows(foreign: Path) -> None:
    with shmstore.open(foreign) as store:
        assert store.read("scalar") == 2.5
        with pytest.raises(shmstore.RowsError, match="scalar"):
            store.read("scalar", (0, 1))


@pytest.mark.parametrize(
    ("name", "kind"),
    [("text", "variable-length strings"), ("refs", "references"), ("nothing", "null dataspace")],
)
def test_unsupported_datasets_are_listed_and_refused_when_asked_for(
    foreign: Path, name: str, kind: str
) -> None:
    with shmstore.open(foreign) as store:
        assert name in store
        for access in (store.info, store.read, store.memmap):
            with pytest.raises(TypeError, match=kind):
                access(name)  # type: ignore[operator]
        with pytest.raises(shmstore.UnsupportedDtypeError):
            store.read(name)


def test_appending_to_a_foreign_chunked_unlimited_dataset_works(foreign: Path) -> None:
    with shmstore.open(foreign, "a") as store:
        store.append("growable", np.full((2, 2), 9))
    with shmstore.open(foreign) as store:
        assert not store.manifest.inferred
        np.testing.assert_array_equal(store.read("growable")[-2:], np.full((2, 2), 9))
        np.testing.assert_array_equal(store.read("group/compound"), COMPOUND)


def test_a_dataset_added_by_another_tool_is_served(tmp_path: Path) -> None:
    path = tmp_path / "mixed.h5"
    with shmstore.open(path, "w") as store:
        store.write("ours", BIG_ENDIAN)
    with h5py.File(path, "a") as file:
        file.create_dataset("theirs", data=GZIPPED)
    with shmstore.open(path) as store:
        np.testing.assert_array_equal(store.read("theirs"), GZIPPED)
        assert store.info("theirs").version == 0
        np.testing.assert_array_equal(store.read("ours"), BIG_ENDIAN)
