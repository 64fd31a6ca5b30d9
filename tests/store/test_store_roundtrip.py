"""What is written comes back: "rows r of dataset d" through every read path.

One contract (:class:`RowsContract`) states what asking for rows *r* of a
dataset *d* gives: numpy slicing of the array that was written, with its
dtype exactly (byte order, field names, offsets).  Each read path is a
subclass that only says how it reads, so the paths cannot drift apart
(STYLE.md item 11).  The paths that map the file also refuse every layout
that is not one contiguous block.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.lib.recfunctions as rfn
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import shmstore

# -- layouts ------------------------------------------------------------------

# How each layout is written: keyword options of Store.write, or "appended"
# (the first part written or appended, the rest appended).
LAYOUTS: dict[str, dict[str, Any]] = {
    "contiguous": {},
    "chunked": {"chunks": True},
    "gzip": {"compression": "gzip"},
    "appendable-external": {"appendable": True},
    "appendable-chunked": {"appendable": True, "compression": "lzf"},
    "appended-external": {"appended": "external"},
    "appended-chunked": {"appended": "chunked"},
}
STORED_AS = {
    "contiguous": "contiguous",
    "chunked": "chunked",
    "gzip": "chunked",
    "appendable-external": "external",
    "appendable-chunked": "chunked",
    "appended-external": "external",
    "appended-chunked": "chunked",
}
MAPPABLE = tuple(name for name, layout in STORED_AS.items() if layout != "chunked")
NOT_MAPPABLE = tuple(name for name in LAYOUTS if name not in MAPPABLE)


def write_layout(
    store: shmstore.Store, name: str, layout: str, array: np.ndarray, split: int = 0
) -> None:
    """Write *array* as dataset *name* in *layout*; appended layouts cut it at row *split*."""
    options = dict(LAYOUTS[layout])
    appended = options.pop("appended", None)
    if appended is None:
        store.write(name, array, **options)
        return
    head, tail = array[:split], array[split:]
    if appended == "external":
        store.append(name, head)  # a new name: an appendable raw file
    else:
        store.write(name, head, appendable=True, chunks=True)
    store.append(name, tail)


# -- dtypes and arrays ------------------------------------------------------------

ENDIAN = "?"  # hypothesis: both byte orders
SIMPLE_DTYPES = st.one_of(
    hnp.integer_dtypes(endianness=ENDIAN),
    hnp.unsigned_integer_dtypes(endianness=ENDIAN),
    hnp.floating_dtypes(endianness=ENDIAN, sizes=(16, 32, 64)),
    hnp.complex_number_dtypes(endianness=ENDIAN, sizes=(64, 128)),
    hnp.boolean_dtypes(),
    hnp.byte_string_dtypes(min_len=1, max_len=8),
)


@st.composite
def compound_dtypes(draw: st.DrawFn, depth: int = 0) -> np.dtype[Any]:
    """Compounds of simple dtypes, sub-array fields, a nested compound; maybe padded."""
    names = draw(
        st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True), min_size=1, max_size=4).map(
            lambda found: list(dict.fromkeys(found))
        )  # unique, in order
    )
    formats: list[Any] = []
    for _ in names:
        kind = draw(st.sampled_from(["simple", "sub-array"] + (["nested"] if depth == 0 else [])))
        if kind == "nested":
            formats.append(draw(compound_dtypes(depth=1)))
        elif kind == "sub-array":
            shape = draw(st.lists(st.integers(1, 3), min_size=1, max_size=2).map(tuple))
            formats.append((draw(SIMPLE_DTYPES), shape))
        else:
            formats.append(draw(SIMPLE_DTYPES))
    packed = np.dtype({"names": names, "formats": formats})
    if not draw(st.booleans()):
        return packed
    offsets, at = [], 0
    for name in names:  # gaps between fields and a tail after them
        at += draw(st.integers(0, 3))
        offsets.append(at)
        at += packed.fields[name][0].itemsize  # type: ignore[index]
    itemsize = at + draw(st.integers(0, 5))
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": itemsize})


DTYPES = st.one_of(SIMPLE_DTYPES, compound_dtypes())


@st.composite
def row_ranges(draw: st.DrawFn, length: int) -> object:
    """``rows`` as the API takes them, inside ``[-length, length]`` and not backwards."""
    kind = draw(st.sampled_from(["none", "slice", "tuple"]))
    if kind == "none":
        return None
    bound = st.one_of(st.none(), st.integers(-length, length))
    start, stop = draw(bound), draw(bound)
    first, last, _ = slice(start, stop).indices(length)
    if first > last:
        start, stop = stop, start
    return slice(start, stop) if kind == "slice" else (start, stop)


@st.composite
def cases(draw: st.DrawFn) -> tuple[np.ndarray, object, int]:
    """An array of 1-3 dims (0 rows included), rows of it, and a row to split appends at."""
    dtype = draw(DTYPES)
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=8))
    array = draw(hnp.arrays(dtype, shape))
    return array, draw(row_ranges(shape[0])), draw(st.integers(0, shape[0]))


def packed_bytes(array: np.ndarray) -> bytes:
    """The bytes of every value of *array* (NaN payloads included), without padding."""
    array = np.ascontiguousarray(array)
    if array.dtype.names is not None:
        array = rfn.repack_fields(array, recurse=True)
    return array.tobytes()


def assert_same(got: np.ndarray, expected: np.ndarray, what: str = "") -> None:
    assert got.dtype == expected.dtype, (what, got.dtype, expected.dtype)
    assert got.dtype.names == expected.dtype.names, what
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    assert packed_bytes(got) == packed_bytes(expected), what


def _expected(array: np.ndarray, rows: object) -> np.ndarray:
    if rows is None:
        return array
    if isinstance(rows, tuple):
        rows = slice(*rows)
    return array[rows]  # type: ignore[index]


# Named dtypes, each of which must round-trip whatever hypothesis draws.
NAMED_DTYPES: dict[str, Any] = {
    "int8": "|i1",
    "uint8": "|u1",
    "int16-le": "<i2",
    "int32-be": ">i4",
    "uint16-le": "<u2",
    "uint64-be": ">u8",
    "float16-be": ">f2",
    "float32-le": "<f4",
    "float64-be": ">f8",
    "complex64-le": "<c8",
    "complex128-be": ">c16",
    "bool": "|b1",
    "bytes1": "|S1",
    "bytes9": "|S9",
    "compound-big-endian-sub-array": [("t", ">f8"), ("xyz", "<i2", (3,)), ("tag", "S2")],
    "compound-padded": {
        "names": ["a", "b", "c"],
        "formats": [">i2", ("<f4", (2,)), "?"],
        "offsets": [1, 5, 14],
        "itemsize": 17,
    },
    "compound-nested": [("p", [("x", ">f4"), ("y", "<u2")]), ("q", "?"), ("r", ">c8", (2,))],
}


def _fill(array: np.ndarray, rng: np.random.Generator) -> None:
    if array.dtype.names is not None:
        for name in array.dtype.names:
            _fill(array[name], rng)
    elif array.dtype.kind == "b":
        array[...] = rng.integers(0, 2, array.shape).astype(bool)
    elif array.dtype.kind == "S":
        raw = rng.integers(0, 256, (*array.shape, array.dtype.itemsize), dtype=np.uint8)
        array[...] = raw.view(array.dtype).reshape(array.shape)
    else:
        array[...] = rng.integers(-100, 100, array.shape).astype(array.dtype)


def sample_array(dtype: Any, shape: tuple[int, ...] = (12, 2)) -> np.ndarray:
    array = np.zeros(shape, dtype=np.dtype(dtype))
    _fill(array, np.random.default_rng(7))
    return array


# -- the contract -------------------------------------------------------------------

DATA = sample_array([("t", ">f8"), ("xyz", "<i2", (3,)), ("tag", "S3"), ("ok", "?")], (20, 3))
"""The array the fixed-rows tests read: 20 rows of a big-endian compound with a sub-array."""


class RowsContract:
    """Rows *r* of dataset *d* are numpy slicing of what was written, dtype exactly.

    A subclass says how its read path reads (:meth:`get`) and which layouts
    it serves (all, or only the memory-mappable ones).
    """

    layouts: ClassVar[tuple[str, ...]] = tuple(LAYOUTS)

    def get(self, store: shmstore.Store, name: str, rows: object) -> np.ndarray:
        raise NotImplementedError

    def check_rows(
        self, store: shmstore.Store, name: str, rows: object, expected: np.ndarray
    ) -> np.ndarray:
        """Assert that rows *rows* of *name* are *expected*; return what was read."""
        got = self.get(store, name, rows)
        assert_same(got, expected, f"{type(self).__name__} {name!r} rows={rows!r}")
        return got

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[shmstore.Store]:
        """Every layout of this path holding ``DATA``, opened read-only."""
        path = tmp_path / "contract.h5"
        with shmstore.open(path, "w") as store:
            for layout in self.layouts:
                write_layout(store, layout, layout, DATA, split=7)
        with shmstore.open(path) as store:
            yield store

    # Every subclass runs this one function: an example of one read path is a
    # valid example for every other, so sharing the example database is right.
    @settings(suppress_health_check=[HealthCheck.differing_executors, HealthCheck.too_slow])
    @given(case=cases())
    def test_rows_equal_numpy_slicing_of_what_was_written_in_every_layout(
        self, case: tuple[np.ndarray, object, int]
    ) -> None:
        array, rows, split = case
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "s.h5"
            with shmstore.open(path, "w") as store:
                for layout in self.layouts:
                    write_layout(store, layout, layout, array, split)
            with shmstore.open(path) as store:
                for layout in self.layouts:
                    assert store.info(layout).layout == STORED_AS[layout]
                    self.check_rows(store, layout, rows, _expected(array, rows))

    @pytest.mark.parametrize("dtype", sorted(NAMED_DTYPES))
    def test_each_kind_of_dtype_comes_back_exactly(self, tmp_path: Path, dtype: str) -> None:
        array = sample_array(NAMED_DTYPES[dtype])
        with shmstore.open(tmp_path / "s.h5", "w") as store:
            for layout in self.layouts:
                write_layout(store, layout, layout, array, split=5)
            for layout in self.layouts:
                for rows in (None, (2, 9), slice(-4, None), (3, 3)):
                    self.check_rows(store, layout, rows, _expected(array, rows))

    def test_no_rows_is_every_row(self, store: shmstore.Store) -> None:
        for layout in self.layouts:
            self.check_rows(store, layout, None, DATA)

    @pytest.mark.parametrize(
        "rows",
        [slice(3, 9), (3, 9), slice(-5, None), (-5, -1), (None, 4), slice(None), (0, 20)],
        ids=repr,
    )
    def test_slices_tuples_and_negative_indices_select_those_rows(
        self, store: shmstore.Store, rows: object
    ) -> None:
        for layout in self.layouts:
            self.check_rows(store, layout, rows, _expected(DATA, rows))

    @pytest.mark.parametrize("rows", [(0, 0), (7, 7), (20, 20), (-3, -3)], ids=repr)
    def test_an_empty_range_keeps_the_row_shape_and_dtype(
        self, store: shmstore.Store, rows: tuple[int, int]
    ) -> None:
        for layout in self.layouts:
            got = self.check_rows(store, layout, rows, DATA[0:0])
            assert got.shape == (0, *DATA.shape[1:])

    @pytest.mark.parametrize("rows", [(0, 21), (-21, None), (21, None), slice(0, 100)], ids=repr)
    def test_rows_outside_the_dataset_are_an_error_never_clipped(
        self, store: shmstore.Store, rows: object
    ) -> None:
        for layout in self.layouts:
            with pytest.raises(shmstore.RowsError, match=rf"{layout!r}, which has 20 rows"):
                self.get(store, layout, rows)

    @pytest.mark.parametrize("rows", [slice(0, 10, 2), (5, 2), 3, [0, 1], (0.0, 2)], ids=repr)
    def test_steps_backwards_ranges_and_other_types_are_refused(
        self, store: shmstore.Store, rows: object
    ) -> None:
        for layout in self.layouts:
            with pytest.raises(shmstore.RowsError, match=repr(layout)):
                self.get(store, layout, rows)

    def test_a_missing_dataset_is_a_key_error_naming_it(self, store: shmstore.Store) -> None:
        with pytest.raises(shmstore.ArrayNotFoundError, match="'absent'"):
            self.get(store, "absent", None)


class MappingContract(RowsContract):
    """Paths that map the file: only contiguous layouts, never writeable."""

    layouts = MAPPABLE

    def test_the_array_is_read_only(self, store: shmstore.Store) -> None:
        for layout in self.layouts:
            got = self.get(store, layout, (2, 5))
            assert not got.flags.writeable
            with pytest.raises(ValueError, match="read-only"):
                got[0] = got[1]

    def test_an_empty_array_is_read_only_too(self, store: shmstore.Store) -> None:
        for layout in self.layouts:
            assert not self.get(store, layout, (3, 3)).flags.writeable

    @pytest.mark.parametrize("layout", NOT_MAPPABLE)
    def test_a_chunked_layout_is_not_contiguous_and_says_so(
        self, tmp_path: Path, layout: str
    ) -> None:
        with shmstore.open(tmp_path / "s.h5", "w") as store:
            write_layout(store, "d", layout, DATA, split=4)
            with pytest.raises(shmstore.NotContiguousError, match="'d' is stored chunked"):
                self.get(store, "d", None)


class TestRead(RowsContract):
    def get(self, store: shmstore.Store, name: str, rows: object) -> np.ndarray:
        return store.read(name, rows)

    def test_the_array_is_a_private_writeable_copy(self, store: shmstore.Store) -> None:
        for layout in self.layouts:
            got = self.get(store, layout, None)
            got[...] = DATA[0]
            assert_same(self.get(store, layout, None), DATA)


class TestMemmap(MappingContract):
    def get(self, store: shmstore.Store, name: str, rows: object) -> np.ndarray:
        return store.memmap(name, rows)

    def test_a_non_empty_result_is_a_memmap_of_the_file(self, store: shmstore.Store) -> None:
        assert isinstance(self.get(store, "contiguous", (1, 2)), np.memmap)
        assert isinstance(self.get(store, "appendable-external", (1, 2)), np.memmap)


class TestViewMemory(RowsContract):
    def get(self, store: shmstore.Store, name: str, rows: object) -> np.ndarray:
        with store.view(name, rows, mode="memory") as array:
            return array  # an array kept past the block stays valid

    def test_the_array_is_read_only(self, store: shmstore.Store) -> None:
        assert not self.get(store, "gzip", None).flags.writeable


class TestViewMemmap(MappingContract):
    def get(self, store: shmstore.Store, name: str, rows: object) -> np.ndarray:
        with store.view(name, rows, mode="memmap") as array:
            return array


@given(case=cases())
def test_a_shared_view_holds_the_rows_read_gives(case: tuple[np.ndarray, object, int]) -> None:
    """Through the node cache: a shared view of rows *r* is what ``read`` gives."""
    array, rows, _split = case
    with (
        tempfile.TemporaryDirectory() as tmp,
        tempfile.TemporaryDirectory(dir="/dev/shm") as cache_dir,
    ):
        path = Path(tmp) / "s.h5"
        with shmstore.open(path, "w") as store:
            store.write("d", array)
        cache = shmstore.Cache(directory=Path(cache_dir) / "cache")
        with shmstore.open(path, cache=cache) as store, store.view("d", rows, "shared") as got:
            assert_same(np.asarray(got), _expected(array, rows), f"shared rows={rows!r}")


# -- what may be written ----------------------------------------------------------------

BASE = np.arange(60, dtype=">f8").reshape(6, 10)
INPUTS = {
    "fortran-order": np.asfortranarray(BASE),
    "transposed": BASE.T,
    "strided": BASE[::2, ::3],
    "reversed": BASE[::-1],
    "nested-list": BASE.tolist(),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("given_as", sorted(INPUTS))
def test_any_array_like_is_stored_in_row_order(tmp_path: Path, layout: str, given_as: str) -> None:
    expected = np.asarray(INPUTS[given_as])
    with shmstore.open(tmp_path / "s.h5", "w") as store:
        write_layout(store, "d", layout, INPUTS[given_as], split=2)  # type: ignore[arg-type]
        assert_same(store.read("d"), expected)
