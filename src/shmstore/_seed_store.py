"""The seed API's :class:`SharedNumpyStore`: arrays saved, appended and loaded by name.

One HDF5 file, ``shared_numpy_store.h5``, in the working directory, every
array appendable; ``import_original`` brings the original's raw files in.
"""

from __future__ import annotations

import contextlib
import os
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ._cache import Cache
from ._diskarray import (
    DiskArray,
)
from ._dtype import empty as new_empty
from ._handle import Handle
from ._load import BLOCK_BYTES
from ._original import Original, originals_named, scan
from ._seed_common import (
    STORE_FILE,
    ArrayNotInStoreError,
    ImportReport,
    NotInSharedMemoryError,
    OriginalFile,
    OriginalNotImportedError,
    Outcome,
    default_cache,
)
from ._store import Store, check_name, check_rows_fit, open_store
from .errors import (
    ArgumentError,
    LayoutError,
    ShmStoreError,
    StoreNotFoundError,
    UnsupportedDtypeError,
)

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

_RESERVED_NAMES = ("Loader.pickle", "Loader.json")  # the data base's own files
_LOAD_MODES = ("shared_memory", "memmap", "memory")


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


def refuse_hiding(store: SharedNumpyStore, name: str) -> None:
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
        return default_cache(self._cache)

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
        refuse_hiding(self, name)
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
            refuse_hiding(self, name)
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
                outcome: Outcome
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


def _import_one(store: Store, original: Original) -> tuple[Outcome, str]:
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


def write_blocks(
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
