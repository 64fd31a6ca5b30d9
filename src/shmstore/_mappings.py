"""This process's mappings of published segments: map one, reuse it, forget it.

Within a process, mappings are shared: a second request for a segment the
process already maps returns a new array on the same mapping (a dictionary
look-up), and the mapping, and with it its shared ``flock``, goes when the
last array on it is garbage.  The lock is what keeps an evictor away
(``docs/design.md``, "Blocks and identity").
"""

from __future__ import annotations

import contextlib
import os
import time
import weakref
from typing import Any, NamedTuple

import numpy as np

from ._segment import SegmentHeader, map_data, open_segment, read_header, view_of
from .errors import ReadOnlyError, SegmentError

__all__ = [
    "ATTACH_ATTEMPTS",
    "forget",
    "map_segment",
    "mapped_header",
    "note_access",
    "remember",
]

ATTACH_ATTEMPTS = 8  # a name evicted and reloaded between our open and lock, again and again
_ACCESS_RESOLUTION_NS = 100_000_000  # an access time this recent (ns) is not rewritten


class _Mapped(NamedTuple):
    base: weakref.ReferenceType[Any]
    header: SegmentHeader
    file: tuple[int, int]  # (st_dev, st_ino) of the segment file mapped


# (segment path, writable) -> this process's mapping of it (weakly: the arrays
# keep it alive).  A writable named array may be mapped both ways at once.
MAPPINGS: dict[tuple[str, bool], _Mapped] = {}


def remember(
    path: str, base: object, header: SegmentHeader, st: os.stat_result, writable: bool = False
) -> None:
    """Record *base*, this process's new mapping of the segment file *path* (``fstat`` *st*)."""
    slot = (path, writable)

    def forget_it(ref: weakref.ReferenceType[Any]) -> None:
        entry = MAPPINGS.get(slot)
        if entry is not None and entry.base is ref:
            MAPPINGS.pop(slot, None)

    MAPPINGS[slot] = _Mapped(weakref.ref(base, forget_it), header, (st.st_dev, st.st_ino))


def forget(path: str) -> None:
    """Hand out no more arrays on this process's mappings of *path* (its name is being removed)."""
    MAPPINGS.pop((path, False), None)
    MAPPINGS.pop((path, True), None)


def mapped_header(path: str) -> SegmentHeader | None:
    """The header of this process's live mapping of *path*, read-only or writable; else ``None``."""
    for writable in (False, True):
        entry = MAPPINGS.get((path, writable))
        if entry is not None and entry.base() is not None:
            return entry.header
    return None


def _reuse(path: str, recheck: bool, writable: bool) -> np.ndarray[Any, Any] | None:
    """A new array on this process's mapping of *path*, or ``None`` if it maps none.

    :param recheck: only if the name still refers to the file mapped (one
        ``lstat``).  Needed for keys whose segment can be replaced by
        another of other contents (:meth:`Cache.unlink`, then a new one);
        a key made from a source names the same bytes forever.
    """
    entry = MAPPINGS.get((path, writable))
    if entry is None:
        return None
    base = entry.base()
    if base is None:
        return None
    if recheck:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if (st.st_dev, st.st_ino) != entry.file:
            return None
    return view_of(base, entry.header)


def note_access(fd: int, st: os.stat_result) -> None:
    """Set the access time of the segment *fd* to now, unless it is that recent already.

    The access time orders least-recently-used eviction; a read-only file
    system keeps the old one, which is harmless.
    """
    now = time.time_ns()
    if now - st.st_atime_ns > _ACCESS_RESOLUTION_NS:
        with contextlib.suppress(OSError):
            os.utime(fd, ns=(now, st.st_mtime_ns))


def _read_only_reason(key: str, header: SegmentHeader) -> str:
    """Why segment *key* cannot be mapped writable, and what to do."""
    if header.named:
        return (
            f"segment {key}, the named array {header.source.dataset!r}, was made read-only "
            "(writable=False): attach it read-only"
        )
    return (
        f"segment {key} is a cached copy of {header.source.describe()}, which is only ever "
        "mapped read-only: attach it read-only, or copy it into a writable named array"
    )


def map_segment(
    path: str, key: str, *, recheck: bool = False, writable: bool = False
) -> np.ndarray[Any, Any] | None:
    """Map the published segment *key* at *path*, or ``None`` if there is none.

    Another array on this process's mapping if it has one (see
    :func:`_reuse` for *recheck*); else a new mapping, holding the
    segment's shared ``flock`` for as long as it lives.

    :raises ReadOnlyError: *writable*, and the segment is no writable named array.
    :raises SegmentError: the file is damaged, foreign or unsafe (never
        mapped), or was replaced again and again while being mapped.
    """
    array = _reuse(path, recheck, writable)
    if array is not None:
        return array
    for _ in range(ATTACH_ATTEMPTS):
        try:
            fd, st = open_segment(path, shared=True, writable=writable)
        except FileNotFoundError:
            return None
        try:
            if st.st_nlink == 0:
                # An evictor unlinked the name between our open and our
                # lock (and a loader may have published it again): the
                # pages would be no one's.  Look at the name again.
                continue
            header = read_header(fd, st, path, key)
            if writable and not header.writable:
                raise ReadOnlyError(_read_only_reason(key, header))
            base, array = map_data(fd, header, writable=writable)
            note_access(fd, st)
        finally:
            os.close(fd)  # the mapping keeps its own descriptor, and with it the lock
        remember(path, base, header, st, writable)
        return array
    raise SegmentError(
        f"{path} was replaced {ATTACH_ATTEMPTS} times while being mapped; "
        "another process evicts and reloads it in a loop"
    )


def _forget_mappings_after_fork() -> None:
    # A forked child inherits its parent's mappings, but their locks belong to
    # open file descriptions the parent shares: the child maps afresh.
    MAPPINGS.clear()


os.register_at_fork(after_in_child=_forget_mappings_after_fork)
