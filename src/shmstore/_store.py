"""The store: numpy arrays in one HDF5 file.

Crash behaviour (docs/design.md, "The undo journal") rests on four choices made here:

* Files are written in the HDF5 1.6 file format (h5py's default ``libver``):
  later formats mark the superblock "open for writing" and refuse to open a
  file whose writer was killed, until ``h5clear`` is run on it.
* An append writes the rows into the raw file first, then grows the dataset's
  extent and flushes (one in-place object-header write), then rewrites the
  dataset's record.  A writer killed between the two leaves a dataset longer
  than its record: that is recognised when the dataset is used as an append
  that never returned, and its complete rows are kept.  An append to a
  chunked dataset grows its chunk index, which is no more crash-safe than
  ``write``: it runs under the undo journal (below).
* Each dataset's record is written whole, twice (see ``_metadata``); a
  store of metadata format 1 is migrated under the journal at its first
  change.
* ``write`` and ``delete`` create and unlink HDF5 objects, whose metadata
  flush is not crash-safe in any order; they run under an undo journal
  (``_journal``) and are rolled back whole if their writer dies.  Replaced
  and deleted datasets go to a trash group inside the change and are freed
  in a second journaled step, so the journal never copies their data.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import secrets
import time
import weakref
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import h5py
import numpy as np

from . import _hdf5, _metadata, _raw, _sums, _written
from ._dtype import check_supported
from ._dtype import empty as new_empty
from ._durable import durable_from_env, fsync_dir, fsync_file
from ._fill import FileBlock, check_block, read_block, worker_count
from ._format1 import BACKUP_ATTR, MANIFEST_ATTR, copy_problems, read_manifest
from ._integrity import RANGE_NBYTES, Summing, bytes_of
from ._journal import JournalingFile, journal_path, rollback
from ._memmap import check_external, map_rows, source_block
from ._reconcile import check_record
from ._rows import resolve_rows
from ._store_lock import StoreLock
from ._within import Within
from ._written import Stat, stat_of
from .errors import (
    ArgumentError,
    ArrayNotFoundError,
    InvalidStoreError,
    LayoutError,
    LockTimeoutError,
    ManifestError,
    ReadOnlyError,
    RowsError,
    SegmentError,
    StoreNotFoundError,
    UnsupportedDtypeError,
)
from .manifest import FORMAT_VERSION, ArrayInfo, Checksums, Manifest

if TYPE_CHECKING:
    from ._cache import Cache
    from ._handle import Handle
    from ._integrity import Verifier
    from ._sharing import Described, Fill

__all__ = ["Mode", "Store", "ViewMode", "check_name", "check_rows_fit", "open_store"]

_log = logging.getLogger("shmstore")

Mode = Literal["r", "r+", "a", "w", "w-", "x"]
_MODES = ("r", "r+", "a", "w", "w-", "x")
ViewMode = Literal["shared", "memmap", "memory", "auto"]
_VIEW_MODES = ("shared", "memmap", "memory", "auto")
_TMP_GROUP = ".shmstore_tmp"
# Root groups of shmstore's own: the trash, and the datasets' checksums.
_RESERVED = (_TMP_GROUP, _sums.SUMS_GROUP)
_NAME_PART = re.compile(r"^[A-Za-z0-9_.\-]+$")


_RECORD_FIELDS = tuple(field for field in ArrayInfo.model_fields if field != "name")


def _in_tmp(name: str) -> bool:
    """True for shmstore's own groups (trash, checksums) and what lies in them."""
    return name.split("/", 1)[0] in _RESERVED


def check_name(name: object) -> str:
    """The dataset path *name*, checked to stay a plain path inside the file.

    :raises ArgumentError: not a str, empty, absolute, an empty, ``.`` or ``..``
        component, characters other than letters, digits, ``_ . -`` and ``/``,
        or shmstore's own scratch group.
    """
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
    elif name.split("/")[0] in _RESERVED:
        problem = f"{name.split('/')[0]!r} is reserved for shmstore's own use"
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
        durable: bool | None = None,
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
        self.durable = durable_from_env() if durable is None else bool(durable)
        """True when changes are flushed to disk before they return (``durable=True``)."""
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
        # The journal of the change under way (see _change), else None.
        self._journaled: JournalingFile | None = None
        try:
            if exists:
                self._recover(lock_timeout)
            self._handle["file"] = self._open_file(exists)
        except BaseException:
            self._lock.release()
            raise
        # The epoch of this writer's changes (see _written.py), once it writes.
        self._writing: dict[str, str] = {}
        if mode in ("w", "w-", "x"):
            self._begin_writing()
        self._finalizer = weakref.finalize(
            self, Store._release, self._handle, self._lock, self._writing
        )
        self._closed = False
        if not exists and self.durable:
            fsync_dir(self.path.parent)
        try:
            self._load()
        except BaseException:
            self.close()
            raise

    # -- opening -------------------------------------------------------------

    @property
    def _file(self) -> h5py.File:
        file = self._handle.get("file")
        if file is None:
            # After a change the file is opened again only when it is used:
            # a store opened to make one change and closed never reopens it.
            file = self._handle["file"] = self._reopen_after_change()
        return file

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

    def _h5open(self, h5mode: str) -> h5py.File:
        """h5py's open of :attr:`path`, its failures translated (``_hdf5.open_file``).

        :raises ReadOnlyError: this user may not write the file, or this
            process holds it open read-only elsewhere.
        :raises LockTimeoutError: another process holds it open through HDF5.
        :raises InvalidStoreError: it cannot be opened as HDF5.
        """
        try:
            return _hdf5.open_file(self.path, h5mode)
        except PermissionError as err:
            raise ReadOnlyError(
                f"cannot open {self.path} in mode {self.mode!r}: {err.strerror or err}; "
                "open it with mode 'r' to read it"
            ) from err
        except OSError as err:
            problem = _hdf5.open_problem(err, self.path)
            if problem is not None:
                why, elsewhere = problem
                raise (LockTimeoutError if elsewhere else ReadOnlyError)(why) from err
            raise InvalidStoreError(
                f"{self.path} cannot be opened as HDF5 (truncated or damaged?): {err}"
            ) from err

    def _open_file(self, exists: bool) -> h5py.File:
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
        # libver stays at h5py's default, the format that reopens after a killed writer.
        try:
            file = self._h5open(h5mode)
        except InvalidStoreError:
            if exists and self.mode != "w" and not h5py.is_hdf5(self.path):
                raise InvalidStoreError(
                    f"{self.path} is not an HDF5 file (or its superblock is damaged); "
                    "pass the right path, or mode 'w' to replace it"
                ) from None
            raise
        if self.mode == "w":
            # Only now: a refused truncation must leave the old datasets whole.
            _raw.remove_orphans(self.path, None)
        return file

    def _load(self) -> None:
        """Read the store's own record (format 2) or manifest (format 1); tidy in write modes.

        Datasets are not looked at here: each is described when first used.
        """
        where = str(self.path)
        self._known: dict[str, ArrayInfo | str] = {}
        self._chunk_indexes: dict[tuple[str, int, tuple[int, ...]], Any] = {}
        self._verifiers: dict[tuple[str, int, tuple[int, ...]], Verifier | None] = {}
        # Where each table of checksums lies (offset, capacity): fixed while it lives.
        self._tables: dict[str, tuple[int, int]] = {}
        self._descriptions: dict[str, Described] = {}
        self._format1: dict[str, ArrayInfo] | None = None
        try:
            record = _metadata.read_store_record(self._file, where)
            stored = None if record is not None else read_manifest(self._file)
        except ManifestError:
            raise
        except (OSError, RuntimeError, ValueError, KeyError) as err:
            raise InvalidStoreError(f"{self.path} is damaged: {err}") from err
        if record is not None:
            self._format = FORMAT_VERSION
        elif stored is not None:
            self._format = 1
            self._format1 = dict(stored.arrays)
        else:
            self._format = 0  # no shmstore metadata: a file of other tools, or a new one
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

    def _stored_info(self, name: str) -> ArrayInfo | None:
        """What shmstore recorded of dataset *name*, or ``None`` (a dataset of another tool).

        :raises ManifestError: the record is damaged or of a newer format.
        """
        if self._format1 is not None:
            return self._format1.get(name)
        what = f"{name!r} in {self.path}"
        try:
            dataset = _hdf5.open_dataset(self._file, name)
            record = _metadata.read_record(dataset, what)
        except ManifestError:
            raise
        except (OSError, RuntimeError, ValueError, KeyError) as err:
            raise ManifestError(f"{what}: its record cannot be read: {err}") from err
        if record is None:
            return None
        return ArrayInfo.model_construct(
            name=name, **{field: getattr(record, field) for field in _RECORD_FIELDS}
        )

    def _lookup(self, name: str) -> ArrayInfo | str | None:
        """The checked description of *name*, why it is not served, or ``None`` (no dataset).

        Described once per store and change: the record is validated and
        compared with the dataset's header here, on first use.

        :raises ManifestError: the record is damaged, or disagrees with the dataset.
        """
        known = self._known.get(name)
        if known is not None:
            return known
        exists = _hdf5.is_dataset(self._file, name) and not _in_tmp(name)
        if not exists:
            if self._format1 is not None and name in self._format1:
                info = self._format1[name]
                raise ManifestError(
                    f"the manifest of {self.path} lists {name!r} ({info.shape} {info.dtype}), "
                    "but the file has no such dataset: the file was changed by another tool; "
                    "restore it, or delete the root attribute 'shmstore_manifest' to have the "
                    "manifest inferred"
                )
            return None
        stored = self._stored_info(name)
        described = self._describe(name, strict=stored is not None)
        if isinstance(described, str):
            if stored is not None:
                raise ManifestError(f"{name!r} is recorded in {self.path}, but {described}")
            self._known[name] = described
            return described
        if stored is None:
            self._known[name] = described
            return described
        info = check_record(stored, described, str(self.path))
        if info.shape != stored.shape and self.writable:
            info = self._repair(info)
        self._known[name] = info
        return info

    def _repair(self, info: ArrayInfo) -> ArrayInfo:
        """Record the rows of an append whose writer died (they are complete); the record.

        Their checksums were written before the extent grew: they are counted now.
        """
        self._reopen_writable()
        if info.checksums is not None and info.checksums.per == "range":
            sums = _sums.read(
                self._file, self.path, info.checksums, repr(info.name), limit=info.nbytes
            )
            info = info.model_copy(
                update={"checksums": info.checksums.model_copy(update={"count": len(sums)})}
            )
        self._store_record(info)
        self._touch()
        return info

    def _tidy(self) -> None:
        """Free what a killed writer left: trashed datasets and their raw files.

        A change moves what it replaces or deletes to the trash inside its
        journaled step, then removes the raw files and empties the trash;
        a writer killed in between left them there.  (Raw files of a change
        that was rolled back are removed by the rollback: the journal names
        them.)
        """
        if len(self._file.get(_TMP_GROUP, ())) > 0:
            self._empty_trash()

    @staticmethod
    def _release(handle: dict[str, h5py.File], lock: StoreLock, written: dict[str, str]) -> None:
        try:
            file = handle.get("file")
            if file is not None and file.id.valid:
                file.close()
            # HDF5 rewrites the superblock when it closes a file opened for
            # writing: the file as shmstore leaves it is known only now.
            if written:
                _written.record(Path(written["path"]), written["epoch"])
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
        """The :class:`~shmstore.manifest.Manifest` of every served dataset, built now.

        Every dataset's record is read and checked against its dataset, so
        this costs time in proportion to the number of datasets; :meth:`info`
        describes one.

        :raises ManifestError: a dataset's record is damaged or disagrees with
            the dataset (the message names it); :meth:`info` still serves the others.
        """
        self._check_open()
        arrays = {}
        for name in self.names():
            found = self._lookup(name)
            if isinstance(found, ArrayInfo):
                arrays[name] = found
        return Manifest(
            format_version=1 if self._format == 1 else 2,
            inferred=self._format == 0,
            arrays=arrays,
        )

    @property
    def format_version(self) -> int:
        """The metadata format of the file: 2, 1 (shmstore 0.1.0; migrated on the first
        change), or 0 (no shmstore metadata: a file of other tools, or a new empty one)."""
        self._check_open()
        return self._format

    def metadata_problems(self) -> list[str]:
        """What is wrong with the stored copies of the metadata; empty when every copy is whole.

        Format 1: the two copies of the root manifest; format 2: the two
        copies of each dataset's record.  A store serves from one good copy,
        so these are problems a reader does not see (``shmstore validate``
        reports them).  Reads every dataset's record.
        """
        self._check_open()
        if self._format == 1:
            return copy_problems(self._file)
        problems = []
        for name in self.names():
            if not _hdf5.is_dataset(self._file, name):
                continue
            try:
                dataset = _hdf5.open_dataset(self._file, name)
            except (OSError, RuntimeError, ValueError, KeyError):
                continue  # reported by info() as a dataset that cannot be read
            problems.extend(_metadata.record_problems(dataset, repr(name)))
        return problems

    def names(self) -> list[str]:
        """Paths of every dataset, sorted, nested groups as ``"grp/sub/ds"``.

        Datasets shmstore cannot serve are listed too: :meth:`info` says why.
        Listing visits every object of the file.
        """
        self._check_open()
        names = set(_hdf5.walk_datasets(self._file, skip=_RESERVED))
        names.update(self._format1 or ())
        return sorted(names)

    def __contains__(self, name: object) -> bool:
        self._check_open()
        if not isinstance(name, str) or _in_tmp(name):
            return False
        return _hdf5.is_dataset(self._file, name) or (
            self._format1 is not None and name in self._format1
        )

    def __len__(self) -> int:
        return len(self.names())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def info(self, name: str) -> ArrayInfo:
        """Shape, dtype, layout, chunks, compression and size of dataset *name*.

        The dataset's record is read and checked against the dataset on first use.

        :raises ArrayNotFoundError: no dataset of that name.
        :raises UnsupportedDtypeError: the dataset exists but its dtype (or
            dataspace) is one shmstore does not serve.
        :raises ManifestError: its record is damaged, of a newer format, or
            disagrees with the dataset.
        :raises ArgumentError: *name* is not a ``str``.
        """
        self._check_open()
        if not isinstance(name, str):
            raise ArgumentError(f"a dataset name must be a str, got {type(name).__name__} {name!r}")
        found = self._lookup(name)
        if isinstance(found, ArrayInfo):
            return found
        if isinstance(found, str):
            raise UnsupportedDtypeError(found)
        some = _hdf5.first_datasets(self._file, _RESERVED, 11)
        names = ", ".join(repr(n) for n in some[:10]) + (", ..." if len(some) > 10 else "")
        raise ArrayNotFoundError(
            f"no dataset {name!r} in {self.path.name} (it holds {names or 'none'})"
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
        :raises IntegrityError: the data do not match their checksums.
        """
        info, start, stop = self._resolve(name, rows)
        dataset = _hdf5.open_dataset(self._file, name)
        if info.layout == "external":
            check_external(dataset, info, self.path)
        index = self._chunk_index(dataset, info, (start, stop), hdf5_reads=True)
        verifier = self._verifier(info, dataset)
        if verifier is not None and index is not None:
            from ._load import check_chunks

            # Through h5py's own descriptor: the bytes HDF5 is about to read.
            own = self._opened()
            source = self.path if own is None else own
            check_chunks(source, index, verifier, (start, stop), f"{info.name!r}")
        elif verifier is not None:
            # Read by shmstore, checked on the way in: HDF5 would not check.
            out = new_empty((stop - start, *info.shape[1:]) if info.shape else (), info.dtype)
            block = self._file_block(info, dataset, start, f"{self.path.name}:{name}", verifier)
            read_block(block, memoryview(out.reshape(-1).view(np.uint8).data))
            return out
        try:
            if not info.shape:
                return np.asarray(dataset[()], dtype=info.dtype)
            out = new_empty((stop - start, *info.shape[1:]), info.dtype)
            if out.size:
                dataset.read_direct(_hdf5.as_stored(out), source_sel=np.s_[start:stop])
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

    def _verifier(
        self, info: ArrayInfo, dataset: h5py.Dataset, *, fresh: bool = False
    ) -> Verifier | None:
        """What checks *info*'s bytes as they load (read once per version); ``None``: unverified.

        :raises IntegrityError: the checksums themselves are damaged.
        """
        key = (info.name, info.version, info.shape)
        if not fresh and key in self._verifiers:
            return self._verifiers[key]
        if info.checksums is None:
            found = None
        else:
            source = None if info.layout == "chunked" else source_block(dataset, info, self.path)
            found = _sums.verifier(self._file, self.path, info, source, opened=self._opened())
        self._verifiers[key] = found
        return found

    def _opened(self) -> int | None:
        """The descriptor h5py reads the file through (``None``: a driver without one).

        Reads by shmstore go through it, not the path: a store open across
        a rename over its file keeps reading the file it opened, as HDF5 does.
        """
        try:
            fd = self._file.id.get_vfd_handle()
        except (OSError, RuntimeError, ValueError, TypeError):
            return None
        return fd if isinstance(fd, int) and fd >= 0 else None

    def _file_block(
        self,
        info: ArrayInfo,
        dataset: h5py.Dataset,
        start: int,
        what: str,
        verifier: Verifier | None,
    ) -> FileBlock:
        """The bytes of rows ``[start, ...)`` of a contiguous or external dataset, as a block.

        Data inside the HDF5 file are read through the descriptor h5py has
        open (see :meth:`_opened`); a raw file by its path.
        """
        path, offset = source_block(dataset, info, self.path)
        lo = start * info.row_nbytes
        opened = self._opened() if path == self.path else None
        return FileBlock(path if opened is None else opened, offset + lo, what, verifier, lo)

    def verify(self, name: str, rows: object = None) -> int:
        """Check rows *rows* of dataset *name* against their checksums, keeping nothing.

        Reads the stored bytes (for chunked data, the stored chunks over the
        rows, compressed as they are) and checks each checksum on them;
        every load into the cache and every :meth:`read` does the same on
        its way.  :meth:`memmap` cannot: a mapping is read by the page, not
        by the range.

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
        info, start, stop = self._resolve(name, rows)
        dataset = _hdf5.open_dataset(self._file, name)
        verifier = self._verifier(info, dataset, fresh=True)
        if verifier is None or stop == start:
            return 0
        what = f"{self.path.name}:{name}[{start}:{stop}]"
        if info.layout == "chunked":
            from ._load import check_chunks

            index = self._chunk_index(dataset, info, (start, stop), hdf5_reads=False)
            return check_chunks(self.path, index or {}, verifier, (start, stop), what)
        block = self._file_block(info, dataset, start, what, verifier)
        return check_block(block, (stop - start) * info.row_nbytes)

    def memmap(self, name: str, rows: object = None) -> np.ndarray[Any, Any]:
        """A read-only, zero-copy ``np.memmap`` of rows *rows* of dataset *name*.

        Only contiguous datasets (``write`` without chunks or compression, and
        appendable ones) can be mapped.  Zero rows give an empty read-only array.
        The pages are read from the file as they are touched, so their
        checksums are not checked: call :meth:`verify` first for the rows
        you map (``view`` and ``read`` check on their own).

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

    def _files_of(self, info: ArrayInfo) -> tuple[tuple[str, ...], tuple[Stat, ...]]:
        """The files of dataset *info* (the HDF5 file first) and their identities now.

        :raises StoreNotFoundError: the HDF5 file was removed since the store was opened.
        :raises InvalidStoreError: a raw file of the dataset is missing or cannot be examined.
        """
        self._check_same_file()
        files = tuple(str(p) for p in self.source_files(info.name))
        stats = []
        for path in files:
            try:
                stats.append(stat_of(path))
            except FileNotFoundError as err:
                if path == str(self.path):
                    raise StoreNotFoundError(
                        f"{self.path} was removed while open: open it again"
                    ) from err
                raise InvalidStoreError(
                    f"the raw file {path} of {info.name!r} is missing: it must stay beside "
                    f"{self.path.name}"
                ) from err
            except OSError as err:
                raise InvalidStoreError(f"cannot examine {path} of {info.name!r}: {err}") from err
        return files, tuple(stats)

    def _described(self, info: ArrayInfo) -> Described:
        """What the sharing layer needs to serve *info*'s rows from the node's blocks.

        Kept per dataset while its files keep their identity (one ``stat``
        each); made again after any change, and then the node's blocks of
        this dataset that no view will ask for again are removed.
        """
        from ._sharing import Described, block_nbytes, block_target, drop_stale, note

        known = self._descriptions.get(info.name)
        if (
            known is not None
            and known.version == info.version
            and known.shape == info.shape
            and known.current()
        ):
            return known
        files, stats = self._files_of(info)
        epoch = _written.trusted(self.path, stats) if info.generation is not None else None
        chunk_rows = info.chunks[0] if info.chunks is not None else None
        described = Described.of(
            path=str(self.path),
            dataset=info.name,
            files=files,
            stats=stats,
            generation=f"{info.generation}.{epoch}" if epoch is not None else None,
            version=info.version,
            dtype=info.dtype,
            shape=info.shape,
            block=block_nbytes(info.row_nbytes, chunk_rows, block_target()),
        )
        self._descriptions[info.name] = described
        if note(described):
            drop_stale(self.cache, described)
        return described

    def _block_fill(self, info: ArrayInfo, lo: int, hi: int) -> Fill:
        """How to load the bytes ``[lo, hi)`` of dataset *info* into a block."""
        from ._load import block_filler, check_chunks

        row = info.row_nbytes
        first, last = lo // row, -(-hi // row)
        what = f"{self.path.name}:{info.name}[{first}:{last}]"
        dataset = _hdf5.open_dataset(self._file, info.name)
        verifier = self._verifier(info, dataset)
        try:
            path, offset = source_block(dataset, info, self.path)
            return FileBlock(path, offset + lo, what, verifier, lo)
        except LayoutError:  # chunked, or never written: decoded here, or by HDF5
            pass
        index = self._chunk_index(dataset, info, (first, last), hdf5_reads=False)

        def check_hdf5(a: int, b: int) -> None:
            """Before HDF5 reads rows (what shmstore cannot decode): check its lookups."""
            self._chunk_index(dataset, info, (a, b), hdf5_reads=True)
            if verifier is not None and index is not None:
                check_chunks(self.path, index, verifier, (a, b), what)

        return block_filler(
            dataset,
            info,
            lo,
            hi,
            path=self.path,
            what=what,
            index=index,
            check_hdf5=check_hdf5,
            verifier=verifier,
        )

    def _shared(
        self, info: ArrayInfo, start: int, stop: int
    ) -> tuple[np.ndarray[Any, Any], Described]:
        from ._sharing import view_rows

        described = self._described(info)
        array = view_rows(
            self.cache,
            described,
            start,
            stop,
            lambda lo, hi: self._block_fill(info, lo, hi),
        )
        if array is None:  # a lookup returns None, a load never does
            raise SegmentError(f"{self.path}:{info.name}: rows {start}:{stop} were not loaded")
        return array, described

    def _view_array(
        self, name: str, rows: object, mode: str
    ) -> tuple[np.ndarray[Any, Any], Described | None]:
        """The array :meth:`view` yields, and the description of the dataset if it is shared."""
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

    def view(
        self, name: str, rows: object = None, mode: ViewMode = "auto"
    ) -> AbstractContextManager[np.ndarray[Any, Any]]:
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
        return Within(self._view_array(name, rows, mode)[0])

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
            described=self._described(info),
            rows=(start, stop),
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

    def _begin_writing(self) -> None:
        """Decide this writer's epoch before it first changes the file (see ``_written.py``)."""
        if not self._writing:
            fresh = self.mode in ("w", "w-", "x")
            epoch = _written.new_epoch() if fresh else _written.epoch(self.path)
            self._writing.update(path=str(self.path), epoch=epoch)

    def _reopen_writable(self) -> None:
        """Switch the h5py file to read/write (see ``_open_file``) before the first change."""
        self._begin_writing()
        if self._handle.get("file") is None or self._file.mode == "r+":
            return
        self._check_alone()
        self._file.close()
        try:
            self._handle["file"] = self._h5open("r+")
        except BaseException:
            self._handle["file"] = self._h5open("r")
            raise

    def _check_alone(self) -> None:
        """Refuse to change the file while this process holds it open through h5py too.

        Changes run on a journaling file object that HDF5 does not know as
        the same file; another open handle would keep serving (and flushing)
        the metadata it cached from before the change.

        :raises ReadOnlyError: another h5py handle of this process has the file open.
        """
        if _hdf5.other_opens(self._file):
            raise ReadOnlyError(
                f"cannot change {self.path}: this process holds it open through h5py as well "
                "(an h5py.File of the same path), and a shmstore change cannot run beside "
                "another open of the file: close the h5py.File first"
            )

    def _store_record(self, info: ArrayInfo) -> None:
        """Write *info* as its dataset's record: in place, or journaled when it must grow."""
        record = _metadata.record_of(info)
        dataset = _hdf5.open_dataset(self._file, info.name)
        if _metadata.fits(dataset, record) or self._journaled is not None:
            _metadata.write_record(self._file, dataset, record, flush=self._journaled is None)
        else:
            with self._change():
                dataset = _hdf5.open_dataset(self._file, info.name)
                _metadata.write_record(self._file, dataset, record, flush=False)
        self._known[info.name] = info

    def _touch(self) -> None:
        """Make a change visible to every ``stat`` of the file (and durable if asked).

        The file's identity (size, mtime in ns) tells caches that its data
        changed; the kernel's coarse clock can leave mtime unchanged for two
        writes within one tick, so move it forward explicitly.
        """
        stat = os.stat(self.path)
        os.utime(self.path, ns=(stat.st_atime_ns, max(time.time_ns(), stat.st_mtime_ns + 1)))
        if self.durable:
            fsync_file(self.path)
        # Last: readers trust the records' generations only while the file is
        # as shmstore left it (see _written.py).
        self._begin_writing()
        _written.record(self.path, self._writing["epoch"])

    @contextmanager
    def _change(self, expendable: list[tuple[int, int]] | None = None) -> Iterator[None]:
        """Run a change that creates or unlinks objects: all of it, or none of it.

        HDF5 runs on a :class:`JournalingFile` for the change, and the file is
        closed (HDF5's last metadata written) before the journal is dropped.
        On an exception the file is rolled back and the store's state restored.
        A store of metadata format 1 is migrated first, in a change of its own.
        """
        if self._journaled is not None:  # already inside one: the outer change covers this
            yield
            return
        self._begin_writing()
        if self._format == 1:
            self._migrate()
        self._check_alone()
        known, format1, fmt = dict(self._known), self._format1, self._format
        self._file.close()
        self._handle.pop("file")
        self._check_unlocked()
        journaled = JournalingFile(self.path, expendable or ())
        try:
            self._handle["file"] = h5py.File(journaled, "r+")
            self._journaled = journaled
            yield
            self._file.close()
            journaled.commit(durable=self.durable)
        except BaseException:
            if self._file.id.valid:
                self._file.close()
            journaled.close()
            rollback(self.path)
            self._known, self._format1, self._format = known, format1, fmt
            self._chunk_indexes.clear()
            raise
        finally:
            self._journaled = None
            journaled.close()
            self._handle.pop("file", None)  # reopened when next used (see _file)

    def _check_unlocked(self) -> None:
        """Refuse a change while another process holds the file open through HDF5.

        A change runs on a file object HDF5 does not lock; HDF5's own lock
        (``flock``, which this process no longer holds: its handle is
        closed) is probed instead, as opening the file for writing would.

        :raises LockTimeoutError: another process holds HDF5's lock of the file.
        """
        if os.environ.get("HDF5_USE_FILE_LOCKING", "").upper() == "FALSE":
            return
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            self._handle["file"] = self._h5open("r")
            raise LockTimeoutError(
                f"cannot change {self.path}: another process holds it open through HDF5 (h5py "
                "or another tool) and HDF5's file lock keeps writers out: close it there "
                "first, or set HDF5_USE_FILE_LOCKING=FALSE in both programs (shmstore's own "
                "lock still serialises shmstore's writers)"
            ) from err
        except OSError:
            pass  # a file system without flock: HDF5 ignores its locks there too
        finally:
            os.close(fd)  # also drops the flock

    def _reopen_after_change(self) -> h5py.File:
        """The file opened for writing again once a change is done (or rolled back).

        The change has happened: a process that opened the file through
        HDF5 meanwhile (its lock refusing this open) must not make it look
        failed, so the open falls back to no HDF5 file lock, as before 0.2.
        """
        try:
            return self._h5open("r+")
        except LockTimeoutError:
            return h5py.File(self.path, "r+", locking=False)

    def _migrate(self) -> None:
        """Turn a store of metadata format 1 into format 2, all at once or not at all.

        Every dataset the root manifest lists gets its record (the entry as
        it was, with a new generation), the store record is written and the
        root manifest removed, in one journaled change: a writer killed at
        any point leaves the file in format 1 or in format 2, never a mix.

        :raises ManifestError: the manifest lists a dataset the file does not hold.
        """
        entries = self._format1 or {}
        for name in entries:
            if not _hdf5.is_dataset(self._file, name):
                self._lookup(name)  # raises, naming it
        self._format = FORMAT_VERSION  # no migration inside the migration's own change
        try:
            with self._change():
                for name, info in entries.items():
                    record = _metadata.record_of(
                        info.model_copy(update={"generation": _metadata.new_generation()})
                    )
                    dataset = _hdf5.open_dataset(self._file, name)
                    _metadata.write_record(self._file, dataset, record, flush=False)
                _metadata.write_store_record(self._file)
                for attr in (MANIFEST_ATTR, BACKUP_ATTR):
                    if attr in self._file.attrs:
                        del self._file.attrs[attr]
        except BaseException:
            self._format = 1
            raise
        _log.info("%s: migrated the metadata from format 1 to %d", self.path, FORMAT_VERSION)
        self._format1 = None
        self._known.clear()

    def _trash_name(self) -> str:
        return f"{_TMP_GROUP}/{secrets.token_hex(8)}"

    def _empty_trash(self) -> None:
        """Free the datasets a change moved to the trash, and their raw files.

        The raw files go first: while a trashed dataset is in the trash, a
        writer killed here leaves it to be found and freed on the next open,
        and no raw file is ever left that nothing refers to.  The trashed
        data need not be journaled (it is expendable).
        """
        trash = self._file.get(_TMP_GROUP)
        if trash is None or len(trash) == 0:
            return
        names = [
            f"{_TMP_GROUP}/{child}"
            for child in trash
            if _hdf5.is_dataset(self._file, f"{_TMP_GROUP}/{child}")
        ]
        raw = [file for name in names for file in self._raw_files_of(name)]
        _raw.remove_raw(self.path, raw)
        if raw and self.durable:
            fsync_dir(_raw.raw_dir(self.path))
        expendable = [
            span
            for name in names
            for span in _hdf5.data_ranges(_hdf5.open_dataset(self._file, name))
        ]
        with self._change(expendable):
            for child in list(self._file[_TMP_GROUP]):
                del self._file[f"{_TMP_GROUP}/{child}"]

    def _after_change(self, *, trashed: bool) -> None:
        """Finish a change: free what it moved to the trash (*trashed*), tell caches."""
        if trashed:
            self._empty_trash()
        self._touch()

    def _raw_files_of(self, name: str) -> tuple[str, ...]:
        """Raw files that dataset *name* owns (those inside this store's raw directory)."""
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
        :raises UnsupportedDtypeError: Python objects, variable-length data or
            references (every fixed-size dtype is stored: unicode, datetime64 and
            timedelta64 as HDF5 opaque data, see ``docs/design.md``).
        """
        self._check_writable(f"write {name!r}")
        check_name(name)
        arr = _as_rows(array, f"array for {name!r}")
        exists = name in self
        if exists and not overwrite:
            raise ArgumentError(
                f"{name!r} already exists in {self.path.name}: pass overwrite=True to replace "
                "it, or append() to add rows"
            )
        self._check_parents(name)
        ranges = chunks is None and compression is None  # contiguous: checksums per range
        external = appendable and ranges
        raw_name = self._new_raw_name(name) if external else None
        summing = None
        if ranges and not external:
            # Summed from the caller's bytes, in threads beside HDF5's write.
            arr = np.ascontiguousarray(arr)
            summing = Summing(bytes_of(arr), 0, threads=worker_count())
        previous = self._known.get(name)
        version = _metadata.next_version(previous.version if isinstance(previous, ArrayInfo) else 0)
        try:
            with self._change():
                temporary = self._trash_name()
                if raw_name is not None:
                    entries = self._write_external(name, temporary, arr, raw_name)
                else:
                    self._write_h5(temporary, arr, chunks, compression, appendable)
                    entries = summing.entries() if summing is not None else None
                described = self._describe(temporary, version, strict=True)
                if isinstance(described, str):
                    raise InvalidStoreError(
                        f"the dataset written for {name!r} is unreadable: {described}"
                    )
                dataset = _hdf5.open_dataset(self._file, temporary)
                checksums = _sums.for_written(self._file, dataset, entries, appendable=appendable)
                info = described.model_copy(
                    update={
                        "name": name,
                        "generation": _metadata.new_generation(),
                        "chunk_digest": _chunk_digest(dataset),
                        "checksums": checksums,
                    }
                )
                # The record goes with the dataset: it is whole before the name is.
                _metadata.write_record(self._file, dataset, _metadata.record_of(info), flush=False)
                _metadata.write_store_record(self._file)
                if exists:
                    self._trash_checksums(name)
                    self._file.move(name, self._trash_name())
                self._file.move(temporary, name)
                self._format = FORMAT_VERSION
        except BaseException:
            if raw_name is not None:
                _raw.remove_raw(self.path, (raw_name,))
            if summing is not None:
                summing.close()
            raise
        self._known[name] = info
        self._after_change(trashed=exists)
        return info

    def _trash_checksums(self, name: str) -> None:
        """Move the hidden checksums of dataset *name* to the trash (it goes there too)."""
        try:
            record = _metadata.read_record(_hdf5.open_dataset(self._file, name), repr(name))
        except (ManifestError, OSError, RuntimeError, ValueError, KeyError):
            return  # a damaged record: its checksums, if any, stay unreferenced
        checksums = record.checksums if record is not None else None
        if checksums is not None and checksums.location in self._file:
            self._file.move(checksums.location, self._trash_name())

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

    def _write_raw(
        self,
        path: Path,
        offset: int,
        data: np.ndarray[Any, Any],
        name: str,
        ranges: tuple[int, int] | None = None,
    ) -> np.ndarray[Any, Any] | None:
        """Write *data* into the raw file *path* of dataset *name* at byte *offset*.

        :param ranges: ``(begin, size)``: sum the data per range as they go
            (see :func:`_raw.write_raw`) and return the checksum entries.
        :raises ReadOnlyError: this user may not write the raw file or its directory.
        :raises InvalidStoreError: another failure of the write (no space, I/O error).
        """
        try:
            return _raw.write_raw(path, offset, data, durable=self.durable, ranges=ranges)
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
    ) -> np.ndarray[Any, Any] | None:
        """Write *arr* into the new raw file *raw_name*; the checksum entries of its bytes."""
        group = self._file.require_group(_TMP_GROUP)
        data = np.ascontiguousarray(arr)
        if self._journaled is not None:  # a rollback of the change removes the file
            self._journaled.created(self.path.parent / raw_name)
        entries = self._write_raw(self.path.parent / raw_name, 0, data, name, (0, RANGE_NBYTES))
        if self.durable:
            fsync_dir(_raw.raw_dir(self.path))  # the raw file's name
        _hdf5.create_external(group, temporary.rsplit("/", 1)[1], data.dtype, data.shape, raw_name)
        return entries

    def _write_h5(
        self,
        temporary: str,
        arr: np.ndarray[Any, Any],
        chunks: object,
        compression: object,
        appendable: bool,
    ) -> None:
        """Create dataset *temporary* from *arr*."""
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
            # Unicode and datetimes go to h5py tagged as opaque (_hdf5.storage_dtype).
            data = _hdf5.as_stored(arr)
            self._file.create_dataset(temporary, data=data, dtype=data.dtype, **options)
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
            check_name(name)
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
        if self._format == 1:
            self._migrate()
        grown = info.model_copy(
            update={
                "shape": (new, *info.shape[1:]),
                "version": _metadata.next_version(info.version),
                # A dataset of another tool gets its record, and so a generation, now.
                "generation": info.generation or _metadata.new_generation(),
            }
        )
        checksums = info.checksums
        what = f"{name!r} in {self.path}"
        summed, in_place = self._append_plan(info, grown, data.nbytes)
        with nullcontext() if in_place else self._change():
            dataset = _hdf5.open_dataset(self._file, name)
            if info.layout == "external":
                # Rows first, then their checksums, extent last: the extent
                # never covers unwritten bytes or bytes without checksums.
                entries = self._append_raw(spans, data, name, summed)
                if entries is not None and checksums is not None:
                    checksums = _sums.extend_ranges(
                        self._file,
                        self.path,
                        checksums,
                        entries,
                        self._table(checksums, name),
                        journaled=not in_place,
                    )
                dataset.id.set_extent((new, *info.shape[1:]))
            else:
                dataset.resize(new, axis=0)
                dataset[old:new] = _hdf5.as_stored(data)
                self._file.flush()
                if checksums is not None:
                    checksums = _sums.extend_chunks(
                        self._file, self.path, dataset, checksums, old, what=what
                    )
                grown = grown.model_copy(update={"chunk_digest": _chunk_digest(dataset)})
            grown = grown.model_copy(update={"checksums": checksums})
            self._file.flush()
            _metadata.write_record(self._file, dataset, _metadata.record_of(grown), flush=in_place)
            if not in_place:
                _metadata.write_store_record(self._file)
                self._format = FORMAT_VERSION
        self._known[name] = grown
        self._touch()
        return grown

    def _append_plan(
        self, info: ArrayInfo, grown: ArrayInfo, nbytes: int
    ) -> tuple[tuple[int, int] | None, bool]:
        """How to sum *nbytes* appended to *info*: ``(begin, size)`` of their ranges
        (``None``: no checksums of ranges to extend); and whether the append runs
        in place."""
        checksums = info.checksums
        # Checksums of ranges grow only from where they end: rows another
        # tool added would leave a gap (they stay unverified, until seal).
        extend, fits = (
            _sums.append_plan(
                self.path, checksums, self._table(checksums, info.name), info.nbytes, nbytes
            )
            if checksums is not None and checksums.per == "range"
            else (checksums is not None, True)
        )
        # Rows and extent of a raw file, their checksums in the room left
        # for them, and a record of the same size, are rewritten in place in
        # a crash-safe order.  Growing a chunked dataset adds chunks to its
        # index (B-tree nodes split and move), and a new or larger record or
        # table of checksums allocates space; a kill can leave either half
        # flushed: journaled.
        in_place = (
            info.layout == "external"
            and self._format == FORMAT_VERSION
            and _metadata.fits(
                _hdf5.open_dataset(self._file, info.name), _metadata.record_of(grown)
            )
            and (fits or not extend)
        )
        summed = None
        if extend and info.layout == "external" and checksums is not None:
            summed = (info.nbytes, checksums.range_nbytes or RANGE_NBYTES)
        return summed, in_place

    def _table(self, checksums: Checksums, name: str) -> tuple[int, int]:
        """Offset and capacity of the table of *checksums* of dataset *name*, looked up
        once per store."""
        place = self._tables.get(checksums.location)
        if place is None:
            place = _sums.table(self._file, checksums, f"{name!r} in {self.path}")
            self._tables[checksums.location] = place
        return place

    def _append_raw(
        self,
        spans: list[tuple[Path, int, int]],
        data: np.ndarray[Any, Any],
        name: str,
        summed: tuple[int, int] | None,
    ) -> np.ndarray[Any, Any] | None:
        """Write appended rows *data* into the raw file spans *spans* (they may run on).

        :param summed: ``(begin, size)``: sum them per range as they go.
        :returns: their checksum entries, when *summed*.
        """
        raw = data.reshape(-1).view(np.uint8)
        done = 0
        found = []
        for raw_path, offset, length in spans:
            ranges = None if summed is None else (summed[0] + done, summed[1])
            found.append(self._write_raw(raw_path, offset, raw[done : done + length], name, ranges))
            done += length
        if summed is None:
            return None
        return np.concatenate([np.empty((0, 2), np.uint64), *(e for e in found if e is not None)])

    def delete(self, name: str) -> None:
        """Remove dataset *name* (and its raw file, if it has one).

        :raises ReadOnlyError: the store is open read-only.
        :raises ArrayNotFoundError: no such dataset.
        """
        self._check_writable(f"delete {name!r}")
        if name not in self:
            self.info(name)
        with self._change():
            if _hdf5.is_dataset(self._file, name):
                self._trash_checksums(name)
                self._file.move(name, self._trash_name())
        self._known.pop(name, None)
        self._after_change(trashed=True)

    def _unsealable(self, info: ArrayInfo) -> str | None:
        """Why *info*'s data cannot have checksums, or ``None`` when they can."""
        if info.layout in ("compact", "virtual"):
            return f"is stored {info.layout}"
        if info.layout == "external":
            files = _hdf5.external_files(
                _hdf5.open_dataset(self._file, info.name), self.path.parent
            )
            if len(files) != 1:
                return f"is spread over {len(files)} external files"
        return None

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

        :returns: the sealed datasets' :class:`ArrayInfo`.
        :raises ReadOnlyError: the store is open read-only.
        :raises ArrayNotFoundError: a name that is not a dataset.
        :raises LayoutError: a named dataset is compact, virtual, or spread
            over several external files.
        :raises InvalidStoreError: the data cannot be read (truncated file).
        """
        self._check_writable("seal " + (", ".join(map(repr, names)) or "the datasets"))
        chosen: list[ArrayInfo] = []
        for name in names or self.names():
            if names:
                info = self.info(name)
            else:
                found = self._lookup(name)
                if not isinstance(found, ArrayInfo):
                    continue
                info = found
            why = self._unsealable(info)
            if why is not None:
                if names:
                    raise LayoutError(
                        f"{name!r} {why}: its bytes cannot be checked where they lie; "
                        "rewrite it with store.write(name, data, overwrite=True)"
                    )
                continue
            chosen.append(info)
        if not chosen:
            return []
        self._reopen_writable()
        sealed = []
        with self._change():
            for info in chosen:
                dataset = _hdf5.open_dataset(self._file, info.name)
                source = (
                    None if info.layout == "chunked" else source_block(dataset, info, self.path)
                )
                self._trash_checksums(info.name)
                checksums = _sums.for_stored(
                    self._file,
                    dataset,
                    source,
                    info.nbytes,
                    appendable=info.appendable,
                    threads=worker_count(),
                )
                done = info.model_copy(
                    update={
                        "checksums": checksums,
                        "generation": info.generation or _metadata.new_generation(),
                        "version": _metadata.next_version(info.version),
                        "chunk_digest": _chunk_digest(dataset),
                    }
                )
                _metadata.write_record(self._file, dataset, _metadata.record_of(done), flush=False)
                sealed.append(done)
            _metadata.write_store_record(self._file)
            self._format = FORMAT_VERSION
        for done in sealed:
            self._known[done.name] = done
        self._after_change(trashed=True)
        return sealed


def open_store(
    path: str | os.PathLike[str],
    mode: str = "r",
    *,
    cache: Cache | None = None,
    lock_timeout: float = 30.0,
    durable: bool | None = None,
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
