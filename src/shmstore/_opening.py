"""The open file of a store: its lock, its mode, and the h5py file in use.

Opening takes the store's lock (``_store_lock``: the shared side to read,
the exclusive side to write), rolls back the change of a writer that died
(its undo journal is still there, see ``_journal``), then opens the HDF5
file.  A file opened for writing is opened read-only until its first
change: HDF5 rewrites the superblock when it opens a file for writing,
which would change the file's identity and so invalidate every cached block
of it.

Files are written in the HDF5 1.6 file format (h5py's default ``libver``):
later formats mark the superblock "open for writing" and refuse to open a
file whose writer was killed, until ``h5clear`` is run on it.

A change that creates or unlinks HDF5 objects runs HDF5 on a
:class:`~shmstore._journal.JournalingFile` (:meth:`OpenFile.journaled`):
the h5py file in use is swapped for one on the journal, closed at the end
of the change, and opened again when next used.  Every swap of the h5py
file happens here.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import h5py

from . import _hdf5, _raw, _written
from ._durable import durable_from_env, fsync_dir, fsync_file
from ._h5errors import ignored, open_error
from ._journal import JournalingFile, journal_path, rollback
from ._store_lock import StoreLock
from .errors import (
    ArgumentError,
    InvalidStoreError,
    LockTimeoutError,
    ReadOnlyError,
    StoreNotFoundError,
)

__all__ = ["MODES", "Mode", "OpenFile"]

_log = logging.getLogger("shmstore")

Mode = Literal["r", "r+", "a", "w", "w-", "x"]
"""The modes a store opens in, as in h5py."""
MODES = ("r", "r+", "a", "w", "w-", "x")


class OpenFile:
    """The HDF5 file of a store, open in *mode*, with the store's lock held until :meth:`close`.

    :raises ArgumentError: an unknown *mode*, or ``"w-"``/``"x"`` and the file exists.
    :raises StoreNotFoundError, InvalidStoreError, LockTimeoutError, ReadOnlyError:
        as :func:`shmstore.open` says.
    """

    def __init__(
        self, path: str | os.PathLike[str], mode: str, *, lock_timeout: float, durable: bool | None
    ) -> None:
        if mode not in MODES:
            raise ArgumentError(
                f"mode must be one of {', '.join(MODES)} (as in h5py), got {mode!r}"
            )
        self.path = Path(os.path.abspath(os.fspath(path)))
        self.mode = mode
        self.writable = mode != "r"
        self.durable = durable_from_env() if durable is None else bool(durable)
        self.closed = True
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
        self._current: dict[str, h5py.File] = {}
        # The journal of the change under way (see journaled), else None.
        self._journal: JournalingFile | None = None
        try:
            if exists:
                self._recover(lock_timeout)
            self._current["file"] = self._open(exists)
        except BaseException:
            self._lock.release()
            raise
        # The epoch of this writer's changes (see _written.py), once it writes.
        self._writing: dict[str, str] = {}
        if mode in ("w", "w-", "x"):
            self.begin_writing()
        self._finalizer = weakref.finalize(self, _release, self._current, self._lock, self._writing)
        self.closed = False
        if not exists and self.durable:
            fsync_dir(self.path.parent)

    @property
    def file(self) -> h5py.File:
        """The h5py file in use (on the journal during a change)."""
        file = self._current.get("file")
        if file is None:
            # After a change the file is opened again only when it is used:
            # a store opened to make one change and closed never reopens it.
            file = self._current["file"] = self._reopen_after_change()
        return file

    def close(self) -> None:
        """Close the h5py file and release the lock (idempotent)."""
        if not self.closed:
            self.closed = True
            self._finalizer()

    def check_open(self) -> None:
        """:raises ArgumentError: the store is closed."""
        if self.closed:
            raise ArgumentError(f"the store {self.path} is closed; open it again")

    def check_writable(self, action: str) -> None:
        """:raises ReadOnlyError: the store is open read-only (*action* names what was asked)."""
        self.check_open()
        if not self.writable:
            raise ReadOnlyError(
                f"cannot {action}: {self.path} is open read-only (mode 'r'); "
                "open it with mode 'a' or 'r+' to change it"
            )

    # -- opening -------------------------------------------------------------

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
        """h5py's open of :attr:`path` (``_hdf5.open_file``), its failures translated.

        :raises ReadOnlyError, LockTimeoutError, InvalidStoreError: see ``_h5errors.open_error``.
        """
        try:
            return _hdf5.open_file(self.path, h5mode)
        except OSError as err:
            raise open_error(err, self.path, self.mode) from err

    def _open(self, exists: bool) -> h5py.File:
        h5mode = {"x": "w-"}.get(self.mode, self.mode)
        if exists and self.mode in ("r+", "a"):
            # Read-only until the first change (see the module's docstring).
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

    def reopen_writable(self) -> None:
        """Switch the h5py file to read/write (see the module's docstring) before a change."""
        self.begin_writing()
        if self._current.get("file") is None or self.file.mode == "r+":
            return
        self.check_alone()
        self.file.close()
        try:
            self._current["file"] = self._h5open("r+")
        except BaseException:
            self._current["file"] = self._h5open("r")
            raise

    def _reopen_after_change(self) -> h5py.File:
        """The file opened for writing again once a change is done (or rolled back).

        The change has happened: a process that opened the file through
        HDF5 meanwhile (its lock refusing this open) must not make it look
        failed, so the open falls back to no HDF5 file lock.
        """
        try:
            return self._h5open("r+")
        except LockTimeoutError:
            return h5py.File(self.path, "r+", locking=False)

    # -- changes -------------------------------------------------------------

    @property
    def in_change(self) -> bool:
        """True inside :meth:`journaled`."""
        return self._journal is not None

    def created(self, path: Path) -> None:
        """Note that the change under way creates *path*: its rollback removes it."""
        if self._journal is not None:
            self._journal.created(path)

    @contextmanager
    def journaled(self, expendable: Iterable[tuple[int, int]] = ()) -> Iterator[None]:
        """Run a change on a :class:`JournalingFile`: all of it, or none of it.

        The file is closed (HDF5's last metadata written) before the journal
        is dropped; on an exception it is rolled back.  Either way the file
        is opened again when next used.

        :param expendable: byte ranges whose old contents need not be saved
            (the data of datasets in the trash).
        :raises ReadOnlyError: this process holds the file open through h5py too.
        :raises LockTimeoutError: another process holds it open through HDF5.
        """
        self.begin_writing()
        self.check_alone()
        self.file.close()
        self._current.pop("file")
        self._check_unlocked()
        journal = JournalingFile(self.path, expendable)
        try:
            self._current["file"] = h5py.File(journal, "r+")
            self._journal = journal
            yield
            self.file.close()
            journal.commit(durable=self.durable)
        except BaseException:
            if self.file.id.valid:
                self.file.close()
            journal.close()
            rollback(self.path)
            raise
        finally:
            self._journal = None
            journal.close()
            self._current.pop("file", None)  # reopened when next used (see file)

    def check_alone(self) -> None:
        """Refuse to change the file while this process holds it open through h5py too.

        Changes run on a journaling file object that HDF5 does not know as
        the same file; another open handle would keep serving (and flushing)
        the metadata it cached from before the change.

        :raises ReadOnlyError: another h5py handle of this process has the file open.
        """
        if _hdf5.other_opens(self.file):
            raise ReadOnlyError(
                f"cannot change {self.path}: this process holds it open through h5py as well "
                "(an h5py.File of the same path), and a shmstore change cannot run beside "
                "another open of the file: close the h5py.File first"
            )

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
            self._current["file"] = self._h5open("r")
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

    def begin_writing(self) -> None:
        """Decide this writer's epoch before it first changes the file (see ``_written.py``)."""
        if not self._writing:
            fresh = self.mode in ("w", "w-", "x")
            epoch = _written.new_epoch() if fresh else _written.epoch(self.path)
            self._writing.update(path=str(self.path), epoch=epoch)

    def touch(self) -> None:
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
        self.begin_writing()
        _written.record(self.path, self._writing["epoch"])

    # -- the file as opened ----------------------------------------------------

    def descriptor(self) -> int | None:
        """The descriptor h5py reads the file through (``None``: a driver without one).

        Reads by shmstore go through it, not the path: a store open across
        a rename over its file keeps reading the file it opened, as HDF5 does.
        """
        fd = None
        with ignored(also=(TypeError,)):
            fd = self.file.id.get_vfd_handle()
        return fd if isinstance(fd, int) and fd >= 0 else None

    def check_same_file(self) -> None:
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
        fd = self.descriptor()
        if fd is None:
            return  # a file driver without a descriptor: nothing to compare
        opened = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino):
            raise InvalidStoreError(
                f"{self.path} was replaced by another file after this store opened it: "
                "open it again to read the new file"
            )


def _release(current: dict[str, h5py.File], lock: StoreLock, written: dict[str, str]) -> None:
    try:
        file = current.get("file")
        if file is not None and file.id.valid:
            file.close()
        # HDF5 rewrites the superblock when it closes a file opened for
        # writing: the file as shmstore leaves it is known only now.
        if written:
            _written.record(Path(written["path"]), written["epoch"])
    finally:
        lock.release()
