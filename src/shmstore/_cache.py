"""The node cache: one directory of shared-memory segments per node and user.

It caches "the bytes of (source, dataset, rows)", filled by a callback its
caller gives, and knows nothing of HDF5.  The invariants of DESIGN.md it
keeps, and how:

1. One copy per node: a load runs under the key's lock file
   (``<key>.lock``); whoever waited on it finds the segment published and
   maps it.
2. Never partial: a segment is built under a temporary name
   (``<key>.<pid>.<random>.tmp``) and published by an atomic rename.
4. Never SIGBUS: room is made within the budget (least recently used
   unmapped segments are evicted) and the file's space is reserved with
   ``posix_fallocate`` before a byte is written, evicting more if the file
   system is short; no room gives :class:`CacheFullError`.
5. Never evict what is in use: a mapping holds a shared ``flock`` on its
   segment; removal needs the exclusive one and never waits for it.
7. Nobody else gets in: the directory is 0700 and files 0600, of this
   user, checked on every open; links are never followed; keys are
   validated, so no name leaves the directory.

Files in the directory: ``<key>.seg`` (published segments), ``<key>.lock``
(load locks), ``<key>.<pid>.<hex>.tmp`` (segments being built; the loader
holds a shared ``flock`` on it), ``budget.lock`` (held while space is
measured, made and reserved, and by ``gc``).

Within a process, mappings are shared: a second request for a segment the
process already maps returns a new array on the same mapping, and the
mapping (and its lock) goes when the last array on it is garbage.

Named arrays (:meth:`Cache.create`) are segments too, marked ``named`` in
their header: no copy of a source but an array made under a name, writable
if made so.  The budget counts them and never evicts them to make room
(``docs/design.md``, "Named shared arrays"); ``unlink``, ``evict`` and
``gc`` remove them, the last two only once no process maps them.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import operator
import os
import re
import secrets
import shutil
import stat
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import filelock
import numpy as np
from pydantic import BaseModel, ConfigDict

from ._claims import Claim
from ._fill import FileFill
from ._region import Region, round_up
from ._segment import (
    PAGE,
    SEGMENT_SUFFIX,
    FileIdentity,
    RefusedFileError,
    SegmentHeader,
    SegmentSource,
    check_key,
    create_segment,
    map_data,
    map_writable,
    new_header,
    open_in_directory,
    open_segment,
    read_block_header,
    read_header,
    segment_key,
    try_lock_exclusive,
    view_of,
)
from ._signals import Uninterruptible
from .errors import (
    ArgumentError,
    CacheFullError,
    LockTimeoutError,
    ReadOnlyError,
    SegmentError,
    SegmentExistsError,
    SegmentNotFoundError,
)

__all__ = [
    "ENV_BUDGET",
    "ENV_DIRECTORY",
    "Block",
    "Cache",
    "CacheEntry",
    "FileIdentity",
    "SegmentHeader",
    "SegmentSource",
    "default_directory",
    "parse_budget",
]

_log = logging.getLogger("shmstore")

ENV_DIRECTORY = "SHMSTORE_DIR"
ENV_BUDGET = "SHMSTORE_BUDGET"
_DEFAULT_BUDGET = "50%"
_BUDGET_LOCK = "budget.lock"
_LOCK_SUFFIX = ".lock"
_SEGMENT_NAME = re.compile(r"([0-9a-f]{32})\.seg")
_STALE_NAME = re.compile(r"([0-9a-f]{32})\.stale")
_STALE_SUFFIX = ".stale"
_TEMPORARY_NAME = re.compile(r"([0-9a-f]{32})\.[0-9]+\.[0-9a-f]{8}\.tmp")
_LOCK_NAME = re.compile(r"([0-9a-f]{32})\.lock")
_OPEN_ANY = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_POLL_SECONDS = 0.005  # how often a waiter tries a lock another process holds
_RELEASE_SECONDS = 1.0  # how long a load waits for a transient holder of its writeable array
_ACCESS_RESOLUTION_NS = 100_000_000  # an access time this recent (ns) is not rewritten
_ATTACH_ATTEMPTS = 8  # a name evicted and reloaded between our open and lock, again and again

_BUDGET_TEXT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(?:([KMGT])(?:I?B)?|(%)|B)?", re.IGNORECASE)
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_BUDGET_FORMS = (
    "bytes (1000000), a size with K, M, G or T in powers of 1024 (64G, 1.5T), "
    "or a share of the file system holding the cache directory (50%)"
)


def default_directory() -> Path:
    """The cache directory when none is given.

    ``$SHMSTORE_DIR``, else ``$JOB_SHMTMPDIR/shmstore`` (the per-job tmpfs of
    SLURM sites that set it), else ``/dev/shm/shmstore-<uid>``.
    """
    chosen = os.environ.get(ENV_DIRECTORY, "").strip()
    if chosen:
        return Path(chosen)
    job = os.environ.get("JOB_SHMTMPDIR", "").strip()
    if job:
        return Path(job) / "shmstore"
    return Path("/dev/shm") / f"shmstore-{os.getuid()}"


def parse_budget(value: int | str, directory: str | os.PathLike[str], what: str = "budget") -> int:
    """The cache budget in bytes that *value* stands for.

    :param value: bytes as an int or a string (``"1000000"``); a size with
        K, M, G or T, powers of 1024 (``"64G"``, ``"64GiB"``, ``"1.5T"``); or a
        percentage of the size of the file system holding *directory*
        (``"50%"``).
    :param what: names the value in the error (``"SHMSTORE_BUDGET"``).
    :raises ArgumentError: (a ``ValueError``) anything else, or not at least 1 byte.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ArgumentError(f"invalid {what} {value!r}: give {_BUDGET_FORMS}")
    if isinstance(value, int):
        if value < 1:
            raise ArgumentError(f"invalid {what} {value}: it must be at least 1 byte")
        return value
    match = _BUDGET_TEXT.fullmatch(value.strip())
    if match is None:
        raise ArgumentError(f"invalid {what} {value!r}: give {_BUDGET_FORMS}")
    number, unit, percent = float(match.group(1)), match.group(2), match.group(3)
    if percent:
        if not 0 < number <= 100:
            raise ArgumentError(f"invalid {what} {value!r}: a percentage must be in (0, 100]")
        vfs = os.statvfs(directory)
        budget = int(vfs.f_blocks * vfs.f_frsize * number / 100)
    else:
        budget = int(number * _UNITS[unit.upper()]) if unit else int(number)
    if budget < 1:
        raise ArgumentError(f"invalid {what} {value!r}: it must come to at least 1 byte")
    return budget


class CacheEntry(BaseModel):
    """One published segment, as :meth:`Cache.entries` reports it.

    :param key: the segment's key.
    :param path: the source file the rows are a copy of.
    :param rows: ``(start, stop)``, rows ``[start, stop)`` of *dataset*.
    :param nbytes: bytes of data (the file is a page or so larger).
    :param in_use: some process maps it (it cannot be evicted now).
    :param last_access: unix time in seconds of the last new mapping of it.
    :param created: unix time in seconds of its load.
    :param named: a named array (no copy of a file): never evicted to make room.
    :param writable: a named array processes may map writable.
    :param generation: a block's dataset generation (``None`` for other segments).
    :param block: a block's bytes ``[lo, hi)`` of its dataset (``None`` for other segments).
    :param stale: a block of an old generation or an old tail, still mapped
        by some process: no view finds it, and it goes when unmapped.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    path: str
    dataset: str
    rows: tuple[int, int]
    nbytes: int
    in_use: bool
    last_access: float
    created: float
    named: bool = False
    writable: bool = False
    generation: str | None = None
    block: tuple[int, int] | None = None
    stale: bool = False


class Block(NamedTuple):
    """A block to map: bytes ``[lo, hi)`` of a dataset, under a key.

    :param key: the block's key (made by the sharing layer, ``_sharing.py``).
    :param generation: the generation of the dataset the bytes are of.
    :param span: ``(lo, hi)``, the bytes of the dataset (C order) the block holds;
        a whole number of pages unless it is the last block of a dataset.
    :param number: the block's number in its dataset (``lo // block size``).
    """

    key: str
    generation: str
    span: tuple[int, int]
    number: int

    @property
    def nbytes(self) -> int:
        """Bytes of data."""
        return self.span[1] - self.span[0]


BlockFill = Callable[[np.ndarray[Any, Any]], object] | FileFill
"""A fill callback writing a block's ``uint8`` array, or a :class:`FileFill`."""

_BYTES = np.dtype(np.uint8)

# -- the process's mappings -----------------------------------------------------


class _Mapped(NamedTuple):
    base: weakref.ReferenceType[Any]
    header: SegmentHeader
    file: tuple[int, int]  # (st_dev, st_ino) of the segment file mapped


# (cache directory with a trailing separator, pid) -> the directory opened O_PATH
# (see Cache._directory_fd).  Keyed by pid: a forked child opens its own.
_DIRECTORY_FDS: dict[tuple[str, int], int] = {}

# (segment path, writable) -> this process's mapping of it (weakly: the arrays
# keep it alive).  A writable named array may be mapped both ways at once.
_MAPPINGS: dict[tuple[str, bool], _Mapped] = {}


def _remember(
    path: str, base: object, header: SegmentHeader, st: os.stat_result, writable: bool = False
) -> None:
    slot = (path, writable)

    def forget(ref: weakref.ReferenceType[Any]) -> None:
        entry = _MAPPINGS.get(slot)
        if entry is not None and entry.base is ref:
            _MAPPINGS.pop(slot, None)

    _MAPPINGS[slot] = _Mapped(weakref.ref(base, forget), header, (st.st_dev, st.st_ino))


def _reuse(path: str, recheck: bool, writable: bool = False) -> np.ndarray[Any, Any] | None:
    """A new array on this process's mapping of *path*, or ``None`` if it maps none.

    :param recheck: only if the name still refers to the file mapped (one
        ``lstat``).  Needed for keys whose segment can be replaced by
        another of other contents (:meth:`Cache.unlink`, then a new one);
        a key made from a source names the same bytes forever.
    """
    entry = _MAPPINGS.get((path, writable))
    if entry is None:
        return None
    base = entry.base()
    if base is None:
        return None
    if recheck:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if (st.st_dev, st.st_ino) != entry.file:
            return None
    return view_of(base, entry.header)


def _forget_mappings_after_fork() -> None:
    # A forked child inherits its parent's mappings, but their locks belong to
    # open file descriptions the parent shares: the child maps afresh.
    _MAPPINGS.clear()


os.register_at_fork(after_in_child=_forget_mappings_after_fork)


# -- files of the directory -------------------------------------------------------


class _Kind(enum.Enum):
    SEGMENT = "segment"
    STALE = "stale block"
    TEMPORARY = "temporary"
    LOCK = "lock"
    BUDGET_LOCK = "budget lock"
    OTHER = "other"


@dataclass(frozen=True)
class _Listed:
    name: str
    path: str
    kind: _Kind
    key: str
    st: os.stat_result  # lstat

    @property
    def allocated(self) -> int:
        """Bytes of the file system the file takes."""
        return self.st.st_blocks * 512 if stat.S_ISREG(self.st.st_mode) else 0


def _kind_of(name: str) -> tuple[_Kind, str]:
    for kind, pattern in (
        (_Kind.SEGMENT, _SEGMENT_NAME),
        (_Kind.STALE, _STALE_NAME),
        (_Kind.TEMPORARY, _TEMPORARY_NAME),
        (_Kind.LOCK, _LOCK_NAME),
    ):
        match = pattern.fullmatch(name)
        if match is not None:
            return kind, match.group(1)
    return (_Kind.BUDGET_LOCK if name == _BUDGET_LOCK else _Kind.OTHER), ""


class _Removal(enum.Enum):
    REMOVED = "removed"
    GONE = "gone already"
    IN_USE = "in use"
    NAMED = "a named array"
    REFUSED = "refused"


def _is_named(fd: int, st: os.stat_result, path: str) -> bool:
    """True when the open segment *fd* is a named array (False when its header is unreadable)."""
    kind, key = _kind_of(path.rsplit(os.sep, 1)[-1])
    if kind is not _Kind.SEGMENT:
        return False
    try:
        return read_header(fd, st, path, key).named
    except SegmentError:
        return False  # damaged: garbage, whatever it was


def _remove_unused(
    path: str, *, dry_run: bool = False, keep_named: bool = False
) -> tuple[_Removal, str]:
    """Unlink the cache file *path* if no process holds a ``flock`` on it.

    Returns what happened (with *dry_run*, what would happen, and nothing
    is removed) and, when refused, why.  Never follows a link, never
    removes a file of another user, never waits.  With *keep_named*, a
    named array is kept (looked at under the exclusive lock, so that it is
    the file removed that is no named array).
    """
    try:
        fd = open_in_directory(path, _OPEN_ANY)
    except FileNotFoundError:
        return _Removal.GONE, ""
    except OSError as err:
        return _Removal.REFUSED, f"cannot open it ({err.strerror})"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return _Removal.REFUSED, "it is not a regular file"
        if st.st_uid != os.geteuid():
            return _Removal.REFUSED, f"it belongs to uid {st.st_uid}, not to this user"
        if not try_lock_exclusive(fd):
            return _Removal.IN_USE, ""
        # Unlink only the file we hold locked: the name may have been evicted
        # and loaded again between our open and our lock.
        try:
            now = os.lstat(path)
        except FileNotFoundError:
            return _Removal.GONE, ""
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return _Removal.GONE, ""
        if keep_named and _is_named(fd, st, path):
            return _Removal.NAMED, ""
        if not dry_run:
            try:
                os.unlink(path)
            except FileNotFoundError:
                return _Removal.GONE, ""
            except OSError as err:  # a read-only file system, a directory we cannot write
                return _Removal.REFUSED, f"cannot remove it ({err.strerror or err})"
        return _Removal.REMOVED, ""
    finally:
        os.close(fd)  # releases the exclusive lock, after the unlink


def _prepare_directory(directory: Path) -> None:
    """Create *directory* 0700, or check an existing one is this user's and private.

    :raises SegmentError: a symbolic link, not a directory, another user's,
        or it cannot be created.
    """
    try:
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except FileNotFoundError:
            directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                directory.mkdir(mode=0o700)
    except OSError as err:  # a file in the way, a read-only or missing /dev/shm, ...
        raise SegmentError(
            f"cannot create the cache directory {directory} ({err.strerror or err}): set "
            f"{ENV_DIRECTORY} to a directory on a tmpfs this user can write"
        ) from err
    # Checked through a descriptor, so what is checked is what is changed.
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        # O_DIRECTORY | O_NOFOLLOW answers ENOTDIR for a link to a directory too.
        if err.errno in (errno.ELOOP, errno.ENOTDIR) and directory.is_symlink():
            problem = "is a symbolic link (links are not followed: name the real directory)"
        elif err.errno == errno.ENOTDIR:
            problem = "is not a directory"
        else:
            problem = f"cannot be opened ({err.strerror})"
        raise SegmentError(f"the cache directory {directory} {problem}") from err
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise SegmentError(
                f"the cache directory {directory} belongs to uid {st.st_uid}, not to this user "
                f"(uid {os.geteuid()}); set {ENV_DIRECTORY} to a directory of your own"
            )
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            _log.warning(
                "cache directory %s had mode %o, open to group or others; tightened to 700",
                directory,
                mode,
            )
        if mode != 0o700:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def _acquire(lock: filelock.BaseFileLock) -> None:
    """Acquire *lock*, translating a link planted under its name and other failures.

    :raises SegmentError: the lock file is a symbolic link (``gc`` removes it),
        or cannot be created or opened (a read-only or vanished directory,
        no permission, something else under its name).
    :raises filelock.Timeout: the lock's timeout passed.
    """
    try:
        # filelock polls a lock another process holds (every 50 ms by
        # default); the budget lock is held for milliseconds and a waiter
        # on a load wants the segment as soon as it is published.
        lock.acquire(poll_interval=_POLL_SECONDS)
    except filelock.Timeout:
        raise
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise SegmentError(
                f"refusing lock file {lock.lock_file}: it is a symbolic link; Cache.gc() removes it"
            ) from err
        raise SegmentError(
            f"cannot lock {lock.lock_file} ({err.strerror or err}): the cache directory must "
            f"be writable by this user; set {ENV_DIRECTORY} to a directory on a tmpfs it can write"
        ) from err


def _describe_segment(path: str, key: str) -> str:
    """``key (N bytes, source)`` of a segment for messages, as far as it can be read."""
    try:
        fd, st = open_segment(path)
    except (OSError, SegmentError):
        return key
    try:
        header = read_header(fd, st, path, key)
    except SegmentError:
        return f"{key} ({st.st_size} bytes)"
    finally:
        os.close(fd)
    return f"{key} ({header.nbytes} bytes of {header.source.describe()})"


def _holders(busy: Sequence[_Listed], named: Sequence[_Listed] = ()) -> str:
    said = []
    if busy or not named:
        said.append(_listing(busy, "segments in use") if busy else "no cached segment is in use")
    if named:
        said.append(_listing(named, "named arrays (never evicted to make room)"))
    return "; ".join(said)


def _listing(files: Sequence[_Listed], what: str) -> str:
    listed = ", ".join(_describe_segment(f.path, f.key) for f in files[:8])
    more = f" and {len(files) - 8} more" if len(files) > 8 else ""
    total = sum(f.st.st_size for f in files)
    return f"{len(files)} {what} hold {total} bytes: {listed}{more}"


def _read_only_reason(key: str, header: SegmentHeader) -> str:
    """Why segment *key* cannot be mapped writable, and what to do."""
    if header.named:
        return (
            f"segment {key}, the named array {header.source.dataset!r}, was made read-only "
            "(writable=False): attach it read-only"
        )
    return (
        f"segment {key} is a cached copy of {header.source.describe()}, which is only ever "
        "mapped read-only: attach it read-only, or copy it into a writable named array"
    )


class Cache:
    """The shared-memory cache of this node: one directory per user, a budget in bytes.

    :param directory: where segments live; default ``$SHMSTORE_DIR``, else
        ``$JOB_SHMTMPDIR/shmstore``, else ``/dev/shm/shmstore-<uid>``.
        Created 0700 if absent (parents too); an existing one must be this
        user's, and is tightened to 0700 if open to group or others.
    :param budget: bytes the cached segments may take together: an int, a
        string of bytes (``"1000000"``), a size with K, M, G or T in powers of
        1024 (``"64G"``, ``"1.5T"``), or a share of the file system holding
        *directory* (``"50%"``); default ``$SHMSTORE_BUDGET``, else ``"50%"``.
    :raises SegmentError: the directory is a link, not a directory, or another user's.
    :raises ArgumentError: the budget (argument or variable) cannot be read.

    Every process of the node that makes a ``Cache`` of the same directory
    shares its segments.  A ``Cache`` holds no open files (each process
    keeps one descriptor of each cache directory it looks blocks up in): it
    pickles as its directory and budget and is cheap to make.
    """

    directory: Path
    """The cache directory, an absolute path (its last component is checked not to be a link)."""
    budget: int
    """Bytes the cached segments may take together."""

    def __init__(
        self, directory: str | os.PathLike[str] | None = None, budget: int | str | None = None
    ) -> None:
        if directory is not None and not os.fspath(directory):
            raise ArgumentError("the cache directory is an empty path; give a directory or None")
        chosen = default_directory() if directory is None else Path(directory)
        # abspath, not resolve: the last component must not be a link, and is checked.
        self.directory = Path(os.path.abspath(chosen))
        self._prefix = f"{self.directory}{os.sep}"
        _prepare_directory(self.directory)
        if budget is None:
            from_env = os.environ.get(ENV_BUDGET, "").strip()
            if from_env:
                self.budget = parse_budget(from_env, self.directory, ENV_BUDGET)
            else:
                self.budget = parse_budget(_DEFAULT_BUDGET, self.directory)
        else:
            self.budget = parse_budget(budget, self.directory, "cache budget")

    def __repr__(self) -> str:
        return f"Cache(directory={str(self.directory)!r}, budget={self.budget})"

    @property
    def prefix(self) -> str:
        """The directory with a trailing separator: file names are appended to it."""
        return self._prefix

    def __reduce__(self) -> tuple[type[Cache], tuple[str, int]]:
        return (type(self), (str(self.directory), self.budget))

    # -- keys and names -----------------------------------------------------------

    def key(self, source: SegmentSource) -> str:
        """The key of the segment holding a copy of *source*: 32 hexadecimal digits.

        The same on every process for the same source: a digest of its file
        identities, dataset, version and rows.
        """
        return segment_key(source)

    def _segment_path(self, key: str) -> str:
        return f"{self._prefix}{key}{SEGMENT_SUFFIX}"

    # -- mapping ------------------------------------------------------------------

    def _find(
        self, key: str, recheck: bool = False, writable: bool = False
    ) -> np.ndarray[Any, Any] | None:
        """Map the published segment *key* (a checked key), or ``None`` if there is none.

        :raises ReadOnlyError: *writable*, and the segment is no writable named array.
        """
        path = self._segment_path(key)
        array = _reuse(path, recheck, writable)
        if array is not None:
            return array
        for _ in range(_ATTACH_ATTEMPTS):
            try:
                fd, st = open_segment(path, shared=True, writable=writable)
            except FileNotFoundError:
                return None
            try:
                if st.st_nlink == 0:
                    # An evictor unlinked the name between our open and our
                    # lock (and a loader may have published it again): the
                    # pages would be no one's.  Look at the name again.
                    continue
                header = read_header(fd, st, path, key)
                if writable and not header.writable:
                    raise ReadOnlyError(_read_only_reason(key, header))
                base, array = map_data(fd, header, writable=writable)
                now = time.time_ns()
                if now - st.st_atime_ns > _ACCESS_RESOLUTION_NS:
                    # The access time orders least-recently-used eviction; a
                    # read-only file system keeps the old one, which is harmless.
                    with contextlib.suppress(OSError):
                        os.utime(fd, ns=(now, st.st_mtime_ns))
            finally:
                os.close(fd)  # the mapping keeps its own descriptor, and with it the lock
            _remember(path, base, header, st, writable)
            return array
        raise SegmentError(
            f"{path} was replaced {_ATTACH_ATTEMPTS} times while being mapped; "
            "another process evicts and reloads it in a loop"
        )

    def attach(
        self, key: str, *, recheck: bool = False, writable: bool = False
    ) -> np.ndarray[Any, Any]:
        """Map the segment *key* read-only (or *writable*), knowing nothing but its key.

        Another array on the same mapping if this process already maps it
        (a dictionary look-up); else a new mapping, microseconds whatever
        the size: no byte of data is read.

        :param recheck: reuse this process's mapping only if the key's file
            is still the one mapped (for keys given to :meth:`get`, whose
            segment :meth:`unlink` and a new load can replace).
        :param writable: map it ``PROT_READ | PROT_WRITE``: only a named
            array made writable (:meth:`create`) can be.

        :raises SegmentNotFoundError: (a ``KeyError``) no such segment: never
            loaded, or evicted.
        :raises ReadOnlyError: (a ``PermissionError``) *writable*, and the
            segment is a cached copy or a named array made read-only.
        :raises SegmentError: *key* is not a key, or the file is damaged,
            foreign or unsafe (it is never mapped).
        """
        array = self._find(check_key(key), recheck, writable)
        if array is None:
            raise SegmentNotFoundError(
                f"the cache {self.directory} holds no segment {key}: it was never loaded "
                "or was evicted; load it again through its store"
            )
        return array

    def find(
        self, key: str, *, recheck: bool = False, writable: bool = False
    ) -> np.ndarray[Any, Any] | None:
        """Like :meth:`attach`, but ``None`` when there is no segment *key*."""
        return self._find(check_key(key), recheck, writable)

    def header(self, key: str) -> SegmentHeader:
        """The header of segment *key*: what it holds and what it is a copy of.

        That of this process's mapping of *key* if it has one (so, right
        after :meth:`get` or :meth:`attach`, the header of the array they
        returned), else read from the file.

        :raises SegmentNotFoundError: no such segment.
        :raises SegmentError: *key* is not a key, or the file is damaged, foreign or unsafe.
        """
        path = self._segment_path(check_key(key))
        for writable in (False, True):
            entry = _MAPPINGS.get((path, writable))
            if entry is not None and entry.base() is not None:
                return entry.header
        try:
            fd, st = open_segment(path)
        except FileNotFoundError as err:
            raise SegmentNotFoundError(
                f"the cache {self.directory} holds no segment {key}"
            ) from err
        try:
            return read_header(fd, st, path, key)
        finally:
            os.close(fd)

    def unlink(self, key: str) -> bool:
        """Remove the name of segment *key* now, even while processes map it.

        As ``shm_unlink``: no process can attach the segment any more, those
        that map it keep their pages (valid, never ``SIGBUS``) until they
        drop them, and the memory returns to the system then.  For named
        arrays (:meth:`create`) and segments loaded under a key of the
        caller's choosing (:meth:`get` with ``key=``); a segment of a source
        is evicted with :meth:`evict`.

        :returns: whether there was a segment to remove.
        :raises SegmentError: *key* is not a key, or the name cannot be
            removed (a read-only cache directory).
        """
        path = self._segment_path(check_key(key))
        # This process must not hand out its old mapping under the name again.
        _MAPPINGS.pop((path, False), None)
        _MAPPINGS.pop((path, True), None)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        except OSError as err:
            raise SegmentError(f"cannot remove {path} ({err.strerror or err})") from err
        _log.info("unlinked segment %s", key)
        return True

    def create(
        self,
        key: str,
        source: SegmentSource,
        dtype: np.dtype[Any],
        shape: tuple[int, ...],
        fill: Callable[[np.ndarray[Any, Any]], object] | None = None,
        *,
        writable: bool = True,
    ) -> np.ndarray[Any, Any]:
        """Make the named array *key*: zeros, or what *fill* writes; mapped as *writable* says.

        A named array is no copy of a source (*source* only describes it:
        ``dataset`` its name) but an array in its own right: the budget
        counts it and never evicts it to make room; it lives until
        :meth:`unlink`, or :meth:`evict` / :meth:`gc` once no process maps
        it.  Every process may :meth:`attach` it by *key*, writable too when
        made *writable*; concurrent writes are the caller's business.  Its
        space is reserved before a byte is written (``posix_fallocate``:
        zeros, and never a ``SIGBUS``), it is published whole by a rename,
        and a name is made once: this never replaces an existing segment.

        :param fill: called with a writeable array on the new segment
            before it is published (it must not keep it); ``None`` leaves zeros.
        :raises SegmentExistsError: (a ``FileExistsError``) the cache holds
            a segment of *key* already; nothing is changed.
        :raises CacheFullError: no room in the budget or on the file system
            once every unused cached copy is evicted (named arrays are not).
        :raises ArgumentError: a dtype holding Python objects or of no bytes,
            or a negative dimension.
        :raises SegmentError: *key* is not a key, or the cache directory
            cannot be written.
        """
        key = check_key(key)
        dtype = np.dtype(dtype)
        shape = tuple(operator.index(n) for n in shape)
        header = new_header(key, source, dtype, shape, named=True, writable=writable)
        _prepare_directory(self.directory)
        lock = filelock.FileLock(f"{self._prefix}{key}{_LOCK_SUFFIX}", mode=0o600)
        _acquire(lock)  # loads and creations of this key happen one at a time
        try:
            path = self._segment_path(key)
            if os.path.lexists(path):
                raise SegmentExistsError(
                    f"the cache {self.directory} holds segment {key} already "
                    f"({_describe_segment(path, key)}): attach it, or unlink it first"
                )
            return self._load(header, fill)
        finally:
            lock.release()

    def lookup(self, source: SegmentSource) -> np.ndarray[Any, Any] | None:
        """The node's copy of *source*, mapped read-only, or ``None``; never loads.

        :raises SegmentError: the file of its key is damaged, foreign or unsafe.
        """
        return self._find(segment_key(source))

    def get(
        self,
        source: SegmentSource,
        dtype: np.dtype[Any],
        shape: tuple[int, ...],
        fill: Callable[[np.ndarray[Any, Any]], object] | FileFill,
        *,
        key: str | None = None,
        on_load: Callable[[], object] | None = None,
        timeout: float | None = None,
    ) -> np.ndarray[Any, Any]:
        """The node's copy of *source*, mapped read-only; loaded with *fill* if absent.

        If no process has loaded it, this one does, under the key's lock
        file (processes asking meanwhile wait, then map what it made): room
        is made in the budget, the file's space reserved, *fill* is called
        with a writeable C-ordered array of *dtype* and *shape* on the new
        segment and must fill all of it, and the segment is published by a
        rename.  *fill* must not keep the array.  A :class:`FileFill`
        instead of a callback may also write the file (``pwrite``), which is
        faster than faulting in the pages of a fresh mapping; a
        :class:`FileBlock` says the bytes are one block of a file, which
        the kernel copies in threads.

        :param key: the segment's key, instead of the one made from *source*
            (:meth:`key`): for segments named by their user, whose source
            the caller checks in :meth:`header`.  The segment under such a
            key may be replaced (:meth:`unlink`), so its name is checked
            again even when this process maps it.
        :param on_load: called once, under the lock, when this call is the
            one that loads, before any space is taken (to count loads, or to
            check the source once more); an exception from it aborts the load.
        :param timeout: seconds to wait for another process's load; ``None``
            waits as long as it takes.
        :raises CacheFullError: (an ``OSError``) no room in the budget or on
            the file system, and nothing unused to evict; the message says
            how many bytes were needed and which segments hold the space.
        :raises LockTimeoutError: another process was still loading after *timeout*.
        :raises SegmentError: an unsafe or damaged file is where the segment
            should be (``gc`` removes it), the cached copy has another dtype
            or shape than asked, *fill* kept the array it was given, or the
            cache directory cannot be written (read-only, not this user's,
            a link, or removed during the load).
        :raises ArgumentError: a dtype holding Python objects or of no bytes,
            or a negative dimension.

        Whatever *fill* raises propagates, and nothing is published.
        """
        dtype = np.dtype(dtype)
        shape = tuple(operator.index(n) for n in shape)
        recheck = key is not None
        key = segment_key(source) if key is None else check_key(key)
        array = self._find(key, recheck)
        if array is None:
            array = self._load_once(
                key,
                source,
                dtype=dtype,
                shape=shape,
                fill=fill,
                on_load=on_load,
                timeout=timeout,
                recheck=recheck,
            )
        if array.dtype != dtype or array.shape != shape:
            raise SegmentError(
                f"the cached copy of {source.describe()} (segment {key}) holds "
                f"{array.dtype} {array.shape}, not the {dtype} {shape} asked for: evict it "
                "if the source was described wrongly when it was loaded"
            )
        return array

    def _load_once(
        self,
        key: str,
        source: SegmentSource,
        *,
        dtype: np.dtype[Any],
        shape: tuple[int, ...],
        fill: Callable[[np.ndarray[Any, Any]], object] | FileFill,
        on_load: Callable[[], object] | None,
        timeout: float | None,
        recheck: bool,
    ) -> np.ndarray[Any, Any]:
        # The directory may have been removed since (it is made again, 0700), or
        # replaced by a link (refused): checked once per load, not per attach.
        _prepare_directory(self.directory)
        lock_path = f"{self._prefix}{key}{_LOCK_SUFFIX}"
        lock = filelock.FileLock(lock_path, mode=0o600, timeout=-1 if timeout is None else timeout)
        try:
            _acquire(lock)
        except filelock.Timeout as err:
            raise LockTimeoutError(
                f"waited {timeout} s for another process loading {source.describe()} "
                f"(it holds {lock_path}); it is still loading, or hangs"
            ) from err
        try:
            # The process we waited for has most likely loaded it.
            array = self._find(key, recheck)
            if array is not None:
                return array
            if on_load is not None:
                on_load()
            return self._load(new_header(key, source, dtype, shape), fill)
        finally:
            lock.release()

    def _load(
        self,
        header: SegmentHeader,
        fill: Callable[[np.ndarray[Any, Any]], object] | FileFill | None,
    ) -> np.ndarray[Any, Any]:
        """Reserve, fill (``None``: leave zeros) and publish the segment *header* describes.

        Called under the key's lock.  The mapping returned is writable for a
        writable named array, read-only otherwise.
        """
        path = self._segment_path(header.key)
        mapped: list[np.ndarray[Any, Any]] = []

        def map_it(fd: int) -> None:
            # fd still holds the loader's shared lock, so no evictor can take
            # the segment between the rename and this mapping.
            base, array = map_data(fd, header, writable=header.writable)
            _remember(path, base, header, os.fstat(fd), header.writable)
            mapped.append(array)

        os.close(self._publish(header, fill, map_it))
        return mapped[0]

    def _publish(
        self,
        header: SegmentHeader,
        fill: Callable[[np.ndarray[Any, Any]], object] | FileFill | None,
        after: Callable[[int], None],
    ) -> int:
        """Reserve, fill and publish the segment *header* describes; its descriptor.

        Called under the key's lock.  *after* runs right after the rename,
        with SIGINT and SIGTERM still deferred (to map the segment).  The
        descriptor returned holds the loader's shared ``flock``, so no
        evictor can take the segment until the caller has mapped it and
        closed the descriptor.
        """
        key, source = header.key, header.source
        path = self._segment_path(key)
        temporary = f"{self._prefix}{key}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        started = time.monotonic()
        fd = self._reserve(temporary, header)
        try:
            if isinstance(fill, FileFill):
                writer = fill
                _fill_segment(fd, header, lambda out: writer.write(fd, header.data_offset, out))
            elif fill is not None:
                _fill_segment(fd, header, fill)
            with Uninterruptible():
                # The rename is the publication: before it no process can find
                # the segment, after it every process finds it whole.  Done
                # with SIGINT/SIGTERM deferred, so an interrupted loader has
                # either published and registered its mapping, or nothing.
                try:
                    os.rename(temporary, path)
                except OSError as err:
                    raise SegmentError(
                        f"cannot publish segment {key} of {source.describe()} in "
                        f"{self.directory} ({err.strerror or err}): the directory was removed "
                        "or made read-only during the load; ask again"
                    ) from err
                after(fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            os.close(fd)
            raise
        _log.info(
            "loaded %s into segment %s (%d bytes) in %.3f s",
            source.describe(),
            key,
            header.nbytes,
            time.monotonic() - started,
        )
        return fd

    # -- blocks ---------------------------------------------------------------------

    def map_blocks(
        self,
        blocks: Sequence[Block],
        *,
        source: Callable[[Block], SegmentSource],
        fill: Callable[[Block], BlockFill] | None,
        timeout: float | None = None,
        on_load: Callable[[Block], object] | None = None,
    ) -> Region | None:
        """Map *blocks* side by side, read-only, into one new :class:`Region`; load those absent.

        Every block but the last must be a whole number of pages.  Blocks
        the node holds are mapped (each holding its shared lock); the others
        are filled cooperatively (``docs/design.md``, "Blocks and identity"):
        this process claims, one at a time, each missing block no other
        process is loading, loads it, and then waits, in a blocking lock,
        for the blocks others claimed, loading any whose loader died.

        :param source: what a block is a copy of, for its header (its
            ``generation`` and ``block`` set); asked only for blocks loaded
            and for messages.
        :param fill: how to fill a block this process loads; ``None`` maps
            only, and returns ``None`` if a block is absent.
        :param on_load: called with each block this process loads, under its
            lock, before any space is taken.
        :param timeout: seconds to wait for another process's load of a
            block; ``None`` waits as long as it takes.
        :raises CacheFullError: the blocks together need more than the budget,
            or there is no room for one and nothing unused to evict; the
            blocks mapped so far are unmapped with the region (no ``SIGBUS``:
            every page was reserved before it was written).
        :raises LockTimeoutError: another process still loaded a block after *timeout*.
        :raises SegmentError: a damaged, planted or wrongly sized file where a
            block belongs (never mapped), or the address range cannot be
            reserved, or the cache directory cannot be written.
        """
        if not blocks:
            raise ArgumentError("map_blocks() needs at least one block")
        offsets = [0]
        for b in blocks[:-1]:
            if b.nbytes % PAGE:
                raise ArgumentError(f"block {b.key} of {b.nbytes} bytes is not whole pages")
            offsets.append(offsets[-1] + b.nbytes)
        region = Region(offsets[-1] + round_up(blocks[-1].nbytes), len(blocks))
        missing = []
        for i, b in enumerate(blocks):
            try:
                if self._place_block(region, offsets[i], b):
                    continue
            except RefusedFileError as err:
                # Never mapped; removed and loaded again under the block's claim.
                _log.debug("%s", err)
            missing.append(i)
        if not missing:
            return region
        if fill is None:
            return None
        needed = sum(PAGE + round_up(b.nbytes) for b in blocks)
        if needed > self.budget:
            first = source(blocks[0])
            raise CacheFullError(
                f"{first.path}:{first.dataset} rows {first.start}:{source(blocks[-1]).stop} "
                f"need about {needed} bytes of cache, more than its whole budget of "
                f"{self.budget} bytes ({self.directory}); raise {ENV_BUDGET} or ask for "
                "fewer rows"
            )
        # The directory may have been removed since (it is made again, 0700), or
        # replaced by a link (refused): checked once per load, not per attach.
        _prepare_directory(self.directory)
        self._directory_fd(recheck=True)
        claimed_elsewhere = []
        for i in missing:
            claim = Claim.take(self._lock_path(blocks[i].key))
            if claim is None:
                claimed_elsewhere.append(i)
                continue
            with claim:
                self._load_block(
                    region, offsets[i], blocks[i], source=source, fill=fill, on_load=on_load
                )
        for i in claimed_elsewhere:
            what = source(blocks[i]).describe()
            with Claim.wait(self._lock_path(blocks[i].key), timeout, what):
                # Most likely published by the process we waited for; else it died.
                self._load_block(
                    region, offsets[i], blocks[i], source=source, fill=fill, on_load=on_load
                )
        return region

    def _directory_fd(self, *, recheck: bool = False) -> int:
        """The cache directory opened ``O_PATH`` (never through a link): once per process.

        Blocks are opened in it by name, so a lookup costs no open of the
        directory, and a directory replaced by a link since is not followed.
        One descriptor per directory and process, kept for the process's
        life.  *recheck* (on a load, after the directory was made again if
        it had been removed) opens it anew if the path names another
        directory now.
        """
        slot = (self._prefix, os.getpid())
        held = _DIRECTORY_FDS.get(slot)
        if held is not None and recheck:
            try:
                now, same = os.lstat(self.directory), os.fstat(held)
                moved = (now.st_dev, now.st_ino) != (same.st_dev, same.st_ino)
            except OSError:
                moved = True
            if moved:
                os.close(_DIRECTORY_FDS.pop(slot))
                held = None
        if held is None:
            try:
                held = os.open(
                    self.directory, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                )
            except OSError as err:
                raise SegmentError(
                    f"cannot open the cache directory {self.directory} ({err.strerror or err}): "
                    "it is gone, or a link (links are not followed)"
                ) from err
            _DIRECTORY_FDS[slot] = held
        return held

    def _lock_path(self, key: str) -> str:
        return f"{self._prefix}{key}{_LOCK_SUFFIX}"

    def _load_block(
        self,
        region: Region,
        offset: int,
        block: Block,
        *,
        source: Callable[[Block], SegmentSource],
        fill: Callable[[Block], BlockFill],
        on_load: Callable[[Block], object] | None,
    ) -> None:
        """Map *block* at *offset* of *region*, loading it first if absent (under its claim).

        A refused file at the block's name (damaged, planted, wrongly sized)
        is removed first: under the claim no other process publishes this
        block, so the file removed is the one found refused.

        :raises SegmentError: a refused file that cannot be removed, named.
        """
        try:
            if self._place_block(region, offset, block):
                return
        except RefusedFileError as err:
            path = self._segment_path(block.key)
            try:
                owner = os.lstat(path).st_uid
                if owner != os.geteuid():  # as gc: another user's file is never removed
                    raise SegmentError(
                        f"{err}; it belongs to uid {owner}, whose files shmstore leaves alone: "
                        f"remove {path} as that user (or root), and the rows are loaded again"
                    ) from err
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as gone:
                raise SegmentError(
                    f"{err}; it cannot be removed ({gone.strerror or gone}): remove {path} "
                    "by hand, and the rows are loaded again"
                ) from gone
            _log.warning("%s; removed it, loading its rows again", err)
        if on_load is not None:
            on_load(block)
        header = new_header(block.key, source(block), _BYTES, (block.nbytes,))
        fd = self._publish(
            header,
            fill(block),
            lambda fd: region.place(fd, offset, header.data_offset, block.nbytes),
        )
        os.close(fd)  # the mapping keeps the file, and with it the shared lock

    def _place_block(self, region: Region, offset: int, block: Block) -> bool:
        """Map the published *block* at *offset* of *region*; False if the node holds none.

        :raises SegmentError: the file under its name is unsafe, damaged or
            holds something else than *block*: it is not mapped.
        """
        path = self._segment_path(block.key)
        for _ in range(_ATTACH_ATTEMPTS):
            try:
                fd, st = open_segment(path, shared=True, dir_fd=self._directory_fd())
            except FileNotFoundError:
                return False
            try:
                if st.st_nlink == 0:
                    continue  # unlinked between our open and our lock: look again
                header = read_block_header(fd, st, path, block.key)
                if (
                    header.named
                    or header.generation != block.generation
                    or header.block != block.span
                ):
                    raise RefusedFileError(
                        f"{path} holds {header.nbytes} bytes of another source than the block "
                        f"{block.key} (bytes {block.span[0]}:{block.span[1]} of generation "
                        f"{block.generation}) its name stands for; it is never mapped: remove it "
                        "(shmstore gc, or Cache.evict)"
                    )
                region.place(fd, offset, header.data_offset, header.nbytes)
                now = time.time_ns()
                if now - st.st_atime_ns > _ACCESS_RESOLUTION_NS:
                    # The access time orders least-recently-used eviction.
                    with contextlib.suppress(OSError):
                        os.utime(fd, ns=(now, st.st_mtime_ns))
            finally:
                os.close(fd)  # the mapping keeps its own reference, and with it the lock
            return True
        raise SegmentError(
            f"{path} was replaced {_ATTACH_ATTEMPTS} times while being mapped; "
            "another process evicts and reloads it in a loop"
        )

    def drop_blocks(
        self, prefix: str, stale: Callable[[str | None, tuple[int, int]], bool]
    ) -> list[str]:
        """Retire the blocks whose key starts with *prefix* and that are *stale*.

        *stale* is asked with each block's generation and bytes ``(lo, hi)``.

        For blocks of an old generation or an old tail, which no view asks
        for again: each is renamed ``<key>.stale`` at once and removed if no
        process maps it; one still mapped is removed by the last process
        that unmaps it (or by ``gc``, or by eviction, first of all).  Files
        that are not valid segments are left to ``gc``.

        :returns: the keys retired.
        """
        removed = []
        for f in self._list(_Kind.SEGMENT, _Kind.STALE):
            if not f.key.startswith(prefix):
                continue
            if f.kind is _Kind.STALE:  # retired before: gone once no process maps it
                _remove_unused(f.path)
                continue
            try:
                fd, st = open_segment(f.path)
            except (FileNotFoundError, SegmentError):
                continue
            try:
                header = read_block_header(fd, st, f.path, f.key)
            except SegmentError:
                continue
            finally:
                os.close(fd)
            if header.named or header.block is None or not stale(header.generation, header.block):
                continue
            retired = f"{self._prefix}{f.key}{_STALE_SUFFIX}"
            try:
                os.rename(f.path, retired)  # a mapping keeps its pages; no view finds it now
            except OSError:
                continue
            outcome, _ = _remove_unused(retired)
            _log.info(
                "%s stale block %s (bytes %d:%d of generation %s)",
                "removed" if outcome is _Removal.REMOVED else "retired (in use)",
                f.key,
                *header.block,
                header.generation,
            )
            removed.append(f.key)
        return removed

    def remove_retired(self, keys: Sequence[str]) -> None:
        """Remove the retired blocks (:meth:`drop_blocks`) among *keys* that no process maps.

        For a process that unmaps blocks it knows are retired: the last
        process to unmap a retired block removes it.
        """
        for key in keys:
            path = f"{self._prefix}{key}{_STALE_SUFFIX}"
            if os.path.lexists(path):
                _remove_unused(path)

    # -- space --------------------------------------------------------------------

    @contextlib.contextmanager
    def _budget_lock(self) -> Iterator[None]:
        # One process at a time measures, evicts and reserves, so two loads
        # cannot both count the same free bytes; gc holds it too, so it only
        # ever sees temporary files whose loader already holds their lock.
        lock = filelock.FileLock(f"{self._prefix}{_BUDGET_LOCK}", mode=0o600)
        _acquire(lock)
        try:
            yield
        finally:
            lock.release()

    def _list(self, *kinds: _Kind) -> list[_Listed]:
        """The files of the directory, sorted by name; only those of *kinds* when given.

        A name is classified before its file is examined: the lock files of
        every key ever loaded pile up until ``gc``, and a load, which lists
        segments, must not pay a ``stat`` for each of them.
        """
        listed = []
        with os.scandir(self.directory) as found:
            for entry in found:
                kind, key = _kind_of(entry.name)
                if kinds and kind not in kinds:
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                listed.append(_Listed(entry.name, entry.path, kind, key, st))
        listed.sort(key=lambda f: f.name)
        return listed

    def _reserve(self, temporary: str, header: SegmentHeader) -> int:
        """Create *temporary* with its space reserved, evicting unused segments to make room.

        :returns: its descriptor (see :func:`create_segment`).
        :raises CacheFullError: no room in the budget or the file system.
        """
        needed = header.file_size
        what = header.source.describe()
        if needed > self.budget:
            raise CacheFullError(
                f"{what} needs {needed} bytes of cache, more than its whole budget of "
                f"{self.budget} bytes ({self.directory}); raise {ENV_BUDGET} or ask for fewer rows"
            )
        with self._budget_lock():
            self._remove_leftovers()
            listed = self._list(_Kind.SEGMENT, _Kind.STALE, _Kind.TEMPORARY)
            used = sum(f.allocated for f in listed)
            # Stale blocks first (no view asks for them again), then by last use.
            oldest_first = iter(
                sorted(
                    (f for f in listed if f.kind is not _Kind.TEMPORARY),
                    key=lambda f: (f.kind is _Kind.SEGMENT, f.st.st_atime_ns),
                )
            )
            busy: list[_Listed] = []
            named: list[_Listed] = []

            def evict_one() -> int | None:
                """Evict the least recently used unmapped cached copy; bytes freed, None if none.

                Named arrays are never evicted to make room.
                """
                for candidate in oldest_first:
                    outcome, why = _remove_unused(candidate.path, keep_named=True)
                    if outcome is _Removal.REMOVED:
                        _log.info("evicted segment %s to make room", candidate.key)
                        return candidate.allocated
                    if outcome is _Removal.GONE:
                        return candidate.allocated
                    if outcome is _Removal.IN_USE:
                        busy.append(candidate)
                    elif outcome is _Removal.NAMED:
                        named.append(candidate)
                    else:
                        _log.warning("cannot evict %s: %s", candidate.path, why)
                return None

            while used + needed > self.budget:
                freed = evict_one()
                if freed is None:
                    raise CacheFullError(
                        f"no room in the cache {self.directory} for {what}: it needs {needed} "
                        f"bytes, the budget is {self.budget} bytes and {used} are taken; "
                        f"{_holders(busy, named)}. Drop the arrays that map them (or unpin "
                        f"their handles), unlink named arrays no longer needed, or raise "
                        f"{ENV_BUDGET}"
                    )
                used -= freed
            while True:
                try:
                    return create_segment(temporary, header)
                except OSError as err:
                    if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                        raise SegmentError(
                            f"cannot create {temporary} for {what} ({err.strerror or err}): "
                            f"the cache directory must be writable by this user; set "
                            f"{ENV_DIRECTORY} to a directory on a tmpfs it can write"
                        ) from err
                    # The budget allows it but the file system is full (other
                    # files share it): evict on, then try again.
                    if evict_one() is None:
                        free = shutil.disk_usage(self.directory).free
                        raise CacheFullError(
                            f"the file system holding the cache {self.directory} is full: "
                            f"{what} needs {needed} bytes and {free} are free; "
                            f"{_holders(busy, named)}, the rest is taken by other files"
                        ) from err

    def _remove_leftovers(self) -> list[str]:
        """Remove the temporary files of loaders that died (their lock died with them).

        Called under the budget lock, so a live loader's file is always locked.
        """
        removed = []
        for f in self._list(_Kind.TEMPORARY):
            outcome, why = _remove_unused(f.path)
            if outcome is _Removal.REMOVED:
                _log.info("removed %s, left by a loader that died", f.name)
                removed.append(f.name)
            elif outcome is _Removal.REFUSED:
                _log.warning("left %s alone: %s", f.path, why)
        return removed

    # -- inspection, eviction, garbage collection -------------------------------------

    def entries(self) -> list[CacheEntry]:
        """Every published segment, sorted by key: source, rows, bytes, in use or not.

        Files that are not valid segments are left out, each with a warning
        in the log (``gc`` removes the damaged ones).
        """
        found = []
        for f in self._list(_Kind.SEGMENT, _Kind.STALE):
            try:
                fd, st = open_segment(f.path)
            except FileNotFoundError:
                continue
            except SegmentError as err:
                _log.warning("entries: ignoring %s", err)
                continue
            try:
                header = read_header(fd, st, f.path, f.key)
                in_use = not try_lock_exclusive(fd)
            except SegmentError as err:
                _log.warning("entries: ignoring %s", err)
                continue
            finally:
                os.close(fd)
            found.append(
                CacheEntry(
                    key=f.key,
                    path=header.source.path,
                    dataset=header.source.dataset,
                    rows=(header.source.start, header.source.stop),
                    nbytes=header.nbytes,
                    in_use=in_use,
                    last_access=st.st_atime_ns / 1e9,
                    created=header.created,
                    named=header.named,
                    writable=header.writable,
                    generation=header.source.generation,
                    block=header.source.block,
                    stale=f.kind is _Kind.STALE,
                )
            )
        return found

    def evict(self, keys: Iterable[str] | None = None, *, all: bool = False) -> list[str]:
        """Remove the segments *keys*, or every one with ``all=True``, that no process maps.

        A mapped segment is kept (and logged): never waits, never fails for it.

        :returns: the keys removed.
        :raises ArgumentError: neither *keys* nor ``all=True``, or both.
        :raises SegmentError: one of *keys* is not a key.
        """
        if all == (keys is not None):
            raise ArgumentError("evict() takes the keys to evict, or all=True (not both)")
        if all:
            targets = [(f.key, f.path) for f in self._list(_Kind.SEGMENT, _Kind.STALE)]
        else:
            targets = [
                (key, path)
                for key in (check_key(k) for k in ([keys] if isinstance(keys, str) else keys or ()))
                for path in (self._segment_path(key), f"{self._prefix}{key}{_STALE_SUFFIX}")
                if os.path.lexists(path) or path.endswith(SEGMENT_SUFFIX)
            ]
        removed = []
        for key, path in targets:
            outcome, why = _remove_unused(path)
            if outcome is _Removal.REMOVED:
                _log.info("evicted segment %s", key)
                removed.append(key)
            elif outcome is _Removal.IN_USE:
                _log.info("kept segment %s: a process maps it", key)
            elif outcome is _Removal.REFUSED:
                _log.warning("left %s alone: %s", path, why)
        return removed

    def clear(self) -> list[str]:
        """Evict every segment no process maps; returns the keys removed."""
        return self.evict(all=True)

    def gc(self, *, dry_run: bool = False) -> list[str]:
        """Remove what no process needs, and return the names of the files removed.

        * temporary files of loaders that died (no lock on them);
        * lock files of keys with no segment, that no load holds;
        * segments that fail validation (damaged, wrong mode), or are stale:
          a file of their source is gone or changed (device, inode, size,
          mtime) - unless a process maps them, then they are kept;
        * named arrays no process maps (the processes that used them are gone);
        * symbolic links planted under a cache file's name.

        Never a mapped segment; never a file of another user or a file of a
        name shmstore does not make (each kept file is logged, with why).

        :param dry_run: remove nothing; return the names of the files that
            would be removed now (garbage that no process holds).
        """
        removed: list[str] = []
        with self._budget_lock():
            # Lock files last, so that the lock of a segment removed now goes too.
            listed = sorted(self._list(), key=lambda f: f.kind is _Kind.LOCK)
            for f in listed:
                reason = self._garbage(f)
                if reason is None:
                    _log.debug("gc kept %s", f.name)
                    continue
                if stat.S_ISLNK(f.st.st_mode):
                    # A link in our own directory: removing it never touches its target.
                    outcome, why = _Removal.REMOVED, ""
                    if not dry_run:
                        try:
                            os.unlink(f.path)
                        except FileNotFoundError:
                            pass
                        except OSError as err:
                            outcome, why = _Removal.REFUSED, f"cannot remove it ({err.strerror})"
                else:
                    outcome, why = _remove_unused(f.path, dry_run=dry_run)
                if outcome is _Removal.REMOVED:
                    _log.info(
                        "gc %s %s: %s", "would remove" if dry_run else "removed", f.name, reason
                    )
                    removed.append(f.name)
                elif outcome is _Removal.IN_USE:
                    _log.info("gc kept %s (%s): a process holds it", f.name, reason)
                elif outcome is _Removal.REFUSED:
                    _log.warning("gc left %s alone (%s): %s", f.path, reason, why)
        return removed

    def _garbage(self, f: _Listed) -> str | None:
        """Why *f* is garbage, or ``None`` to keep it (logging why when it is odd)."""
        if f.kind is _Kind.OTHER:
            _log.warning(
                "gc left %s alone: not a file shmstore makes; remove it by hand if unneeded", f.path
            )
            return None
        if stat.S_ISLNK(f.st.st_mode):
            return "a symbolic link where a cache file belongs"
        if f.kind is _Kind.BUDGET_LOCK:
            return None
        if not stat.S_ISREG(f.st.st_mode) or f.st.st_uid != os.geteuid():
            owner = f"uid {f.st.st_uid}'s" if f.st.st_uid != os.geteuid() else "not a regular file"
            _log.warning("gc left %s alone: %s, not this user's cache file", f.path, owner)
            return None
        if f.kind is _Kind.TEMPORARY:
            return "left by a loader that died"  # removed only if unlocked: its loader is gone
        if f.kind is _Kind.STALE:
            return "a block of an old generation or an old tail"  # removed only if unmapped
        if f.kind is _Kind.LOCK:
            if os.path.lexists(self._segment_path(f.key)):
                return None
            return "a lock file without its segment"  # removed only if no load holds it
        try:
            fd, st = open_segment(f.path)
        except FileNotFoundError:
            return None
        except SegmentError as err:
            return f"unsafe: {err}"
        try:
            header = read_header(fd, st, f.path, f.key)
        except SegmentError as err:
            return f"damaged: {err}"
        finally:
            os.close(fd)
        if header.named:
            return f"the named array {header.source.dataset!r}, which no process maps"
        # A block stays valid while its files are the same files, no shorter
        # (appends grow them); a change of its dataset retires it when next
        # described.
        block = header.source.block is not None
        if block and not Path(header.source.path).exists():
            return f"stale: {header.source.path} is gone"
        for identity in header.source.identity:
            try:
                if not (identity.may_still_hold() if block else identity.is_current()):
                    return f"stale: {identity.path} changed or is gone"
            except OSError as err:
                _log.info("gc kept %s: cannot check its source %s (%s)", f.name, identity.path, err)
                return None
        return None


def _fill_segment(
    fd: int, header: SegmentHeader, fill: Callable[[np.ndarray[Any, Any]], object]
) -> None:
    """Map the new segment writeable, let *fill* write it, unmap it.

    :raises SegmentError: *fill* kept a reference to the array, which would
        leave a writeable view on shared pages after publication.
    """
    mapping, target = map_writable(fd, header)
    try:
        fill(target)
    except BaseException:
        del target
        if mapping is not None:
            # The traceback may still hold the array; the pages go with it.
            with contextlib.suppress(BufferError):
                mapping.close()
        raise
    del target
    if mapping is None:
        return
    # A sampling profiler can hold the fill's finished frames, and through them
    # the array, for a moment (distributed samples every task thread's stack
    # every 10 ms): wait that out before concluding that the fill kept it.
    deadline = time.monotonic() + _RELEASE_SECONDS
    while True:
        try:
            mapping.close()
            return
        except BufferError as err:
            if time.monotonic() > deadline:
                raise SegmentError(
                    f"the fill of {header.source.describe()} kept a reference to the array it "
                    "was given; a writeable view of shared pages must not outlive the load, so "
                    "the segment was not published"
                ) from err
            time.sleep(0.001)
