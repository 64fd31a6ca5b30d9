"""An undo journal that makes a structural change of an HDF5 file all-or-nothing.

HDF5 (in the file format that still opens after a killed writer) flushes its
metadata in no crash-safe order: a writer killed in the middle of a flush
that created or removed an object can leave B-tree nodes pointing past the
end of the file, or at object headers never written.  So a ``write`` or
``delete`` runs HDF5 on a :class:`JournalingFile`: before any byte of the
file as it was is overwritten or truncated away, its old value is appended to
``<file>.journal``.  Once the change is flushed and closed, the journal is
removed.  Finding a journal means a writer died mid-change: :func:`rollback`
puts every saved byte back and restores the old size, giving the file exactly
as it was before the change.

A change that creates a file beside the HDF5 file (an appendable dataset's
raw file) names it in the journal before creating it, and :func:`rollback`
removes it: a rolled-back change leaves no file behind that nothing refers
to, and no walk of the datasets is needed to find one.

Only what HDF5 actually overwrites is saved (metadata, a few KiB), never the
new data, which lands past the old end of the file.  Ranges the caller
declares *expendable* (the data of datasets already moved to the trash) are
not saved either.

The journal is written before the file in program order; both go to the page
cache, so this holds against ``kill -9``.  A store opened ``durable=True``
flushes the file to disk before the journal is dropped, so a change that
returned survives a power cut; one cut short by a power cut is not
guaranteed to roll back (the journal is not flushed record by record).
"""

from __future__ import annotations

import io
import logging
import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ._durable import fsync_dir
from ._full_write import write_all

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = ["JournalingFile", "journal_path", "rollback"]

_log = logging.getLogger("shmstore")

_MAGIC = b"shmstore-undo-journal-1\n"
_SIZE = struct.Struct("<Q")
_RECORD = struct.Struct("<QQ")
# A record at this offset names (UTF-8, relative to the file's directory) a
# file the change creates, instead of holding saved bytes.
_CREATED = (1 << 64) - 1


def journal_path(path: Path) -> Path:
    """Where the journal of the HDF5 file *path* lives."""
    return path.with_name(path.name + ".journal")


def _subtract(start: int, stop: int, taken: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``[start, stop)`` outside every range of *taken* (sorted, disjoint)."""
    pieces = []
    for lo, hi in taken:
        if hi <= start or lo >= stop:
            continue
        if lo > start:
            pieces.append((start, lo))
        start = max(start, hi)
        if start >= stop:
            break
    if start < stop:
        pieces.append((start, stop))
    return pieces


def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(r for r in ranges if r[1] > r[0]):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


class JournalingFile(io.RawIOBase):
    """A read/write file object for h5py that journals what it overwrites.

    :param path: the HDF5 file.
    :param expendable: byte ranges ``(start, stop)`` whose old content need
        not be kept (data of trashed datasets).
    :raises FileExistsError: a journal is already there (roll it back first).
    """

    def __init__(self, path: Path, expendable: Iterable[tuple[int, int]] = ()) -> None:
        super().__init__()
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self._journal_path = journal_path(path)
        try:
            self._size0 = os.fstat(self._fd).st_size
            self._jfd = os.open(
                self._journal_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
            )
        except BaseException:
            os.close(self._fd)
            raise
        write_all(self._jfd, _MAGIC + _SIZE.pack(self._size0))
        self._skip = _merge(expendable)
        self._pos = 0

    # -- the journal ------------------------------------------------------------

    def _save(self, start: int, stop: int) -> None:
        """Journal the old bytes of ``[start, stop)`` not journaled or expendable yet."""
        stop = min(stop, self._size0)
        if start >= stop:
            return
        for lo, hi in _subtract(start, stop, self._skip):
            old = os.pread(self._fd, hi - lo, lo)
            # Each record is complete in the journal before its bytes are
            # overwritten: a kill leaves at most the last one short, and its
            # bytes were not overwritten yet.
            write_all(self._jfd, _RECORD.pack(lo, len(old)) + old)
        self._skip = _merge([*self._skip, (start, stop)])

    def created(self, path: Path) -> None:
        """Note that the change is about to create *path*; call before creating it.

        :param path: a file in the directory of the HDF5 file or below it.
        """
        name = os.fsencode(os.path.relpath(path, self._journal_path.parent))
        write_all(self._jfd, _RECORD.pack(_CREATED, len(name)) + name)

    def commit(self, *, durable: bool = False) -> None:
        """The change is complete and closed: drop the journal.

        :param durable: first flush the file to disk, and after the unlink
            its directory: the journal may only vanish once the change it
            guards is on disk.
        """
        if durable:
            os.fsync(self._fd)
        os.close(self._jfd)
        self._jfd = -1
        os.unlink(self._journal_path)
        if durable:
            fsync_dir(self._journal_path.parent)

    # -- io.RawIOBase --------------------------------------------------------

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            self._pos = offset
        elif whence == os.SEEK_CUR:
            self._pos += offset
        else:
            self._pos = os.fstat(self._fd).st_size + offset
        return self._pos

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view):
            chunk = os.preadv(self._fd, [view[done:]], self._pos + done)
            if chunk == 0:
                break
            done += chunk
        self._pos += done
        return done

    def write(self, data: ReadableBuffer) -> int:
        view = memoryview(data).cast("B")
        self._save(self._pos, self._pos + len(view))
        write_all(self._fd, view, self._pos)
        self._pos += len(view)
        return len(view)

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        self._save(size, self._size0)
        os.ftruncate(self._fd, size)
        return size

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
            if self._jfd >= 0:
                os.close(self._jfd)
        super().close()


def rollback(path: Path) -> bool:
    """Undo the unfinished change journaled for *path*; ``False`` if there was none.

    Safe to repeat if interrupted: it only writes back saved bytes and sets the size.
    """
    jpath = journal_path(path)
    try:
        journal = jpath.read_bytes()
    except FileNotFoundError:
        return False
    header = len(_MAGIC) + _SIZE.size
    created: list[Path] = []
    if len(journal) >= header and journal.startswith(_MAGIC):
        (size0,) = _SIZE.unpack_from(journal, len(_MAGIC))
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            pos = header
            while pos + _RECORD.size <= len(journal):
                offset, length = _RECORD.unpack_from(journal, pos)
                pos += _RECORD.size
                if pos + length > len(journal):
                    break  # the last record is short: its bytes were never overwritten
                if offset == _CREATED:
                    created.append(jpath.parent / os.fsdecode(journal[pos : pos + length]))
                else:
                    write_all(fd, memoryview(journal)[pos : pos + length], offset)
                pos += length
            os.ftruncate(fd, size0)
        finally:
            os.close(fd)
        for file in created:
            # Before the journal goes: an interrupted rollback is repeated.
            try:
                file.unlink(missing_ok=True)
            except OSError as err:  # a read-only directory: the file is only wasted space
                _log.warning("%s: cannot remove %s of a rolled-back change: %s", path, file, err)
    # A journal without a complete header was cut before any write of the file.
    os.unlink(jpath)
    return True
