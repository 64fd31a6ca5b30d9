"""Filling a new segment: copying a block of a file into it, checked, threads, progress.

A slice of a contiguous dataset is one block of one file.  The kernel copies
it into the segment: ``pread`` into a small buffer that stays in the CPU's
cache, ``pwrite`` at the segment's data offset, in as many threads as there
are cores (up to 8).  Neither side is mapped, so no page of the segment is
faulted in one by one, which makes this copy faster than ``preadv`` into a
mapping of the segment (``benchmarks/RESULTS.md``, item 2, has the figures).
``copy_file_range`` refuses to cross file systems (``EXDEV``, from a disk to
tmpfs); ``sendfile`` copies as fast in one thread but cannot be split between
threads as simply.

Where the data have checksums, each thread checks those of the ranges it
copies on the bytes in its buffer, still in the CPU's cache, before they are
written (``docs/design.md``, "Checksums"); a mismatch stops every thread and
nothing is published.

Loads that last longer than a second show a tqdm progress bar on stderr when
it is a terminal.
"""

from __future__ import annotations

import abc
import contextlib
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._full_write import write_all
from ._integrity import Verifier, crc
from .errors import ArgumentError, InvalidStoreError

__all__ = [
    "ENV_THREADS",
    "FileBlock",
    "FileFill",
    "check_block",
    "copy_block",
    "progress",
    "read_block",
    "worker_count",
]

ENV_THREADS = "SHMSTORE_THREADS"
_MAX_THREADS = 8
_BUFFER = 1 << 20  # bytes a thread copies per system call: fits a core's cache
_SPLIT_AT = 16 << 20  # bytes: smaller blocks are copied by one thread


class FileFill(abc.ABC):
    """A fill that may write the new segment's file itself, not only its mapping.

    Given to :meth:`Cache.get` instead of a callback.  ``pwrite`` into a
    reserved tmpfs file copies into its pages without faulting them into a
    mapping one by one, several times faster than stores into a fresh mapping.
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

    :param path: the file, or a descriptor open on it (used, not closed).
    :param what: what is loaded, for the progress bar and messages.
    :param verifier: the dataset's checksums, checked on the way.
    :param start: the dataset byte at *offset* (where the checksums' ranges
        are counted from).
    """

    path: str | os.PathLike[str] | int
    offset: int
    what: str = ""
    verifier: Verifier | None = None
    start: int = 0

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

    Threads each copy one contiguous part; with a verifier, each checks the
    checksums of the ranges it copies on the bytes in its buffer, between the
    ``pread`` and the ``pwrite``.  If this thread is interrupted
    (``KeyboardInterrupt``), the others stop within one buffer and are
    joined before the exception goes on: no thread writes to *fd* once this
    returns or raises, so the caller may close it.

    :raises IntegrityError: bytes of the block do not match their checksum.
    :raises InvalidStoreError: the file ends before the block does.
    :raises OSError: the file cannot be read, or *fd* written.
    """
    _transfer(block, _FileSink(fd, data_offset), nbytes)


def read_block(block: FileBlock, out: memoryview) -> None:
    """Read ``len(out)`` bytes of *block* into *out*, checked as :func:`copy_block` checks.

    :raises IntegrityError, InvalidStoreError, OSError: as :func:`copy_block`.
    """
    _transfer(block, _MemorySink(out), len(out))


def check_block(block: FileBlock, nbytes: int) -> int:
    """Check *nbytes* of *block* against their checksums, keeping nothing.

    :returns: the bytes that have checksums (the others are not read).
    :raises IntegrityError, InvalidStoreError, OSError: as :func:`copy_block`.
    """
    pieces = _pieces(block, nbytes)
    checked = sum(p.hi - p.lo for p in pieces if p.expected is not None)
    _transfer(block, None, nbytes, [p for p in pieces if p.expected is not None])
    return checked


@dataclass(frozen=True)
class _Piece:
    """Bytes ``[lo, hi)`` of a block; with *expected*, all of one checksum's range.

    *head* and *tail* are the parts of that range outside the block
    (dataset bytes ``[start, end)``), read and summed but not copied.
    """

    lo: int
    hi: int
    expected: int | None = None
    range: tuple[int, int] = (0, 0)
    head: tuple[int, int] | None = None
    tail: tuple[int, int] | None = None


def _pieces(block: FileBlock, nbytes: int) -> list[_Piece]:
    """The block's bytes as pieces: the ranges of its checksums, then buffers."""
    pieces: list[_Piece] = []
    covered = 0
    verifier = block.verifier
    if verifier is not None:
        start, stop = block.start, block.start + nbytes
        for first, last, expected in verifier.sums.ranges(start, stop):
            pieces.append(
                _Piece(
                    max(first, start) - start,
                    min(last, stop) - start,
                    expected,
                    (first, last),
                    (first, start) if first < start else None,
                    (stop, last) if last > stop else None,
                )
            )
        covered = pieces[-1].hi if pieces else 0
    pieces.extend(_Piece(lo, min(lo + _BUFFER, nbytes)) for lo in range(covered, nbytes, _BUFFER))
    return pieces


def _shares(pieces: list[_Piece], threads: int) -> list[list[_Piece]]:
    """*pieces* in at most *threads* runs of consecutive pieces of about equal bytes."""
    total = sum(p.hi - p.lo for p in pieces)
    share = -(-total // threads)
    runs: list[list[_Piece]] = [[]]
    done = 0
    for piece in pieces:
        if runs[-1] and done >= share * len(runs):
            runs.append([])
        runs[-1].append(piece)
        done += piece.hi - piece.lo
    return runs


class _FileSink:
    """Where copied bytes go: the open file *fd*, from byte *offset*."""

    def __init__(self, fd: int, offset: int) -> None:
        self.fd, self.offset = fd, offset

    def put(self, data: memoryview, position: int) -> None:
        write_all(self.fd, data, self.offset + position)


class _MemorySink:
    """Where copied bytes go: *out*, read into directly (no buffer between)."""

    def __init__(self, out: memoryview) -> None:
        self.out = out


def _transfer(
    block: FileBlock,
    sink: _FileSink | _MemorySink | None,
    nbytes: int,
    pieces: list[_Piece] | None = None,
) -> None:
    """Move *nbytes* of *block* into *sink* (``None``: nowhere), checking checksums."""
    if nbytes == 0:
        return
    if pieces is None:
        pieces = _pieces(block, nbytes)
    if not pieces:
        return
    threads = worker_count() if nbytes >= _SPLIT_AT else 1
    runs = _shares(pieces, threads)
    errors: list[BaseException] = []
    src = _open(block.path)
    try:
        total = sum(p.hi - p.lo for p in pieces)
        # A bar shows after a second only: small moves skip making one.
        with progress(total, block.what) if total >= _SPLIT_AT else _NoBar() as bar:
            copier = _Copier(src, sink, block, bar)

            def run(run_pieces: list[_Piece]) -> None:
                try:
                    copier.copy(run_pieces)
                except BaseException as err:
                    errors.append(err)
                    copier.stop.set()

            helpers = [
                threading.Thread(target=run, args=(part,), name=f"shmstore-copy-{i}", daemon=True)
                for i, part in enumerate(runs[1:], 1)
            ]
            for helper in helpers:
                helper.start()
            try:
                copier.copy(runs[0])
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


def _name(path: str | os.PathLike[str] | int) -> str:
    return f"descriptor {path}" if isinstance(path, int) else os.fspath(path)


class _NoBar(contextlib.nullcontext["_NoBar"]):
    """A progress bar that shows nothing (and costs nothing to make)."""

    def __init__(self) -> None:
        super().__init__(self)

    def update(self, n: int) -> None:
        """Nothing to show."""


def _open(path: str | os.PathLike[str] | int) -> int:
    """A descriptor of its own on *path* (a path, or a descriptor to duplicate)."""
    if isinstance(path, int):
        return os.dup(path)
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


class _Copier:
    """Copies pieces of *block* from *src* into *sink*, from threads; :attr:`stop` stops all."""

    def __init__(
        self, src: int, sink: _FileSink | _MemorySink | None, block: FileBlock, bar: Any
    ) -> None:
        self.src, self.sink, self.block = src, sink, block
        self.stop = threading.Event()
        self._bar = bar
        self._lock = threading.Lock()  # tqdm's update is not made for threads

    def _truncated(self, position: int) -> InvalidStoreError:
        return InvalidStoreError(
            f"{_name(self.block.path)} ended after {self.block.offset + position} "
            f"bytes while loading {self.block.what or 'a block of it'}: the file is truncated"
        )

    def _outside(self, first: int, last: int) -> bytes:
        """Dataset bytes ``[first, last)`` outside the block (the rest of a checksum's range)."""
        position = first - self.block.start
        data = os.pread(self.src, last - first, self.block.offset + position)
        if len(data) != last - first:
            raise self._truncated(position + len(data))
        return data

    def copy(self, pieces: list[_Piece]) -> None:
        """Copy *pieces* in order through one buffer, checking each that has a checksum."""
        size = min(_BUFFER, max(p.hi - p.lo for p in pieces))
        buffer = memoryview(bytearray(size)) if not isinstance(self.sink, _MemorySink) else None
        for piece in pieces:
            if self.stop.is_set():
                return
            value = crc(self._outside(*piece.head)) if piece.head is not None else 0
            position = piece.lo
            while position < piece.hi:
                want = min(size, piece.hi - position)
                if buffer is None:
                    target = self.sink.out[position : position + want]  # type: ignore[union-attr]
                else:
                    target = buffer[:want]
                got = os.preadv(self.src, [target], self.block.offset + position)
                if got == 0:
                    raise self._truncated(position)
                if piece.expected is not None:
                    value = crc(target[:got], value)
                if isinstance(self.sink, _FileSink):
                    self.sink.put(target[:got], position)
                position += got
            if piece.tail is not None:
                value = crc(self._outside(*piece.tail), value)
            if piece.expected is not None and self.block.verifier is not None:
                self.block.verifier.check_range(*piece.range, value, piece.expected)
            with self._lock:
                self._bar.update(piece.hi - piece.lo)
