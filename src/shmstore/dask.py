"""Dask integration: one copy per node across a ``distributed`` cluster.

Install with ``pip install 'shmstore[dask]'``.  Three pieces:

* :func:`attach`: in a task, the array of a :class:`~shmstore.Handle` passed
  as an argument.  The first task of a worker process maps the node's copy
  (loading it once per node) and pins it; later tasks of that process reuse
  the mapping, whatever thread runs them.
* :class:`Preload`: a worker plugin that loads named slices into each node's
  cache when a worker starts (once per node, however many workers start
  there) and pins them in every worker.
* :func:`from_store`: a :class:`dask.array.Array` whose blocks are read from
  the node's cache: each block of rows is loaded once per node and mapped by
  every task that needs it.

A handle made by a store opened without ``cache=`` resolves to the default
cache of the process using it, so on a cluster each node uses its own
(``SHMSTORE_DIR``, ``$JOB_SHMTMPDIR/shmstore`` on SLURM, or
``/dev/shm/shmstore-<uid>``).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ._dtype import empty as new_empty
from ._handle import Handle
from ._rows import RowsLike
from ._store import Store, open_store
from .errors import ArgumentError, CacheFullError, LayoutError, RowsError

try:
    import dask.array as da
    from dask.array import from_array
    from dask.array.core import normalize_chunks
    from dask.base import tokenize
    from distributed import WorkerPlugin
except ImportError as err:  # pragma: no cover - the extra is missing
    raise ImportError(
        "shmstore.dask needs dask and distributed: pip install 'shmstore[dask]'"
    ) from err

if TYPE_CHECKING:
    from distributed import Worker

    from ._cache import Cache

__all__ = ["Preload", "attach", "from_store", "pinned", "unpin_all"]

_log = logging.getLogger("shmstore")

AttachMode = Literal["auto", "shared"]


# -- handles as task arguments ------------------------------------------------------


@dataclass
class _Pin:
    handle: Handle
    lock: threading.Lock = field(default_factory=threading.Lock)


# (file, dataset, start, stop, cache directory, cache budget) -> the pinned handle of
# this process.  Keyed by the rows, not the version: when the dataset changes, the
# pinned handle itself follows to the new version (Handle.pin) and drops the old one.
_PINS: dict[tuple[str, str, int, int, str | None, int | None], _Pin] = {}
_PINS_LOCK = threading.Lock()


def _slot(handle: Handle) -> tuple[str, str, int, int, str | None, int | None]:
    start, stop = handle.rows
    return (
        str(handle.path),
        handle.name,
        start,
        stop,
        handle.cache_directory,
        handle.cache_budget,
    )


def attach(handle: Handle, mode: AttachMode = "auto") -> np.ndarray[Any, Any]:
    """The read-only array of *handle* in this process, mapped once and kept (pinned).

    Call it in a task that received a handle (``client.submit(work, handle)``).
    The first call in a worker process maps the node's copy of the rows,
    loading it if no process of the node has (one load per node), and pins
    it (:meth:`~shmstore.Handle.pin`): later calls with an equal
    handle, from any thread of the process, return the same mapping after one
    ``stat`` per file.  A pinned slice is in use and never evicted; when the
    dataset changes, the next call maps the new version and drops the old one.
    :func:`unpin_all` releases every pin of the process.

    :param handle: the rows, from :meth:`Store.handle <shmstore.Store.handle>`
        in the client.
    :param mode: ``"auto"``: when the cache has no room, a memory-mapped
        (contiguous datasets) or private copy is returned, not pinned, and a
        warning is logged; ``"shared"``: raise :class:`~shmstore.CacheFullError`.
        Default ``"auto"``.
    :returns: the rows, read-only, of shape ``handle.shape``.
    :raises CacheFullError: mode ``"shared"`` and no room in the cache.
    :raises StoreNotFoundError: the HDF5 file is gone.
    :raises ArrayNotFoundError: the dataset was deleted.
    :raises RowsError: the dataset shrank below the handle's rows.
    :raises IntegrityError: the rows loaded do not match their checksums.
    :raises ArgumentError: *handle* is not a :class:`~shmstore.Handle`, or an unknown *mode*.
    """
    if not isinstance(handle, Handle):
        raise ArgumentError(
            "attach() takes a shmstore.Handle (from store.handle(...)), "
            f"got {type(handle).__name__}"
        )
    if mode not in ("auto", "shared"):
        raise ArgumentError(f"attach mode must be 'auto' or 'shared', got {mode!r}")
    slot = _slot(handle)
    with _PINS_LOCK:
        pin = _PINS.setdefault(slot, _Pin(handle))
    # One thread at a time per slice: Handle's pin is plain state, and a second
    # thread would only wait for the first one's load anyway.
    with pin.lock:
        try:
            return pin.handle.pin()
        except CacheFullError as err:
            if mode == "shared":
                raise
            _log.warning("%r: no room in the cache (%s); not shared", handle, err)
    with handle.view("auto") as array:
        return array


def pinned() -> list[Handle]:
    """The handles :func:`attach` and :class:`Preload` have pinned in this process.

    :returns: one handle per pinned slice (empty when none is).
    """
    with _PINS_LOCK:
        pins = list(_PINS.values())
    return [pin.handle for pin in pins if pin.handle.is_pinned]


def _unpin(handle: Handle) -> None:
    with _PINS_LOCK:
        pin = _PINS.pop(_slot(handle), None)
    if pin is not None:
        with pin.lock:
            pin.handle.unpin()


def unpin_all() -> int:
    """Drop every pin :func:`attach` and :class:`Preload` made in this process.

    The slices stay cached (evictable once no process maps them).  Arrays
    still referenced elsewhere keep their pages.

    :returns: the number of pins dropped.
    """
    with _PINS_LOCK:
        pins = list(_PINS.values())
        _PINS.clear()
    dropped = 0
    for pin in pins:
        with pin.lock:
            dropped += pin.handle.is_pinned
            pin.handle.unpin()
    return dropped


# -- preloading at worker start ---------------------------------------------------------


class Preload(WorkerPlugin):
    """A worker plugin that loads slices into each worker's node cache when it starts.

    ``client.register_plugin(Preload("data.h5", ["weights", "lookup"]))`` makes
    every worker (present and future) map those slices at start and pin them
    (:func:`attach`), so the first task finds them ready.  The cache's lock
    makes the load happen once per node, however many workers start there;
    the others wait for it and map the same pages.

    :param path: the HDF5 file; a relative path is made absolute here, in the
        client's working directory.
    :param names: a dataset name, names, or a mapping of name to rows
        (``None`` for all, a ``slice``, or ``(start, stop)``).
    :param cache: the cache to load into; default: each worker's default
        cache (``SHMSTORE_DIR``, ``$JOB_SHMTMPDIR/shmstore``, ...).
    :raises ArgumentError: *names* is empty or not names.

    Errors in a worker (a missing file or dataset, rows out of range, no room
    in the cache) are raised by ``register_plugin`` and fail that worker's start.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        names: str | Iterable[str] | Mapping[str, RowsLike],
        *,
        cache: Cache | None = None,
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        if isinstance(names, str):
            wanted: dict[str, RowsLike] = {names: None}
        elif isinstance(names, Mapping):
            wanted = dict(names)
        else:
            wanted = dict.fromkeys(names)
        if not wanted or not all(isinstance(name, str) for name in wanted):
            raise ArgumentError(
                f"Preload needs dataset names (a name, names, or name -> rows), got {names!r}"
            )
        self.names = wanted
        self.cache = cache
        self._handles: list[Handle] = []  # what setup pinned in this worker
        # Registering a plugin of the same name replaces it: one per file and slices.
        self.name = f"shmstore-preload-{tokenize(self.path, sorted(map(str, wanted.items())))}"

    def __repr__(self) -> str:
        return f"Preload({self.path!r}, {list(self.names)!r})"

    def _preload(self) -> None:
        with open_store(self.path, "r", cache=self.cache) as store:
            handles = [store.handle(name, rows) for name, rows in self.names.items()]
        for handle in handles:
            attach(handle, "shared")
            self._handles.append(handle)

    async def setup(self, worker: Worker) -> None:
        """Load and pin the slices, in a thread: a load of gigabytes must not stall the worker.

        Called by ``distributed`` when the plugin is registered, and by each
        worker that starts later.

        :param worker: the worker starting.
        :raises StoreNotFoundError, ArrayNotFoundError, RowsError, CacheFullError:
            the file or a dataset is missing, rows are out of range, or the
            cache has no room (the worker fails to start).
        """
        self._handles = []
        await asyncio.get_running_loop().run_in_executor(None, self._preload)

    def teardown(self, worker: Worker) -> None:
        """Drop this plugin's pins (the slices stay cached, evictable once unmapped).

        :param worker: the worker closing.
        """
        for handle in self._handles:
            _unpin(handle)


# -- dask arrays ------------------------------------------------------------------------


class _Blocks:
    """What :func:`dask.array.from_array` slices: rows of one version of a dataset.

    Picklable and small: one handle, and where the dask chunks of rows begin.
    Each is mapped from the blocks of the node's cache that hold its rows.
    """

    def __init__(self, handle: Handle, starts: Sequence[int]) -> None:
        self.handle = handle
        self.starts = list(starts)  # rows, relative to the handle's first row
        self.shape = handle.shape
        self.dtype = handle.dtype
        self.ndim = len(handle.shape)

    def _block(self, index: int) -> np.ndarray[Any, Any]:
        first, _ = self.handle.rows
        stop = self.starts[index + 1] if index + 1 < len(self.starts) else self.shape[0]
        part = self.handle.part(first + self.starts[index], first + stop)
        expected = (stop - self.starts[index], *self.shape[1:])
        with part.view("auto") as array:
            # A handle follows the dataset to its current version; the dask
            # array's shape and dtype were fixed when it was made.
            if array.shape != expected or array.dtype != self.dtype:
                raise LayoutError(
                    f"{self.handle.name!r} of {self.handle.path} is now {array.shape[1:]} "
                    f"{array.dtype} per row, not {expected[1:]} {self.dtype} as when this "
                    "dask array was made: make a new one with from_store"
                )
            return array

    def __getitem__(self, key: tuple[slice, ...] | slice) -> np.ndarray[Any, Any]:
        if not isinstance(key, tuple):
            key = (key,)
        rows, rest = key[0], key[1:]
        start, stop, _ = rows.indices(self.shape[0])
        index = bisect.bisect_right(self.starts, start) - 1
        parts = []
        while True:
            block = self._block(index)
            offset = self.starts[index]
            parts.append(block[start - offset : stop - offset])
            index += 1
            if index == len(self.starts) or self.starts[index] >= stop:
                break
        # Blocks are read-only views of the node's copy; a slice across blocks
        # (never made by from_array itself) is a private copy.
        rows_of = parts[0] if len(parts) == 1 else np.concatenate(parts)
        within: tuple[slice, ...] = (slice(None), *rest)
        return rows_of[within]


def from_store(
    store_or_path: Store | str | os.PathLike[str],
    name: str,
    rows: RowsLike = None,
    chunks: Any = "auto",
    *,
    cache: Cache | None = None,
) -> da.Array:
    """A :class:`dask.array.Array` of rows *rows* of dataset *name*, read from the node's cache.

    Each block of rows is a segment of the cache of the node that computes
    it: loaded once per node and mapped read-only by every task that needs
    it (mode ``"auto"``: when the cache is full, a block is memory-mapped
    from the file or read into a private copy).  The array is of the
    dataset's rows at this call; like a handle, a block never serves an old
    version: after an append it serves the same rows of the new version, and
    after a write that changed the shape of a row or the dtype it raises
    :class:`~shmstore.LayoutError` (make a new array).

    :param store_or_path: an open :class:`~shmstore.Store`, or the path of an
        HDF5 file (opened read-only for this call).
    :param name: the dataset's path in the file.
    :param rows: ``None`` (all, the default), a ``slice`` with step 1, or ``(start, stop)``.
    :param chunks: as in :func:`dask.array.from_array`.  The default,
        ``"auto"``, splits rows only, in blocks of about dask's
        ``array.chunk-size`` (128 MiB) aligned with the dataset's HDF5
        chunks; other axes stay whole.
    :param cache: with a path, the cache to use (default: each worker's
        default cache); with a store, the store's.
    :raises ArrayNotFoundError, RowsError, UnsupportedDtypeError: as :meth:`~shmstore.Store.read`.
    :raises RowsError: *name* is a scalar dataset (read it with :meth:`~shmstore.Store.read`).
    :returns: a lazy array of the rows: nothing is loaded until it is computed.
    :raises ArgumentError: *chunks* does not fit the array's shape, or
        *cache* given with a store (the store's cache is used).
    :raises StoreNotFoundError, InvalidStoreError, ManifestError, LockTimeoutError:
        as :func:`shmstore.open`, when *store_or_path* is a path.
    """
    if isinstance(store_or_path, Store):
        if cache is not None:
            raise ArgumentError(
                "from_store(store, ...) uses the store's cache: pass cache= to shmstore.open"
            )
        return _from_open_store(store_or_path, name, rows, chunks)
    with open_store(store_or_path, "r", cache=cache) as store:
        return _from_open_store(store, name, rows, chunks)


def _from_open_store(store: Store, name: str, rows: RowsLike, chunks: Any) -> da.Array:
    info = store.info(name)
    if not info.shape:
        raise RowsError(f"{name!r} is a scalar dataset: read it with store.read({name!r})")
    handle = store.handle(name, rows)
    shape = handle.shape
    if isinstance(chunks, str) and chunks == "auto":
        chunks = ("auto", *(-1 for _ in shape[1:]))
    try:
        # Dask chunks of whole cache blocks, so that no two tasks share a block
        # they would each wait for (whole HDF5 chunks too: blocks are made of them).
        block_rows = handle.block_rows
        previous = info.chunks if block_rows is None else (block_rows, *shape[1:])
        normal = normalize_chunks(chunks, shape, dtype=handle.dtype, previous_chunks=previous)
    except (ValueError, TypeError) as err:
        raise ArgumentError(
            f"chunks={chunks!r} do not fit {name!r} of shape {shape}: {err}"
        ) from err
    starts = np.cumsum((0, *normal[0][:-1])).tolist() if normal[0] else [0]
    blocks = _Blocks(handle, starts)
    token = tokenize(handle, normal)
    meta = new_empty((0,) * len(shape), handle.dtype)
    array: da.Array = from_array(
        blocks,
        chunks=normal,
        name=f"shmstore-{name.replace('/', '-')}-{token}",
        asarray=False,
        fancy=False,
        meta=meta,
    )
    return array
