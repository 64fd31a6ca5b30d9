"""Loading into the cache: fill a new segment and publish it, or map blocks side by side.

Two invariants of the cache are kept here:

* One copy per node: a load runs under the key's lock file
  (``<key>.lock``); whoever waited on it finds the segment published and
  maps it.  Blocks are loaded cooperatively (``docs/design.md``,
  "Cooperative fill"): each process claims the missing blocks no other
  process is loading.
* Never partial: a segment is built under a temporary name
  (``<key>.<pid>.<random>.tmp``), its space reserved first (see
  :mod:`._budget`), and published by an atomic rename.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import filelock
import numpy as np

from ._budget import ENV_BUDGET, reserve
from ._cache_directory import CacheDirectory, acquire, describe_segment
from ._cache_types import Block, BlockFill
from ._claims import Claim
from ._fill import FileFill
from ._mappings import ATTACH_ATTEMPTS, map_segment, note_access, remember
from ._region import Region, round_up
from ._segment import (
    PAGE,
    RefusedFileError,
    SegmentHeader,
    SegmentSource,
    map_data,
    map_writable,
    new_header,
    open_segment,
    read_block_header,
)
from ._signals import Uninterruptible
from .errors import (
    ArgumentError,
    CacheFullError,
    LockTimeoutError,
    SegmentError,
    SegmentExistsError,
)

__all__ = ["create", "load_once", "map_blocks"]

_log = logging.getLogger("shmstore")

_RELEASE_SECONDS = 1.0  # how long a load waits for a transient holder of its writeable array
_BYTES = np.dtype(np.uint8)

Fill = Callable[[np.ndarray[Any, Any]], object] | FileFill
"""What fills a new segment: a callback given a writeable array, or a :class:`FileFill`."""


def create(
    directory: CacheDirectory,
    budget: int,
    header: SegmentHeader,
    fill: Callable[[np.ndarray[Any, Any]], object] | None,
) -> np.ndarray[Any, Any]:
    """Make the named array *header* describes, under its key's lock; see :meth:`Cache.create`.

    :raises SegmentExistsError: the directory holds a segment of its key already.
    """
    key = header.key
    directory.prepare()
    lock = filelock.FileLock(directory.lock_path(key), mode=0o600)
    acquire(lock)  # loads and creations of this key happen one at a time
    try:
        path = directory.segment_path(key)
        if os.path.lexists(path):
            raise SegmentExistsError(
                f"the cache {directory.path} holds segment {key} already "
                f"({describe_segment(path, key)}): attach it, or unlink it first"
            )
        return _load(directory, budget, header, fill)
    finally:
        lock.release()


def load_once(
    directory: CacheDirectory,
    budget: int,
    header: SegmentHeader,
    fill: Fill,
    *,
    on_load: Callable[[], object] | None,
    timeout: float | None,
    recheck: bool,
) -> np.ndarray[Any, Any]:
    """The segment *header* describes, loaded under its key's lock unless another process did.

    See :meth:`Cache.get` for the arguments and what is raised.
    """
    # The directory may have been removed since (it is made again, 0700), or
    # replaced by a link (refused): checked once per load, not per attach.
    directory.prepare()
    key = header.key
    lock_path = directory.lock_path(key)
    lock = filelock.FileLock(lock_path, mode=0o600, timeout=-1 if timeout is None else timeout)
    try:
        acquire(lock)
    except filelock.Timeout as err:
        raise LockTimeoutError(
            f"waited {timeout} s for another process loading {header.source.describe()} "
            f"(it holds {lock_path}); it is still loading, or hangs"
        ) from err
    try:
        # The process we waited for has most likely loaded it.
        array = map_segment(directory.segment_path(key), key, recheck=recheck)
        if array is not None:
            return array
        if on_load is not None:
            on_load()
        return _load(directory, budget, header, fill)
    finally:
        lock.release()


def _load(
    directory: CacheDirectory, budget: int, header: SegmentHeader, fill: Fill | None
) -> np.ndarray[Any, Any]:
    """Reserve, fill (``None``: leave zeros) and publish the segment *header* describes.

    Called under the key's lock.  The mapping returned is writable for a
    writable named array, read-only otherwise.
    """
    path = directory.segment_path(header.key)
    mapped: list[np.ndarray[Any, Any]] = []

    def map_it(fd: int) -> None:
        # fd still holds the loader's shared lock, so no evictor can take
        # the segment between the rename and this mapping.
        base, array = map_data(fd, header, writable=header.writable)
        remember(path, base, header, os.fstat(fd), header.writable)
        mapped.append(array)

    os.close(_publish(directory, budget, header, fill, map_it))
    return mapped[0]


def _publish(
    directory: CacheDirectory,
    budget: int,
    header: SegmentHeader,
    fill: Fill | None,
    after: Callable[[int], None],
) -> int:
    """Reserve, fill and publish the segment *header* describes; its descriptor.

    Called under the key's lock.  *after* runs right after the rename,
    with SIGINT and SIGTERM still deferred (to map the segment).  The
    descriptor returned holds the loader's shared ``flock``, so no
    evictor can take the segment until the caller has mapped it and
    closed the descriptor.
    """
    key, source = header.key, header.source
    path = directory.segment_path(key)
    temporary = directory.temporary_path(key)
    started = time.monotonic()
    fd = reserve(directory, budget, temporary, header)
    try:
        if isinstance(fill, FileFill):
            writer = fill
            _fill_segment(fd, header, lambda out: writer.write(fd, header.data_offset, out))
        elif fill is not None:
            _fill_segment(fd, header, fill)
        with Uninterruptible():
            # The rename is the publication: before it no process can find
            # the segment, after it every process finds it whole.  Done
            # with SIGINT/SIGTERM deferred, so an interrupted loader has
            # either published and registered its mapping, or nothing.
            try:
                os.rename(temporary, path)
            except OSError as err:
                raise SegmentError(
                    f"cannot publish segment {key} of {source.describe()} in "
                    f"{directory.path} ({err.strerror or err}): the directory was removed "
                    "or made read-only during the load; ask again"
                ) from err
            after(fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        os.close(fd)
        raise
    _log.info(
        "loaded %s into segment %s (%d bytes) in %.3f s",
        source.describe(),
        key,
        header.nbytes,
        time.monotonic() - started,
    )
    return fd


def _fill_segment(
    fd: int, header: SegmentHeader, fill: Callable[[np.ndarray[Any, Any]], object]
) -> None:
    """Map the new segment writeable, let *fill* write it, unmap it.

    :raises SegmentError: *fill* kept a reference to the array, which would
        leave a writeable view on shared pages after publication.
    """
    mapping, target = map_writable(fd, header)
    try:
        fill(target)
    except BaseException:
        del target
        if mapping is not None:
            # The traceback may still hold the array; the pages go with it.
            with contextlib.suppress(BufferError):
                mapping.close()
        raise
    del target
    if mapping is None:
        return
    # A sampling profiler can hold the fill's finished frames, and through them
    # the array, for a moment (distributed samples every task thread's stack
    # every 10 ms): wait that out before concluding that the fill kept it.
    deadline = time.monotonic() + _RELEASE_SECONDS
    while True:
        try:
            mapping.close()
            return
        except BufferError as err:
            if time.monotonic() > deadline:
                raise SegmentError(
                    f"the fill of {header.source.describe()} kept a reference to the array it "
                    "was given; a writeable view of shared pages must not outlive the load, so "
                    "the segment was not published"
                ) from err
            time.sleep(0.001)


# -- blocks ---------------------------------------------------------------------------


def map_blocks(
    directory: CacheDirectory,
    budget: int,
    blocks: Sequence[Block],
    *,
    source: Callable[[Block], SegmentSource],
    fill: Callable[[Block], BlockFill] | None,
    timeout: float | None,
    on_load: Callable[[Block], object] | None,
) -> Region | None:
    """Map *blocks* side by side into one new :class:`Region`; see :meth:`Cache.map_blocks`."""
    if not blocks:
        raise ArgumentError("map_blocks() needs at least one block")
    offsets = [0]
    for b in blocks[:-1]:
        if b.nbytes % PAGE:
            raise ArgumentError(f"block {b.key} of {b.nbytes} bytes is not whole pages")
        offsets.append(offsets[-1] + b.nbytes)
    region = Region(offsets[-1] + round_up(blocks[-1].nbytes), len(blocks))
    missing = []
    for i, b in enumerate(blocks):
        try:
            if _place_block(directory, region, offsets[i], b):
                continue
        except RefusedFileError as err:
            # Never mapped; removed and loaded again under the block's claim.
            _log.debug("%s", err)
        missing.append(i)
    if not missing:
        return region
    if fill is None:
        return None
    needed = sum(PAGE + round_up(b.nbytes) for b in blocks)
    if needed > budget:
        first = source(blocks[0])
        raise CacheFullError(
            f"{first.path}:{first.dataset} rows {first.start}:{source(blocks[-1]).stop} "
            f"need about {needed} bytes of cache, more than its whole budget of "
            f"{budget} bytes ({directory.path}); raise {ENV_BUDGET} or ask for "
            "fewer rows"
        )
    # The directory may have been removed since (it is made again, 0700), or
    # replaced by a link (refused): checked once per load, not per attach.
    directory.prepare()
    directory.fd(recheck=True)

    def load(i: int) -> None:
        _load_block(
            directory,
            budget,
            region,
            offsets[i],
            blocks[i],
            source=source,
            fill=fill,
            on_load=on_load,
        )

    claimed_elsewhere = []
    for i in missing:
        claim = Claim.take(directory.lock_path(blocks[i].key))
        if claim is None:
            claimed_elsewhere.append(i)
            continue
        with claim:
            load(i)
    for i in claimed_elsewhere:
        what = source(blocks[i]).describe()
        with Claim.wait(directory.lock_path(blocks[i].key), timeout, what):
            # Most likely published by the process we waited for; else it died.
            load(i)
    return region


def _load_block(
    directory: CacheDirectory,
    budget: int,
    region: Region,
    offset: int,
    block: Block,
    *,
    source: Callable[[Block], SegmentSource],
    fill: Callable[[Block], BlockFill],
    on_load: Callable[[Block], object] | None,
) -> None:
    """Map *block* at *offset* of *region*, loading it first if absent (under its claim).

    A refused file at the block's name (damaged, planted, wrongly sized)
    is removed first: under the claim no other process publishes this
    block, so the file removed is the one found refused.

    :raises SegmentError: a refused file that cannot be removed, named.
    """
    try:
        if _place_block(directory, region, offset, block):
            return
    except RefusedFileError as err:
        path = directory.segment_path(block.key)
        try:
            owner = os.lstat(path).st_uid
            if owner != os.geteuid():  # as gc: another user's file is never removed
                raise SegmentError(
                    f"{err}; it belongs to uid {owner}, whose files shmstore leaves alone: "
                    f"remove {path} as that user (or root), and the rows are loaded again"
                ) from err
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as gone:
            raise SegmentError(
                f"{err}; it cannot be removed ({gone.strerror or gone}): remove {path} "
                "by hand, and the rows are loaded again"
            ) from gone
        _log.warning("%s; removed it, loading its rows again", err)
    if on_load is not None:
        on_load(block)
    header = new_header(block.key, source(block), _BYTES, (block.nbytes,))
    fd = _publish(
        directory,
        budget,
        header,
        fill(block),
        lambda fd: region.place(fd, offset, header.data_offset, block.nbytes),
    )
    os.close(fd)  # the mapping keeps the file, and with it the shared lock


def _place_block(directory: CacheDirectory, region: Region, offset: int, block: Block) -> bool:
    """Map the published *block* at *offset* of *region*; False if the node holds none.

    :raises SegmentError: the file under its name is unsafe, damaged or
        holds something else than *block*: it is not mapped.
    """
    path = directory.segment_path(block.key)
    for _ in range(ATTACH_ATTEMPTS):
        try:
            fd, st = open_segment(path, shared=True, dir_fd=directory.fd())
        except FileNotFoundError:
            return False
        try:
            if st.st_nlink == 0:
                continue  # unlinked between our open and our lock: look again
            header = read_block_header(fd, st, path, block.key)
            if header.named or header.generation != block.generation or header.block != block.span:
                raise RefusedFileError(
                    f"{path} holds {header.nbytes} bytes of another source than the block "
                    f"{block.key} (bytes {block.span[0]}:{block.span[1]} of generation "
                    f"{block.generation}) its name stands for; it is never mapped: remove it "
                    "(shmstore gc, or Cache.evict)"
                )
            region.place(fd, offset, header.data_offset, header.nbytes)
            note_access(fd, st)
        finally:
            os.close(fd)  # the mapping keeps its own reference, and with it the lock
        return True
    raise SegmentError(
        f"{path} was replaced {ATTACH_ATTEMPTS} times while being mapped; "
        "another process evicts and reloads it in a loop"
    )
