"""Filling a new segment: copying a block of a file into it, threads, progress.

A slice of a contiguous dataset is one block of one file.  The kernel copies
it into the segment: ``pread`` into a small buffer that stays in the CPU's
cache, ``pwrite`` at the segment's data offset, in as many threads as there
are cores (up to 8).  Neither side is mapped, so no page of the segment is
faulted in one by one.  Measured on the 2-core development machine, 1 GiB
from an ext4 file in the page cache into a ``posix_fallocate``-d tmpfs file,
median of 3, interleaved: ``preadv`` into a mapping of the segment 1.21 GB/s,
this copy 2.24 GB/s with a 1 MiB buffer per thread in 2 threads.
(``copy_file_range`` refuses to cross file systems here, ``EXDEV``; ``sendfile``
ran at 2.24 GB/s in one thread but cannot be split between threads as simply.)

Loads that last longer than a second show a tqdm progress bar on stderr when
it is a terminal.
"""

from __future__ import annotations

import abc
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ArgumentError, InvalidStoreError

__all__ = ["ENV_THREADS", "FileBlock", "FileFill", "copy_block", "progress", "worker_count"]

ENV_THREADS = "SHMSTORE_THREADS"
_MAX_THREADS = 8
_BUFFER = 1 << 20  # bytes a thread copies per system call: fits a core's cache
_SPLIT_AT = 16 << 20  # bytes: smaller blocks are copied by one thread


class FileFill(abc.ABC):
    """A fill that may write the new segment's file itself, not only its mapping.

    Given to :meth:`Cache.get` instead of a callback.  ``pwrite`` into a
    reserved tmpfs file copies into its pages without faulting them into a
    mapping one by one: 4.5 GB/s from a 1 MiB buffer against about 1 GB/s
    for stores into a fresh mapping, on the development machine.
    """

    @abc.abstractmethod
    def write(self, fd: int, data_offset: int, out: np.ndarray[Any, Any]) -> None:
        """Fill the segment: bytes at *data_offset* of the open file *fd*, or through *out*.

        *out* is a writeable array mapped on the same bytes (C order); the
        two may be mixed, the page cache keeps them coherent.  Must not
        keep *out*, and must not leave a thread writing when it returns.
        """


@dataclass(frozen=True)
class FileBlock(FileFill):
    """A segment's bytes are ``nbytes`` of the file *path* from byte *offset*.

    Given to :meth:`Cache.get` instead of a fill callback, the kernel copies
    them (see the module's docstring).

    :param what: what is loaded, for the progress bar and messages.
    """

    path: str | os.PathLike[str]
    offset: int
    what: str = ""

    def write(self, fd: int, data_offset: int, out: np.ndarray[Any, Any]) -> None:
        """Copy ``out.nbytes`` bytes of the block into *fd* (the mapping is not touched)."""
        copy_block(self, fd, data_offset, out.nbytes)


def worker_count() -> int:
    """Threads a load may use: ``$SHMSTORE_THREADS``, else this process's cores, at most 8.

    :raises ArgumentError: the variable is not a positive integer.
    """
    text = os.environ.get(ENV_THREADS, "").strip()
    if text:
        try:
            count = int(text)
        except ValueError:
            count = 0
        if count < 1:
            raise ArgumentError(f"{ENV_THREADS} must be a positive integer, got {text!r}")
        return count
    return max(1, min(_MAX_THREADS, len(os.sched_getaffinity(0))))


def progress(total: int, what: str) -> Any:
    """A tqdm bar of *total* bytes, shown only on a terminal and after a second."""
    from tqdm import tqdm  # imported when a load runs: most imports of shmstore never load

    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=what,
        delay=1.0,
        disable=not sys.stderr.isatty(),
        file=sys.stderr,
        leave=False,
    )


def copy_block(block: FileBlock, fd: int, data_offset: int, nbytes: int) -> None:
    """Copy *nbytes* of *block* into the open file *fd* at byte *data_offset*.

    Threads each copy one contiguous part.  If this thread is interrupted
    (``KeyboardInterrupt``), the others stop within one buffer and are
    joined before the exception goes on: no thread writes to *fd* once this
    returns or raises, so the caller may close it.

    :raises InvalidStoreError: the file ends before the block does.
    :raises OSError: the file cannot be read, or *fd* written.
    """
    if nbytes == 0:
        return
    threads = worker_count() if nbytes >= _SPLIT_AT else 1
    # Parts of whole buffers, so that every pread but the last is a full one.
    part = -(-nbytes // threads // _BUFFER) * _BUFFER
    bounds = [(lo, min(lo + part, nbytes)) for lo in range(0, nbytes, part)]
    errors: list[BaseException] = []
    src = os.open(block.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with progress(nbytes, block.what) as bar:
            copier = _Copier(src, fd, block, data_offset, bar)

            def run(lo: int, hi: int) -> None:
                try:
                    copier.copy(lo, hi)
                except BaseException as err:
                    errors.append(err)
                    copier.stop.set()

            helpers = [
                threading.Thread(target=run, args=span, name=f"shmstore-copy-{i}", daemon=True)
                for i, span in enumerate(bounds[1:], 1)
            ]
            for helper in helpers:
                helper.start()
            try:
                copier.copy(*bounds[0])
            except BaseException:
                copier.stop.set()
                raise
            finally:
                for helper in helpers:
                    helper.join()
    finally:
        os.close(src)
    if errors:
        raise errors[0]


class _Copier:
    """Copies parts of *block* from *src* into *dst*, from threads; :attr:`stop` stops them all."""

    def __init__(self, src: int, dst: int, block: FileBlock, data_offset: int, bar: Any) -> None:
        self.src, self.dst, self.block, self.data_offset = src, dst, block, data_offset
        self.stop = threading.Event()
        self._bar = bar
        self._lock = threading.Lock()  # tqdm's update is not made for threads

    def copy(self, lo: int, hi: int) -> None:
        """Copy bytes ``[lo, hi)`` of the block (relative to its start) through one buffer."""
        buffer = memoryview(bytearray(min(_BUFFER, hi - lo)))
        position = lo
        while position < hi and not self.stop.is_set():
            want = min(len(buffer), hi - position)
            got = os.preadv(self.src, [buffer[:want]], self.block.offset + position)
            if got == 0:
                raise InvalidStoreError(
                    f"{os.fspath(self.block.path)} ended after {self.block.offset + position} "
                    f"bytes while loading {self.block.what or 'a block of it'}: the file is "
                    "truncated"
                )
            written = 0
            while written < got:
                written += os.pwrite(
                    self.dst, buffer[written:got], self.data_offset + position + written
                )
            position += got
            with self._lock:
                self._bar.update(got)
