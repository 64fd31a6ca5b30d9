"""Named arrays in the node's shared memory, and shared copies of the original's files.

The ``shared_array_*`` functions and :func:`memmap_from_disk` of
:mod:`shmstore.shared_numpy_store`: a named array's cache key comes from its
name alone, so any process of the node finds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, SupportsIndex

import numpy as np

from ._cache import Cache
from ._diskarray import (
    check_file_size,
    expected_nbytes,
    open_disk_array,
    parse_dtype,
    parse_shape,
)
from ._dtype import check_supported, dtype_to_spec
from ._fill import FileBlock
from ._rows import resolve_rows
from ._seed_common import SharedArrayExistsError, default_cache
from ._segment import FileIdentity, SegmentHeader, SegmentSource, segment_key
from .errors import (
    ArgumentError,
    ReadOnlyError,
    SegmentError,
    SegmentExistsError,
    SegmentNotFoundError,
    StoreNotFoundError,
)

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, DTypeLike

_NAME_LIMIT = 255  # characters in the name of a shared array


def _check_shared_name(name: object) -> str:
    if not isinstance(name, str) or not name or "\0" in name or len(name) > _NAME_LIMIT:
        raise ArgumentError(
            f"a shared array's name must be a non-empty str of at most {_NAME_LIMIT} "
            f"characters without NUL, got {name!r}"
        )
    return name


def _name_key(name: str) -> str:
    """The cache key of the shared array *name*: from the name alone, so any process finds it."""
    return hashlib.sha256(f"shmstore-shared-array/1\n{name}".encode()).hexdigest()[:32]


class SharedArrayHandle:
    """A named array in the node's shared memory, as the ``shared_array_*`` functions return.

    Like the original's handle (``multiprocessing.shared_memory.SharedMemory``):
    ``name``, :attr:`buf`, ``size``, :meth:`close`, :meth:`unlink`.
    It keeps the array mapped until :meth:`close`; pickled, it attaches by
    name in the process that unpickles it, writable if it was.

    :ivar name: the name other processes attach with
        (:func:`shared_array_from_shared_mem_name`).
    :ivar writable: whether this handle's array may be written.
    """

    def __init__(
        self, name: str, array: np.ndarray[Any, Any], cache: Cache, writable: bool = False
    ) -> None:
        self.name = name
        self._cache = cache
        self._array: np.ndarray[Any, Any] | None = array
        self.writable = writable
        self.shape: tuple[int, ...] = array.shape
        self.dtype: np.dtype[Any] = array.dtype
        self.size = array.nbytes
        """Bytes of data."""

    @property
    def key(self) -> str:
        """The segment's key in the cache (as ``Cache.entries`` and ``shmstore ls`` show it)."""
        return _name_key(self.name)

    @property
    def buf(self) -> memoryview:
        """A memoryview of the bytes: writable when the handle is, else read-only.

        :raises ValueError: the handle is closed.
        """
        if self._array is None:
            raise ValueError(f"the handle of shared array {self.name!r} is closed")
        if not self.size:
            return memoryview(bytearray() if self.writable else b"")
        return self._array.reshape(-1).view(np.uint8).data

    def close(self) -> None:
        """Drop this handle's mapping (idempotent).

        Arrays returned with the handle stay valid while referenced: the
        pages go when the last of them is garbage.  A named array stays in
        the cache until :meth:`unlink`, or until ``shmstore evict`` or
        ``gc`` once no process maps it; a copy of a file (made by
        :func:`shared_array_from_disk`) may be evicted once no process maps it.
        """
        self._array = None

    def unlink(self) -> None:
        """Remove the name: no process can attach the array any more (idempotent).

        Processes that map it keep their pages until they drop them.
        """
        self._cache.unlink(self.key)

    def __reduce__(self) -> tuple[Any, tuple[str, Cache, bool]]:
        return (_attach_handle, (self.name, self._cache, self.writable))

    def __repr__(self) -> str:
        state = "closed" if self._array is None else "open"
        access = "writable" if self.writable else "read-only"
        return (
            f"<SharedArrayHandle {self.name!r}: {self.shape} {self.dtype}, "
            f"{self.size} bytes, {access}, {state}>"
        )


def _attach_handle(name: str, cache: Cache, writable: bool = False) -> SharedArrayHandle:
    return shared_array_from_shared_mem_name(name, writable=writable, cache=cache)[0]


def _memory_source(name: str, shape: tuple[int, ...]) -> SegmentSource:
    """What a named array made in memory is: no file, its name, its rows."""
    return SegmentSource(
        path="<memory>",
        identity=(),
        dataset=name,
        version=0,
        start=0,
        stop=shape[0] if shape else 0,
    )


def _make_named(
    name: str | None,
    dtype: np.dtype[Any],
    shape: tuple[int, ...],
    fill: Callable[[np.ndarray[Any, Any]], object] | None,
    *,
    writable: bool,
    cache: Cache | None,
) -> tuple[SharedArrayHandle, np.ndarray[Any, Any]]:
    """Make the named array *name* in the cache (see :meth:`Cache.create`)."""
    name = _check_shared_name(f"shmstore-{secrets.token_hex(8)}" if name is None else name)
    found = default_cache(cache)
    try:
        shared = found.create(
            _name_key(name), _memory_source(name, shape), dtype, shape, fill, writable=writable
        )
    except SegmentExistsError as err:
        raise SharedArrayExistsError(
            f"a shared array named {name!r} exists already in {found.directory}: attach it "
            f"with shared_array_from_shared_mem_name({name!r}), or unlink it first"
        ) from err
    return SharedArrayHandle(name, shared, found, writable), shared


def shared_array_from_numpy(
    arr: ArrayLike,
    name: str | None = None,
    *,
    writable: bool = True,
    cache: Cache | None = None,
) -> tuple[SharedArrayHandle, np.ndarray[Any, Any]]:
    """Copy *arr* into the node's shared memory, as the named array *name*.

    Every process of the node attaches it by name
    (:func:`shared_array_from_shared_mem_name`) and sees the same pages:
    with *writable*, as in the original, a write by one is seen by all
    (output buffers that workers fill in place; who writes what, when, is
    the caller's business: nothing is locked).  The cache's budget counts
    it but never evicts it: it lives until ``handle.unlink()``, or
    ``shmstore evict``/``gc`` once no process maps it, or until the cache
    directory (``$JOB_SHMTMPDIR`` of a SLURM job) is removed.

    :param arr: the data: a numpy array, or anything ``numpy.asarray`` takes.
    :param name: what other processes attach it by; default a new unique name.
    :param writable: ``False`` makes it read-only for every process (what
        this function gave before writable arrays existed); default ``True``.
    :param cache: the node cache to make it in; default shmstore's
        (``$SHMSTORE_DIR``, ``$JOB_SHMTMPDIR/shmstore``, ``/dev/shm/shmstore-<uid>``).
    :returns: the handle and the shared array.
    :raises SharedArrayExistsError: (a ``FileExistsError``) a shared array
        of that name exists: attach it with
        :func:`shared_array_from_shared_mem_name`, or unlink it first.
    :raises ArgumentError: a bad *name* (empty, too long, or with a NUL character).
    :raises UnsupportedDtypeError: a dtype holding Python objects.
    :raises CacheFullError: no room in the cache, even after evicting every
        unused cached copy (named arrays are not evicted).
    """
    source_array = np.asarray(arr)
    check_supported(source_array.dtype, "the array")
    return _make_named(
        name,
        source_array.dtype,
        source_array.shape,
        lambda out: np.copyto(out, source_array),
        writable=writable,
        cache=cache,
    )


def shared_array_empty(
    shape: SupportsIndex | Sequence[SupportsIndex],
    dtype: DTypeLike = np.float64,
    name: str | None = None,
    *,
    cache: Cache | None = None,
) -> tuple[SharedArrayHandle, np.ndarray[Any, Any]]:
    """Make a writable named array of *shape* and *dtype*, filled with zeros.

    The original made such output buffers with ``SharedMemory(name,
    create=True, size=...)`` and an ``np.ndarray`` on its buffer; this is
    that in one call.  Shared, counted and kept as
    :func:`shared_array_from_numpy` with ``writable=True``.

    :param shape: the array's shape: an int (one dimension) or a tuple of ints.
    :param dtype: its dtype, anything ``numpy.dtype`` takes; default ``float64``.
    :param name: what other processes attach it by; default a new unique name.
    :param cache: the node cache to make it in; default shmstore's.
    :returns: the handle and the shared array (writable).
    :raises SharedArrayExistsError: a shared array of that name exists.
    :raises ArgumentError: a bad shape, dtype or *name*.
    :raises UnsupportedDtypeError: a dtype holding Python objects.
    :raises CacheFullError: no room in the cache.
    """
    dims = parse_shape(shape, "a shared array")
    item = parse_dtype(dtype, "a shared array")
    return _make_named(name, item, dims, None, writable=True, cache=cache)


def _disk_source(
    *, path: Path, kind: str, dtype: np.dtype[Any], shape: tuple[int, ...], start: int, stop: int
) -> SegmentSource:
    """What a copy of rows of an array file is a copy of: the file as it is now, read how."""
    how = json.dumps({"kind": kind, "dtype": dtype_to_spec(dtype), "shape": list(shape)})
    return SegmentSource(
        path=str(path),
        identity=(FileIdentity.of(path),),
        dataset=how,
        version=0,
        start=start,
        stop=stop,
    )


def shared_array_from_disk(  # noqa: PLR0917 - the original's positional signature
    path: str | os.PathLike[str],
    shape: SupportsIndex | Sequence[SupportsIndex] | None = None,
    dtype: DTypeLike | None = None,
    name: str | None = None,
    start_row: int | None = None,
    end_row: int | None = None,
    *,
    cache: Cache | None = None,
) -> tuple[SharedArrayHandle, np.ndarray[Any, Any]]:
    """Load rows ``start_row`` to ``end_row`` of an array file into the node's shared memory.

    The file is a ``.npy`` file (*shape* and *dtype* read from its header
    when omitted, checked when given) or a raw binary file of *shape* and
    *dtype* (both needed; its size must be theirs).  Once per node: jobs
    asking for the same rows of the same file at once cause one load, and
    map the same pages.

    :param path: the array file.
    :param shape: the whole array's shape (an int or a tuple of ints);
        needed for a raw file, checked against a ``.npy`` header.
    :param dtype: its dtype, anything ``numpy.dtype`` takes; needed for a
        raw file, checked against a ``.npy`` header.
    :param name: the shared array's name; default one made from the file's
        name and identity and the rows, so that every job asking for them
        shares one copy, and a changed file gets a new one.
    :param start_row: the first row (``None``: 0; negative counts from the end).
    :param end_row: the row after the last (``None``: the end).
    :param cache: the node cache to load into; default shmstore's.
    :returns: the handle and the read-only shared array.
    :raises SharedArrayExistsError: a shared array *name* exists holding
        something else (other rows, another file, or this file before it changed).
    :raises ArgumentError: a raw file without shape and dtype, or of another size;
        a bad shape or dtype; a bad *name*.
    :raises RowsError: rows outside the array.
    :raises StoreNotFoundError: (a ``FileNotFoundError``) no such file.
    :raises InvalidStoreError: a damaged or truncated ``.npy`` file, or a directory.
    :raises LayoutError: a ``.npy`` file in Fortran order.
    :raises UnsupportedDtypeError: a dtype holding Python objects.
    :raises CacheFullError: no room in the cache.
    """
    disk = open_disk_array(path, shape, dtype)
    start, stop = disk.rows(start_row, end_row)
    source = _disk_source(
        path=disk.path, kind=disk.kind, dtype=disk.dtype, shape=disk.shape, start=start, stop=stop
    )
    if name is None:
        name = f"{disk.path.name[:200]}-{segment_key(source)[:16]}"
    name = _check_shared_name(name)
    found = default_cache(cache)
    key = _name_key(name)
    if found.find(key, recheck=True) is not None:
        _check_holds(found, key, name, source)
    fill = FileBlock(
        disk.path, disk.offset + start * disk.row_nbytes, f"{disk.path.name}[{start}:{stop}]"
    )
    shared = found.get(source, disk.dtype, (stop - start, *disk.shape[1:]), fill, key=key)
    _check_holds(found, key, name, source)
    return SharedArrayHandle(name, shared, found), shared


def _check_holds(cache: Cache, key: str, name: str, source: SegmentSource) -> None:
    held = cache.header(key).source
    if held != source:
        raise SharedArrayExistsError(
            f"the shared array {name!r} holds {_describe(held)}, not {_describe(source)} as it "
            f"is now: unlink it (shared_array_from_shared_mem_name({name!r})[0].unlink()) "
            "or choose another name"
        )


def _describe(source: SegmentSource) -> str:
    if not source.identity:
        return f"an array copied from memory ({source.stop} rows)"
    return f"rows {source.start}:{source.stop} of {source.path}"


def memmap_from_disk(  # noqa: PLR0917 - the original's positional signature
    path: str | os.PathLike[str],
    shape: SupportsIndex | Sequence[SupportsIndex] | None = None,
    dtype: DTypeLike | None = None,
    name: str | None = None,
    start_row: int | None = None,
    end_row: int | None = None,
) -> np.ndarray[Any, Any]:
    """A read-only ``np.memmap`` of rows ``start_row`` to ``end_row`` of an array file.

    Files as for :func:`shared_array_from_disk`.  *name* is accepted for the
    original's signature and unused (a memory map has no name).

    :param path: the array file.
    :param shape: the whole array's shape, as for :func:`shared_array_from_disk`.
    :param dtype: its dtype, as for :func:`shared_array_from_disk`.
    :param name: unused.
    :param start_row: the first row (``None``: 0; negative counts from the end).
    :param end_row: the row after the last (``None``: the end).
    :returns: a read-only :class:`numpy.memmap` of the rows.
    :raises ArgumentError, RowsError, StoreNotFoundError, InvalidStoreError, LayoutError:
        as :func:`shared_array_from_disk`.
    """
    del name
    disk = open_disk_array(path, shape, dtype)
    start, stop = disk.rows(start_row, end_row)
    return disk.memmap(start, stop)


def shared_array_from_shared_mem_name(
    fname: str,
    shape: SupportsIndex | Sequence[SupportsIndex] | None = None,
    dtype: DTypeLike | None = None,
    *,
    writable: bool | None = None,
    cache: Cache | None = None,
) -> tuple[SharedArrayHandle, np.ndarray[Any, Any]]:
    """Attach the shared array *fname* made by any process of the node.

    A shared array describes itself: *shape* and *dtype* may be omitted;
    given, they are checked.

    :param fname: the shared array's name, as its maker gave or chose it
        (``handle.name``).
    :param shape: its shape, to check (an int or a tuple of ints); default: not checked.
    :param dtype: its dtype, to check; default: not checked.
    :param writable: ``None``: as it was made (writable for a named array
        made writable, as the original's were; read-only for a copy of a
        file); ``True``: writable, or an error; ``False``: read-only (a
        process that only reads cannot write by mistake).
    :param cache: the node cache it is in; default shmstore's.
    :returns: the handle and the shared array.
    :raises SegmentNotFoundError: (a ``FileNotFoundError``) no shared array
        of that name: never made, or unlinked (or, for a copy of a file,
        evicted once no process mapped it).
    :raises ReadOnlyError: (a ``PermissionError``) *writable* is ``True``
        and the array is a copy of a file or was made with ``writable=False``.
    :raises ArgumentError: *shape* or *dtype* given and not the array's.
    :raises SegmentError: it is a copy of a file that has changed since.
    """
    name = _check_shared_name(fname)
    found = default_cache(cache)
    key = _name_key(name)
    try:
        shared = found.attach(key, recheck=True)  # read-only first: what the name holds now
    except SegmentNotFoundError as err:
        raise SegmentNotFoundError(
            f"no shared array named {name!r} in {found.directory}: it was never made, or "
            "was unlinked, or evicted once no process mapped it; make it with "
            "shared_array_from_numpy, shared_array_empty or shared_array_from_disk"
        ) from err
    header = found.header(key)
    _check_current(header, name)
    wanted = []
    what = f"shared array {name!r}"
    if shape is not None and (given := parse_shape(shape, what)) != shared.shape:
        wanted.append(f"shape {given}")
    if dtype is not None and (given_dtype := parse_dtype(dtype, what)) != shared.dtype:
        wanted.append(f"dtype {given_dtype}")
    if wanted:
        raise ArgumentError(
            f"the shared array {name!r} is {shared.shape} {shared.dtype}, not the "
            f"{' and '.join(wanted)} given: omit shape and dtype to take its own"
        )
    if writable is None:
        writable = header.writable
    if writable:
        try:
            shared = found.attach(key, recheck=True, writable=True)
        except ReadOnlyError as err:
            made = (
                "was made with writable=False"
                if header.named
                else "is a copy of a file, which is only ever shared read-only"
            )
            raise ReadOnlyError(
                f"the shared array {name!r} {made}: attach it with writable=False (or None)"
            ) from err
    return SharedArrayHandle(name, shared, found, writable), shared


def _check_current(header: SegmentHeader, name: str) -> None:
    for identity in header.source.identity:
        if not identity.is_current():
            raise SegmentError(
                f"the shared array {name!r} is a copy of {identity.path}, which has changed "
                "or is gone since it was loaded: unlink it and load the file again"
            )


# -- the original's helpers ---------------------------------------------------------


def get_offset_and_size_in_bytes(
    start_row: int | None, end_row: int | None, shape: object, dtype: object
) -> tuple[int, int, int, int, tuple[int, ...]]:
    """Where rows ``start_row`` to ``end_row`` of a C-ordered array of *shape* and *dtype* are.

    :returns: ``(start_row, end_row, bytes_offset, bytes_size, final_shape)``:
        the rows resolved (``None`` is an end, negative values count from
        the end), the byte offset of the first row from the array's start,
        the bytes of the rows, and their shape.
    :raises RowsError: rows outside the array, or ``start_row > end_row``.
    :raises ArgumentError: a bad shape or dtype, or a shape without rows.
    """
    dims = parse_shape(shape, "the array")
    if not dims:
        raise ArgumentError("shape () has no rows")
    item = parse_dtype(dtype, "the array")
    start, stop = resolve_rows((start_row, end_row), dims[0], "the array")
    row_bytes = expected_nbytes(dims[1:], item)
    return start, stop, start * row_bytes, (stop - start) * row_bytes, (stop - start, *dims[1:])


def check_filesize_matches_shape(
    path: str | os.PathLike[str], shape: object, dtype: object
) -> None:
    """Check that the raw file *path* holds exactly an array of *shape* and *dtype*.

    :raises ArgumentError: (a ``ValueError``) its size is not
        ``prod(shape) * itemsize`` bytes; the message gives both.
    :raises StoreNotFoundError: (a ``FileNotFoundError``) no such file.
    """
    where = Path(os.fspath(path))
    try:
        size = os.stat(where).st_size
    except FileNotFoundError as err:
        raise StoreNotFoundError(f"no file at {where}: check the path") from err
    check_file_size(where, parse_shape(shape, str(where)), parse_dtype(dtype, str(where)), size)


# -- the store -----------------------------------------------------------------------
