"""Row ranges: what ``rows`` may be, and that nothing is silently clipped."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shmstore import RowsError
from shmstore._rows import byte_range, resolve_rows


@given(length=st.integers(0, 1_000), data=st.data())
def test_in_range_slices_resolve_like_python_slicing(length: int, data: st.DataObject) -> None:
    bound = st.one_of(st.none(), st.integers(-length, length))
    start, stop = data.draw(bound), data.draw(bound)
    python_start, python_stop, _ = slice(start, stop).indices(length)
    if python_start > python_stop:  # empty in Python, an error here: rows run backwards
        with pytest.raises(RowsError, match="backwards"):
            resolve_rows(slice(start, stop), length, "d")
    else:
        assert resolve_rows(slice(start, stop), length, "d") == (python_start, python_stop)


@given(length=st.integers(0, 1_000), data=st.data())
def test_tuples_resolve_like_slices(length: int, data: st.DataObject) -> None:
    bound = st.one_of(st.none(), st.integers(-length, length))
    start, stop = data.draw(bound), data.draw(bound)
    try:
        from_slice = resolve_rows(slice(start, stop), length, "d")
    except RowsError:
        with pytest.raises(RowsError):
            resolve_rows((start, stop), length, "d")
        return
    assert resolve_rows((start, stop), length, "d") == from_slice


@given(length=st.integers(0, 100), beyond=st.integers(1, 100))
def test_a_bound_past_either_end_is_an_error_not_clipped(length: int, beyond: int) -> None:
    for rows in [(0, length + beyond), (-length - beyond, None), slice(length + beyond, None)]:
        with pytest.raises(RowsError, match=f"'spikes', which has {length} rows"):
            resolve_rows(rows, length, "spikes")


def test_none_means_every_row() -> None:
    assert resolve_rows(None, 7, "d") == (0, 7)


def test_rows_error_is_an_index_error_and_a_value_error() -> None:
    with pytest.raises(IndexError):
        resolve_rows((0, 9), 3, "d")
    with pytest.raises(ValueError, match="outside"):
        resolve_rows((0, 9), 3, "d")


@pytest.mark.parametrize("step", [2, -1, 0])
def test_a_step_other_than_one_is_refused(step: int) -> None:
    with pytest.raises(RowsError, match="contiguous"):
        resolve_rows(slice(0, 4, step), 10, "d")


def test_a_step_of_one_is_accepted() -> None:
    assert resolve_rows(slice(2, 4, 1), 10, "d") == (2, 4)


def test_backwards_rows_are_refused() -> None:
    with pytest.raises(RowsError, match="backwards"):
        resolve_rows((5, 2), 10, "d")


@pytest.mark.parametrize(
    "rows",
    [1.5, "0:3", [0, 3], (0,), (0, 1, 2), (0.0, 3), (True, 3), slice(0, 2.5), {0, 1}],
    ids=repr,
)
def test_rows_of_another_type_are_refused(rows: object) -> None:
    with pytest.raises(RowsError, match="'d'"):
        resolve_rows(rows, 10, "d")


def test_numpy_integers_are_accepted() -> None:
    import numpy as np

    assert resolve_rows((np.int64(1), np.int32(-1)), 10, "d") == (1, 9)


@given(start=st.integers(0, 10**6), count=st.integers(0, 10**6), row=st.integers(1, 4096))
def test_byte_range_is_offset_and_size_of_the_rows(start: int, count: int, row: int) -> None:
    assert byte_range(start, start + count, row) == (start * row, count * row)
