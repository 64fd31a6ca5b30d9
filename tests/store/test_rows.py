"""``resolve_rows``: what ``rows`` may be, and that nothing is ever silently clipped."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shmstore import RowsError, ShmStoreError
from shmstore._rows import byte_range, resolve_rows

# -- what is accepted ---------------------------------------------------------


def test_none_is_every_row() -> None:
    assert resolve_rows(None, 7, "d") == (0, 7)


def test_none_of_an_empty_dataset_is_the_empty_range() -> None:
    assert resolve_rows(None, 0, "d") == (0, 0)


def test_a_slice_is_its_start_and_stop() -> None:
    assert resolve_rows(slice(2, 5), 10, "d") == (2, 5)


def test_open_ended_slices_run_to_the_ends() -> None:
    assert resolve_rows(slice(None, 4), 10, "d") == (0, 4)
    assert resolve_rows(slice(6, None), 10, "d") == (6, 10)
    assert resolve_rows(slice(None), 10, "d") == (0, 10)


def test_a_step_of_one_is_accepted() -> None:
    assert resolve_rows(slice(2, 4, 1), 10, "d") == (2, 4)


def test_negative_indices_count_from_the_end() -> None:
    assert resolve_rows(slice(-3, None), 10, "d") == (7, 10)
    assert resolve_rows((-10, -1), 10, "d") == (0, 9)


def test_a_tuple_is_start_and_stop() -> None:
    assert resolve_rows((1, 4), 10, "d") == (1, 4)


def test_a_tuple_may_leave_either_end_open() -> None:
    assert resolve_rows((None, 3), 10, "d") == (0, 3)
    assert resolve_rows((3, None), 10, "d") == (3, 10)


def test_the_bounds_themselves_are_inside() -> None:
    assert resolve_rows((0, 10), 10, "d") == (0, 10)
    assert resolve_rows((10, 10), 10, "d") == (10, 10)
    assert resolve_rows((-10, 0), 10, "d") == (0, 0)


def test_an_empty_range_is_accepted() -> None:
    assert resolve_rows((4, 4), 10, "d") == (4, 4)


def test_numpy_integers_are_accepted() -> None:
    assert resolve_rows((np.int64(1), np.int32(-1)), 10, "d") == (1, 9)
    assert resolve_rows(slice(np.uint8(2), np.int16(5)), 10, "d") == (2, 5)


# -- what is refused ------------------------------------------------------------


@pytest.mark.parametrize(
    "rows",
    [(0, 11), (11, None), (-11, None), (None, -11), slice(0, 11), slice(-11, 5), (0, 10**20)],
    ids=repr,
)
def test_a_bound_outside_the_dataset_names_it_and_its_length(rows: object) -> None:
    with pytest.raises(RowsError, match=r"'spikes', which has 10 rows"):
        resolve_rows(rows, 10, "spikes")


def test_out_of_range_says_which_values_are_allowed() -> None:
    with pytest.raises(RowsError, match=r"from -10 to 10"):
        resolve_rows((0, 11), 10, "d")


def test_any_row_of_an_empty_dataset_is_out_of_range() -> None:
    with pytest.raises(RowsError, match="0 rows"):
        resolve_rows((0, 1), 0, "d")


def test_a_rows_error_is_an_index_error() -> None:
    with pytest.raises(IndexError):
        resolve_rows((0, 11), 10, "d")


def test_a_rows_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="outside"):
        resolve_rows((0, 11), 10, "d")


def test_a_rows_error_is_a_shmstore_error() -> None:
    with pytest.raises(ShmStoreError):
        resolve_rows((0, 11), 10, "d")


@pytest.mark.parametrize("step", [2, -1, 0, 10])
def test_a_step_other_than_one_is_refused_saying_how_to_get_it(step: int) -> None:
    with pytest.raises(RowsError, match=r"'d' must be contiguous.*slice it with numpy"):
        resolve_rows(slice(0, 4, step), 10, "d")


@pytest.mark.parametrize(
    "rows", [(5, 2), (4, 3), slice(5, 2), (-1, 0), (10, 9), slice(-2, -5)], ids=repr
)
def test_start_after_stop_is_refused(rows: object) -> None:
    with pytest.raises(RowsError, match="backwards"):
        resolve_rows(rows, 10, "d")


@pytest.mark.parametrize(
    "rows",
    [
        1.5,
        3,
        "0:3",
        b"0:3",
        [0, 3],
        {0, 1},
        True,
        (0,),
        (0, 1, 2),
        (0.0, 3),
        (0, 3.0),
        ("0", 3),
        (True, 3),
        (0, False),
        slice(0, 2.5),
        slice("a", None),
        slice(0, True),
        slice(0, 4, 1.0),
        np.array([0, 3]),
        range(3),
    ],
    ids=repr,
)
def test_rows_of_another_type_are_refused_naming_the_dataset(rows: object) -> None:
    with pytest.raises(RowsError, match="'d'"):
        resolve_rows(rows, 10, "d")


def test_the_type_error_says_what_was_given() -> None:
    with pytest.raises(RowsError, match=r"got list \[0, 3\]"):
        resolve_rows([0, 3], 10, "d")
    with pytest.raises(RowsError, match=r"got the bool True"):
        resolve_rows((True, 3), 10, "d")
    with pytest.raises(RowsError, match=r"got float 0\.5"):
        resolve_rows((0.5, 3), 10, "d")


# -- properties -----------------------------------------------------------------

BOUNDS = st.one_of(st.none(), st.integers(-(10**6), 10**6))


@given(length=st.integers(0, 1_000), data=st.data())
def test_valid_slices_resolve_like_python_slicing(length: int, data: st.DataObject) -> None:
    bound = st.one_of(st.none(), st.integers(-length, length))
    start, stop = data.draw(bound), data.draw(bound)
    first, last, _ = slice(start, stop).indices(length)
    if first > last:  # empty in Python, an error here: rows run backwards
        with pytest.raises(RowsError, match="backwards"):
            resolve_rows(slice(start, stop), length, "d")
    else:
        assert resolve_rows(slice(start, stop), length, "d") == (first, last)
        assert len(range(length)[start:stop]) == last - first


@given(length=st.integers(0, 1_000), data=st.data())
def test_tuples_resolve_like_the_same_slice(length: int, data: st.DataObject) -> None:
    start, stop = data.draw(BOUNDS), data.draw(BOUNDS)
    try:
        expected: object = resolve_rows(slice(start, stop), length, "d")
    except RowsError as err:
        expected = type(err)
    try:
        got: object = resolve_rows((start, stop), length, "d")
    except RowsError as err:
        got = type(err)
    assert got == expected


@given(length=st.integers(0, 1_000), start=BOUNDS, stop=BOUNDS)
def test_a_result_is_always_inside_the_dataset_or_an_error(
    length: int, start: int | None, stop: int | None
) -> None:
    inside = all(b is None or -length <= b <= length for b in (start, stop))
    try:
        first, last = resolve_rows((start, stop), length, "d")
    except RowsError as err:
        message = str(err)
    else:
        assert 0 <= first <= last <= length
        return
    assert not inside or "backwards" in message


@given(length=st.integers(0, 100), beyond=st.integers(1, 10**9))
def test_a_bound_past_either_end_is_never_clipped(length: int, beyond: int) -> None:
    for rows in [(0, length + beyond), (-length - beyond, None), slice(length + beyond, None)]:
        with pytest.raises(RowsError, match=f"'spikes', which has {length} rows"):
            resolve_rows(rows, length, "spikes")


@given(start=st.integers(0, 10**9), count=st.integers(0, 10**9), row=st.integers(0, 1 << 20))
def test_byte_range_is_the_offset_and_size_of_the_rows(start: int, count: int, row: int) -> None:
    assert byte_range(start, start + count, row) == (start * row, count * row)
