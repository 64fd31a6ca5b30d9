"""Checksums of stored data: computing them, and checking bytes against them.

Pure computation, no HDF5 and no file system: :mod:`._sums` keeps the
checksums in the file, :mod:`._fill` and :mod:`._load` check the bytes they
load with what is here (``docs/design.md``, "Checksums").

* Contiguous and appendable data: a CRC32C per *range* of the dataset's
  bytes (C order), ranges cut at every multiple of the range size and where
  an append began, so an append adds checksums and never changes one.
  Entries are ``(end byte, crc)``, ends strictly increasing.
* Chunked data: a CRC32C of each stored chunk's bytes as they lie in the
  file (compressed, if it is), checked before they are decoded.  Entries are
  ``(chunk number + 1, crc)``, chunks numbered in C order over the chunk
  grid with axis 0 outermost, so that growing axis 0 numbers only new chunks.

CRC32C (the ``crc32c`` package) uses the CPU's CRC instructions where it
has them, with the GIL released, far faster than a copy or a decode: in the
loading threads, on bytes still in the CPU's cache, it costs next to nothing
(``benchmarks/RESULTS.md``, item 11).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import crc32c
import numpy as np

from .errors import IntegrityError

__all__ = [
    "ALGORITHM",
    "RANGE_NBYTES",
    "Summing",
    "Sums",
    "Verifier",
    "as_entries",
    "bytes_of",
    "chunk_entries",
    "chunk_number",
    "crc",
    "range_entries",
]

ALGORITHM = "crc32c"
RANGE_NBYTES = 1 << 20
"""Bytes per checksum of contiguous data: the loading threads' buffer, so one
range is one ``pread``; a 64 MiB block has 64 checksums (1 KiB of them)."""
_THREADED = 16 << 20  # bytes: smaller buffers are summed in the calling thread

Per = Literal["range", "chunk"]


def crc(data: Any, value: int = 0) -> int:
    """The CRC32C of the bytes-like *data*, continuing from *value*."""
    return int(crc32c.crc32c(data, value))


def bytes_of(array: np.ndarray[Any, Any]) -> memoryview:
    """The bytes of the C-contiguous *array* (any dtype, datetimes too) as a flat view."""
    return memoryview(array.reshape(-1).view(np.uint8).data)


def range_ends(begin: int, end: int, size: int) -> list[int]:
    """Ends of the ranges over bytes ``[begin, end)``: every multiple of *size*, and *end*.

    Plain integers: an append of a few KiB has one or two, and numpy's
    overhead would cost more than summing them.
    """
    if end <= begin:
        return []
    return [*range((begin // size + 1) * size, end, size), end]


def as_entries(ends: Sequence[int], crcs: Sequence[int]) -> np.ndarray[Any, np.dtype[np.uint64]]:
    """The table rows ``(end, crc)`` of *ends* and *crcs*, shape ``(n, 2)``."""
    table: np.ndarray[Any, np.dtype[np.uint64]] = np.empty((len(ends), 2), np.uint64)
    table[:, 0] = ends
    table[:, 1] = crcs
    return table


def range_entries(
    data: memoryview, begin: int, size: int = RANGE_NBYTES
) -> np.ndarray[Any, np.dtype[np.uint64]]:
    """Checksum entries ``(end, crc)`` of the bytes *data*, which are bytes ``[begin, ...)``."""
    data = data.cast("B") if data.format != "B" or data.ndim != 1 else data
    ends = range_ends(begin, begin + len(data), size)
    crcs = []
    start = begin
    for end in ends:
        crcs.append(crc(data[start - begin : end - begin]))
        start = end
    return as_entries(ends, crcs)


class Summing:
    """The checksums of the ranges of *data* (bytes ``[begin, ...)``), summed in threads
    while the caller goes on: CRC32C releases the GIL, so a write of the same
    bytes (``pwrite``, HDF5) runs beside it.  :meth:`entries` waits for them.

    Buffers under 16 MiB are summed when :meth:`entries` is called.
    """

    def __init__(self, data: memoryview, begin: int, size: int = RANGE_NBYTES, threads: int = 1):
        self._data, self._begin, self._size = data, begin, size
        self._pool: ThreadPoolExecutor | None = None
        self._parts: list[Future[np.ndarray[Any, np.dtype[np.uint64]]]] = []
        if threads > 1 and len(data) >= _THREADED:
            ends = range_ends(begin, begin + len(data), size)
            cuts = [len(ends) * i // threads for i in range(threads + 1)]
            self._pool = ThreadPoolExecutor(threads, thread_name_prefix="shmstore-sum")
            for lo, hi in itertools.pairwise(cuts):
                if hi > lo:
                    first = ends[lo - 1] if lo else begin
                    part = data[first - begin : ends[hi - 1] - begin]
                    self._parts.append(self._pool.submit(range_entries, part, first, size))

    def entries(self) -> np.ndarray[Any, np.dtype[np.uint64]]:
        """The entries ``(end, crc)``, once every thread is done."""
        if self._pool is None:
            return range_entries(self._data, self._begin, self._size)
        try:
            return np.concatenate([part.result() for part in self._parts]).reshape(-1, 2)
        finally:
            self.close()

    def close(self) -> None:
        """Stop: what has not started is cancelled, what runs is waited for."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def chunk_number(origin: Sequence[int], chunks: Sequence[int], shape: Sequence[int]) -> int:
    """The number of the chunk at *origin* (its first element), C order, axis 0 outermost."""
    number = origin[0] // chunks[0]
    for corner, size, length in zip(origin[1:], chunks[1:], shape[1:], strict=True):
        number = number * max(1, -(-length // size)) + corner // size
    return number


@dataclass(frozen=True)
class Sums:
    """A dataset's checksums: *keys* (range ends, or chunk numbers + 1) and their *crcs*."""

    per: Per
    keys: np.ndarray[Any, np.dtype[np.uint64]]
    crcs: np.ndarray[Any, np.dtype[np.uint64]]

    @classmethod
    def of(cls, per: Per, entries: np.ndarray[Any, Any], limit: int | None = None) -> Sums:
        """The valid entries of *entries* (``(n, 2)``): the longest prefix whose keys
        strictly increase, are positive and (ranges) do not pass byte *limit*.

        What follows is room for later appends, or what an append left that
        never returned: never verified against.
        """
        keys = np.ascontiguousarray(entries[:, 0], np.uint64)
        good = keys > 0
        if limit is not None:
            good &= keys <= np.uint64(limit)
        good[1:] &= keys[1:] > keys[:-1]
        count = int(np.argmin(good)) if not good.all() else len(keys)
        return cls(per, keys[:count], np.ascontiguousarray(entries[:count, 1], np.uint64))

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def covered(self) -> int:
        """Bytes ``[0, covered)`` have checksums (ranges); 0 for chunks."""
        return int(self.keys[-1]) if self.per == "range" and len(self.keys) else 0

    def ranges(self, lo: int, hi: int) -> list[tuple[int, int, int]]:
        """``(start, end, crc)`` of every range that overlaps bytes ``[lo, hi)``."""
        if self.per != "range" or hi <= lo or lo >= self.covered:
            return []
        first = int(np.searchsorted(self.keys, np.uint64(lo), side="right"))
        last = int(np.searchsorted(self.keys, np.uint64(hi), side="left"))
        last = min(last, len(self.keys) - 1)
        out = []
        for i in range(first, last + 1):
            start = int(self.keys[i - 1]) if i else 0
            out.append((start, int(self.keys[i]), int(self.crcs[i])))
        return out

    def chunk(self, number: int) -> int | None:
        """The crc of chunk *number*, or ``None`` when it has none."""
        key = np.uint64(number + 1)
        i = int(np.searchsorted(self.keys, key))
        return int(self.crcs[i]) if i < len(self.keys) and self.keys[i] == key else None


@dataclass(frozen=True)
class Verifier:
    """The checksums of one dataset and what to name in an error about them.

    :param file: the file holding the bytes (the HDF5 file, or a raw file).
    :param offset: where byte 0 of the dataset lies in *file* (ranges only).
    """

    sums: Sums
    dataset: str
    store: str
    file: str
    offset: int
    row_nbytes: int
    shape: tuple[int, ...] = ()
    chunks: tuple[int, ...] | None = None

    def _rows(self, start: int, end: int) -> str:
        row = max(1, self.row_nbytes)
        return f"rows {start // row}:{-(-end // row)}"

    def _advice(self) -> str:
        return (
            "nothing was cached or returned. The file is damaged (a disk fault, a bad copy, or "
            "another program writing into it): restore it from a good copy, or write the "
            "dataset again; if another tool changed it on purpose, record checksums of the data "
            f"as they are now with `shmstore seal {self.store} {self.dataset}`"
        )

    def range_error(self, start: int, end: int, expected: int, found: int) -> IntegrityError:
        """The error for bytes ``[start, end)`` of the dataset that do not match."""
        return IntegrityError(
            f"{self._rows(start, end)} of {self.dataset!r} in {self.store} (bytes "
            f"{self.offset + start}:{self.offset + end} of {self.file}) do not match the "
            f"checksum recorded when they were written ({ALGORITHM} {expected:08x}, read "
            f"{found:08x}): {self._advice()}"
        )

    def check_range(self, start: int, end: int, found: int, expected: int) -> None:
        """Raise :meth:`range_error` unless *found* is *expected*."""
        if found != expected:
            raise self.range_error(start, end, expected, found)

    def check_chunk(self, origin: Sequence[int], data: Any, byte_offset: int) -> None:
        """Check the stored bytes *data* of the chunk at *origin* (at *byte_offset*).

        :raises IntegrityError: they do not match the chunk's checksum.
        """
        if self.chunks is None:  # a verifier of ranges: no chunk has a checksum
            return
        expected = self.sums.chunk(chunk_number(origin, self.chunks, self.shape))
        first = origin[0]
        last = min(first + self.chunks[0], self.shape[0] if self.shape else 1)
        at = "" if len(origin) < 2 else f" at {tuple(int(i) for i in origin)}"
        if expected is None:
            # Every chunk stored when the checksums were recorded has one, and
            # shmstore's appends sum the chunks they write: a chunk without one
            # was written by someone else, or the table is not this dataset's.
            raise IntegrityError(
                f"the chunk of rows {first}:{last}{at} of {self.dataset!r} in {self.store} "
                f"(bytes {byte_offset}:{byte_offset + len(data)} of {self.file}) has no "
                f"checksum, though the dataset's chunks have: {self._advice()}"
            )
        found = crc(data)
        if found != expected:
            raise IntegrityError(
                f"the chunk of rows {first}:{last}{at} of {self.dataset!r} in {self.store} "
                f"(bytes {byte_offset}:{byte_offset + len(data)} of {self.file}) does not match "
                f"the checksum recorded when it was written ({ALGORITHM} {expected:08x}, read "
                f"{found:08x}): {self._advice()}"
            )


def chunk_entries(
    chunks: Sequence[tuple[Sequence[int], Callable[[], bytes]]],
    chunk_shape: Sequence[int],
    shape: Sequence[int],
) -> np.ndarray[Any, np.dtype[np.uint64]]:
    """Checksum entries ``(number + 1, crc)`` of stored chunks, sorted by number.

    :param chunks: each chunk's origin and a function returning its stored bytes.
    """
    entries = sorted(
        (chunk_number(origin, chunk_shape, shape) + 1, crc(read())) for origin, read in chunks
    )
    if not entries:
        return np.empty((0, 2), np.uint64)
    return np.asarray(entries, np.uint64).reshape(-1, 2)
