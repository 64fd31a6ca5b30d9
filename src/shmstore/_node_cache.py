"""The node cache: one directory of shared-memory segments per node and user.

It caches "bytes of (source, dataset, rows)", filled by a callback the store
gives it, and knows nothing of HDF5.  Invariants of DESIGN.md kept here:

1. one copy per node: a load runs under the key's file lock, and whoever
   waited on it finds the segment published and maps it;
2. never partial: a segment is built under a temporary name and published
   by an atomic rename;
4. never SIGBUS: space is reserved with ``posix_fallocate`` before a byte
   is written, inside the budget, evicting unused segments first;
5. never evict what is in use: a mapping holds a shared ``flock``;
   eviction needs the exclusive one and never waits for it;
7. nobody else gets in: directory 0700 and files 0600 of this user,
   checked on every open, links never followed.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import secrets
import shutil
import stat
import time
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import filelock
import numpy as np
from pydantic import BaseModel, ConfigDict

from ._segments import (
    KEY_PATTERN,
    FileIdentity,
    SegmentHeader,
    SegmentSource,
    clear_header_memo,
    create_segment,
    key_of,
    map_segment,
    new_header,
    open_checked,
    read_header,
    try_lock,
    writable_map,
)
from ._signals import Uninterruptible
from .errors import ArgumentError, ArrayNotFoundError, CacheFullError, SegmentError

__all__ = ["Cache", "CacheEntry", "default_directory", "parse_budget"]

_log = logging.getLogger("shmstore")

_SEGMENT = ".seg"
_TEMPORARY = re.compile(r"^([0-9a-f]{32})\.\d+\.[0-9a-f]{8}\.tmp$")
_LOCK = ".lock"
_BUDGET_LOCK = "budget.lock"
_FOREIGN = "not a file shmstore made; remove it by hand if it is not needed"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

# key -> weak reference to the array of this process's mapping of it.
_MAPPINGS: dict[tuple[str, str], weakref.ReferenceType[np.ndarray[Any, Any]]] = {}


def _forget_after_fork() -> None:
    # A forked child inherits the parent's mappings but must not hand them
    # out as its own: their locks are the parent's open file descriptions.
    _MAPPINGS.clear()
    clear_header_memo()


os.register_at_fork(after_in_child=_forget_after_fork)


def default_directory() -> Path:
    """``SHMSTORE_DIR``, else ``$JOB_SHMTMPDIR/shmstore``, else ``/dev/shm/shmstore-UID``."""
    if os.environ.get("SHMSTORE_DIR"):
        return Path(os.environ["SHMSTORE_DIR"])
    if os.environ.get("JOB_SHMTMPDIR"):
        return Path(os.environ["JOB_SHMTMPDIR"]) / "shmstore"
    return Path("/dev/shm") / f"shmstore-{os.getuid()}"


def parse_budget(value: int | str, directory: Path, what: str = "budget") -> int:
    """Bytes from an int, ``"64G"``-style sizes (K, M, G, T: powers of 1024) or ``"50%"``.

    A percentage is of the size of the file system holding *directory*.

    :raises ArgumentError: anything else, or a value that is not positive.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise ArgumentError(f"the cache {what} must be positive, got {value}")
        return value
    text = str(value).strip().upper().removesuffix("B")
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(%|[KMGT]?)", text)
    if match is None or float(match.group(1)) <= 0:
        raise ArgumentError(
            f"cannot read the cache {what} {value!r}: give bytes (1000000), a size "
            "with K, M, G or T (64G), or a share of the file system (50%)"
        )
    number, unit = float(match.group(1)), match.group(2)
    if unit == "%":
        vfs = os.statvfs(directory)
        return int(vfs.f_blocks * vfs.f_frsize * min(number, 100.0) / 100)
    return int(number * _UNITS[unit])


class CacheEntry(BaseModel):
    """One published segment, as :meth:`Cache.entries` reports it."""

    model_config = ConfigDict(frozen=True)

    key: str
    path: str
    dataset: str
    rows: tuple[int, int]
    nbytes: int
    in_use: bool
    last_access: float
    created: float


class Cache:
    """The shared-memory cache of this node (one directory per user).

    :param directory: where segments live; default :func:`default_directory`.
        Created 0700 if absent; an existing one must belong to this user, and
        is tightened to 0700 if open to group or others.
    :param budget: bytes the cache may hold (int, ``"64G"``, ``"50%"`` of the
        file system); default ``SHMSTORE_BUDGET``, else 50 %.
    :raises SegmentError: the directory is a link, not a directory, or another user's.
    :raises ArgumentError: the budget cannot be read.
    """

    def __init__(
        self, directory: str | os.PathLike[str] | None = None, budget: int | str | None = None
    ) -> None:
        self.directory = Path(os.path.abspath(directory if directory else default_directory()))
        self._prefix = f"{self.directory}{os.sep}"
        self._prepare_directory()
        if budget is None:
            budget = os.environ.get("SHMSTORE_BUDGET") or "50%"
            what = "budget (SHMSTORE_BUDGET)" if os.environ.get("SHMSTORE_BUDGET") else "budget"
        else:
            what = "budget"
        self.budget = parse_budget(budget, self.directory, what)

    def __repr__(self) -> str:
        return f"<shmstore.Cache {str(self.directory)!r}, budget {self.budget} bytes>"

    # -- the directory ---------------------------------------------------------

    def _prepare_directory(self) -> None:
        try:
            try:
                self.directory.mkdir(mode=0o700, parents=False)
            except FileNotFoundError:
                self.directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                self.directory.mkdir(mode=0o700, exist_ok=True)
            except FileExistsError:
                pass
            st = os.lstat(self.directory)
        except OSError as err:
            raise SegmentError(
                f"cannot use {self.directory} as the cache directory ({err.strerror or err}): "
                "set SHMSTORE_DIR to a directory on a tmpfs this user can write"
            ) from err
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise SegmentError(f"the cache directory {self.directory} is a link or not a directory")
        if st.st_uid != os.getuid():
            raise SegmentError(
                f"the cache directory {self.directory} belongs to uid {st.st_uid}, not to this "
                f"user ({os.getuid()}): set SHMSTORE_DIR to a directory of your own"
            )
        if st.st_mode & 0o077:
            _log.warning(
                "cache directory %s had mode %o; tightening it to 700",
                self.directory,
                stat.S_IMODE(st.st_mode),
            )
            os.chmod(self.directory, 0o700)

    def _segment_name(self, key: str) -> str:
        """The segment file of *key* as a plain string (the attach path avoids pathlib)."""
        if not KEY_PATTERN.match(key):
            raise SegmentError(f"{key!r} is not a cache key (32 hexadecimal digits)")
        return f"{self._prefix}{key}{_SEGMENT}"

    def _segment_path(self, key: str) -> Path:
        return Path(self._segment_name(key))

    # -- mapping -----------------------------------------------------------------

    def key(self, source: SegmentSource) -> str:
        """The key of the segment holding a copy of *source*."""
        return key_of(source)

    def _map(self, key: str) -> np.ndarray[Any, Any] | None:
        """Map the published segment *key*, or ``None`` if it is not there."""
        memo = _MAPPINGS.get((self._prefix, key))
        array = memo() if memo is not None else None
        if array is not None:
            return array
        path = self._segment_name(key)
        try:
            fd, st = open_checked(path)
        except FileNotFoundError:
            return None
        try:
            # Blocking: an evictor holds the exclusive lock only for an unlink.
            fcntl.flock(fd, fcntl.LOCK_SH)
            try:
                if os.stat(path, follow_symlinks=False).st_ino != st.st_ino:
                    return None  # evicted (and maybe reloaded) between open and lock
            except FileNotFoundError:
                return None
            header = read_header(fd, st, path, key)
            array = map_segment(fd, header)
            # The access time orders least-recently-used eviction.
            os.utime(fd, ns=(time.time_ns(), st.st_mtime_ns))
        finally:
            os.close(fd)
        _MAPPINGS[(self._prefix, key)] = weakref.ref(array)
        return array

    def attach(self, key: str) -> np.ndarray[Any, Any]:
        """Map the segment *key* read-only, knowing nothing but its key.

        :raises ArrayNotFoundError: no such segment (never loaded, or evicted).
        :raises SegmentError: the file is damaged, foreign, or unsafe to map.
        """
        array = self._map(key)
        if array is None:
            raise ArrayNotFoundError(
                f"no cached segment {key} in {self.directory}: it was never loaded or was evicted"
            )
        return array

    def lookup(self, source: SegmentSource) -> np.ndarray[Any, Any] | None:
        """The node's copy of *source*, mapped read-only, or ``None``; never loads."""
        return self._map(self.key(source))

    def find(self, key: str) -> np.ndarray[Any, Any] | None:
        """Like :meth:`attach`, but ``None`` when there is no segment *key*."""
        return self._map(key)

    def get(
        self,
        source: SegmentSource,
        dtype: np.dtype[Any],
        shape: tuple[int, ...],
        fill: Callable[[np.ndarray[Any, Any]], None],
    ) -> np.ndarray[Any, Any]:
        """The node's copy of *source*, loading it with *fill* if no process has.

        *fill* receives a writeable array of *dtype* and *shape* on the new
        segment and must fill all of it.  Processes asking at once wait for
        the first one's load and then map its segment.

        :raises CacheFullError: no room in the budget or the file system, and
            nothing unused to evict.
        :raises SegmentError: an unsafe file where the segment should be.
        """
        key = self.key(source)
        found = self._map(key)
        if found is not None:
            return found
        lock = filelock.FileLock(self.directory / f"{key}{_LOCK}", mode=0o600)
        with lock:
            found = self._map(key)  # loaded by the process we waited for
            if found is not None:
                return found
            return self._load(key, source, dtype, shape, fill)

    def _load(
        self,
        key: str,
        source: SegmentSource,
        dtype: np.dtype[Any],
        shape: tuple[int, ...],
        fill: Callable[[np.ndarray[Any, Any]], None],
    ) -> np.ndarray[Any, Any]:
        header = new_header(key, source, dtype, shape)
        tmp = self.directory / f"{key}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = self._reserve(tmp, header)
        try:
            mapping, target = writable_map(fd, header)
            try:
                fill(target)
            finally:
                del target
                if mapping is not None:
                    mapping.close()
            final = self._segment_path(key)
            # A signal between here and the rename would leave a finished
            # segment unpublished and its lock file taken: finish first.
            with Uninterruptible():
                os.rename(tmp, final)
                array = map_segment(fd, header)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        _MAPPINGS[(self._prefix, key)] = weakref.ref(array)
        return array

    def _reserve(self, tmp: Path, header: SegmentHeader) -> int:
        """Create *tmp* with its space allocated, evicting unused segments to make room."""
        needed = header.data_offset + header.nbytes
        # One loader at a time measures, evicts and allocates, so two loads
        # cannot both count the same free bytes.
        with filelock.FileLock(self.directory / _BUDGET_LOCK, mode=0o600):
            self._make_room(needed, header)
            try:
                return create_segment(tmp, header)
            except OSError as err:
                if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                free = shutil.disk_usage(self.directory).free
                raise CacheFullError(
                    f"the file system of {self.directory} has {free} bytes free, loading "
                    f"{header.source.dataset}[{header.source.start}:{header.source.stop}] needs "
                    f"{needed}: {self._holders()}"
                ) from err

    def _usage(self) -> list[tuple[Path, os.stat_result]]:
        files = []
        for path in self.directory.iterdir():
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                files.append((path, st))
        return files

    def _make_room(self, needed: int, header: SegmentHeader) -> None:
        files = self._usage()
        used = sum(st.st_blocks * 512 for _, st in files)
        free = shutil.disk_usage(self.directory).free
        room = min(self.budget - used, free)
        if needed <= room:
            return
        segments = sorted(
            ((st.st_atime_ns, path, st) for path, st in files if path.suffix == _SEGMENT),
            key=lambda item: item[0],
        )
        for _, path, st in segments:
            if self._remove_if_unused(path):
                _log.info("evicted %s (%d bytes) to make room", path.name, st.st_size)
                room += st.st_blocks * 512
                if needed <= room:
                    return
        limit = (
            f"the file system of {self.directory} has {free} bytes free"
            if free < self.budget - used
            else f"the cache budget is {self.budget} bytes with {max(self.budget - used, 0)} unused"
        )
        raise CacheFullError(
            f"loading {header.source.dataset}[{header.source.start}:{header.source.stop}] "
            f"needs {needed} bytes and {limit}: {self._holders()}; unmap them, or raise "
            "SHMSTORE_BUDGET"
        )

    def _holders(self) -> str:
        busy = [e for e in self.entries() if e.in_use]
        if not busy:
            return "no segment is in use"
        listed = ", ".join(
            f"{e.key[:8]} ({e.nbytes} bytes of {Path(e.path).name}:{e.dataset})" for e in busy[:5]
        )
        return f"{len(busy)} segments in use hold the space: {listed}"

    # -- eviction and garbage collection ---------------------------------------

    def _remove_if_unused(self, path: Path) -> bool:
        """Unlink *path* if no process maps it; True if removed."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        except OSError:  # a link or unreadable file planted in our directory: remove the name
            path.unlink(missing_ok=True)
            return True
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO, socket or device planted here
            os.close(fd)
            path.unlink(missing_ok=True)
            return True
        try:
            if not try_lock(fd, exclusive=True):
                return False
            try:
                if os.stat(path, follow_symlinks=False).st_ino != os.fstat(fd).st_ino:
                    return False  # replaced since we opened it
            except FileNotFoundError:
                return False
            path.unlink()
            return True
        finally:
            os.close(fd)

    def _describe(self, path: Path) -> tuple[SegmentHeader, bool, os.stat_result] | None:
        try:
            fd, st = open_checked(path)
        except FileNotFoundError:
            return None
        try:
            header = read_header(fd, st, path, path.name.removesuffix(_SEGMENT))
            in_use = not try_lock(fd, exclusive=True)
        finally:
            os.close(fd)
        return header, in_use, st

    def entries(self) -> list[CacheEntry]:
        """Every published segment: key, source, rows, bytes, in use or not, last access.

        Files that are not valid segments are left out, with a warning in the log.
        """
        found = []
        for path in sorted(self.directory.glob(f"*{_SEGMENT}")):
            try:
                described = self._describe(path)
            except SegmentError as err:
                _log.warning("ignoring %s", err)
                continue
            if described is None:
                continue
            header, in_use, st = described
            found.append(
                CacheEntry(
                    key=header.key,
                    path=header.source.path,
                    dataset=header.source.dataset,
                    rows=(header.source.start, header.source.stop),
                    nbytes=header.nbytes,
                    in_use=in_use,
                    last_access=st.st_atime_ns / 1e9,
                    created=header.created,
                )
            )
        return found

    def evict(self, keys: Iterable[str] | None = None, *, all: bool = False) -> list[str]:
        """Remove the segments *keys* (or every one with ``all=True``) that nobody maps.

        :returns: the keys removed; those in use are kept (and logged).
        """
        if keys is None and not all:
            raise ArgumentError("evict() needs keys, or all=True")
        targets = [e.key for e in self.entries()] if all else list(keys or ())
        removed = []
        for key in targets:
            path = self._segment_path(key)
            if self._remove_if_unused(path):
                removed.append(key)
            elif path.exists():
                _log.info("kept %s: a process maps it", key)
        return removed

    def clear(self) -> list[str]:
        """Evict every segment nobody maps; returns the keys removed."""
        return self.evict(all=True)

    def gc(self) -> list[str]:
        """Remove what no process needs: leftovers of killed loaders, stale or damaged
        segments, orphaned lock files, planted links.  Never a segment that is
        mapped; files shmstore did not make are left alone (and logged).

        :returns: the names of the files removed.
        """
        removed: list[str] = []
        for path in sorted(self.directory.iterdir()):
            name = path.name
            reason = self._garbage(path)
            if reason is None:
                continue
            if reason == _FOREIGN:
                _log.warning("gc left %s alone: %s", path, reason)
                continue
            # A live loader holds a shared lock on its temporary file, and a
            # mapping on its segment: both are kept by the same test.
            if self._remove_if_unused(path):
                removed.append(name)
                _log.info("gc removed %s: %s", name, reason)
            else:
                _log.info("gc kept %s (%s): in use", name, reason)
        return removed

    def _garbage(self, path: Path) -> str | None:
        """Why *path* is garbage, or ``None`` if it is a live cache file."""
        name = path.name
        if path.is_symlink():
            return "a symbolic link"
        if name.endswith(_SEGMENT):
            try:
                described = self._describe(path)
            except SegmentError:
                return "not a safe file"
            if described is None:
                return None
            header = described[0]
            for identity in header.source.identity:
                try:
                    if FileIdentity.of(identity.path) != identity:
                        return f"stale: {identity.path} changed"
                except FileNotFoundError:
                    return f"stale: {identity.path} is gone"
            return None
        if _TEMPORARY.match(name):
            return "left by a loader that died"
        if name.endswith(_LOCK) and name != _BUDGET_LOCK:
            segment = self.directory / (name[: -len(_LOCK)] + _SEGMENT)
            return None if segment.exists() else "a lock without its segment"
        if name == _BUDGET_LOCK:
            return None
        return _FOREIGN
