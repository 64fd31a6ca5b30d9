"""Every fixed-size numpy dtype through the store: bytes kept, dtype recorded, h5py agrees.

Unicode, ``datetime64``, ``timedelta64``, raw bytes (``V``) and structured
dtypes holding them are stored as HDF5 opaque data of the same size, tagged
as ``h5py.opaque_dtype`` tags them (``docs/design.md``, "Dtypes HDF5 lacks").
Real HDF5 files, a real cache on /dev/shm, and a spawned process for sharing.
"""

from __future__ import annotations

import json
import multiprocessing
import tempfile
from pathlib import Path
from typing import Any

import h5py
import jsonschema
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import shmstore
from shmstore._metadata import RECORD_ATTR
from tests import _children_views as children
from tests.dtype_strategies import FIXED_DTYPES, array_of, field_bytes

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
LAYOUTS: dict[str, dict[str, Any]] = {
    "contiguous": {},
    "appendable": {"appendable": True},
    "chunked-gzip": {"chunks": (2, 1), "compression": "gzip"},
    "chunked-appendable": {"chunks": (2, 2), "appendable": True},
}
TEXT = np.array([["café", "ß"], ["", "日本語"]], dtype="<U3")
TIMES = np.array(["2026-05-01T12:00:00.000000001", "NaT", "1900-01-01"], dtype="<M8[ns]")
RECORDS = np.array(
    [("a", np.datetime64("2026-01-01", "D"), 1.5), ("bc", np.datetime64("NaT"), -2.0)],
    dtype=[("label", ">U2"), ("day", "<M8[D]"), ("value", "<f4")],
)


@given(
    dtype=FIXED_DTYPES,
    layout=st.sampled_from(sorted(LAYOUTS)),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_fixed_size_dtype_round_trips_byte_for_byte_through_every_read_path(
    dtype: np.dtype[Any], layout: str, seed: int
) -> None:
    first, more = array_of(dtype, (4, 2), seed), array_of(dtype, (3, 2), seed + 1)
    options = LAYOUTS[layout]
    with (
        tempfile.TemporaryDirectory() as directory,
        tempfile.TemporaryDirectory(dir="/dev/shm") as cache_dir,
    ):
        cache = shmstore.Cache(directory=Path(cache_dir) / "cache", budget="64M")
        with shmstore.open(Path(directory) / "s.h5", "a", cache=cache) as store:
            store.write("x", first, **options)
            parts = [first]
            if options.get("appendable"):
                store.append("x", more)
                parts.append(more)
            assert store.info("x").dtype == dtype
            served = [store.read("x")]
            if store.info("x").memory_mappable:
                served.append(store.memmap("x"))
            for mode in ("shared", "memory"):
                with store.view("x", mode=mode) as arr:
                    served.append(arr.copy())
            with store.handle("x").view() as arr:
                served.append(arr.copy())
        for arr in served:
            assert arr.dtype == dtype
            assert arr.shape == (sum(len(part) for part in parts), 2)
            for part, got in zip(parts, np.split(arr, [len(first)]), strict=False):
                assert field_bytes(got) == field_bytes(part)


@pytest.mark.parametrize("array", [TEXT, TIMES, RECORDS], ids=["unicode", "datetime", "records"])
def test_the_record_holds_the_numpy_dtype(tmp_path: Path, array: np.ndarray[Any, Any]) -> None:
    path = tmp_path / "s.h5"
    with shmstore.open(path, "w") as store:
        store.write("x", array)
    with h5py.File(path, "r") as file:
        record = json.loads(bytes(file["x"].attrs[RECORD_ATTR]).decode())
    jsonschema.validate(record, json.loads((SCHEMAS / "record.schema.json").read_text()))
    assert shmstore.manifest.DatasetRecord.model_validate(record).dtype == array.dtype
    if array.dtype.fields is None:
        assert record["dtype"] == array.dtype.str
    else:
        assert record["dtype"]["formats"] == [">U2", "<M8[D]", "<f4"]


@pytest.mark.parametrize("array", [TEXT, TIMES, RECORDS], ids=["unicode", "datetime", "records"])
def test_h5py_reads_what_shmstore_wrote_as_the_same_dtype(
    tmp_path: Path, array: np.ndarray[Any, Any]
) -> None:
    path = tmp_path / "s.h5"
    with shmstore.open(path, "w") as store:
        store.write("x", array)
    with h5py.File(path, "r") as file:
        read = file["x"][()]
    assert read.dtype == array.dtype
    assert read.tobytes() == array.tobytes()


def test_other_tools_see_opaque_data_tagged_with_the_numpy_dtype(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    with shmstore.open(path, "w") as store:
        store.write("text", TEXT)
        store.write("records", RECORDS)
    with h5py.File(path, "r") as file:
        text_type = file["text"].id.get_type()
        member = file["records"].id.get_type().get_member_type(1)
        number = file["records"].id.get_type().get_member_type(2)
        assert text_type.get_class() == h5py.h5t.OPAQUE
        assert (text_type.get_tag(), text_type.get_size()) == (b"NUMPY:<U3", 12)
        assert (member.get_class(), member.get_tag()) == (h5py.h5t.OPAQUE, b"NUMPY:<M8[D]")
        assert number.get_class() == h5py.h5t.FLOAT  # numbers stay numbers


def test_a_dataset_h5py_wrote_with_opaque_dtype_is_served(tmp_path: Path) -> None:
    path = tmp_path / "theirs.h5"
    with h5py.File(path, "w") as file:
        file.create_dataset("text", data=TEXT.astype(h5py.opaque_dtype(TEXT.dtype)))
    with shmstore.open(path) as store:
        assert store.info("text").dtype == TEXT.dtype
        assert store.read("text").dtype.metadata is None  # h5py's tag is not handed on
        np.testing.assert_array_equal(store.memmap("text"), TEXT)


def test_appending_datetimes_of_another_unit_is_refused_saying_how_to_convert(
    tmp_path: Path,
) -> None:
    with shmstore.open(tmp_path / "s.h5", "w") as store:
        store.append("t", TIMES)
        with pytest.raises(shmstore.UnsupportedDtypeError, match=r"astype\('datetime64\[ns\]'\)"):
            store.append("t", TIMES.astype("<M8[us]"))
        np.testing.assert_array_equal(store.read("t"), TIMES)


def test_an_opaque_type_of_another_size_than_its_tag_is_refused_as_damaged(
    tmp_path: Path,
) -> None:
    path = tmp_path / "theirs.h5"
    with h5py.File(path, "w") as file:
        opaque = h5py.h5t.create(h5py.h5t.OPAQUE, 4)
        opaque.set_tag(b"NUMPY:<U3")  # 12 bytes an element, the type holds 4
        h5py.h5d.create(file.id, b"short", opaque, h5py.h5s.create_simple((3,)))
    with (
        shmstore.open(path) as store,
        pytest.raises(shmstore.UnsupportedDtypeError, match=r"'short' is damaged.*4 bytes"),
    ):
        store.info("short")


def test_a_slice_of_datetimes_is_shared_with_another_process(
    tmp_path: Path, cache: shmstore.Cache
) -> None:
    path = tmp_path / "s.h5"
    with shmstore.open(path, "w", cache=cache) as store:
        store.write("t", TIMES)
        handle = store.handle("t", rows=(1, 3))
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        dtype, data = pool.apply(children.view_bytes, (handle,))
    assert (dtype, data) == ("<M8[ns]", TIMES[1:3].tobytes())
