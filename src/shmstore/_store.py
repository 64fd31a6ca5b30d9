"""The store: numpy arrays in one HDF5 file, a front over one module per job.

* ``_opening``: the file open in its mode, the store's lock, the rollback of
  a writer that died, the swap to a journaling file for a change;
* ``_catalog``: the datasets, described from their records on first use;
  the repair of an append whose writer died; migration of format 1;
* ``_reading``: read, verify and memmap rows, checked against checksums;
* ``_serving``: views and handles through the node's cache (``_sharing``);
* ``_writing``, ``_appending``, ``_trash``: journaled changes.

Crash behaviour: ``docs/design.md``, "The undo journal", and those modules.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._appending import Appender
from ._catalog import Catalog
from ._names import check_name
from ._opening import Mode, OpenFile
from ._reading import Reader
from ._rows import RowsLike
from ._serving import ViewMode, Views
from ._trash import Trash
from ._within import Within
from ._writing import Writer, check_rows_fit
from .errors import RowsError
from .manifest import ArrayInfo, Manifest

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from ._cache import Cache
    from ._handle import Handle

__all__ = ["Mode", "Store", "ViewMode", "check_name", "check_rows_fit", "open_store"]


def _default_cache() -> Cache:
    """The process's default cache; imported and made when first used, not by a store
    that only reads."""
    from ._handle import cache_for

    return cache_for(None, None)


class Store:
    """Numpy arrays in one HDF5 file; open one with :func:`shmstore.open`.

    A store opened for reading holds the shared side of a lock beside the
    file (``<file>.lock``) until :meth:`close`; one opened for writing holds
    the exclusive side, so writers are serialised and readers never see a
    change half made.  Use it as a context manager, or call :meth:`close`.

    Reading, writing, listing and sharing through a closed store raise
    :class:`~shmstore.ArgumentError` ("open it again").

    ``Store(path, mode, ...)`` takes the arguments of :func:`shmstore.open`
    and raises its errors.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        mode: Mode = "r",
        *,
        cache: Cache | None = None,
        lock_timeout: float = 30.0,
        durable: bool | None = None,
    ) -> None:
        self._opened = opened = OpenFile(path, mode, lock_timeout=lock_timeout, durable=durable)
        self.path: Path = opened.path
        """The HDF5 file, an absolute path."""
        self.mode = mode
        """The mode it was opened with: ``"r"``, ``"r+"``, ``"a"``, ``"w"``, ``"w-"`` or ``"x"``."""
        self.writable = opened.writable
        """False in mode ``"r"``."""
        self.durable = opened.durable
        """True when changes are flushed to disk before they return (``durable=True``)."""
        self._cache_given = cache is not None
        try:
            self._catalog = catalog = Catalog(opened)
            self._reader = Reader(opened, catalog)
            made: Callable[[], Cache] = _default_cache if cache is None else lambda: cache
            self._views = Views(opened, catalog, self._reader, made)
            trash = Trash(opened, catalog)
            self._writer = Writer(opened, catalog, trash)
            self._appender = Appender(opened, catalog, self._writer)
            if self.writable:
                trash.tidy()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Flush and close the file, and release the lock (idempotent)."""
        self._opened.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._opened.closed else f"{len(self)} datasets"
        return f"<shmstore.Store {str(self.path)!r} mode {self.mode!r}, {state}>"

    # -- what is stored ------------------------------------------------------

    @property
    def manifest(self) -> Manifest:
        """The :class:`~shmstore.manifest.Manifest` of every served dataset, built now.

        Every dataset's record is read and checked against its dataset, so
        this costs time in proportion to the number of datasets; :meth:`info`
        describes one.

        :raises ManifestError: a dataset's record is damaged or disagrees with
            the dataset (the message names it); :meth:`info` still serves the others.
        """
        return self._catalog.manifest()

    @property
    def format_version(self) -> int:
        """The metadata format of the file: 2, 1 (shmstore 0.1.0; migrated on the first
        change), or 0 (no shmstore metadata: a file of other tools, or a new empty one)."""
        self._opened.check_open()
        return self._catalog.format

    def metadata_problems(self) -> list[str]:
        """What is wrong with the stored copies of the metadata; empty when every copy is whole.

        Format 1: the two copies of the root manifest; format 2: the two
        copies of each dataset's record.  A store serves from one good copy,
        so these are problems a reader does not see (``shmstore validate``
        reports them).  Reads every dataset's record.

        :raises ArgumentError: the store is closed.
        """
        return self._catalog.metadata_problems()

    def names(self) -> list[str]:
        """Paths of every dataset, sorted, nested groups as ``"grp/sub/ds"``.

        Datasets shmstore cannot serve are listed too: :meth:`info` says why.
        Listing visits every object of the file.

        :raises ArgumentError: the store is closed.
        :raises InvalidStoreError: the file's groups cannot be walked (damaged).
        """
        return self._catalog.names()

    def __contains__(self, name: object) -> bool:
        return self._catalog.contains(name)

    def __len__(self) -> int:
        return len(self.names())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def info(self, name: str) -> ArrayInfo:
        """Shape, dtype, layout, chunks, compression and size of dataset *name*.

        The dataset's record is read and checked against the dataset on first use.

        :param name: the dataset's path in the file, as :meth:`names` lists it.
        :raises ArrayNotFoundError: no dataset of that name.
        :raises UnsupportedDtypeError: the dataset exists but its dtype (or
            dataspace) is one shmstore does not serve.
        :raises ManifestError: its record is damaged, of a newer format, or
            disagrees with the dataset.
        :raises ArgumentError: *name* is not a ``str``.
        """
        return self._catalog.info(name)

    def source_files(self, name: str) -> list[Path]:
        """The files whose bytes make up dataset *name*: the HDF5 file and any raw files.

        :param name: the dataset's path in the file.
        :raises ArrayNotFoundError: no dataset *name*.
        :raises ManifestError: its record is damaged, or disagrees with the dataset.
        """
        return self._catalog.source_files(name)

    # -- reading -------------------------------------------------------------

    def read(self, name: str, rows: RowsLike = None) -> np.ndarray[Any, Any]:
        """A private in-memory copy of rows *rows* of dataset *name*.

        Chunked and compressed data are decoded; the checksums of the rows
        are checked on the way.

        :param name: the dataset's path in the file (``"grp/sub/ds"``).
        :param rows: the rows along axis 0: ``None`` (the default) for all,
            ``slice(start, stop)`` with step 1, or ``(start, stop)``; negative
            bounds count from the end.
        :returns: a new array of the caller's own, of shape ``(rows, *row shape)``.
        :raises ArrayNotFoundError: no such dataset.
        :raises RowsError: *rows* outside the dataset, with a step, or of a wrong type.
        :raises UnsupportedDtypeError: a dtype shmstore does not serve.
        :raises InvalidStoreError: the data cannot be read (damaged file, missing or
            truncated raw file).
        :raises IntegrityError: the data do not match their checksums.
        """
        return self._reader.read(name, rows)

    def verify(self, name: str, rows: RowsLike = None) -> int:
        """Check rows *rows* of dataset *name* against their checksums, keeping nothing.

        Reads the stored bytes (for chunked data, the stored chunks over the
        rows, compressed as they are) and checks each checksum on them;
        every load into the cache and every :meth:`read` does the same on
        its way.  :meth:`memmap` cannot: a mapping is read by the page, not
        by the range.

        :param name: the dataset's path in the file.
        :param rows: the rows to check, as for :meth:`read`; default all.
        :returns: the bytes of the rows that were checked (the rest of a checksum's
            range is read too; chunked data: the stored bytes of the chunks
            checked); 0 when the dataset has no checksums
            (``info(name).verified`` is false: a dataset of another tool or
            of format 1; :meth:`seal` records them).
        :raises IntegrityError: a checksum does not match (the message names
            the rows, bytes and file), or the checksums themselves are damaged.
        :raises InvalidStoreError: the file or raw file is short or unreadable.
        :raises ArrayNotFoundError, RowsError, UnsupportedDtypeError: as :meth:`read`.
        """
        return self._reader.verify(name, rows)

    def memmap(self, name: str, rows: RowsLike = None) -> np.ndarray[Any, Any]:
        """A read-only, zero-copy ``np.memmap`` of rows *rows* of dataset *name*.

        Only contiguous datasets (``write`` without chunks or compression, and
        appendable ones) can be mapped.  Zero rows give an empty read-only array.
        The pages are read from the file as they are touched, so their
        checksums are not checked: call :meth:`verify` first for the rows
        you map (``view`` and ``read`` check on their own).

        :param name: the dataset's path in the file.
        :param rows: the rows to map, as for :meth:`read`; default all.
        :returns: a read-only :class:`numpy.memmap` of shape ``(rows, *row shape)``.
        :raises NotContiguousError: the dataset is chunked, compressed, compact or virtual.
        :raises LayoutError: its storage is not allocated (never written).
        :raises InvalidStoreError: the file or the dataset's raw file is missing or short,
            or the file was replaced since the store opened it.
        :raises StoreNotFoundError: the file was removed since the store opened it.
        :raises ArrayNotFoundError, RowsError, UnsupportedDtypeError: as :meth:`read`.
        """
        return self._reader.memmap(name, rows)

    # -- sharing through the node cache ---------------------------------------

    @property
    def cache(self) -> Cache:
        """The node cache this store's views and handles use."""
        return self._views.cache

    def view(
        self, name: str, rows: RowsLike = None, mode: ViewMode = "auto"
    ) -> AbstractContextManager[np.ndarray[Any, Any]]:
        """A read-only array of rows *rows* of dataset *name*, for the ``with`` block::

            with store.view("x", rows=(0, 100)) as arr:
                total = arr.sum()

        *mode* says where the array comes from:

        * ``"shared"``: the node's single copy in shared memory, loaded once
          per node (the first process loads it, the others map it);
        * ``"memmap"``: mapped from the file (contiguous datasets only);
        * ``"memory"``: a private copy;
        * ``"auto"``: shared, or when the cache is full, memmap if the
          dataset is contiguous and a private copy if not.

        The block drops its references on exit: the mapping goes when nothing
        else refers to the array.  An array kept past the block keeps its pages.

        :param name: the dataset's path in the file.
        :param rows: the rows, as for :meth:`read`; default all.
        :param mode: where the array comes from (the list above); default ``"auto"``.
        :returns: a context manager; ``with ... as arr`` gives a read-only
            :class:`numpy.ndarray` of shape ``(rows, *row shape)``.
        :raises CacheFullError: mode ``"shared"`` and no room in the cache.
        :raises NotContiguousError: mode ``"memmap"`` on a chunked dataset.
        :raises LayoutError: mode ``"memmap"`` on a dataset never written.
        :raises IntegrityError: the rows loaded or read do not match their checksums.
        :raises InvalidStoreError: the data cannot be read (damaged file, missing or
            truncated raw file).
        :raises ArgumentError: an unknown *mode*.
        :raises ArrayNotFoundError, RowsError, UnsupportedDtypeError: as :meth:`read`.
        """
        return Within(self._views.view_array(name, rows, mode)[0])

    def handle(self, name: str, rows: RowsLike = None) -> Handle:
        """A small picklable reference to rows *rows* of *name*, for worker processes.

        ``handle.view()`` in a worker maps the node's copy without opening the
        HDF5 file when the copy is there and the file is unchanged.  Making a
        handle loads nothing.

        :param name: the dataset's path in the file.
        :param rows: the rows, as for :meth:`read`; default all.
        :returns: a :class:`~shmstore.Handle` of the rows (under 1 KB pickled).
        :raises RowsError: *name* is a scalar dataset (read it with :meth:`read`).
        :raises ArrayNotFoundError, RowsError, UnsupportedDtypeError: as :meth:`read`.
        """
        from ._handle import Handle

        info, start, stop = self._catalog.rows_of(name, rows)
        if not info.shape:
            raise RowsError(f"{name!r} is a scalar dataset: read it with store.read({name!r})")
        given = self._cache_given
        return Handle(
            described=self._views.described(info),
            rows=(start, stop),
            # The default cache is resolved in the process that uses the handle:
            # on another node ($JOB_SHMTMPDIR differs) it is that node's cache.
            cache_directory=str(self.cache.directory) if given else None,
            cache_budget=self.cache.budget if given else None,
        )

    # -- writing -------------------------------------------------------------

    def write(
        self,
        name: str,
        array: ArrayLike,
        *,
        chunks: bool | tuple[int, ...] | None = None,
        compression: str | int | Mapping[str, Any] | None = None,
        appendable: bool = False,
        overwrite: bool = False,
    ) -> ArrayInfo:
        """Store *array* as dataset *name* (``"grp/sub/ds"`` creates the groups).

        * no *chunks* or *compression*: contiguous in the HDF5 file, memory-mappable;
        * *chunks* (a shape or True) and/or *compression* (``"gzip"``, ``"lzf"``,
          a filter id, or an ``hdf5plugin`` filter such as ``hdf5plugin.Zstd()``):
          chunked; ``memmap`` refuses it, ``read`` decodes it;
        * *appendable* without chunks: contiguous in a raw file beside the HDF5
          file, growable by :meth:`append`, memory-mappable;
          with chunks or compression: chunked with an unlimited axis 0.

        The new dataset is complete in the file before it replaces an old one,
        so a crash never loses what was stored.

        :param name: the dataset's path in the file; ``"grp/sub/ds"`` creates
            the groups.
        :param array: the data: a numpy array, or anything ``numpy.asarray``
            takes, of at least one dimension.
        :param chunks: ``None`` (the default: contiguous unless *compression*
            or *appendable* asks otherwise), ``True`` (h5py picks the chunk
            shape), or a chunk shape in elements per axis.
        :param compression: ``None`` (the default: none), a filter name,
            a filter id, or an ``hdf5plugin`` filter.
        :param appendable: make a dataset :meth:`append` can grow along axis 0;
            default false (a fixed size).
        :param overwrite: replace an existing dataset *name*; default false
            (an existing name raises).
        :returns: the new dataset's :class:`ArrayInfo`.
        :raises ReadOnlyError: the store is open read-only, or (*appendable*) its
            raw file directory is not writable.
        :raises ArgumentError: a bad name, a scalar, a bad filter, or *name*
            exists and *overwrite* is false.
        :raises UnsupportedDtypeError: Python objects, variable-length data or
            references (every fixed-size dtype is stored: unicode, datetime64 and
            timedelta64 as HDF5 opaque data tagged with the numpy dtype, as
            h5py's ``opaque_dtype`` does).
        """
        return self._writer.write(
            name,
            array,
            chunks=chunks,
            compression=compression,
            appendable=appendable,
            overwrite=overwrite,
        )

    def append(self, name: str, rows: ArrayLike) -> ArrayInfo:
        """Add *rows* at the end of axis 0 of dataset *name*, creating it if absent.

        A new name becomes an appendable contiguous dataset in a raw file
        beside the HDF5 file (memory-mappable).  When ``append`` returns, the
        rows survive a ``kill -9`` of this process at any later moment.

        :param name: the dataset's path in the file.
        :param rows: the rows to add: an array (or what ``numpy.asarray``
            takes) of shape ``(n, *row shape)`` and the dataset's dtype.
        :returns: the grown dataset's :class:`ArrayInfo`.
        :raises ReadOnlyError: the store is open read-only, or its raw file is not writable.
        :raises LayoutError: the dataset has a fixed size, or another trailing shape.
        :raises UnsupportedDtypeError: the rows' dtype differs from the dataset's.
        :raises InvalidStoreError: the raw file no longer holds the dataset's rows.
        :raises ArgumentError: a bad name, or a scalar instead of rows.
        """
        return self._appender.append(name, rows)

    def delete(self, name: str) -> None:
        """Remove dataset *name* (and its raw file, if it has one).

        :param name: the dataset's path in the file.
        :raises ReadOnlyError: the store is open read-only.
        :raises ArrayNotFoundError: no such dataset.
        """
        self._writer.delete(name)

    def seal(self, *names: str) -> list[ArrayInfo]:
        """Record checksums of the data datasets *names* hold now (every one when none given).

        For datasets written without checksums (by another tool, or by
        shmstore 0.1.0), and again after another tool changed a dataset on
        purpose: from then on every load and :meth:`read` checks them.  The
        data are read once (chunked data: the stored chunks, not decoded).
        Runs under the writer lock, as one journaled change.  Compact and
        virtual datasets, and external ones spread over several files,
        cannot be checked where their bytes lie: named, they raise;
        otherwise they are skipped, as are datasets shmstore does not serve.

        :param names: the datasets' paths in the file; none: every dataset.
        :returns: the sealed datasets' :class:`ArrayInfo`.
        :raises ReadOnlyError: the store is open read-only.
        :raises ArrayNotFoundError: a name that is not a dataset.
        :raises LayoutError: a named dataset is compact, virtual, or spread
            over several external files.
        :raises InvalidStoreError: the data cannot be read (truncated file).
        """
        return self._writer.seal(names)


def open_store(
    path: str | os.PathLike[str],
    mode: Mode = "r",
    *,
    cache: Cache | None = None,
    lock_timeout: float = 30.0,
    durable: bool | None = None,
) -> Store:
    """Open the HDF5 file at *path* as a :class:`Store`.

    :param path: the HDF5 file (made absolute; the lock is ``<path>.lock`` beside it).
    :param mode: as in h5py: ``"r"`` read only (the file must exist), ``"r+"``
        read/write (must exist), ``"a"`` read/write, created if absent,
        ``"w"`` created or truncated, ``"w-"``/``"x"`` created, must not exist;
        default ``"r"``.
    :param cache: the node cache that :meth:`Store.view` and handles use;
        by default the one of ``SHMSTORE_DIR`` / ``JOB_SHMTMPDIR`` /
        ``/dev/shm/shmstore-<uid>`` with the ``SHMSTORE_BUDGET`` budget.
    :param lock_timeout: seconds to wait while another process holds the
        store's lock (a writer, or readers when opening for writing); default 30.
    :param durable: flush every ``write``, ``append`` and ``delete`` to disk
        before it returns (raw file, then the HDF5 file, then the directory
        where a file was created), so that it survives a power cut, not only
        a crash of the writer; ``None`` reads ``SHMSTORE_DURABLE`` (``1``
        turns it on).  Off by default: each change then waits for the disk.
    :raises StoreNotFoundError: mode ``"r"`` or ``"r+"`` and no file at *path*,
        or a creating mode and no directory to create it in.
    :raises InvalidStoreError: the file is not HDF5, or is truncated or damaged.
    :raises ManifestError: the store's own record (or a format-1 manifest) is
        damaged, or of a newer format.  A dataset's record is checked when the
        dataset is first used.
    :raises LockTimeoutError: the lock stayed held for *lock_timeout* seconds,
        or another process holds the file open through HDF5 in a way that
        keeps this open out.
    :raises ReadOnlyError: a write mode on a file this user cannot write, or
        beside which the lock file cannot be created.
    :raises ArgumentError: an unknown *mode*, or ``"w-"``/``"x"`` and the file exists.
    """
    return Store(path, mode, cache=cache, lock_timeout=lock_timeout, durable=durable)
