"""The API of the ``shared_numpy_store`` module shmstore descends from, on shmstore.

Code written for ``data_base.isf_data_base.IO.LoaderDumper.shared_numpy_store``
keeps working after one change of import::

    from shmstore import shared_numpy_store

Everything here is built on :mod:`shmstore`'s store and node cache, and keeps
their guarantees.  Where this module differs from the original, it is to fix
what the original got wrong:

* A :class:`SharedNumpyStore` keeps its arrays in one HDF5 file,
  ``shared_numpy_store.h5`` in its working directory, every array
  appendable (contiguous, in a raw file beside the HDF5 file), so all three
  load modes work after :meth:`~SharedNumpyStore.save` and after
  :meth:`~SharedNumpyStore.append_save` alike.
* Copies of saved arrays in shared memory (``load(mode="shared_memory")``,
  :func:`shared_array_from_disk`) are read-only: a worker cannot corrupt
  what the other processes of the node see.  Named arrays made from numpy
  or empty (:func:`shared_array_from_numpy`, :func:`shared_array_empty`)
  are writable, as the original's were: output buffers that workers fill
  in place.  Concurrent writes to them are the caller's business.
* A shared copy is never stale: ``load`` checks the files (one ``stat``
  each) and serves the current version after any change, here or in
  another process.
* Jobs that load the same rows at once cause one load; a killed loader
  leaves nothing half written; a full ``/dev/shm`` gives
  :class:`~shmstore.CacheFullError`, never a ``SIGBUS``.
* Errors are exceptions that say what was wrong and what to do, never an
  ``assert``; where the original raised ``ValueError`` (or asserted), the
  error here is a ``ValueError`` too.
* :func:`dump` writes a JSON description (``Loader.json``), never a pickle:
  loading a pickle runs code.
* Shared memory lives in shmstore's cache directory: ``$SHMSTORE_DIR``, else
  ``$JOB_SHMTMPDIR/shmstore`` (SLURM), else ``/dev/shm/shmstore-<uid>``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import warnings
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, SupportsIndex

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._cache import Cache
from ._diskarray import (
    DiskArray,
    check_file_size,
    expected_nbytes,
    open_disk_array,
    parse_dtype,
    parse_shape,
)
from ._dtype import check_supported, dtype_to_spec
from ._dtype import empty as new_empty
from ._fill import FileBlock
from ._handle import Handle, cache_for
from ._load import BLOCK_BYTES
from ._original import Original, originals_named, scan
from ._rows import resolve_rows
from ._segment import FileIdentity, SegmentHeader, SegmentSource, segment_key
from ._signals import Uninterruptible
from ._store import Store, check_name, check_rows_fit, open_store

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, DTypeLike

from .errors import (
    ArgumentError,
    ArrayNotFoundError,
    LayoutError,
    ManifestError,
    ReadOnlyError,
    SegmentError,
    SegmentExistsError,
    SegmentNotFoundError,
    ShmStoreError,
    StoreNotFoundError,
    UnsupportedDtypeError,
)

__all__ = [
    "LOADER_FILE",
    "STORE_FILE",
    "ArrayNotInStoreError",
    "ImportReport",
    "Loader",
    "LoaderDescription",
    "NotInSharedMemoryError",
    "OriginalFile",
    "OriginalNotImportedError",
    "SharedArrayExistsError",
    "SharedArrayHandle",
    "SharedNumpyStore",
    "Uninterruptible",
    "check",
    "dump",
    "memmap_from_disk",
    "shared_array_empty",
    "shared_array_from_disk",
    "shared_array_from_numpy",
    "shared_array_from_shared_mem_name",
]

STORE_FILE = "shared_numpy_store.h5"
"""The HDF5 file of a :class:`SharedNumpyStore`, inside its working directory."""

LOADER_FILE = "Loader.json"
"""The loader description :func:`dump` writes and :meth:`Loader.get` reads."""

_RESERVED_NAMES = ("Loader.pickle", "Loader.json")  # the data base's own files
_LOAD_MODES = ("shared_memory", "memmap", "memory")
_NAME_LIMIT = 255  # characters in the name of a shared array
# The original kept each array in a raw file named <name>__<shape joined by _>__<dtype>.


# -- errors -------------------------------------------------------------------------


class NotInSharedMemoryError(SegmentNotFoundError, ValueError):
    """``load(..., mode="shared_memory", allow_create_shm=False)`` found no copy on the node.

    A ``ValueError`` as in the original, and a :class:`~shmstore.SegmentNotFoundError`.
    """


class ArrayNotInStoreError(ArrayNotFoundError, ValueError):
    """No array of that name was saved: a ``KeyError`` and, as in the original, a ``ValueError``."""


class SharedArrayExistsError(SegmentExistsError):
    """A shared array of that name exists already (with other contents): a ``FileExistsError``."""


class OriginalNotImportedError(ShmStoreError, FileExistsError):
    """A file of the original module holds the array being written, and it is not imported.

    Writing the name would hide the file's rows: run
    :meth:`SharedNumpyStore.import_original` first.
    """


# -- what import_original did ----------------------------------------------------------

_Outcome = Literal["imported", "skipped", "refused"]


class OriginalFile(BaseModel):
    """One file of the original module, and what :meth:`SharedNumpyStore.import_original` did.

    :param file: the file's name in the working directory.
    :param name: the array its name says it holds (``None`` when it says none).
    :param outcome: ``"imported"``, ``"skipped"`` (in the store already, or
        no array) or ``"refused"`` (an array that cannot be imported until
        fixed; :attr:`reason` says what to do).
    :param reason: why, in words.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    file: str
    name: str | None
    outcome: Literal["imported", "skipped", "refused"]
    reason: str


class ImportReport(BaseModel):
    """What :meth:`SharedNumpyStore.import_original` did with each file, by file name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    files: tuple[OriginalFile, ...] = ()

    @property
    def imported(self) -> list[str]:
        """The names of the arrays imported, sorted."""
        return sorted(f.name for f in self.files if f.outcome == "imported" and f.name)

    @property
    def skipped(self) -> list[OriginalFile]:
        """The files skipped: arrays in the store already, and files that hold no array."""
        return [f for f in self.files if f.outcome == "skipped"]

    @property
    def refused(self) -> list[OriginalFile]:
        """The files that could not be imported, each with what to do."""
        return [f for f in self.files if f.outcome == "refused"]

    def __str__(self) -> str:
        if not self.files:
            return "no files of the original shared_numpy_store"
        return "\n".join(f"{f.file}: {f.outcome} ({f.reason})" for f in self.files)


# -- shared arrays by name ---------------------------------------------------------


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


def _cache(cache: Cache | None) -> Cache:
    return cache_for(None, None) if cache is None else cache


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
    found = _cache(cache)
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
    found = _cache(cache)
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
    found = _cache(cache)
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


def _get_offset_and_size_in_bytes(
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


def _check_filesize_matches_shape(
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


def _check_array_name(name: object) -> str:
    if not isinstance(name, str):
        raise ArgumentError(f"an array's name must be a str, got {type(name).__name__} {name!r}")
    if name in _RESERVED_NAMES:
        raise ArgumentError(f"{name!r} is reserved for the data base's loader; choose another name")
    if "__" in name:
        raise ArgumentError(
            f"{name!r} contains '__', which the original shared_numpy_store reserves in its "
            "file names; choose a name without a double underscore"
        )
    return check_name(name)


def _refuse_hiding(store: SharedNumpyStore, name: str) -> None:
    """Refuse to write *name* into *store* while a file of the original holds it and it does not.

    The write would hide the file's rows: a later
    :meth:`SharedNumpyStore.import_original` skips a name the store holds.
    One ``scandir`` of the working directory; the store is opened only when
    such a file is there.

    :raises OriginalNotImportedError: there is such a file.
    """
    files = originals_named(store.path.parent, name)
    if not files or name in store:
        return
    raise OriginalNotImportedError(
        f"{files[0].name} in {store.working_dir} holds the original shared_numpy_store's "
        f"array {name!r}, which is not in the store yet: writing {name!r} now would hide "
        "its rows. Run import_original() first (append_save then adds to its rows), or "
        "move the file away if its rows are not wanted"
    )


def _reopen(working_dir: str, cache: Cache | None) -> SharedNumpyStore:
    return SharedNumpyStore(working_dir, cache=cache)


def _warn_unflushed(pending: dict[str, list[np.ndarray[Any, Any]]], where: str) -> None:
    if pending:
        warnings.warn(
            f"a SharedNumpyStore of {where} was dropped with rows appended with "
            f"autoflush=False and never flushed ({', '.join(pending)}); they are lost: "
            "call flush() or close()",
            ResourceWarning,
            stacklevel=1,
        )


class SharedNumpyStore:
    """Numpy arrays saved in *working_dir*, shared between the processes of a node.

    The arrays live in ``shared_numpy_store.h5`` in *working_dir* (created
    when the first array is saved; the directory is created now if absent).
    A ``SharedNumpyStore`` holds no file open and no lock: every process
    may make its own on the same directory; writes are serialised by the
    store's lock, and readers always see whole arrays.

    :param working_dir: the directory of the store (relative paths are
        taken from the current directory).
    :param cache: the node cache shared copies go to; default shmstore's
        (``$SHMSTORE_DIR``, ``$JOB_SHMTMPDIR/shmstore``, ``/dev/shm/shmstore-<uid>``).
    :raises ArgumentError: *working_dir* is not a path, or is a file.
    """

    def __init__(self, working_dir: str | os.PathLike[str], *, cache: Cache | None = None) -> None:
        if not isinstance(working_dir, (str, os.PathLike)) or not os.fspath(working_dir):
            raise ArgumentError(f"working_dir must be a path, got {working_dir!r}")
        self.working_dir = os.fspath(working_dir)
        directory = Path(os.path.abspath(self.working_dir))
        if directory.exists() and not directory.is_dir():
            raise ArgumentError(f"working_dir {directory} is a file, not a directory")
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / STORE_FILE
        """The HDF5 file holding the arrays."""
        self._cache = cache
        # (name, start_row, end_row) as load was called -> the handle and array served.
        self._shared: dict[tuple[str, int | None, int | None], tuple[Handle, np.ndarray[Any, Any]]]
        self._shared = {}
        self._pending: dict[str, list[np.ndarray[Any, Any]]] = {}
        weakref.finalize(self, _warn_unflushed, self._pending, str(self.path))

    @property
    def cache(self) -> Cache:
        """The node cache of the shared copies."""
        return _cache(self._cache)

    def __repr__(self) -> str:
        return f"SharedNumpyStore({self.working_dir!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # A worker gets its own store of the same directory: the arrays this
        # process serves and the rows waiting for its flush stay here.
        return (_reopen, (self.working_dir, self._cache))

    def __enter__(self) -> SharedNumpyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self, mode: Literal["r", "a"]) -> Store:
        return open_store(self.path, mode, cache=self.cache)

    def _reading(self, name: str) -> Store:
        """The store open for reading, or :class:`ArrayNotInStoreError` if nothing was saved."""
        try:
            return self._open("r")
        except StoreNotFoundError as err:
            hint = (
                ", but files of the original shared_numpy_store are: import them with "
                "import_original()"
                if scan(self.path.parent)
                else ""
            )
            raise ArrayNotInStoreError(
                f"no array {name!r} in {self.working_dir}: nothing was saved there yet{hint}"
            ) from err

    def _require(self, store: Store, name: str) -> None:
        if name not in store:
            known = ", ".join(repr(n) for n in store.names()[:20]) or "none"
            original = originals_named(self.path.parent, name)
            hint = (
                f"; {original[0].name} there was written by the original shared_numpy_store: "
                "import it with import_original()"
                if original
                else ": save it first"
            )
            raise ArrayNotInStoreError(
                f"no array {name!r} in {self.working_dir} (arrays: {known}){hint}"
            )

    def names(self) -> list[str]:
        """The names of the saved arrays (rows waiting for :meth:`flush` not counted)."""
        if not self.path.exists():
            return []
        with self._open("r") as store:
            return store.names()

    def pending_names(self) -> list[str]:
        """The names whose rows, appended with ``autoflush=False``, wait for :meth:`flush`."""
        return list(self._pending)

    def __contains__(self, name: object) -> bool:
        # One look-up, not a listing: as cheap with 10 arrays as with 100,000.
        if not isinstance(name, str) or not self.path.exists():
            return False
        with self._open("r") as store:
            return name in store

    # -- writing ------------------------------------------------------------------

    def save(self, arr: ArrayLike, name: str) -> None:
        """Save *arr* as *name*, replacing an array of that name.

        Saved appendable: :meth:`append_save` can grow it, and every load
        mode serves it.  Rows of *name* appended with ``autoflush=False``
        and not yet flushed are dropped (the new array replaces them too).

        :param arr: the data: a numpy array, or anything ``numpy.asarray``
            takes, of at least one dimension.
        :param name: the array's name (``"run1/voltages"`` makes a group).
        :raises ArgumentError: a reserved name (``Loader.pickle``,
            ``Loader.json``, one containing ``__``), or one the store refuses:
            empty, starting with ``/``, with an empty, ``.`` or ``..`` part, or
            with characters other than letters, digits, ``_``, ``.``, ``-``
            and ``/`` (which makes groups: ``"run1/voltages"``).  Names
            starting with ``.`` are allowed (``".hidden"``); a scalar
            instead of an array is refused.
        :raises UnsupportedDtypeError: a dtype holding Python objects or variable-length
            data (every fixed-size dtype is stored, unicode and datetimes too).
        :raises OriginalNotImportedError: (a ``FileExistsError``) a file of the
            original module holds *name* and the store does not: run
            :meth:`import_original` first.
        """
        _check_array_name(name)
        _refuse_hiding(self, name)
        self._pending.pop(name, None)
        with self._open("a") as store:
            store.write(name, arr, appendable=True, overwrite=True)

    def append_save(self, arr: ArrayLike, name: str, autoflush: bool = True) -> None:
        """Append the rows *arr* to the array *name* (saving it if absent).

        :param arr: the rows: an array (or what ``numpy.asarray`` takes) of
            shape ``(n, *row shape)`` and the array's dtype; copied.
        :param name: the array's name, as for :meth:`save`.
        :param autoflush: write now.  With ``False`` the rows are kept in
            memory (a copy) until :meth:`flush` or :meth:`close` writes
            every name's rows at once: few large writes instead of many
            small ones.  Until then, loads do not see them.  Default ``True``.
        :raises LayoutError: (a ``ValueError``) rows of another trailing
            shape than the array's.
        :raises UnsupportedDtypeError: (a ``TypeError``) rows of another dtype than the array's.
        :raises ArgumentError: a reserved or refused name (as :meth:`save`), or a
            scalar; checked now, also with ``autoflush=False``.
        :raises OriginalNotImportedError: as :meth:`save`, also with ``autoflush=False``.
        """
        _check_array_name(name)
        if name not in self._pending:
            _refuse_hiding(self, name)
        rows = np.array(arr, copy=True)  # the caller may reuse its buffer before the flush
        if rows.ndim == 0:
            raise ArgumentError(
                f"append_save({name!r}) got a scalar; append rows: pass np.atleast_1d(value)"
            )
        pending = self._pending.get(name)
        if pending is not None:
            first = pending[0]
            if rows.shape[1:] != first.shape[1:] or rows.ndim != first.ndim:
                raise LayoutError(
                    f"rows appended to {name!r} have shape {rows.shape}, but the rows "
                    f"waiting for flush() have shape (n, ...{first.shape[1:]})"
                )
            if rows.dtype != first.dtype:
                raise UnsupportedDtypeError(
                    f"rows appended to {name!r} have dtype {rows.dtype}, but the rows "
                    f"waiting for flush() {first.dtype}: convert them with "
                    f"rows.astype({str(first.dtype)!r})"
                )
            pending.append(rows)
        else:
            if not autoflush:
                self._check_appendable(name, rows)
            self._pending[name] = [rows]
        if autoflush:
            try:
                self.flush()
            except BaseException:
                # Rows that were not written are not left waiting either.
                parts = self._pending.get(name)
                if parts and parts[-1] is rows:
                    parts.pop()
                    if not parts:
                        del self._pending[name]
                raise

    def _check_appendable(self, name: str, rows: np.ndarray[Any, Any]) -> None:
        """Raise now, not at flush, when *rows* cannot be appended to *name*."""
        if not self.path.exists():
            return
        with self._open("r") as store:
            if name not in store:
                return
            info = store.info(name)
        check_rows_fit(info, rows)

    def flush(self) -> None:
        """Write the rows appended with ``autoflush=False``, in blocks of up to 64 MiB.

        Each name's rows are appended whole or not at all; a name whose
        rows fail (say, another dtype) keeps them waiting, and its error
        is raised after the others are written.

        :raises LayoutError: (a ``ValueError``) rows of another trailing shape
            than the array's.
        :raises UnsupportedDtypeError: (a ``TypeError``) rows of another dtype
            than the array's.
        """
        if not self._pending:
            return
        failed: Exception | None = None
        with self._open("a") as store:
            for name in list(self._pending):
                try:
                    _append_blocks(store, name, self._pending[name])
                except (ValueError, TypeError) as err:  # rows this array cannot take
                    failed = failed or err
                    continue
                del self._pending[name]
        if failed is not None:
            raise failed

    def update(self) -> None:
        """Drop the shared copies this object serves whose files changed since.

        Not needed for correct results (every :meth:`load` checks the files),
        it releases the mappings of old versions early.
        """
        for key in [k for k, (handle, _) in self._shared.items() if not handle.is_current()]:
            del self._shared[key]

    def close(self) -> None:
        """Flush pending rows, release this object's shared copies, and free unused ones.

        The shared copies this object loaded or attached are removed from
        the node's shared memory when no process maps them any more, as the
        original's ``close`` unlinked them; one still in use (here, through
        an array you kept, or in another job) stays.  The object stays usable.

        :raises LayoutError, UnsupportedDtypeError: as :meth:`flush`.
        """
        self.flush()
        keys = [key for handle, _ in self._shared.values() for key in handle.keys]
        self._shared.clear()
        if keys:
            self.cache.evict(keys)

    def import_original(self) -> ImportReport:
        """Save into this store the arrays the original module left in the working directory.

        The original kept each array in a raw file named
        ``<name>__<shape>__<dtype>`` (``voltages__1000_16__float64``,
        ``labels__20__<U8``, ``events__5__[('t', '<M8[ns]'), ('v', '<f4')]``).
        Every such file is looked at and reported on; each array it can
        import is copied in whole or not at all (appendable, as the
        original's files were), whatever happens to the others.  Run it
        again after fixing what it refused: what is in the store by then is
        skipped, the rest is tried again.  The files are left for you to
        remove.

        * imported: the array, in its dtype.  Bytes past the shape in a
          file's name (rows the original appended with ``autoflush=False``
          and never flushed, which it never served either) are not imported,
          and the report says how many there were.
        * skipped: the name is in the store already; or the file is no
          array (an unfinished ``.saving`` file, a directory, a name not of
          the original's form).
        * refused: a file shorter than its name says; a dtype numpy does not
          understand or shmstore does not store; a 0-d array (the original
          could not load those); a name the store refuses; two files holding
          the same name; a failure while writing.

        :returns: an :class:`ImportReport`: per file, by file name, what
            happened and why; ``report.imported`` lists the names imported.
        :raises ReadOnlyError: the store cannot be written.
        """
        found = scan(self.path.parent)
        outcomes: list[OriginalFile] = []
        with contextlib.ExitStack() as stack:
            store: Store | None = None
            for original in found:
                outcome: _Outcome
                if original.problem is not None:
                    outcome, reason = original.outcome, original.problem
                else:
                    if store is None:  # only now: a directory of refusals gets no store file
                        store = stack.enter_context(self._open("a"))
                    outcome, reason = _import_one(store, original)
                outcomes.append(
                    OriginalFile(
                        file=original.path.name, name=original.name, outcome=outcome, reason=reason
                    )
                )
        return ImportReport(files=tuple(outcomes))

    # -- reading ------------------------------------------------------------------

    def get_expected_file_length(self, name: str) -> int:
        """Bytes of the array *name*: ``prod(shape) * itemsize``.

        :param name: the array's name.
        :raises ArrayNotInStoreError: (a ``KeyError`` and ``ValueError``) no such array.
        """
        with self._reading(name) as store:
            self._require(store, name)
            return store.info(name).nbytes

    def load(
        self,
        name: str,
        mode: str = "shared_memory",
        start_row: int | None = None,
        end_row: int | None = None,
        allow_create_shm: bool = False,
    ) -> np.ndarray[Any, Any]:
        """Rows ``start_row`` to ``end_row`` of the array *name*.

        :param name: the array's name.
        :param mode:
            * ``"shared_memory"``: the node's copy in shared memory, read-only;
              the same array object again on later calls while the file is
              unchanged (no new mapping, no HDF5 open: one ``stat`` per file);
            * ``"memmap"``: a read-only ``np.memmap`` of the file;
            * ``"memory"``: a private, writeable copy.

            Default ``"shared_memory"``.
        :param start_row: first row (``None``: 0; negative counts from the end).
        :param end_row: row after the last (``None``: the end).
        :param allow_create_shm: in ``"shared_memory"`` mode, load the rows
            into shared memory if no process of the node has (once per node,
            however many jobs ask at once).  Without it, a job only attaches
            what another loaded: use it in workers that must not load.
            Default ``False``.
        :returns: the rows, of shape ``(rows, *row shape)``.
        :raises NotInSharedMemoryError: (a ``ValueError``) ``"shared_memory"``,
            no copy on the node, and *allow_create_shm* false.
        :raises ArgumentError: (a ``ValueError``) an unknown *mode*.
        :raises ArrayNotInStoreError: (a ``KeyError`` and ``ValueError``) no such array.
        :raises RowsError: (an ``IndexError`` and ``ValueError``) rows outside the array.
        :raises CacheFullError: no room in shared memory for the rows.
        :raises IntegrityError: the rows read do not match their checksums.
        """
        if mode not in _LOAD_MODES:
            raise ArgumentError(
                f"load mode must be one of {', '.join(map(repr, _LOAD_MODES))}, got {mode!r}"
            )
        rows = (start_row, end_row)
        if mode != "shared_memory":
            with self._reading(name) as store:
                self._require(store, name)
                if mode == "memmap":
                    return store.memmap(name, rows)
                return store.read(name, rows)
        memo = (name, start_row, end_row)
        served = self._shared.get(memo)
        if served is not None and served[0].is_current():
            return served[1]
        self._shared.pop(memo, None)
        with self._reading(name) as store:
            self._require(store, name)
            handle = store.handle(name, rows)
        array = handle.cached()
        if array is None:
            if not allow_create_shm:
                start, stop = handle.rows
                raise NotInSharedMemoryError(
                    f"rows {start}:{stop} of {name!r} are not in shared memory on this node "
                    f"({self.cache.directory}) yet: load them once with "
                    "allow_create_shm=True (or `shmstore preload`)"
                )
            array = handle.pin()
        self._shared[memo] = (handle, array)
        return array


def _import_one(store: Store, original: Original) -> tuple[_Outcome, str]:
    """Import the file *original* (which :func:`scan` found importable) into *store*."""
    name, shape, dtype = original.name, original.shape, original.dtype
    if name is None or not shape or dtype is None:  # scan refuses these: never here
        return "refused", "its name does not say the array's name, shape and dtype"
    if name in store:
        info = store.info(name)
        return "skipped", (
            f"{name!r} is in the store already ({info.shape} {info.dtype}); remove the file "
            "once you no longer need it"
        )
    disk = DiskArray(original.path, "raw", 0, dtype, shape)
    try:
        size = original.path.stat().st_size
        # One write, journaled: a failure or a kill leaves nothing of it in the store.
        store.write(name, disk.memmap(0, shape[0]), appendable=True)
    except (ShmStoreError, OSError, ValueError, TypeError) as err:
        return "refused", f"writing it into the store failed, nothing of it was kept: {err}"
    extra = size - original.nbytes
    unflushed = (
        f"; its last {extra} bytes, past the shape in its name, were not (rows appended with "
        "autoflush=False that the original never flushed, nor served)"
        if extra
        else ""
    )
    return "imported", f"imported as {shape} {dtype}{unflushed}"


def _write_blocks(
    store: Store,
    name: str,
    read: Callable[[int, int], np.ndarray[Any, Any]],
    rows: int,
    row_nbytes: int,
) -> None:
    """Save *rows* rows as the appendable array *name*, ``read(start, stop)`` 64 MiB at a time."""
    step = max(1, BLOCK_BYTES // max(row_nbytes, 1))
    store.write(name, read(0, min(step, rows)), appendable=True, overwrite=True)
    for first in range(step, rows, step):
        store.append(name, read(first, min(first + step, rows)))


def _join(parts: list[np.ndarray[Any, Any]]) -> np.ndarray[Any, Any]:
    """*parts* one after the other, of exactly their dtype.

    ``np.concatenate`` returns native byte order, which changes the bytes of
    big-endian rows (and cannot convert generic datetimes back).
    """
    joined = new_empty((sum(len(p) for p in parts), *parts[0].shape[1:]), parts[0].dtype)
    first = 0
    for part in parts:
        joined[first : first + len(part)] = part
        first += len(part)
    return joined


def _append_blocks(store: Store, name: str, parts: list[np.ndarray[Any, Any]]) -> None:
    """Append *parts* to *name* in *store*, joined into blocks of up to :data:`BLOCK_BYTES`."""
    block: list[np.ndarray[Any, Any]] = []
    size = 0
    for part in [*parts, None]:
        if part is None or (block and size + part.nbytes > BLOCK_BYTES):
            if block:
                store.append(name, block[0] if len(block) == 1 else _join(block))
            block, size = [], 0
        if part is not None:
            block.append(part)
            size += part.nbytes


# -- the data base's plug-in protocol ----------------------------------------------


class LoaderDescription(BaseModel):
    """``Loader.json``: what :func:`dump` writes so that the data base can load the store.

    ``Loader`` names the module whose :class:`Loader` reads the directory,
    as the data base's other dumpers write it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    loader: Literal["shmstore.shared_numpy_store"] = Field(alias="Loader")
    format: Literal["shmstore-loader"] = "shmstore-loader"
    format_version: Literal[1] = 1
    store: Literal["shared_numpy_store.h5"] = "shared_numpy_store.h5"


def check(obj: object) -> bool:
    """True if :func:`dump` can save *obj*: ``None`` or a :class:`SharedNumpyStore`.

    :param obj: any object.
    """
    return obj is None or isinstance(obj, SharedNumpyStore)


def dump(obj: SharedNumpyStore | None, savedir: str | os.PathLike[str]) -> None:
    """Make *savedir* a shared numpy store the data base can load (``Loader.get``).

    Writes ``Loader.json`` there (replacing it whole).

    :param obj: ``None`` (an empty store, or the arrays already in
        *savedir*), or a :class:`SharedNumpyStore`, whose arrays are copied
        into *savedir* when it lives elsewhere (pending rows flushed first).
    :param savedir: the directory to make the store in (created if absent).
    :raises ArgumentError: *obj* is anything else.
    :raises OriginalNotImportedError: *savedir* holds a file of the original
        module for an array of *obj* that its store lacks (the copy would hide
        it): run ``SharedNumpyStore(savedir).import_original()`` first.
    :raises ArgumentError: *savedir* is a file.
    """
    if not check(obj):
        raise ArgumentError(
            f"dump saves None or a SharedNumpyStore, got {type(obj).__name__}: save arrays "
            "with SharedNumpyStore(savedir).save(arr, name)"
        )
    target = SharedNumpyStore(savedir)
    if isinstance(obj, SharedNumpyStore):
        for name in [*obj.names(), *obj.pending_names()]:
            _refuse_hiding(target, name)
        obj.flush()
        if obj.path.exists() and not (target.path.exists() and obj.path.samefile(target.path)):
            _copy_arrays(obj.path, target.path)
    description = (
        LoaderDescription(Loader="shmstore.shared_numpy_store").model_dump_json(
            by_alias=True, indent=2
        )
        + "\n"
    )
    directory = target.path.parent
    temporary = directory / f".{LOADER_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    temporary.write_text(description)
    os.replace(temporary, directory / LOADER_FILE)  # readers see the old file or the new one


def _copy_arrays(source: Path, target: Path) -> None:
    """Copy every array of the store *source* into *target*, replacing arrays of the same names."""
    with open_store(source, "r") as src, open_store(target, "a") as dst:
        for name in src.names():
            info = src.info(name)
            if not info.shape:
                continue
            _write_blocks(
                dst,
                name,
                lambda start, stop, name=name: src.read(name, (start, stop)),  # type: ignore[misc]
                info.rows,
                info.row_nbytes,
            )


def _read_description(savedir: str | os.PathLike[str]) -> LoaderDescription:
    """The validated ``Loader.json`` of *savedir*.

    :raises StoreNotFoundError: (a ``FileNotFoundError``) there is none.
    :raises ManifestError: (a ``ValueError``) it is not valid JSON, or not a
        description of a shared numpy store.
    """
    where = Path(os.fspath(savedir)) / LOADER_FILE
    try:
        text = where.read_text()
    except FileNotFoundError as err:
        hint = (
            " It holds a Loader.pickle of the original shared_numpy_store, which shmstore "
            "never loads (unpickling runs code)."
            if (where.parent / "Loader.pickle").exists()
            else ""
        )
        raise StoreNotFoundError(
            f"no {LOADER_FILE} in {where.parent}.{hint} Write one with "
            f"shmstore.shared_numpy_store.dump(None, {str(where.parent)!r})"
        ) from err
    try:
        return LoaderDescription.model_validate_json(text)
    except ValidationError as err:
        raise ManifestError(
            f"{where} is not a description of a shared numpy store ({err.error_count()} "
            f"problems; first: {err.errors()[0]['msg']} at "
            f"{'.'.join(map(str, err.errors()[0]['loc'])) or 'the top'}): write it again with "
            f"shmstore.shared_numpy_store.dump(None, {str(where.parent)!r})"
        ) from err


class Loader:
    """The data base's loader of a directory :func:`dump` made.

    The data base loads a dumped object by reading ``Loader.json``, taking
    out its ``"Loader"`` key, importing that module and calling
    ``Loader(**rest).get(savedir)``, with ``meta=`` added when an
    ``object_meta.json`` lies beside it.  This class takes exactly that:
    the other keys :func:`dump` writes (``format``, ``format_version``,
    ``store``; each may be omitted, ``Loader()`` works) and ``meta``.

    :param meta: the object's metadata the data base read from
        ``object_meta.json``; kept as :attr:`meta`, not used.
    :param description: the other keys of ``Loader.json``: ``format``,
        ``format_version`` and ``store``, with the values :func:`dump` writes.
    :raises ManifestError: (a ``ValueError``) a key :func:`dump` does not
        write, or a value it does not write (another format or version).
    """

    def __init__(self, meta: object = None, **description: object) -> None:
        self.meta = meta
        """What the data base passed as ``meta`` (``None`` when it passed nothing)."""
        try:
            LoaderDescription.model_validate(
                {"Loader": "shmstore.shared_numpy_store", **description}
            )
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'the top'}: {e['msg']}" for e in err.errors()
            )
            raise ManifestError(
                f"Loader() takes the keys dump() writes into {LOADER_FILE} (format, "
                f"format_version, store) and meta; got {sorted(description)} ({problems}): "
                "write the description again with "
                "shmstore.shared_numpy_store.dump(None, savedir)"
            ) from err

    def __repr__(self) -> str:
        return "Loader()" if self.meta is None else f"Loader(meta={self.meta!r})"

    def get(self, savedir: str | os.PathLike[str]) -> SharedNumpyStore:
        """The :class:`SharedNumpyStore` of *savedir*, after checking its ``Loader.json``.

        :param savedir: the directory :func:`dump` made.
        :raises StoreNotFoundError: no ``Loader.json`` in *savedir*.
        :raises ManifestError: an invalid one.
        """
        _read_description(savedir)
        return SharedNumpyStore(savedir)
