"""The store: numpy arrays in one HDF5 file.

Crash behaviour (DESIGN.md invariant 8) rests on four choices made here:

* Files are written in the HDF5 1.6 file format (h5py's default ``libver``):
  later formats mark the superblock "open for writing" and refuse to open a
  file whose writer was killed, until ``h5clear`` is run on it.
* An append writes the rows into the raw file first, then grows the dataset's
  extent and flushes (one in-place object-header write), then writes the
  manifest.  A writer killed between the two leaves a dataset longer than its
  manifest entry: that is recognised on open as an append that never
  returned, and its complete rows are kept.  An append to a chunked
  dataset grows its chunk index, which is no more crash-safe than ``write``:
  it runs under the undo journal (below).
* The manifest is written whole, twice (see ``_manifest_io``).
* ``write`` and ``delete`` create and unlink HDF5 objects, whose metadata
  flush is not crash-safe in any order; they run under an undo journal
  (``_journal``) and are rolled back whole if their writer dies.  Replaced
  and deleted datasets go to a trash group inside the change and are freed
  in a second journaled step, so the journal never copies their data.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import time
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import h5py
import numpy as np

from . import _hdf5, _raw
from ._dtype import check_supported
from ._journal import JournalingFile, journal_path, rollback
from ._manifest_io import read_manifest, write_manifest
from ._memmap import check_external, map_rows, source_block
from ._reconcile import needs_repair, reconcile
from ._rows import resolve_rows
from ._store_lock import StoreLock
from .errors import (
    ArgumentError,
    ArrayNotFoundError,
    InvalidStoreError,
    LayoutError,
    ManifestError,
    ReadOnlyError,
    RowsError,
    StoreNotFoundError,
    UnsupportedDtypeError,
)
from .manifest import ArrayInfo, Manifest

if TYPE_CHECKING:
    from ._cache import Cache
    from ._handle import Handle
    from ._segment import SegmentSource

__all__ = ["Mode", "Store", "ViewMode", "check_rows_fit", "open_store"]

_log = logging.getLogger("shmstore")

Mode = Literal["r", "r+", "a", "w", "w-", "x"]
_MODES = ("r", "r+", "a", "w", "w-", "x")
ViewMode = Literal["shared", "memmap", "memory", "auto"]
_VIEW_MODES = ("shared", "memmap", "memory", "auto")
_TMP_GROUP = ".shmstore_tmp"
_NAME_PART = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _check_name(name: object) -> str:
    """The dataset path *name*, checked to stay a plain path inside the file."""
    if not isinstance(name, str):
        raise ArgumentError(f"a dataset name must be a str, got {type(name).__name__} {name!r}")
    problem = None
    if not name:
        problem = "it is empty"
    elif name.startswith("/"):
        problem = "it is absolute; give the path without the leading '/'"
    elif any(part in ("", ".", "..") for part in name.split("/")):
        problem = "it has an empty, '.' or '..' component"
    elif not all(_NAME_PART.match(part) for part in name.split("/")):
        problem = "only letters, digits and _ . - are allowed, with / between groups"
    elif name.split("/")[0] == _TMP_GROUP:
        problem = f"{_TMP_GROUP!r} is reserved for shmstore's own use"
    if problem:
        raise ArgumentError(f"invalid dataset name {name!r}: {problem}")
    return name


def _as_rows(array: object, what: str) -> np.ndarray[Any, Any]:
    arr = np.asarray(array)
    check_supported(arr.dtype, what)
    if arr.ndim == 0:
        raise ArgumentError(
            f"{what} is a scalar; shmstore stores arrays of rows: pass np.atleast_1d(value)"
        )
    return arr


def check_rows_fit(info: ArrayInfo, rows: np.ndarray[Any, Any]) -> None:
    """Check that *rows* can be appended to the dataset *info* describes.

    :raises LayoutError: another number of dimensions or another trailing shape.
    :raises UnsupportedDtypeError: a dtype that does not convert to the dataset's unchanged.
    """
    if rows.shape[1:] != info.shape[1:] or rows.ndim != len(info.shape):
        wanted = ("n", *info.shape[1:])
        raise LayoutError(
            f"rows appended to {info.name!r} must have shape ({', '.join(map(str, wanted))}) "
            f"like its rows, got {rows.shape}"
        )
    if not np.can_cast(rows.dtype, info.dtype, casting="equiv"):
        raise UnsupportedDtypeError(
            f"rows appended to {info.name!r} have dtype {rows.dtype}, the dataset {info.dtype}: "
            f"convert them with rows.astype({str(info.dtype)!r}) first"
        )


def _chunk_digest(dataset: h5py.Dataset) -> str | None:
    """The digest of a chunked dataset's chunk index for the manifest; None for other layouts."""
    if dataset.chunks is None:
        return None
    from ._chunk_index import digest, stored_chunks

    return digest(stored_chunks(dataset.id))


class Store:
    """Numpy arrays in one HDF5 file; open one with :func:`shmstore.open`.

    A store opened for reading holds the shared side of a lock beside the
    file (``<file>.lock``) until :meth:`close`; one opened for writing holds
    the exclusive side, so writers are serialised and readers never see a
    change half made.  Use it as a context manager, or call :meth:`close`.

    Reading, writing, listing and sharing through a closed store raise
    :class:`~shmstore.ArgumentError` ("open it again").
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        mode: str = "r",
        *,
        cache: Cache | None = None,
        lock_timeout: float = 30.0,
    ) -> None:
        self._cache = cache
        self._cache_given = cache is not None
        if mode not in _MODES:
            raise ArgumentError(
                f"mode must be one of {', '.join(_MODES)} (as in h5py), got {mode!r}"
            )
        self.path = Path(os.path.abspath(os.fspath(path)))
        """The HDF5 file, an absolute path."""
        self.mode = mode
        """The mode it was opened with: ``"r"``, ``"r+"``, ``"a"``, ``"w"``, ``"w-"`` or ``"x"``."""
        self.writable = mode != "r"
        """False in mode ``"r"``."""
        self._closed = True
        exists = self.path.exists()
        if mode in ("r", "r+") and not exists:
            raise StoreNotFoundError(
                f"no store at {self.path}: check the path, or open it with mode 'a' to create it"
            )
        if mode in ("w-", "x") and exists:
            raise ArgumentError(f"{self.path} exists and mode {mode!r} only creates new files")
        if not exists and not self.path.parent.is_dir():
            raise StoreNotFoundError(
                f"cannot create {self.path}: the directory {self.path.parent} does not exist; "
                "create it first"
            )
        if exists and self.path.is_dir():
            raise InvalidStoreError(f"{self.path} is a directory, not an HDF5 file")
        self._lock = StoreLock(self.path, write=self.writable, timeout=lock_timeout)
        # The finaliser closes whichever h5py.File is current: a change swaps it.
        self._handle: dict[str, h5py.File] = {}
        try:
            if exists:
                self._recover(lock_timeout)
            self._handle["file"] = self._open_file(exists)
        except BaseException:
            self._lock.release()
            raise
        self._finalizer = weakref.finalize(self, Store._release, self._handle, self._lock)
        self._closed = False
        try:
            self._load()
        except BaseException:
            self.close()
            raise

    # -- opening -------------------------------------------------------------

    @property
    def _file(self) -> h5py.File:
        return self._handle["file"]

    def _recover(self, lock_timeout: float) -> None:
        """Roll back a change whose writer died (its journal is still there)."""
        if not journal_path(self.path).exists():
            return
        if not self.writable:
            # Rolling back needs the exclusive side; no writer holds it, or
            # we would not hold the shared one.
            self._lock.release()
            try:
                self._lock = StoreLock(self.path, write=True, timeout=lock_timeout)
            except ReadOnlyError as err:
                raise InvalidStoreError(
                    f"{self.path} has an unfinished change ({journal_path(self.path).name}) of "
                    f"a writer that died, and it cannot be rolled back here ({err}): open it "
                    "once with mode 'a' where its directory is writable"
                ) from err
        try:
            if rollback(self.path):
                _log.warning("%s: rolled back a write or delete whose writer died", self.path)
        except OSError as err:
            raise InvalidStoreError(
                f"{self.path} has an unfinished change ({journal_path(self.path).name}) that "
                f"cannot be rolled back here ({err}): open it once with mode 'a' as its owner"
            ) from err
        finally:
            if not self.writable:
                self._lock.release()
                self._lock = StoreLock(self.path, write=False, timeout=lock_timeout)

    def _open_file(self, exists: bool) -> h5py.File:
        if exists and not h5py.is_hdf5(self.path) and self.mode != "w":
            raise InvalidStoreError(
                f"{self.path} is not an HDF5 file (or its superblock is damaged); "
                "pass the right path, or mode 'w' to replace it"
            )
        h5mode = {"x": "w-"}.get(self.mode, self.mode)
        if exists and self.mode in ("r+", "a"):
            # HDF5 rewrites the superblock when it opens a file for writing,
            # which changes the file's mtime and so invalidates every cached
            # slice of it: open read-only until the first change.
            if not os.access(self.path, os.W_OK):
                raise ReadOnlyError(
                    f"cannot open {self.path} in mode {self.mode!r}: this user may not write it; "
                    "open it with mode 'r' to read it"
                )
            h5mode = "r"
        try:
            # HDF5's own flock is redundant with the store lock and fails on
            # file systems without flock (NFS, Lustre); libver stays at h5py's
            # default, the format that reopens after a killed writer.
            file = h5py.File(self.path, h5mode, locking=False)
        except PermissionError as err:
            raise ReadOnlyError(
                f"cannot open {self.path} in mode {self.mode!r}: {err.strerror or err}; "
                "open it with mode 'r' to read it"
            ) from err
        except OSError as err:
            raise InvalidStoreError(
                f"{self.path} cannot be opened as HDF5 (truncated or damaged?): {err}"
            ) from err
        if self.mode == "w":
            # Only now: a refused truncation must leave the old datasets whole.
            _raw.remove_orphans(self.path, None)
        return file

    def _load(self) -> None:
        """Read and check the manifest; in write modes finish an interrupted change."""
        try:
            stored = read_manifest(self._file)
            names = _hdf5.walk_datasets(self._file, skip=_TMP_GROUP)
        except ManifestError:
            raise
        except (OSError, RuntimeError, ValueError, KeyError) as err:
            raise InvalidStoreError(f"{self.path} is damaged: {err}") from err
        self._unsupported: dict[str, str] = {}
        self._chunk_indexes: dict[tuple[str, int, tuple[int, ...]], Any] = {}
        live: dict[str, ArrayInfo] = {}
        for name in names:
            described = self._describe(name, strict=stored is not None and name in stored.arrays)
            if isinstance(described, str):
                self._unsupported[name] = described
            else:
                live[name] = described
        self._manifest = reconcile(stored, live, self._unsupported, str(self.path))
        if self.writable and stored is not None and needs_repair(stored, self._manifest):
            self._repair()
        if self.writable:
            self._tidy()

    def _describe(self, name: str, version: int = 0, *, strict: bool = False) -> ArrayInfo | str:
        try:
            dataset = _hdf5.open_dataset(self._file, name)
            return _hdf5.describe(dataset, name, version, strict=strict)
        except (OSError, RuntimeError, ValueError, KeyError) as err:
            # KeyError: HDF5 refused a damaged object header (bad datatype,
            # dataspace) when opening; the name itself was just listed.
            return f"{name!r} cannot be read: {err}"

    def _repair(self) -> None:
        """Record in the manifest the rows of an append whose writer died."""
        self._reopen_writable()
        self._set_manifest(
            self._manifest.model_copy(update={"revision": self._manifest.revision + 1})
        )
        self._touch()

    def _tidy(self) -> None:
        """Free what a killed writer left: trashed datasets, unreferenced raw files."""
        if len(self._file.get(_TMP_GROUP, ())) > 0:
            self._empty_trash()
        if not _raw.raw_dir(self.path).is_dir():
            return
        referenced: set[Path] = set()
        for name in _hdf5.walk_datasets(self._file, skip=""):
            dataset = _hdf5.open_dataset(self._file, name)
            referenced.update(p for p, _, _ in _hdf5.external_files(dataset, self.path.parent))
        _raw.remove_orphans(self.path, referenced)

    @staticmethod
    def _release(handle: dict[str, h5py.File], lock: StoreLock) -> None:
        try:
            file = handle.get("file")
            if file is not None and file.id.valid:
                file.close()
        finally:
            lock.release()

    def close(self) -> None:
        """Flush and close the file, and release the lock (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._finalizer()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self)} datasets"
        return f"<shmstore.Store {str(self.path)!r} mode {self.mode!r}, {state}>"

    # -- what is stored ------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ArgumentError(f"the store {self.path} is closed; open it again")

    @property
    def manifest(self) -> Manifest:
        """The :class:`~shmstore.manifest.Manifest` of every served dataset, checked on open."""
        self._check_open()
        return self._manifest

    def names(self) -> list[str]:
        """Paths of every dataset, sorted, nested groups as ``"grp/sub/ds"``.

        Datasets shmstore cannot serve are listed too: :meth:`info` says why.
        """
        self._check_open()
        return sorted([*self._manifest.arrays, *self._unsupported])

    def __contains__(self, name: object) -> bool:
        self._check_open()
        return isinstance(name, str) and (
            name in self._manifest.arrays or name in self._unsupported
        )

    def __len__(self) -> int:
        return len(self.names())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def info(self, name: str) -> ArrayInfo:
        """Shape, dtype, layout, chunks, compression and size of dataset *name*.

        :raises ArrayNotFoundError: no dataset of that name.
        :raises UnsupportedDtypeError: the dataset exists but its dtype (or
            dataspace) is one shmstore does not serve.
        :raises ArgumentError: *name* is not a ``str``.
        """
        self._check_open()
        if not isinstance(name, str):
            raise ArgumentError(f"a dataset name must be a str, got {type(name).__name__} {name!r}")
        found = self._manifest.arrays.get(name)
        if found is not None:
            return found
        if name in self._unsupported:
            raise UnsupportedDtypeError(self._unsupported[name])
        names = ", ".join(repr(n) for n in self.names()[:10]) or "none"
        raise ArrayNotFoundError(
            f"no dataset {name!r} in {self.path.name} (it holds {len(self)}: {names})"
        )

    # -- reading -------------------------------------------------------------

    def _resolve(self, name: str, rows: object) -> tuple[ArrayInfo, int, int]:
        info = self.info(name)
        if not info.shape:
            if rows is not None:
                raise RowsError(f"{name!r} is a scalar dataset without rows: pass rows=None")
            return info, 0, 1
        start, stop = resolve_rows(rows, info.rows, name)
        return info, start, stop

    def read(self, name: str, rows: object = None) -> np.ndarray[Any, Any]:
        """A private in-memory copy of rows *rows* of dataset *name*.

        :param rows: ``None`` (all), a slice with step 1, or ``(start, stop)``.
        :raises ArrayNotFoundError: no such dataset.
        :raises RowsError: *rows* outside the dataset, with a step, or of a wrong type.
        :raises UnsupportedDtypeError: a dtype shmstore does not serve.
        :raises InvalidStoreError: the data cannot be read (damaged file, missing or
            truncated raw file).
        """
        info, start, stop = self._resolve(name, rows)
        dataset = _hdf5.open_dataset(self._file, name)
        if info.layout == "external":
            check_external(dataset, info, self.path)
        self._chunk_index(dataset, info, (start, stop), hdf5_reads=True)
        try:
            if not info.shape:
                return np.asarray(dataset[()], dtype=info.dtype)
            out = np.empty((stop - start, *info.shape[1:]), dtype=info.dtype)
            if out.size:
                dataset.read_direct(out, source_sel=np.s_[start:stop])
        except (OSError, RuntimeError, ValueError) as err:
            why = _hdf5.missing_filters(dataset) or str(err)
            raise InvalidStoreError(
                f"reading rows {start}:{stop} of {name!r} from {self.path} failed: {why}"
            ) from err
        return out

    def _chunk_index(
        self, dataset: h5py.Dataset, info: ArrayInfo, rows: tuple[int, int], *, hdf5_reads: bool
    ) -> dict[tuple[int, ...], Any] | None:
        """The checked chunk index of a chunked dataset; None for other layouts.

        The whole index is checked once per version of the dataset (a pass
        over its chunk list); when HDF5 will read *rows* (*hdf5_reads*),
        its lookups of their chunks are checked too (see ``_chunk_index``).

        :raises InvalidStoreError: the chunk index is damaged.
        """
        if info.layout != "chunked":
            return None
        from ._chunk_index import check_chunk_index, check_lookups

        what = f"{info.name!r} in {self.path}"
        key = (info.name, info.version, info.shape)
        index = self._chunk_indexes.get(key)
        if index is None:
            index = check_chunk_index(dataset, info, self.path, what)
            self._chunk_indexes[key] = index
        if hdf5_reads:
            check_lookups(dataset, info, index, rows, what)
        return index

    def memmap(self, name: str, rows: object = None) -> np.ndarray[Any, Any]:
        """A read-only, zero-copy ``np.memmap`` of rows *rows* of dataset *name*.

        Only contiguous datasets (``write`` without chunks or compression, and
        appendable ones) can be mapped.  Zero rows give an empty read-only array.

        :raises NotContiguousError: the dataset is chunked, compressed, compact or virtual.
        :raises LayoutError: its storage is not allocated (never written).
        :raises InvalidStoreError: the file or the dataset's raw file is missing or short,
            or the file was replaced since the store opened it.
        :raises StoreNotFoundError: the file was removed since the store opened it.
        :raises ArrayNotFoundError, RowsError, UnsupportedDtypeError: as :meth:`read`.
        """
        info, start, stop = self._resolve(name, rows)
        self._check_same_file()
        dataset = _hdf5.open_dataset(self._file, name)
        path, offset = source_block(dataset, info, self.path)
        if not info.shape:
            return np.memmap(path, dtype=info.dtype, mode="r", offset=offset, shape=())
        return map_rows(path, offset, info, start, stop)  # type: ignore[no-any-return]

    # -- sharing through the node cache ---------------------------------------

    @property
    def cache(self) -> Cache:
        """The node cache this store's views and handles use."""
        if self._cache is None:
            from ._handle import cache_for

            self._cache = cache_for(None, None)
        return self._cache

    def _check_same_file(self) -> None:
        """Check that :attr:`path` is still the file this store has open.

        Memory maps and cache loads read the file by its path, at offsets
        found through the open file: after a rename over it they would read
        another file's bytes.

        :raises StoreNotFoundError: the file was removed since the store opened it.
        :raises InvalidStoreError: another file was put in its place.
        """
        try:
            now = os.stat(self.path)
        except FileNotFoundError as err:
            raise StoreNotFoundError(
                f"{self.path} was removed after this store opened it: open it again"
            ) from err
        try:
            opened = os.fstat(self._file.id.get_vfd_handle())
        except (OSError, RuntimeError, ValueError, TypeError):
            return  # a file driver without a descriptor: nothing to compare
        if (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino):
            raise InvalidStoreError(
                f"{self.path} was replaced by another file after this store opened it: "
                "open it again to read the new file"
            )

    def _segment_source(self, info: ArrayInfo, start: int, stop: int) -> SegmentSource:
        """What a cached copy of these rows is a copy of: files (by identity), dataset, version.

        :raises StoreNotFoundError: the HDF5 file was removed since the store was opened.
        :raises InvalidStoreError: a raw file of the dataset is missing or cannot be examined.
        """
        from ._segment import FileIdentity, SegmentSource

        self._check_same_file()
        identity = []
        for path in self.source_files(info.name):
            try:
                identity.append(FileIdentity.of(path))
            except FileNotFoundError as err:
                if path == self.path:
                    raise StoreNotFoundError(
                        f"{self.path} was removed while open: open it again"
                    ) from err
                raise InvalidStoreError(
                    f"the raw file {path} of {info.name!r} is missing: it must stay beside "
                    f"{self.path.name}"
                ) from err
            except OSError as err:
                raise InvalidStoreError(f"cannot examine {path} of {info.name!r}: {err}") from err
        return SegmentSource(
            path=str(self.path),
            identity=tuple(identity),
            dataset=info.name,
            version=info.version,
            start=start,
            stop=stop,
        )

    def _shared(
        self, info: ArrayInfo, start: int, stop: int
    ) -> tuple[np.ndarray[Any, Any], SegmentSource]:
        from ._fill import FileBlock
        from ._load import chunk_filler, dataset_filler

        source = self._segment_source(info, start, stop)
        dataset = _hdf5.open_dataset(self._file, info.name)
        what = f"{self.path.name}:{info.name}[{start}:{stop}]"
        try:
            path, offset = source_block(dataset, info, self.path)
            fill: Any = FileBlock(path, offset + start * info.row_nbytes, what)
        except LayoutError:  # chunked, or never written: decoded here, or by HDF5
            index = self._chunk_index(dataset, info, (start, stop), hdf5_reads=False)
            fill = chunk_filler(dataset, info, start, self.path, what, index=index)
            if fill is None:
                self._chunk_index(dataset, info, (start, stop), hdf5_reads=True)
                fill = dataset_filler(dataset, info, start, what)
        shape = (stop - start, *info.shape[1:])
        return self.cache.get(source, info.dtype, shape, fill), source

    def _view_array(
        self, name: str, rows: object, mode: str
    ) -> tuple[np.ndarray[Any, Any], SegmentSource | None]:
        """The array :meth:`view` yields, and the source of the shared copy if it is one."""
        if mode not in _VIEW_MODES:
            raise ArgumentError(f"view mode must be one of {', '.join(_VIEW_MODES)}, got {mode!r}")
        info, start, stop = self._resolve(name, rows)
        if mode == "memory" or not info.shape:
            array = self.read(name, rows)
            array.flags.writeable = False
            return array, None
        if mode == "memmap":
            return self.memmap(name, rows), None
        from .errors import CacheFullError

        try:
            return self._shared(info, start, stop)
        except CacheFullError as err:
            if mode == "shared":
                raise
            fallback = "memmap" if info.memory_mappable else "memory"
            _log.info(
                "%s: no room in the cache for %r (%s); using %s", self.path, name, err, fallback
            )
            array = self.memmap(name, rows) if info.memory_mappable else self.read(name, rows)
            array.flags.writeable = False
            return array, None

    @contextmanager
    def view(
        self, name: str, rows: object = None, mode: ViewMode = "auto"
    ) -> Iterator[np.ndarray[Any, Any]]:
        """A read-only array of rows *rows* of dataset *name*, for the ``with`` block.

        * ``"shared"``: the node's single copy in shared memory, loaded once
          per node (the first process loads it, the others map it);
        * ``"memmap"``: mapped from the file (contiguous datasets only);
        * ``"memory"``: a private copy;
        * ``"auto"``: shared, or when the cache is full, memmap if the
          dataset is contiguous and a private copy if not.

        The block drops its references on exit: the mapping goes when nothing
        else refers to the array.  An array kept past the block keeps its pages.

        :raises CacheFullError: mode ``"shared"`` and no room in the cache.
        :raises NotContiguousError: mode ``"memmap"`` on a chunked dataset.
        :raises ArrayNotFoundError, RowsError, UnsupportedDtypeError: as :meth:`read`.
        """
        array, _ = self._view_array(name, rows, mode)
        try:
            yield array
        finally:
            del array

    def handle(self, name: str, rows: object = None) -> Handle:
        """A small picklable reference to rows *rows* of *name*, for worker processes.

        ``handle.view()`` in a worker maps the node's copy without opening the
        HDF5 file when the copy is there and the file is unchanged.

        :raises ArrayNotFoundError, RowsError, UnsupportedDtypeError: as :meth:`read`.
        """
        from ._handle import Handle

        info, start, stop = self._resolve(name, rows)
        if not info.shape:
            raise RowsError(f"{name!r} is a scalar dataset: read it with store.read({name!r})")
        return Handle(
            source=self._segment_source(info, start, stop),
            dtype=info.dtype,
            shape=(stop - start, *info.shape[1:]),
            # The default cache is resolved in the process that uses the handle:
            # on another node ($JOB_SHMTMPDIR differs) it is that node's cache.
            cache_directory=str(self.cache.directory) if self._cache_given else None,
            cache_budget=self.cache.budget if self._cache_given else None,
        )

    def source_files(self, name: str) -> list[Path]:
        """The files whose bytes make up dataset *name*: the HDF5 file and any raw files.

        :raises ArrayNotFoundError: no dataset *name*.
        """
        self.info(name)
        dataset = _hdf5.open_dataset(self._file, name)
        return [
            self.path,
            *(path for path, _, _ in _hdf5.external_files(dataset, self.path.parent)),
        ]

    # -- writing -------------------------------------------------------------

    def _check_writable(self, action: str) -> None:
        self._check_open()
        if not self.writable:
            raise ReadOnlyError(
                f"cannot {action}: {self.path} is open read-only (mode 'r'); "
                "open it with mode 'a' or 'r+' to change it"
            )

    def _reopen_writable(self) -> None:
        """Switch the h5py file to read/write (see ``_open_file``) before the first change."""
        if self._file.mode == "r+":
            return
        self._file.close()
        try:
            self._handle["file"] = h5py.File(self.path, "r+", locking=False)
        except OSError as err:
            self._handle["file"] = h5py.File(self.path, "r", locking=False)
            raise ReadOnlyError(f"cannot write {self.path}: {err}") from err

    def _set_manifest(self, manifest: Manifest) -> None:
        write_manifest(self._file, manifest)
        self._manifest = manifest.model_copy(update={"inferred": False})

    def _touch(self) -> None:
        """Make a change visible to every ``stat`` of the file.

        The file's identity (size, mtime in ns) tells caches that its data
        changed; the kernel's coarse clock can leave mtime unchanged for two
        writes within one tick, so move it forward explicitly.
        """
        stat = os.stat(self.path)
        os.utime(self.path, ns=(stat.st_atime_ns, max(time.time_ns(), stat.st_mtime_ns + 1)))

    @contextmanager
    def _change(self, expendable: list[tuple[int, int]] | None = None) -> Iterator[None]:
        """Run a change that creates or unlinks objects: all of it, or none of it.

        HDF5 runs on a :class:`JournalingFile` for the change, and the file is
        closed (HDF5's last metadata written) before the journal is dropped.
        On an exception the file is rolled back and the store's state restored.
        """
        manifest, unsupported = self._manifest, dict(self._unsupported)
        self._file.close()
        journaled = JournalingFile(self.path, expendable or ())
        try:
            self._handle["file"] = h5py.File(journaled, "r+")
            yield
            self._file.close()
            journaled.commit()
        except BaseException:
            if self._file.id.valid:
                self._file.close()
            journaled.close()
            rollback(self.path)
            self._manifest, self._unsupported = manifest, unsupported
            raise
        finally:
            journaled.close()
            self._handle["file"] = h5py.File(self.path, "r+", locking=False)

    def _trash_name(self) -> str:
        return f"{_TMP_GROUP}/{secrets.token_hex(8)}"

    def _empty_trash(self) -> None:
        """Free the datasets a change moved to the trash (their data need not be journaled)."""
        trash = self._file.get(_TMP_GROUP)
        if trash is None or len(trash) == 0:
            return
        names = [f"{_TMP_GROUP}/{child}" for child in trash]
        expendable = [
            span
            for name in names
            if _hdf5.is_dataset(self._file, name)
            for span in _hdf5.data_ranges(_hdf5.open_dataset(self._file, name))
        ]
        with self._change(expendable):
            for name in names:
                del self._file[name]

    def _after_change(self, old_raw: tuple[str, ...]) -> None:
        self._empty_trash()
        _raw.remove_raw(self.path, old_raw)
        self._touch()

    def _raw_files_of(self, name: str) -> tuple[str, ...]:
        """Raw files that dataset *name* owns (those inside this store's raw directory)."""
        if name not in self._manifest.arrays or self._manifest.arrays[name].layout != "external":
            return ()
        dataset = _hdf5.open_dataset(self._file, name)
        files = _hdf5.external_files(dataset, self.path.parent)
        return _raw.owned(self.path, (path for path, _, _ in files))

    def write(
        self,
        name: str,
        array: object,
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

        :returns: the new dataset's :class:`ArrayInfo`.
        :raises ReadOnlyError: the store is open read-only, or (*appendable*) its
            raw file directory is not writable.
        :raises ArgumentError: a bad name, a scalar, a bad filter, or *name*
            exists and *overwrite* is false.
        :raises UnsupportedDtypeError: object, unicode or variable-length dtypes.
        """
        self._check_writable(f"write {name!r}")
        _check_name(name)
        arr = _as_rows(array, f"array for {name!r}")
        exists = name in self
        if exists and not overwrite:
            raise ArgumentError(
                f"{name!r} already exists in {self.path.name}: pass overwrite=True to replace "
                "it, or append() to add rows"
            )
        self._check_parents(name)
        old_raw = self._raw_files_of(name) if exists else ()
        external = appendable and chunks is None and compression is None
        raw_name = self._new_raw_name(name) if external else None
        revision = self._manifest.revision + 1
        try:
            with self._change():
                temporary = self._trash_name()
                if raw_name is not None:
                    self._write_external(name, temporary, arr, raw_name)
                else:
                    self._write_h5(temporary, arr, chunks, compression, appendable)
                described = self._describe(temporary, revision, strict=True)
                if isinstance(described, str):
                    raise InvalidStoreError(
                        f"the dataset written for {name!r} is unreadable: {described}"
                    )
                if exists:
                    self._file.move(name, self._trash_name())
                self._file.move(temporary, name)
                info = described.model_copy(
                    update={
                        "name": name,
                        "chunk_digest": _chunk_digest(_hdf5.open_dataset(self._file, name)),
                    }
                )
                self._set_manifest(
                    self._manifest.model_copy(
                        update={
                            "arrays": {**self._manifest.arrays, name: info},
                            "revision": revision,
                        }
                    )
                )
        except BaseException:
            if raw_name is not None:
                _raw.remove_raw(self.path, (raw_name,))
            raise
        self._unsupported.pop(name, None)
        self._after_change(old_raw)
        return info

    def _check_parents(self, name: str) -> None:
        parts = name.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in self._file and _hdf5.is_dataset(self._file, parent):
                raise ArgumentError(f"cannot create {name!r}: {parent!r} is a dataset, not a group")
        if name in self._file and not _hdf5.is_dataset(self._file, name):
            raise ArgumentError(f"cannot write {name!r}: it is a group of the file")

    def _new_raw_name(self, name: str) -> str:
        try:
            return _raw.new_raw_name(self.path, name)
        except PermissionError as err:
            raise ReadOnlyError(
                f"cannot create the raw file directory of {self.path.name} for {name!r}: {err}"
            ) from err
        except OSError as err:
            raise InvalidStoreError(
                f"cannot create the raw file directory of {self.path.name} for {name!r}: {err}; "
                f"move what is in the way of {_raw.raw_dir(self.path)}"
            ) from err

    def _write_raw(self, path: Path, offset: int, data: np.ndarray[Any, Any], name: str) -> None:
        """Write *data* into the raw file *path* of dataset *name* at byte *offset*.

        :raises ReadOnlyError: this user may not write the raw file or its directory.
        :raises InvalidStoreError: another failure of the write (no space, I/O error).
        """
        try:
            _raw.write_raw(path, offset, data)
        except PermissionError as err:
            raise ReadOnlyError(
                f"cannot write the rows of {name!r} to its raw file {path}: {err.strerror}; "
                "the raw files of a store must be as writable as the store itself"
            ) from err
        except OSError as err:
            raise InvalidStoreError(
                f"writing the rows of {name!r} to its raw file {path} failed: {err}"
            ) from err

    def _write_external(
        self, name: str, temporary: str, arr: np.ndarray[Any, Any], raw_name: str
    ) -> None:
        group = self._file.require_group(_TMP_GROUP)
        data = np.ascontiguousarray(arr)
        self._write_raw(self.path.parent / raw_name, 0, data, name)
        _hdf5.create_external(group, temporary.rsplit("/", 1)[1], data.dtype, data.shape, raw_name)

    def _write_h5(
        self,
        temporary: str,
        arr: np.ndarray[Any, Any],
        chunks: object,
        compression: object,
        appendable: bool,
    ) -> None:
        options: dict[str, Any] = {}
        if isinstance(compression, Mapping):
            options.update(compression)
        elif compression is not None:
            options["compression"] = compression
        if chunks is not None:
            options["chunks"] = chunks
        if appendable:
            options["maxshape"] = (None, *arr.shape[1:])
            options.setdefault("chunks", True)
        try:
            self._file.create_dataset(temporary, data=arr, **options)
        except (ValueError, TypeError, OSError) as err:
            raise ArgumentError(
                f"cannot create a dataset with chunks={chunks!r}, compression={compression!r}: "
                f"{err}"
            ) from err

    def append(self, name: str, rows: object) -> ArrayInfo:
        """Add *rows* at the end of axis 0 of dataset *name*, creating it if absent.

        A new name becomes an appendable contiguous dataset in a raw file
        beside the HDF5 file (memory-mappable).  When ``append`` returns, the
        rows survive a ``kill -9`` of this process at any later moment.

        :returns: the grown dataset's :class:`ArrayInfo`.
        :raises ReadOnlyError: the store is open read-only, or its raw file is not writable.
        :raises LayoutError: the dataset has a fixed size, or another trailing shape.
        :raises UnsupportedDtypeError: the rows' dtype differs from the dataset's.
        :raises InvalidStoreError: the raw file no longer holds the dataset's rows.
        """
        self._check_writable(f"append to {name!r}")
        if name not in self:
            _check_name(name)
            return self.write(name, rows, appendable=True)
        info = self.info(name)
        arr = _as_rows(rows, f"rows appended to {name!r}")
        if not info.appendable:
            raise LayoutError(
                f"{name!r} has a fixed size ({info.layout}, {info.rows} rows): rewrite it with "
                f"store.write({name!r}, data, appendable=True, overwrite=True) to make it "
                "appendable"
            )
        check_rows_fit(info, arr)
        if len(arr) == 0:
            return info
        data = np.ascontiguousarray(arr, dtype=info.dtype)
        old, new = info.rows, info.rows + len(data)
        spans: list[tuple[Path, int, int]] = []
        if info.layout == "external":
            dataset = _hdf5.open_dataset(self._file, name)
            # New rows after a hole would make the hole part of the dataset.
            check_external(dataset, info, self.path)
            begin, end = old * info.row_nbytes, new * info.row_nbytes
            spans = _hdf5.external_spans(dataset, self.path.parent, begin, end)
            if sum(length for _, _, length in spans) < end - begin:
                raise LayoutError(
                    f"{name!r} is stored in external files of a fixed total size, which "
                    f"{new} rows would overflow: rewrite it with store.write({name!r}, data, "
                    "appendable=True, overwrite=True)"
                )
        self._reopen_writable()
        # Growing a chunked dataset adds chunks to its index (B-tree nodes
        # split and move), which a kill can leave half flushed: journaled.
        with nullcontext() if info.layout == "external" else self._change():
            dataset = _hdf5.open_dataset(self._file, name)
            if info.layout == "external":
                # Rows first, extent second: the extent never covers unwritten bytes.
                raw = data.reshape(-1).view(np.uint8)
                done = 0
                for raw_path, offset, length in spans:  # the rows may run on into the next file
                    self._write_raw(raw_path, offset, raw[done : done + length], name)
                    done += length
                dataset.id.set_extent((new, *info.shape[1:]))
            else:
                dataset.resize(new, axis=0)
                dataset[old:new] = data
            self._file.flush()
            revision = self._manifest.revision + 1
            grown = info.model_copy(
                update={
                    "shape": (new, *info.shape[1:]),
                    "version": revision,
                    "chunk_digest": _chunk_digest(dataset),
                }
            )
            self._set_manifest(
                self._manifest.model_copy(
                    update={"arrays": {**self._manifest.arrays, name: grown}, "revision": revision}
                )
            )
        self._touch()
        return grown

    def delete(self, name: str) -> None:
        """Remove dataset *name* (and its raw file, if it has one).

        :raises ReadOnlyError: the store is open read-only.
        :raises ArrayNotFoundError: no such dataset.
        """
        self._check_writable(f"delete {name!r}")
        if name not in self:
            self.info(name)
        raw = self._raw_files_of(name)
        arrays = {k: v for k, v in self._manifest.arrays.items() if k != name}
        with self._change():
            self._file.move(name, self._trash_name())
            self._set_manifest(
                self._manifest.model_copy(
                    update={"arrays": arrays, "revision": self._manifest.revision + 1}
                )
            )
        self._unsupported.pop(name, None)
        self._after_change(raw)


def open_store(
    path: str | os.PathLike[str],
    mode: str = "r",
    *,
    cache: Cache | None = None,
    lock_timeout: float = 30.0,
) -> Store:
    """Open the HDF5 file at *path* as a :class:`Store`.

    :param mode: as in h5py: ``"r"`` read only (the file must exist), ``"r+"``
        read/write (must exist), ``"a"`` read/write, created if absent,
        ``"w"`` created or truncated, ``"w-"``/``"x"`` created, must not exist.
    :param cache: the node cache that :meth:`Store.view` and handles use;
        by default the one of ``SHMSTORE_DIR`` / ``JOB_SHMTMPDIR`` /
        ``/dev/shm/shmstore-<uid>`` with the ``SHMSTORE_BUDGET`` budget.
    :param lock_timeout: seconds to wait while another process holds the
        store's lock (a writer, or readers when opening for writing).
    :raises StoreNotFoundError: mode ``"r"`` or ``"r+"`` and no file at *path*,
        or a creating mode and no directory to create it in.
    :raises InvalidStoreError: the file is not HDF5, or is truncated or damaged.
    :raises ManifestError: the manifest is invalid or disagrees with the datasets.
    :raises LockTimeoutError: the lock stayed held for *lock_timeout* seconds.
    :raises ReadOnlyError: a write mode on a file this user cannot write, or
        beside which the lock file cannot be created.
    :raises ArgumentError: an unknown *mode*, or ``"w-"``/``"x"`` and the file exists.
    """
    return Store(path, mode, cache=cache, lock_timeout=lock_timeout)
