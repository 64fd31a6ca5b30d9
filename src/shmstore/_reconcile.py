"""Checking a dataset's record against what the HDF5 file really holds.

A pure function over the models: the store reads both sides, this decides
what may be served.  A disagreement is an error naming both values, never
wrong data, with one exception: an appendable dataset longer than its record
is an append whose writer died after growing the extent and before
rewriting the record; its rows were written before the extent, so they are
complete and kept.
"""

from __future__ import annotations

import logging

from .errors import ManifestError
from .manifest import ArrayInfo

__all__ = ["check_record"]

_log = logging.getLogger("shmstore")


def _check_offset(info: ArrayInfo, found: ArrayInfo) -> None:
    """Refuse a dataset whose bytes are not where shmstore wrote them (a damaged header)."""
    if info.data_offset is not None and found.data_offset != info.data_offset:
        raise ManifestError(
            f"the record says the data of {info.name!r} begin at byte {info.data_offset}, the "
            f"file's header says {found.data_offset}: the header is damaged (or another tool "
            "such as h5repack rewrote the file); refusing to serve data from the wrong place"
        )


def check_record(info: ArrayInfo, found: ArrayInfo, where: str) -> ArrayInfo:
    """*found* (read off the dataset) with *info*'s (its record's) identity, if the two agree.

    :raises ManifestError: another dtype, another shape (other than an
        interrupted append), or data at another offset than recorded.
    """
    if found.dtype != info.dtype:
        raise ManifestError(
            f"the record says {info.name!r} has dtype {info.dtype}, the file holds "
            f"{found.dtype}: refusing to serve data of the wrong type"
        )
    if found.shape == info.shape:
        _check_offset(info, found)
        return found.model_copy(
            update={
                "version": info.version,
                "generation": info.generation,
                "chunk_digest": info.chunk_digest,
                "checksums": info.checksums,
            }
        )
    same_rows = len(found.shape) == len(info.shape) and found.shape[1:] == info.shape[1:]
    if info.appendable and same_rows and found.shape[0] > info.shape[0]:
        _log.warning(
            "%s: %r has %d rows, its record %d: keeping the rows of an interrupted append",
            where,
            info.name,
            found.shape[0],
            info.shape[0],
        )
        _check_offset(info, found)
        return found.model_copy(
            update={
                "version": info.version,
                "generation": info.generation,
                "checksums": info.checksums,
            }
        )
    raise ManifestError(
        f"the record says {info.name!r} has shape {info.shape}, the file holds {found.shape}: "
        "refusing to serve data of the wrong shape"
    )
