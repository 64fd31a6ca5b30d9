"""Row ranges: what a user may pass as ``rows`` and its arithmetic.

``rows`` is ``None`` (every row), a ``slice`` with step 1 (or ``None``), or a
``(start, stop)`` tuple of integers, either of which may be ``None`` (the
start or the end, as in a slice).  Negative indices count from the end, as
in numpy.  Unlike numpy slicing nothing is clipped: a bound outside
``[-length, length]`` is an error, because a silently shorter slice in a
scientific job is a wrong result found weeks later.
"""

from __future__ import annotations

import operator
from typing import Any

from .errors import RowsError

__all__ = ["RowsLike", "byte_range", "resolve_rows"]

RowsLike = slice | tuple[int | None, int | None] | None
"""What the public API accepts as ``rows``."""


def _index(value: Any, what: str, name: str) -> int:
    if isinstance(value, bool):
        raise RowsError(f"{what} of rows for {name!r} must be an integer, got the bool {value!r}")
    try:
        return operator.index(value)
    except TypeError as err:
        raise RowsError(
            f"{what} of rows for {name!r} must be an integer, got {type(value).__name__} {value!r}"
        ) from err


def _bound(value: int, length: int, what: str, name: str) -> int:
    resolved = value + length if value < 0 else value
    if not 0 <= resolved <= length:
        raise RowsError(
            f"{what} {value} is outside dataset {name!r}, which has {length} rows: "
            f"use a value from {-length} to {length}"
        )
    return resolved


def resolve_rows(rows: object, length: int, name: str) -> tuple[int, int]:
    """Turn *rows* into ``(start, stop)`` with ``0 <= start <= stop <= length``.

    :param rows: ``None``, a ``slice`` with step 1, or a ``(start, stop)`` tuple.
    :param length: number of rows of the dataset (its axis 0).
    :param name: the dataset's name, for messages.
    :raises RowsError: a bound outside the dataset, a step other than 1,
        ``start > stop``, or *rows* of another type.
    """
    if rows is None:
        return 0, length
    if isinstance(rows, slice):
        if rows.step is not None and _index(rows.step, "step", name) != 1:
            raise RowsError(
                f"rows for {name!r} must be contiguous, got step {rows.step}: "
                "read the contiguous range and slice it with numpy"
            )
        start_raw = 0 if rows.start is None else _index(rows.start, "start", name)
        stop_raw = length if rows.stop is None else _index(rows.stop, "stop", name)
    elif isinstance(rows, tuple):
        if len(rows) != 2:
            raise RowsError(
                f"rows for {name!r} as a tuple must be (start, stop), got {len(rows)} items"
            )
        start_raw = 0 if rows[0] is None else _index(rows[0], "start", name)
        stop_raw = length if rows[1] is None else _index(rows[1], "stop", name)
    else:
        raise RowsError(
            f"rows for {name!r} must be None, a slice or a (start, stop) tuple, "
            f"got {type(rows).__name__} {rows!r}"
        )
    start = _bound(start_raw, length, "start", name)
    stop = _bound(stop_raw, length, "stop", name)
    if start > stop:
        raise RowsError(
            f"rows for {name!r} run backwards: start {start_raw} is after stop {stop_raw} "
            f"(dataset length {length})"
        )
    return start, stop


def byte_range(start: int, stop: int, row_nbytes: int) -> tuple[int, int]:
    """Byte offset and size of rows ``[start, stop)`` of C-ordered rows of *row_nbytes* bytes."""
    return start * row_nbytes, (stop - start) * row_nbytes
