"""Where a dataset's checksums live in its HDF5 file: a hidden dataset of its own.

A record holds at most ~60 KiB (an HDF5 header message), and a dataset of
1 TiB has a million checksums; so they live in a hidden dataset
``.shmstore_sums/<token>`` that the record names (:class:`~shmstore.manifest.Checksums`),
contiguous ``uint64`` entries ``(key, crc)`` (see :mod:`._integrity`).

It is made with room to spare (*capacity* entries, zeros after the last),
inside the journaled change that writes the dataset; an append to a raw file
writes its new entries into that room with ``pwrite`` at the dataset's
offset, before the extent grows, as it writes its rows: no HDF5 object
changes, so it is as crash-safe as the rows (``docs/design.md``,
"Checksums").  When the room runs out, the append runs journaled and the
entries move to a larger hidden dataset.  The record's ``count`` says how
many entries the data had when the record was written; the entries are read
with ``pread`` too, so HDF5's raw-data cache never serves an old copy.
"""

from __future__ import annotations

import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ._full_write import write_all
from ._h5errors import H5PY_ERRORS, translated
from ._integrity import (
    RANGE_NBYTES,
    Per,
    Sums,
    Verifier,
    as_entries,
    chunk_entries,
    crc,
    range_ends,
)
from .errors import IntegrityError, InvalidStoreError
from .manifest import ArrayInfo, Checksums

__all__ = [
    "SUMS_GROUP",
    "append_plan",
    "drop",
    "extend_chunks",
    "extend_ranges",
    "for_stored",
    "for_written",
    "read",
    "table",
    "verifier",
]

SUMS_GROUP = ".shmstore_sums"
_ENTRY = 16  # bytes: two little-endian uint64
_DTYPE = np.dtype("<u8")


def new_location() -> str:
    """A fresh name for a hidden dataset of checksums."""
    return f"{SUMS_GROUP}/{secrets.token_hex(8)}"


def create(file: h5py.File, location: str, entries: np.ndarray[Any, Any], capacity: int) -> None:
    """Make the hidden dataset *location* holding *entries*, with room for *capacity*.

    Runs inside a journaled change: it creates an HDF5 object.
    """
    data = np.zeros((max(1, capacity, len(entries)), 2), _DTYPE)
    data[: len(entries)] = entries
    file.require_group(SUMS_GROUP)
    file.create_dataset(location, data=data)  # contiguous, allocated: pwrite can reach it


def table(file: h5py.File, checksums: Checksums, what: str) -> tuple[int, int]:
    """Byte offset and entry capacity of the hidden dataset of *checksums*.

    Neither changes while the dataset lives (it is replaced, under another
    name, when it grows): a writer may keep them for its appends.

    :raises IntegrityError: it is missing or not what shmstore made.
    """
    with translated(
        IntegrityError,
        f"the checksums of {what} ({checksums.location}) cannot be read",
        advice="the file is damaged: restore it, or record checksums anew with `shmstore seal`",
        errors=(*H5PY_ERRORS, TypeError),  # TypeError: a group where the table belongs
    ):
        dataset = file[checksums.location]
        offset = dataset.id.get_offset()
        good = (
            isinstance(dataset, h5py.Dataset)
            and dataset.dtype == _DTYPE
            and len(dataset.shape) == 2
            and dataset.shape[1] == 2
            and offset is not None
        )
    if not good:
        raise IntegrityError(
            f"the checksums of {what} ({checksums.location}) are not a table of checksums: the "
            "file is damaged: restore it, or record checksums anew with `shmstore seal`"
        )
    return int(offset), int(dataset.shape[0])


def read(
    file: h5py.File, path: Path | int, checksums: Checksums, what: str, limit: int | None = None
) -> Sums:
    """The valid checksums of a dataset whose record holds *checksums*.

    :param path: the HDF5 file's path, or a descriptor open on it (read
        with ``pread``, see the module).
    :param limit: bytes of the data (ranges past it are an unfinished append).
    :raises IntegrityError: the hidden dataset is damaged, or holds fewer
        valid entries than the record counted.
    """
    offset, capacity = table(file, checksums, what)
    fd = os.dup(path) if isinstance(path, int) else os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        raw = os.pread(fd, capacity * _ENTRY, offset)
    finally:
        os.close(fd)
    if len(raw) != capacity * _ENTRY:
        raise IntegrityError(
            f"the file ends inside the checksums of {what} ({checksums.location}): it is truncated"
        )
    entries = np.frombuffer(raw, _DTYPE).reshape(capacity, 2)
    sums = Sums.of(checksums.per, entries, limit)
    if len(sums) < checksums.count:
        raise IntegrityError(
            f"the checksums of {what} ({checksums.location}) are damaged: {len(sums)} of the "
            f"{checksums.count} recorded are valid; restore the file, or record checksums anew "
            "with `shmstore seal`"
        )
    return sums


def write_in_place(
    path: Path,
    place: tuple[int, int],
    first: int,
    entries: np.ndarray[Any, Any],
) -> None:
    """Write *entries* as entries ``first, first + 1, ...`` of the hidden dataset.

    Outside any journaled change: the bytes are in the dataset's room (see
    :func:`append_plan`), past what any record counts, so a writer killed here
    leaves every counted entry as it was.

    :param place: the table's offset and capacity (:func:`table`).
    """
    offset, capacity = place
    if first + len(entries) > capacity:
        raise ValueError(f"{len(entries)} entries from {first} overflow a room of {capacity}")
    data = memoryview(np.ascontiguousarray(entries, _DTYPE).tobytes())
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        write_all(fd, data, offset + first * _ENTRY)
    finally:
        os.close(fd)


# -- what the store asks for --------------------------------------------------------


def _stored_chunk_entries(dataset: h5py.Dataset, first_row: int = 0) -> np.ndarray[Any, Any]:
    """Entries of the stored chunks of *dataset* from row *first_row* (a chunk boundary)."""
    from ._chunk_index import stored_chunks

    dsid = dataset.id
    chosen = [c for c in stored_chunks(dsid) if c.chunk_offset[0] >= first_row]

    def reader(origin: tuple[int, ...]) -> Any:
        return lambda: dsid.read_direct_chunk(origin)[1]

    return chunk_entries(
        [(tuple(c.chunk_offset), reader(tuple(c.chunk_offset))) for c in chosen],
        dataset.chunks,
        dataset.shape,
    )


def _file_range_entries(path: Path, offset: int, nbytes: int, threads: int) -> np.ndarray[Any, Any]:
    """Entries of bytes ``[offset, offset + nbytes)`` of the file *path*, read in ranges."""
    ends = range_ends(0, nbytes, RANGE_NBYTES)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def one(i: int) -> int:
        start = ends[i - 1] if i else 0
        data = os.pread(fd, ends[i] - start, offset + start)
        if len(data) != ends[i] - start:
            raise InvalidStoreError(f"{path} ends at byte {offset + start + len(data)}: truncated")
        return crc(data)

    try:
        with ThreadPoolExecutor(max(1, threads), thread_name_prefix="shmstore-sum") as pool:
            crcs = list(pool.map(one, range(len(ends))))
    finally:
        os.close(fd)
    return as_entries(ends, crcs)


def _made(file: h5py.File, per: Per, entries: np.ndarray[Any, Any], room: bool) -> Checksums:
    location = new_location()
    create(file, location, entries, 2 * len(entries) + 64 if room else len(entries))
    return Checksums(
        per=per,
        range_nbytes=RANGE_NBYTES if per == "range" else None,
        count=len(entries),
        location=location,
    )


def for_written(
    file: h5py.File,
    dataset: h5py.Dataset,
    entries: np.ndarray[Any, Any] | None,
    *,
    appendable: bool,
) -> Checksums:
    """Record checksums of *dataset*, just written.

    Ranges: *entries*, summed from the bytes the caller gave as they were
    written (so a fault on the way to the disk is caught later); chunks
    (*entries* ``None``): from their stored bytes.  Runs inside the
    journaled change that writes the dataset.
    """
    if dataset.chunks is not None or entries is None:
        return _made(file, "chunk", _stored_chunk_entries(dataset), appendable)
    return _made(file, "range", entries, appendable)


def for_stored(
    file: h5py.File,
    dataset: h5py.Dataset,
    source: tuple[Path, int] | None,
    nbytes: int,
    *,
    appendable: bool,
    threads: int,
) -> Checksums:
    """Record checksums of the data *dataset* holds now (``seal``; in a journaled change).

    :param source: the file holding the bytes and the offset of the first
        (contiguous and external data); ``None`` for chunked data.
    """
    if source is None:
        return _made(file, "chunk", _stored_chunk_entries(dataset), appendable)
    entries = _file_range_entries(source[0], source[1], nbytes, threads)
    return _made(file, "range", entries, appendable)


def drop(file: h5py.File, checksums: Checksums | None) -> None:
    """Remove the hidden dataset of *checksums*, if any (in a journaled change)."""
    if checksums is not None and checksums.location in file:
        del file[checksums.location]


def _entries(path: Path, offset: int, first: int, stop: int) -> np.ndarray[Any, Any]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        raw = os.pread(fd, (stop - first) * _ENTRY, offset + first * _ENTRY)
    finally:
        os.close(fd)
    usable = len(raw) // _ENTRY * _ENTRY
    return np.frombuffer(raw[:usable], _DTYPE).reshape(-1, 2)


def append_plan(
    path: Path, checksums: Checksums, place: tuple[int, int], begin: int, added: int
) -> tuple[bool, bool]:
    """Whether checksums of *added* bytes appended at byte *begin* extend *checksums*,
    and whether they fit the room left in its table (so can be written in place).

    They extend it only when its counted ranges end exactly at *begin*: rows
    added by another tool (or checksums that stop short) would leave a gap
    no range covers.
    """
    if checksums.per != "range":
        return False, False
    offset, capacity = place
    if checksums.count == 0:
        extend = begin == 0
    elif checksums.count > capacity:
        extend = False
    else:
        last = _entries(path, offset, checksums.count - 1, checksums.count)
        extend = len(last) == 1 and int(last[0, 0]) == begin
    size = checksums.range_nbytes or RANGE_NBYTES
    needed = len(range_ends(begin, begin + added, size))
    return extend, checksums.count + needed <= capacity


def extend_ranges(
    file: h5py.File,
    path: Path,
    checksums: Checksums,
    new: np.ndarray[Any, Any],
    place: tuple[int, int],
    *,
    journaled: bool,
) -> Checksums:
    """Add the entries *new* of rows just appended; the grown :class:`Checksums`.

    In the table's room with ``pwrite`` when not *journaled* (the caller
    checked that they fit, :func:`append_plan`); otherwise (inside a
    journaled change) into a new, larger table that replaces it.  Either
    way before the extent grows.
    """
    count = checksums.count + len(new)
    if not journaled:
        write_in_place(path, place, checksums.count, new)
        return checksums.model_copy(update={"count": count})
    old = _entries(path, place[0], 0, checksums.count)
    drop(file, checksums)
    grown = _made(file, "range", np.concatenate([old, new]), True)
    return grown.model_copy(update={"range_nbytes": checksums.range_nbytes})


def extend_chunks(
    file: h5py.File,
    path: Path,
    dataset: h5py.Dataset,
    checksums: Checksums,
    old_rows: int,
    *,
    what: str,
) -> Checksums:
    """The checksums of a chunked dataset grown from *old_rows* (inside its journaled change).

    The chunks from the one holding row *old_rows* on are summed again
    (the last of the old ones was rewritten); the others keep theirs.
    """
    rows_per = dataset.chunks[0]
    first_row = old_rows // rows_per * rows_per
    per_row = 1
    for length, size in zip(dataset.shape[1:], dataset.chunks[1:], strict=True):
        per_row *= max(1, -(-length // size))
    offset, _ = table(file, checksums, what)
    old = _entries(path, offset, 0, checksums.count)
    kept = old[old[:, 0] <= np.uint64(first_row // rows_per * per_row)]
    drop(file, checksums)
    return _made(
        file, "chunk", np.concatenate([kept, _stored_chunk_entries(dataset, first_row)]), True
    )


def verifier(
    file: h5py.File,
    path: Path,
    info: ArrayInfo,
    source: tuple[Path, int] | None,
    *,
    opened: int | None = None,
) -> Verifier | None:
    """What checks the bytes of *info*'s dataset as they load; ``None`` without checksums.

    :param opened: a descriptor open on the HDF5 file *path*, read instead of the path.
    :param source: the file holding the bytes and the offset of the first
        (contiguous and external data); ``None`` for chunked data.
    :raises IntegrityError: the checksums themselves are damaged.
    """
    checksums = info.checksums
    if checksums is None:
        return None
    what = f"{info.name!r} in {path}"
    limit = info.nbytes if checksums.per == "range" else None
    sums = read(file, path if opened is None else opened, checksums, what, limit)
    file_path, offset = source if source is not None else (path, 0)
    return Verifier(
        sums=sums,
        dataset=info.name,
        store=str(path),
        file=str(file_path),
        offset=offset,
        row_nbytes=info.row_nbytes,
        shape=info.shape,
        chunks=info.chunks,
    )
