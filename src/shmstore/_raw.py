"""The raw files of appendable datasets, in ``<file>.raw/`` beside the HDF5 file.

Each appendable contiguous dataset stores its rows in one raw file that HDF5
knows as external storage.  Names are stored relative to the HDF5 file's
directory (``data.h5.raw/spikes.3f9a1c2e.bin``), so the pair can move
together; a random part keeps a replaced dataset's file apart from its
successor's until the replacement is complete.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ._full_write import write_all
from ._integrity import as_entries, crc, range_ends

__all__ = ["new_raw_name", "raw_dir", "remove_orphans", "remove_raw", "write_raw"]

_log = logging.getLogger("shmstore")
_SUFFIX = ".bin"
_AHEAD = 4 << 20  # bytes: from this size on, a second thread sums ahead of the writes


def raw_dir(store: Path) -> Path:
    """The directory of the raw files of the HDF5 file *store*."""
    return store.with_name(store.name + ".raw")


def new_raw_name(store: Path, dataset: str) -> str:
    """A fresh raw file name for *dataset*, relative to *store*'s directory (created)."""
    directory = raw_dir(store)
    directory.mkdir(mode=0o755, exist_ok=True)
    return f"{directory.name}/{dataset.replace('/', '.')}.{secrets.token_hex(4)}{_SUFFIX}"


def owned(store: Path, files: Iterable[Path]) -> tuple[str, ...]:
    """Of *files*, those in *store*'s raw directory, as names relative to its directory."""
    directory = raw_dir(store)
    return tuple(str(path.relative_to(store.parent)) for path in files if path.parent == directory)


def _unlink(path: Path) -> None:
    """Remove *path*; a file that cannot be removed (read-only directory) is logged, kept."""
    try:
        path.unlink(missing_ok=True)
    except OSError as err:
        _log.warning("%s: cannot remove the unused raw file: %s", path, err)


def remove_raw(store: Path, names: Iterable[str]) -> None:
    """Remove the raw files *names* (relative to *store*'s directory), where allowed."""
    for name in names:
        _unlink(store.parent / name)


def remove_orphans(store: Path, referenced: set[Path] | None) -> None:
    """Remove raw files no dataset refers to (all of them when *referenced* is ``None``).

    Those that cannot be removed (a read-only directory) are logged and kept.
    """
    directory = raw_dir(store)
    if not directory.is_dir():
        return
    for raw in directory.glob(f"*{_SUFFIX}"):
        if referenced is None or raw not in referenced:
            _log.info("%s: removing the unreferenced raw file %s", store, raw.name)
            _unlink(raw)


def write_raw(
    path: Path,
    offset: int,
    data: np.ndarray[Any, Any],
    *,
    durable: bool = False,
    ranges: tuple[int, int] | None = None,
) -> np.ndarray[Any, Any] | None:
    """Write the bytes of the C-contiguous *data* into *path* at byte *offset*.

    :param durable: flush the file to disk before returning.
    :param ranges: ``(begin, size)``: the data are the dataset's bytes from
        *begin*, checksummed per range of *size* (see ``_integrity``); each
        range is summed just before it is written, by a thread running ahead
        of the writes (see :func:`_write_summed`).
    :returns: the checksum entries ``(end, crc)`` when *ranges* is given.
    """
    view = memoryview(data.reshape(-1).view(np.uint8).data) if data.size else memoryview(b"")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        if ranges is None:
            write_all(fd, view, offset)
            entries = None
        else:
            entries = _write_summed(fd, offset, view, ranges)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    return entries


def _write_summed(
    fd: int, offset: int, view: memoryview, ranges: tuple[int, int]
) -> np.ndarray[Any, Any]:
    """Write *view* at *offset*, each range summed just before it goes (see :func:`write_raw`).

    From 4 MiB on, a second thread sums the ranges in order, running ahead,
    while this one writes each as soon as it is summed: the sum of the next
    range runs beside the write of this one, and the write reads bytes the
    sum has just brought into the cache the cores share.  Two threads each
    summing and writing half would be slower: writers of one file take turns
    on its lock.
    """
    begin, size = ranges
    ends = range_ends(begin, begin + len(view), size)
    starts = [start - begin for start in [begin, *ends][:-1]]
    crcs = [0] * len(ends)
    pieces = [view[start : end - begin] for start, end in zip(starts, ends, strict=True)]
    if len(view) < _AHEAD:
        for i, piece in enumerate(pieces):
            crcs[i] = crc(piece)
            write_all(fd, piece, offset + starts[i])
        return as_entries(ends, crcs)
    summed = [threading.Event() for _ in pieces]
    stop = threading.Event()

    def summer() -> None:
        for i, piece in enumerate(pieces):
            if stop.is_set():
                return
            crcs[i] = crc(piece)
            summed[i].set()

    helper = threading.Thread(target=summer, name="shmstore-sum", daemon=True)
    helper.start()
    try:
        for i, piece in enumerate(pieces):
            summed[i].wait()
            write_all(fd, piece, offset + starts[i])
    finally:
        stop.set()  # a failed write: the helper stops at its next range
        helper.join()
    return as_entries(ends, crcs)
