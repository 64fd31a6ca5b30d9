"""The node cache: one directory of shared-memory segments per node and user.

It caches "the bytes of (source, dataset, rows)", filled by a callback its
caller gives, and knows nothing of HDF5.  :class:`Cache` is its front: each
method says what it does and hands the work to the module for that job.
The invariants kept (numbered as ``docs/design.md`` refers to them), and where:

1. One copy per node: a load runs under the key's lock file; whoever waited
   on it maps what was published (``_cache_load``; ``docs/design.md``,
   "Cooperative fill").
2. Never partial: a segment is built under a temporary name and published
   by an atomic rename (``_cache_load``).
4. Never SIGBUS: room is made within the budget and the file's space is
   reserved before a byte is written; no room is :class:`CacheFullError`
   (``_budget``; ``docs/design.md``, "Named shared arrays").
5. Never evict what is in use: a mapping holds a shared ``flock``; removal
   needs the exclusive one and never waits (``_mappings``,
   ``_cache_directory``; ``docs/design.md``, "One contiguous array from
   several files").
7. Nobody else gets in: the directory is 0700 and files 0600, of this
   user, checked on every open; links are never followed; keys are
   validated (``_cache_directory``).

``_cache_gc`` does ``evict``, ``gc`` and retired blocks (``docs/design.md``,
"Old blocks"), with a :class:`CacheAction` record of each file;
``_cache_types`` holds the values these modules take and return.
"""

from __future__ import annotations

import logging
import operator
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import _cache_gc, _cache_load
from ._budget import ENV_BUDGET, choose_budget, parse_budget
from ._cache_directory import ENV_DIRECTORY, CacheDirectory, default_directory
from ._cache_types import Block, BlockFill, CacheAction, CacheEntry
from ._fill import FileFill
from ._mappings import forget, map_segment, mapped_header
from ._region import Region
from ._segment import (
    FileIdentity,
    SegmentHeader,
    SegmentSource,
    check_key,
    new_header,
    open_segment,
    read_header,
    segment_key,
)
from .errors import ArgumentError, SegmentError, SegmentNotFoundError

__all__ = [
    "ENV_BUDGET",
    "ENV_DIRECTORY",
    "Block",
    "BlockFill",
    "Cache",
    "CacheAction",
    "CacheEntry",
    "FileIdentity",
    "SegmentHeader",
    "SegmentSource",
    "default_directory",
    "parse_budget",
]

_log = logging.getLogger("shmstore")


class Cache:
    """The shared-memory cache of this node: one directory per user, a budget in bytes.

    :param directory: where segments live; default ``$SHMSTORE_DIR``, else
        ``$JOB_SHMTMPDIR/shmstore``, else ``/dev/shm/shmstore-<uid>``.
        Created 0700 if absent (parents too); an existing one must be this
        user's, and is tightened to 0700 if open to group or others.
    :param budget: bytes the cached segments may take together: an int, a
        string of bytes (``"1000000"``), a size with K, M, G or T in powers of
        1024 (``"64G"``, ``"1.5T"``), or a share of the file system holding
        *directory* (``"50%"``); default ``$SHMSTORE_BUDGET``, else ``"50%"``.
    :raises SegmentError: the directory is a link, not a directory, or another user's.
    :raises ArgumentError: the budget (argument or variable) cannot be read.

    Every process of the node that makes a ``Cache`` of the same directory
    shares its segments.  A ``Cache`` holds no open files (each process
    keeps one descriptor of each cache directory it looks blocks up in): it
    pickles as its directory and budget and is cheap to make.
    """

    directory: Path
    """The cache directory, an absolute path (its last component is checked not to be a link)."""
    budget: int
    """Bytes the cached segments may take together."""

    def __init__(
        self, directory: str | os.PathLike[str] | None = None, budget: int | str | None = None
    ) -> None:
        if directory is not None and not os.fspath(directory):
            raise ArgumentError("the cache directory is an empty path; give a directory or None")
        chosen = default_directory() if directory is None else Path(directory)
        # abspath, not resolve: the last component must not be a link, and is checked.
        self.directory = Path(os.path.abspath(chosen))
        self._dir = CacheDirectory(self.directory)
        self._dir.prepare()
        self.budget = choose_budget(budget, self.directory)

    def __repr__(self) -> str:
        return f"Cache(directory={str(self.directory)!r}, budget={self.budget})"

    @property
    def prefix(self) -> str:
        """The directory with a trailing separator: file names are appended to it."""
        return self._dir.prefix

    def __reduce__(self) -> tuple[type[Cache], tuple[str, int]]:
        return (type(self), (str(self.directory), self.budget))

    # -- keys and segments ---------------------------------------------------------

    def key(self, source: SegmentSource) -> str:
        """The key of the segment holding a copy of *source*: 32 hexadecimal digits.

        The same on every process for the same source: a digest of its file
        identities, dataset, version and rows.
        """
        return segment_key(source)

    def attach(
        self, key: str, *, recheck: bool = False, writable: bool = False
    ) -> np.ndarray[Any, Any]:
        """Map the segment *key* read-only (or *writable*), knowing nothing but its key.

        Another array on the same mapping if this process already maps it
        (a dictionary look-up); else a new mapping, microseconds whatever
        the size: no byte of data is read.

        :param recheck: reuse this process's mapping only if the key's file
            is still the one mapped (for keys given to :meth:`get`, whose
            segment :meth:`unlink` and a new load can replace).
        :param writable: map it ``PROT_READ | PROT_WRITE``: only a named
            array made writable (:meth:`create`) can be.

        :raises SegmentNotFoundError: (a ``KeyError``) no such segment: never
            loaded, or evicted.
        :raises ReadOnlyError: (a ``PermissionError``) *writable*, and the
            segment is a cached copy or a named array made read-only.
        :raises SegmentError: *key* is not a key, or the file is damaged,
            foreign or unsafe (it is never mapped).
        """
        key = check_key(key)
        array = map_segment(self._dir.segment_path(key), key, recheck=recheck, writable=writable)
        if array is None:
            raise SegmentNotFoundError(
                f"the cache {self.directory} holds no segment {key}: it was never loaded "
                "or was evicted; load it again through its store"
            )
        return array

    def find(
        self, key: str, *, recheck: bool = False, writable: bool = False
    ) -> np.ndarray[Any, Any] | None:
        """Like :meth:`attach`, but ``None`` when there is no segment *key*."""
        key = check_key(key)
        return map_segment(self._dir.segment_path(key), key, recheck=recheck, writable=writable)

    def header(self, key: str) -> SegmentHeader:
        """The header of segment *key*: what it holds and what it is a copy of.

        That of this process's mapping of *key* if it has one (so, right
        after :meth:`get` or :meth:`attach`, the header of the array they
        returned), else read from the file.

        :raises SegmentNotFoundError: no such segment.
        :raises SegmentError: *key* is not a key, or the file is damaged, foreign or unsafe.
        """
        path = self._dir.segment_path(check_key(key))
        mapped = mapped_header(path)
        if mapped is not None:
            return mapped
        try:
            fd, st = open_segment(path)
        except FileNotFoundError as err:
            raise SegmentNotFoundError(
                f"the cache {self.directory} holds no segment {key}"
            ) from err
        try:
            return read_header(fd, st, path, key)
        finally:
            os.close(fd)

    def unlink(self, key: str) -> bool:
        """Remove the name of segment *key* now, even while processes map it.

        As ``shm_unlink``: no process can attach the segment any more, those
        that map it keep their pages (valid, never ``SIGBUS``) until they
        drop them, and the memory returns to the system then.  For named
        arrays (:meth:`create`) and segments loaded under a key of the
        caller's choosing (:meth:`get` with ``key=``); a segment of a source
        is evicted with :meth:`evict`.

        :returns: whether there was a segment to remove.
        :raises SegmentError: *key* is not a key, or the name cannot be
            removed (a read-only cache directory).
        """
        path = self._dir.segment_path(check_key(key))
        forget(path)  # this process must not hand out its old mapping under the name again
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        except OSError as err:
            raise SegmentError(f"cannot remove {path} ({err.strerror or err})") from err
        _log.info("unlinked segment %s", key)
        return True

    def create(
        self,
        key: str,
        source: SegmentSource,
        dtype: np.dtype[Any],
        shape: tuple[int, ...],
        fill: Callable[[np.ndarray[Any, Any]], object] | None = None,
        *,
        writable: bool = True,
    ) -> np.ndarray[Any, Any]:
        """Make the named array *key*: zeros, or what *fill* writes; mapped as *writable* says.

        A named array is no copy of a source (*source* only describes it:
        ``dataset`` its name) but an array in its own right: the budget
        counts it and never evicts it to make room; it lives until
        :meth:`unlink`, or :meth:`evict` / :meth:`gc` once no process maps
        it.  Every process may :meth:`attach` it by *key*, writable too when
        made *writable*; concurrent writes are the caller's business.  Its
        space is reserved before a byte is written (``posix_fallocate``:
        zeros, and never a ``SIGBUS``), it is published whole by a rename,
        and a name is made once: this never replaces an existing segment.

        :param fill: called with a writeable array on the new segment
            before it is published (it must not keep it); ``None`` leaves zeros.
        :raises SegmentExistsError: (a ``FileExistsError``) the cache holds
            a segment of *key* already; nothing is changed.
        :raises CacheFullError: no room in the budget or on the file system
            once every unused cached copy is evicted (named arrays are not).
        :raises ArgumentError: a dtype holding Python objects or of no bytes,
            or a negative dimension.
        :raises SegmentError: *key* is not a key, or the cache directory
            cannot be written.
        """
        key = check_key(key)
        dtype = np.dtype(dtype)
        shape = tuple(operator.index(n) for n in shape)
        header = new_header(key, source, dtype, shape, named=True, writable=writable)
        return _cache_load.create(self._dir, self.budget, header, fill)

    def lookup(self, source: SegmentSource) -> np.ndarray[Any, Any] | None:
        """The node's copy of *source*, mapped read-only, or ``None``; never loads.

        :raises SegmentError: the file of its key is damaged, foreign or unsafe.
        """
        key = segment_key(source)
        return map_segment(self._dir.segment_path(key), key)

    def get(
        self,
        source: SegmentSource,
        dtype: np.dtype[Any],
        shape: tuple[int, ...],
        fill: Callable[[np.ndarray[Any, Any]], object] | FileFill,
        *,
        key: str | None = None,
        on_load: Callable[[], object] | None = None,
        timeout: float | None = None,
    ) -> np.ndarray[Any, Any]:
        """The node's copy of *source*, mapped read-only; loaded with *fill* if absent.

        If no process has loaded it, this one does, under the key's lock
        file (processes asking meanwhile wait, then map what it made): room
        is made in the budget, the file's space reserved, *fill* is called
        with a writeable C-ordered array of *dtype* and *shape* on the new
        segment and must fill all of it, and the segment is published by a
        rename.  *fill* must not keep the array.  A :class:`FileFill`
        instead of a callback may also write the file (``pwrite``), which is
        faster than faulting in the pages of a fresh mapping; a
        :class:`FileBlock` says the bytes are one block of a file, which
        the kernel copies in threads.

        :param key: the segment's key, instead of the one made from *source*
            (:meth:`key`): for segments named by their user, whose source
            the caller checks in :meth:`header`.  The segment under such a
            key may be replaced (:meth:`unlink`), so its name is checked
            again even when this process maps it.
        :param on_load: called once, under the lock, when this call is the
            one that loads, before any space is taken (to count loads, or to
            check the source once more); an exception from it aborts the load.
        :param timeout: seconds to wait for another process's load; ``None``
            waits as long as it takes.
        :raises CacheFullError: (an ``OSError``) no room in the budget or on
            the file system, and nothing unused to evict; the message says
            how many bytes were needed and which segments hold the space.
        :raises LockTimeoutError: another process was still loading after *timeout*.
        :raises SegmentError: an unsafe or damaged file is where the segment
            should be (``gc`` removes it), the cached copy has another dtype
            or shape than asked, *fill* kept the array it was given, or the
            cache directory cannot be written (read-only, not this user's,
            a link, or removed during the load).
        :raises ArgumentError: a dtype holding Python objects or of no bytes,
            or a negative dimension.

        Whatever *fill* raises propagates, and nothing is published.
        """
        dtype = np.dtype(dtype)
        shape = tuple(operator.index(n) for n in shape)
        recheck = key is not None
        key = segment_key(source) if key is None else check_key(key)
        array = map_segment(self._dir.segment_path(key), key, recheck=recheck)
        if array is None:
            array = _cache_load.load_once(
                self._dir,
                self.budget,
                new_header(key, source, dtype, shape),
                fill,
                on_load=on_load,
                timeout=timeout,
                recheck=recheck,
            )
        if array.dtype != dtype or array.shape != shape:
            raise SegmentError(
                f"the cached copy of {source.describe()} (segment {key}) holds "
                f"{array.dtype} {array.shape}, not the {dtype} {shape} asked for: evict it "
                "if the source was described wrongly when it was loaded"
            )
        return array

    # -- blocks -------------------------------------------------------------------

    def map_blocks(
        self,
        blocks: Sequence[Block],
        *,
        source: Callable[[Block], SegmentSource],
        fill: Callable[[Block], BlockFill] | None,
        timeout: float | None = None,
        on_load: Callable[[Block], object] | None = None,
    ) -> Region | None:
        """Map *blocks* side by side, read-only, into one new :class:`Region`; load those absent.

        Every block but the last must be a whole number of pages.  Blocks
        the node holds are mapped (each holding its shared lock); the others
        are filled cooperatively (``docs/design.md``, "Blocks and identity"):
        this process claims, one at a time, each missing block no other
        process is loading, loads it, and then waits, in a blocking lock,
        for the blocks others claimed, loading any whose loader died.

        :param source: what a block is a copy of, for its header (its
            ``generation`` and ``block`` set); asked only for blocks loaded
            and for messages.
        :param fill: how to fill a block this process loads; ``None`` maps
            only, and returns ``None`` if a block is absent.
        :param on_load: called with each block this process loads, under its
            lock, before any space is taken.
        :param timeout: seconds to wait for another process's load of a
            block; ``None`` waits as long as it takes.
        :raises CacheFullError: the blocks together need more than the budget,
            or there is no room for one and nothing unused to evict; the
            blocks mapped so far are unmapped with the region (no ``SIGBUS``:
            every page was reserved before it was written).
        :raises LockTimeoutError: another process still loaded a block after *timeout*.
        :raises SegmentError: a damaged, planted or wrongly sized file where a
            block belongs (never mapped), or the address range cannot be
            reserved, or the cache directory cannot be written.
        """
        return _cache_load.map_blocks(
            self._dir,
            self.budget,
            blocks,
            source=source,
            fill=fill,
            timeout=timeout,
            on_load=on_load,
        )

    def drop_blocks(
        self, prefix: str, stale: Callable[[str | None, tuple[int, int]], bool]
    ) -> list[str]:
        """Retire the blocks whose key starts with *prefix* and that are *stale*.

        *stale* is asked with each block's generation and bytes ``(lo, hi)``.

        For blocks of an old generation or an old tail, which no view asks
        for again: each is renamed ``<key>.stale`` at once and removed if no
        process maps it; one still mapped is removed by the last process
        that unmaps it (or by ``gc``, or by eviction, first of all).  Files
        that are not valid segments are left to ``gc``.

        :returns: the keys retired.
        """
        return _cache_gc.drop_blocks(self._dir, prefix, stale)

    def remove_retired(self, keys: Sequence[str]) -> None:
        """Remove the retired blocks (:meth:`drop_blocks`) among *keys* that no process maps.

        For a process that unmaps blocks it knows are retired: the last
        process to unmap a retired block removes it.
        """
        _cache_gc.remove_retired(self._dir, keys)

    # -- inspection, eviction, garbage collection ---------------------------------

    def entries(self) -> list[CacheEntry]:
        """Every published segment, sorted by key: source, rows, bytes, in use or not.

        Files that are not valid segments are left out, each with a warning
        in the log (``gc`` removes the damaged ones).

        :returns: a :class:`CacheEntry` per segment (empty for an empty cache,
            or a directory removed since).
        :raises PermissionError: the directory cannot be read by this user.
        """
        return self._dir.entries()

    def evict(self, keys: Iterable[str] | None = None, *, all: bool = False) -> list[CacheAction]:
        """Remove the segments *keys*, or every one with ``all=True``, that no process maps.

        A mapped segment is kept: never waits, never fails for it.  A key's
        retired block (``<key>.stale``) goes with it.

        :param keys: the keys of the segments (32 hexadecimal digits, as
            :meth:`entries` and :attr:`Handle.keys <shmstore.Handle.keys>` give them),
            or one key as a ``str``.
        :param all: every segment of the cache instead of *keys*; default false.
        :returns: what was done with each file, a :class:`CacheAction` each:
            ``"removed"``; ``"kept"`` (a process maps it); ``"left alone"``
            (another user's, not a regular file, or it cannot be removed:
            the reason says which); ``"gone"`` (a key not cached, or
            evicted meanwhile by another process).  The keys removed are
            ``[a.key for a in actions if a.outcome == "removed"]``.
        :raises ArgumentError: neither *keys* nor ``all=True``, or both.
        :raises SegmentError: one of *keys* is not a key.
        """
        if all == (keys is not None):
            raise ArgumentError("evict() takes the keys to evict, or all=True (not both)")
        if all:
            return _cache_gc.evict(self._dir, None)
        asked = [keys] if isinstance(keys, str) else list(keys or ())
        return _cache_gc.evict(self._dir, [check_key(k) for k in asked])

    def clear(self) -> list[CacheAction]:
        """Evict every segment no process maps: ``evict(all=True)``.

        :returns: what was done with each file (see :meth:`evict`).
        :raises PermissionError: the directory cannot be read by this user.
        """
        return self.evict(all=True)

    def gc(self, *, dry_run: bool = False) -> list[CacheAction]:
        """Remove what no process needs, and say what was done with each file of the cache.

        * temporary files of loaders that died (no lock on them);
        * lock files of keys with no segment, that no load holds;
        * segments that fail validation (damaged, wrong mode), or are stale:
          a file of their source is gone or changed (device, inode, size,
          mtime) - unless a process maps them, then they are kept;
        * named arrays no process maps (the processes that used them are gone);
        * symbolic links planted under a cache file's name.

        Never a mapped segment; never a file of another user or a file of a
        name shmstore does not make.

        :param dry_run: remove nothing; say which files would be removed
            now (garbage that no process holds).
        :returns: a :class:`CacheAction` for every file of the directory, in
            the order looked at (lock files last): ``"removed"`` (or
            ``"would remove"`` in a dry run) with why it was garbage;
            ``"kept"`` with why (``"in use: a process maps it"``,
            ``"current: ..."``, the lock of a cached segment);
            ``"left alone"`` with why (another user's, a name shmstore does
            not make, it cannot be removed); ``"gone"`` (removed meanwhile
            by another process).  The names removed are ``[a.name for a in
            actions if a.outcome == "removed"]``.
        :raises SegmentError: the budget lock cannot be taken (the cache
            directory is not writable, or a link is planted under its name).
        """
        return _cache_gc.gc(self._dir, dry_run=dry_run)
