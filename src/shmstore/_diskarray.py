"""Arrays in plain files: ``.npy`` files and raw binary files.

The seed-compatible module and the command line read arrays that are not in
an HDF5 file.  Such an array is one block of one file: the data start at a
byte offset (the ``.npy`` header's length, or 0 for a raw file) and run in
C order, rows first.  :func:`open_disk_array` finds that block and checks
it against the file's size, so that a wrong shape or dtype is an error here
rather than a short read, a wrong result, or a ``SIGBUS`` later.

A file is taken for ``.npy`` when it starts with numpy's magic string
(``\\x93NUMPY``), whatever its name; anything else is raw, and needs its shape
and dtype from the caller.
"""

from __future__ import annotations

import math
import operator
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._dtype import check_supported
from ._dtype import empty as new_empty
from ._rows import resolve_rows
from .errors import ArgumentError, InvalidStoreError, LayoutError, StoreNotFoundError

__all__ = [
    "DiskArray",
    "check_file_size",
    "expected_nbytes",
    "open_disk_array",
    "parse_dtype",
    "parse_shape",
]

_NPY_MAGIC = b"\x93NUMPY"


def parse_shape(shape: object, what: str) -> tuple[int, ...]:
    """*shape* as a tuple of non-negative ints (an int is one dimension).

    :raises ArgumentError: not an int or a sequence of ints, or a negative size.
    """
    items: Any = (shape,) if isinstance(shape, (int, np.integer)) else shape
    try:
        if isinstance(items, (str, bytes)) or any(isinstance(n, bool) for n in items):
            raise TypeError("a bool or text is not a size")
        dims = tuple(operator.index(n) for n in items)
    except TypeError as err:
        raise ArgumentError(
            f"the shape of {what} must be an int or a sequence of ints, got {shape!r}"
        ) from err
    if any(n < 0 for n in dims):
        raise ArgumentError(f"the shape of {what} has a negative size: {shape!r}")
    return dims


def parse_dtype(dtype: object, what: str) -> np.dtype[Any]:
    """*dtype* as a numpy dtype that shmstore serves.

    :raises ArgumentError: numpy does not understand it.
    :raises UnsupportedDtypeError: it holds Python objects or variable-length data.
    """
    try:
        parsed: np.dtype[Any] = np.dtype(dtype)  # type: ignore[call-overload]
    except (TypeError, ValueError) as err:
        raise ArgumentError(f"{dtype!r} is not a numpy dtype (for {what}): {err}") from err
    check_supported(parsed, what)
    return parsed


def expected_nbytes(shape: tuple[int, ...], dtype: np.dtype[Any]) -> int:
    """Bytes of an array of *shape* and *dtype*: ``prod(shape) * itemsize``."""
    return math.prod(shape) * dtype.itemsize


@dataclass(frozen=True)
class DiskArray:
    """Where an array's bytes are in a plain file, and what they are.

    :param path: the file, absolute.
    :param kind: ``"npy"`` or ``"raw"``.
    :param offset: bytes before the first row (the ``.npy`` header).
    :param dtype: the dtype of the elements.
    :param shape: the array's shape, rows first.
    """

    path: Path
    kind: Literal["npy", "raw"]
    offset: int
    dtype: np.dtype[Any]
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Bytes of data (the whole array)."""
        return expected_nbytes(self.shape, self.dtype)

    @property
    def row_nbytes(self) -> int:
        """Bytes of one row."""
        return expected_nbytes(self.shape[1:], self.dtype)

    def rows(self, start_row: int | None, end_row: int | None) -> tuple[int, int]:
        """``(start, stop)`` for rows ``start_row`` to ``end_row`` (``None``: the ends).

        Negative values count from the end, as in numpy.

        :raises RowsError: a bound outside the array, or ``start > stop``.
        """
        return resolve_rows((start_row, end_row), self.shape[0], str(self.path))

    def memmap(self, start: int, stop: int) -> np.ndarray[Any, Any]:
        """A read-only ``np.memmap`` of rows ``[start, stop)`` (a plain empty array for none)."""
        shape = (stop - start, *self.shape[1:])
        if math.prod(shape) == 0:
            empty = new_empty(shape, self.dtype)
            empty.flags.writeable = False
            return empty
        return np.memmap(
            self.path,
            dtype=self.dtype,
            mode="r",
            offset=self.offset + start * self.row_nbytes,
            shape=shape,
            order="C",
        )


def _npy_header(path: Path) -> tuple[int, np.dtype[Any], tuple[int, ...], bool]:
    """Offset of the data, dtype, shape and Fortran order of the ``.npy`` file *path*."""
    fmt = np.lib.format
    with open(path, "rb") as f:
        try:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(f)
            else:
                # Version 3 (utf-8 field names) has no public reader; np.load parses it.
                mapped = np.load(path, mmap_mode="r", allow_pickle=False)
                return (
                    mapped.offset,
                    mapped.dtype,
                    mapped.shape,
                    bool(mapped.flags.f_contiguous and not mapped.flags.c_contiguous),
                )
        except (ValueError, OSError, SyntaxError) as err:
            raise InvalidStoreError(
                f"{path} starts like a .npy file but its header cannot be read ({err}): "
                "the file is damaged, or it is a raw file that happens to start with "
                "numpy's magic string"
            ) from err
        return f.tell(), dtype, tuple(shape), bool(fortran)


def open_disk_array(
    path: str | os.PathLike[str], shape: object = None, dtype: object = None
) -> DiskArray:
    """Describe the array in the file *path*: a ``.npy`` file, or raw bytes of *shape* and *dtype*.

    For a ``.npy`` file *shape* and *dtype* may be omitted (the header says
    them); given, they must agree with it.

    :raises StoreNotFoundError: (a ``FileNotFoundError``) no such file.
    :raises ArgumentError: a raw file without *shape* and *dtype*; its size
        is not ``prod(shape) * itemsize``; *shape* or *dtype* disagree with
        a ``.npy`` header; a shape without rows (``()``).
    :raises LayoutError: a ``.npy`` file in Fortran order (its rows are not contiguous).
    :raises InvalidStoreError: a damaged or truncated ``.npy`` file; a directory.
    :raises UnsupportedDtypeError: a dtype shmstore does not serve (Python objects, ...).
    """
    where = Path(os.path.abspath(os.fspath(path)))
    try:
        size = os.stat(where).st_size
        with open(where, "rb") as f:
            start = f.read(len(_NPY_MAGIC))
    except FileNotFoundError as err:
        raise StoreNotFoundError(f"no file at {where}: check the path") from err
    except IsADirectoryError as err:
        raise InvalidStoreError(f"{where} is a directory, not an array file") from err
    given_shape = None if shape is None else parse_shape(shape, str(where))
    given_dtype = None if dtype is None else parse_dtype(dtype, str(where))
    if start == _NPY_MAGIC:
        offset, npy_dtype, npy_shape, fortran = _npy_header(where)
        check_supported(npy_dtype, str(where))
        mismatch = [
            f"{what} {found} (not the {given} given)"
            for what, given, found in (
                ("shape", given_shape, npy_shape),
                ("dtype", given_dtype, npy_dtype),
            )
            if given is not None and given != found
        ]
        if mismatch:
            raise ArgumentError(
                f"{where} is a .npy file of {' and '.join(mismatch)}: omit shape and dtype "
                "to use the file's"
            )
        if fortran and len(npy_shape) > 1:
            raise LayoutError(
                f"{where} holds a Fortran-ordered array, whose rows are not contiguous: "
                "save it again with np.save(path, np.ascontiguousarray(arr))"
            )
        array = DiskArray(where, "npy", offset, npy_dtype, npy_shape)
        if size < offset + array.nbytes:
            raise InvalidStoreError(
                f"{where} is truncated: its header promises {array.nbytes} bytes of data after "
                f"{offset} bytes of header, the file has {size} bytes"
            )
    else:
        if given_shape is None or given_dtype is None:
            raise ArgumentError(
                f"{where} is a raw file (not .npy), which does not record its shape and dtype: "
                "pass both"
            )
        array = DiskArray(where, "raw", 0, given_dtype, given_shape)
        check_file_size(where, given_shape, given_dtype, size)
    if not array.shape:
        raise ArgumentError(f"{where} holds a scalar (shape ()): there are no rows to share")
    return array


def check_file_size(
    path: Path, shape: tuple[int, ...], dtype: np.dtype[Any], size: int | None = None
) -> None:
    """Check that the raw file *path* is exactly ``prod(shape) * itemsize`` bytes.

    :param size: the file's size in bytes, if already known.
    :raises ArgumentError: it is not, naming both sizes.
    """
    actual = os.stat(path).st_size if size is None else size
    wanted = expected_nbytes(shape, dtype)
    if actual != wanted:
        raise ArgumentError(
            f"{path} is {actual} bytes, but shape {shape} of dtype {dtype} needs {wanted} "
            "bytes: pass the shape and dtype the file was written with"
        )
