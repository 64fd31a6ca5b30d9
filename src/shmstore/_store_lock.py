"""The read/write lock beside an HDF5 file (``data.h5.lock``).

A store opened for reading holds the shared side for its whole life, one
opened for writing holds the exclusive side: writers are serialised and a
reader never sees a manifest half written, nor keeps HDF5 metadata cached
while another process changes the file under it.  The lock is filelock's
SQLite-backed :class:`~filelock.ReadWriteLock`, whose locks the kernel drops
when a holder dies, so a ``kill -9`` never leaves a store locked.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path

import filelock

from .errors import LockTimeoutError, ReadOnlyError

__all__ = ["StoreLock"]

_log = logging.getLogger("shmstore")

# (process, thread, lock file) -> [shared sides, exclusive sides] this thread
# holds: asking again for the opposite side in the same thread would wait for
# itself until the timeout.
_HELD: dict[tuple[int, int, str], list[int]] = {}


class StoreLock:
    """The shared (``write=False``) or exclusive side of the lock of one store.

    :param path: the HDF5 file; the lock lives at ``<path>.lock``.
    :param write: take the exclusive side.
    :param timeout: seconds to wait for the lock.
    :raises LockTimeoutError: another process held the opposite side longer
        than *timeout*.
    :raises ReadOnlyError: *write* and the lock file cannot be created (a
        :class:`PermissionError`).
    """

    def __init__(self, path: Path, *, write: bool, timeout: float) -> None:
        self.path = path.with_name(path.name + ".lock")
        self._lock: filelock.ReadWriteLock | None = None
        self._slot = (os.getpid(), threading.get_ident(), os.path.realpath(self.path))
        self._write = write
        held = _HELD.get(self._slot, [0, 0])
        if held[1] or (write and held[0]):
            mine = "for writing" if held[1] else "for reading"
            raise LockTimeoutError(
                f"{path} is open {mine} in this thread already (a Store not closed yet), and "
                f"{'writing' if write else 'reading'} needs it closed: waiting would never end. "
                "Use that store, or close it first"
            )
        try:
            lock = filelock.ReadWriteLock(self.path, timeout=timeout, is_singleton=False)
            # The timeout is passed each time: filelock 4.0.0 (the oldest this
            # package allows) waits forever in an acquire without one instead of
            # using the instance's.
            if write:
                lock.acquire_write(timeout=timeout)
            else:
                lock.acquire_read(timeout=timeout)
        except filelock.Timeout as err:
            other = "open in another process" if write else "open for writing in another process"
            raise LockTimeoutError(
                f"{path} stayed {other} for {timeout:g} s "
                f"(lock {self.path}): close that store, or pass a longer lock_timeout"
            ) from err
        except (OSError, sqlite3.Error) as err:
            if write:
                raise ReadOnlyError(
                    f"cannot create the lock {self.path} needed to write {path}: {err}; "
                    "open it with mode 'r' to read it"
                ) from err
            # A directory we cannot write to (a shared, read-only data set) has
            # no writer we could exclude through a lock file anyway.
            _log.debug("reading %s without a lock: %s", path, err)
            return
        self._lock = lock
        _HELD.setdefault(self._slot, [0, 0])[write] += 1

    def release(self) -> None:
        """Release the lock (idempotent, safe in a finaliser)."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.close()  # releases every level held, then closes its SQLite connection
            held = _HELD.get(self._slot)
            if held is not None:
                held[self._write] -= 1
                if not any(held):
                    del _HELD[self._slot]
