"""What is written comes back: random shapes, dtypes and row ranges, every layout.

One contract, "rows r of dataset d", checked through every read path that
applies to the layout (``read``, ``memmap``, ``view``), so they cannot drift.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import shmstore

SIMPLE = st.sampled_from(
    ["<i1", "<u2", ">i4", "<i8", ">u8", "<f2", "<f4", ">f8", "<c8", ">c16", "|b1", "|S1", "|S7"]
)


@st.composite
def compound_dtypes(draw: st.DrawFn) -> np.dtype[Any]:
    count = draw(st.integers(1, 4))
    names = draw(
        st.lists(
            st.from_regex(r"[a-z]{1,6}", fullmatch=True),
            min_size=count,
            max_size=count,
            unique=True,
        )
    )
    formats: list[Any] = []
    for _ in names:
        base = np.dtype(draw(SIMPLE))
        formats.append((base, (draw(st.integers(1, 3)),)) if draw(st.booleans()) else base)
    dtype = np.dtype({"names": names, "formats": formats})
    if draw(st.booleans()):  # padded: offsets with gaps, itemsize with a tail
        offsets, at = [], 0
        for name in names:
            at += draw(st.integers(0, 3))
            offsets.append(at)
            at += dtype.fields[name][0].itemsize  # type: ignore[index]
        dtype = np.dtype(
            {
                "names": names,
                "formats": formats,
                "offsets": offsets,
                "itemsize": at + draw(st.integers(0, 5)),
            }
        )
    return dtype


DTYPES = st.one_of(SIMPLE.map(np.dtype), compound_dtypes())


@st.composite
def arrays_and_rows(draw: st.DrawFn) -> tuple[np.ndarray, tuple[int, int]]:
    dtype = draw(DTYPES)
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=9))
    array = draw(hnp.arrays(dtype, shape))
    length = shape[0]
    start = draw(st.integers(-length, length))
    stop = draw(st.integers(-length, length))
    first, last, _ = slice(start, stop).indices(length)
    return array, (start, stop) if first <= last else (stop, start)


def _same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape
    assert got.tobytes() == want.tobytes()  # bitwise: NaNs and padding included


Reader = Callable[[shmstore.Store, str, tuple[int, int]], np.ndarray]

READERS: dict[str, Reader] = {
    "read": lambda s, n, r: s.read(n, r),
    "memmap": lambda s, n, r: np.asarray(s.memmap(n, r)),
}
LAYOUTS: dict[str, dict[str, Any]] = {
    "contiguous": {},
    "chunked": {"chunks": True},
    "gzip": {"compression": "gzip"},
    "appendable-external": {"appendable": True},
    "appendable-chunked": {"appendable": True, "compression": "lzf"},
}
MAPPABLE = {"contiguous", "appendable-external"}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@given(case=arrays_and_rows())
def test_rows_written_in_every_layout_read_back_bitwise(
    layout: str, case: tuple[np.ndarray, tuple[int, int]]
) -> None:
    array, rows = case
    start, stop = rows
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.h5"
        options = LAYOUTS[layout]
        with shmstore.open(path, "w") as store:
            if 0 in array.shape[1:] and options.get("compression"):
                return  # HDF5 cannot chunk a dimension of length 0
            store.write("d", array, **options)
        with shmstore.open(path) as store:
            for name, reader in READERS.items():
                if name == "memmap" and layout not in MAPPABLE:
                    with pytest.raises(shmstore.NotContiguousError):
                        reader(store, "d", rows)
                    continue
                _same(reader(store, "d", rows), array[start:stop])


@given(case=arrays_and_rows(), split=st.integers(0, 9))
def test_appended_rows_read_back_as_one_array(
    case: tuple[np.ndarray, tuple[int, int]], split: int
) -> None:
    array, (start, stop) = case
    head, tail = array[: min(split, len(array))], array[min(split, len(array)) :]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.h5"
        with shmstore.open(path, "w") as store:
            store.append("d", head)
            store.append("d", tail)
        with shmstore.open(path) as store:
            _same(store.read("d", (start, stop)), array[start:stop])
            _same(np.asarray(store.memmap("d", (start, stop))), array[start:stop])


@given(case=arrays_and_rows())
def test_a_shared_view_holds_the_same_rows_as_read(
    case: tuple[np.ndarray, tuple[int, int]],
) -> None:
    array, rows = case
    start, stop = rows
    directory = Path("/dev/shm") / f"shmstore-test-{uuid.uuid4().hex[:12]}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "s.h5"
            with shmstore.open(path, "w") as store:
                store.write("d", array)
            cache = shmstore.Cache(directory=directory)
            with shmstore.open(path, cache=cache) as store, store.view("d", rows, "shared") as arr:
                _same(np.asarray(arr), array[start:stop])
    finally:
        shutil.rmtree(directory, ignore_errors=True)
