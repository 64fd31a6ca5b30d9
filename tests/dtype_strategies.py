"""Hypothesis strategies of every fixed-size numpy dtype, and arrays of them as raw bytes.

Shared by the store's and the seed module's dtype tests.  Arrays are made
from random bytes (``array_of``), so that a path which converts values
instead of copying bytes (a byte swap, a unicode or datetime cast) shows up
as a difference of bytes.  Bytes are compared field by field
(``field_bytes``): the padding between the fields of a structured dtype is
no data, and numpy's own copies do not keep it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

_ORDERS = st.sampled_from("<>")
_UNITS = ["Y", "M", "W", "D", "h", "m", "s", "ms", "us", "ns", "ps", "fs", "as"]


def _ordered(kind: str, sizes: list[int]) -> st.SearchStrategy[np.dtype[Any]]:
    return st.builds(
        lambda order, size: np.dtype(f"{order}{kind}{size}"), _ORDERS, st.sampled_from(sizes)
    )


def _times(kind: str) -> st.SearchStrategy[np.dtype[Any]]:
    unit = st.none() | st.tuples(st.integers(1, 25), st.sampled_from(_UNITS))
    return st.builds(
        lambda order, u: np.dtype(
            f"{order}{kind}8" + ("" if u is None else f"[{u[0] if u[0] > 1 else ''}{u[1]}]")
        ),
        _ORDERS,
        unit,
    )


SCALAR_DTYPES: st.SearchStrategy[np.dtype[Any]] = st.one_of(
    st.sampled_from([np.dtype("|b1"), np.dtype("|i1"), np.dtype("|u1")]),
    _ordered("i", [2, 4, 8]),
    _ordered("u", [2, 4, 8]),
    _ordered("f", [2, 4, 8]),
    _ordered("c", [8, 16]),
    st.sampled_from([np.dtype(np.longdouble), np.dtype(np.clongdouble)]),
    st.builds(lambda n: np.dtype(f"|S{n}"), st.integers(1, 9)),
    _ordered("U", [1, 2, 3, 5]),
    st.builds(lambda n: np.dtype(f"|V{n}"), st.integers(1, 9)),
    _times("M"),
    _times("m"),
)
"""Every kind of fixed-size scalar dtype, in both byte orders where it has one."""


@st.composite
def _structured(draw: st.DrawFn, fields: st.SearchStrategy[np.dtype[Any]]) -> np.dtype[Any]:
    """A structured dtype of some *fields*, with gaps, trailing padding and sub-arrays."""
    count = draw(st.integers(1, 4))
    names, formats, offsets = [], [], []
    end = 0
    for index in range(count):
        field = draw(fields)
        shape = draw(st.sampled_from([(), (), (2,), (1, 3)]))
        if shape:
            field = np.dtype((field, shape))
        end += draw(st.integers(0, 3))  # a gap before the field
        names.append(f"f{index}")
        formats.append(field)
        offsets.append(end)
        end += field.itemsize
    itemsize = end + draw(st.integers(0, 3))  # padding after the last field
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": itemsize})


FIXED_DTYPES: st.SearchStrategy[np.dtype[Any]] = st.recursive(
    SCALAR_DTYPES, _structured, max_leaves=6
)
"""Every fixed-size dtype: the scalars, and structured dtypes of them, nested."""


def array_of(dtype: np.dtype[Any], shape: tuple[int, ...], seed: int) -> np.ndarray[Any, Any]:
    """A read-only array of *shape* and *dtype* holding random bytes (padding and all)."""
    nbytes = int(np.prod(shape)) * dtype.itemsize
    data = np.random.default_rng(seed).bytes(nbytes)
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def field_bytes(array: np.ndarray[Any, Any]) -> bytes:
    """The bytes of every field of *array* (all of it for an unstructured dtype), no padding."""
    if array.dtype.names is None:
        return array.tobytes()
    return b"".join(field_bytes(array[name]) for name in array.dtype.names)
