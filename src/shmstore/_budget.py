"""The cache's budget: how many bytes it may take, and making room for a new segment.

Never SIGBUS (``docs/design.md``, "Blocks and identity"): room is made
within the budget, evicting the least recently used segments no process
maps, and the new file's space is reserved with ``posix_fallocate`` before
a byte is written, evicting more if the file system is short; no room is a
:class:`CacheFullError`.  Named arrays count against the budget but are
never evicted to make room (``docs/design.md``, "Named shared arrays").
One process at a time measures, evicts and reserves, under ``budget.lock``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import filelock

from ._cache_directory import (
    ENV_DIRECTORY,
    CacheDirectory,
    Kind,
    Listed,
    Removal,
    acquire,
    describe_segment,
    remove_unused,
)
from ._segment import SegmentHeader, create_segment
from .errors import ArgumentError, CacheFullError, SegmentError

__all__ = [
    "ENV_BUDGET",
    "budget_lock",
    "choose_budget",
    "parse_budget",
    "remove_leftovers",
    "reserve",
]

_log = logging.getLogger("shmstore")

ENV_BUDGET = "SHMSTORE_BUDGET"
_DEFAULT_BUDGET = "50%"
_BUDGET_TEXT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(?:([KMGT])(?:I?B)?|(%)|B)?", re.IGNORECASE)
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_BUDGET_FORMS = (
    "bytes (1000000), a size with K, M, G or T in powers of 1024 (64G, 1.5T), "
    "or a share of the file system holding the cache directory (50%)"
)


def parse_budget(value: int | str, directory: str | os.PathLike[str], what: str = "budget") -> int:
    """The cache budget in bytes that *value* stands for.

    :param value: bytes as an int or a string (``"1000000"``); a size with
        K, M, G or T, powers of 1024 (``"64G"``, ``"64GiB"``, ``"1.5T"``); or a
        percentage of the size of the file system holding *directory*
        (``"50%"``).
    :param what: names the value in the error (``"SHMSTORE_BUDGET"``).
    :raises ArgumentError: (a ``ValueError``) anything else, or not at least 1 byte.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ArgumentError(f"invalid {what} {value!r}: give {_BUDGET_FORMS}")
    if isinstance(value, int):
        if value < 1:
            raise ArgumentError(f"invalid {what} {value}: it must be at least 1 byte")
        return value
    match = _BUDGET_TEXT.fullmatch(value.strip())
    if match is None:
        raise ArgumentError(f"invalid {what} {value!r}: give {_BUDGET_FORMS}")
    number, unit, percent = float(match.group(1)), match.group(2), match.group(3)
    if percent:
        if not 0 < number <= 100:
            raise ArgumentError(f"invalid {what} {value!r}: a percentage must be in (0, 100]")
        vfs = os.statvfs(directory)
        budget = int(vfs.f_blocks * vfs.f_frsize * number / 100)
    else:
        budget = int(number * _UNITS[unit.upper()]) if unit else int(number)
    if budget < 1:
        raise ArgumentError(f"invalid {what} {value!r}: it must come to at least 1 byte")
    return budget


def choose_budget(budget: int | str | None, directory: Path) -> int:
    """The budget in bytes of a cache in *directory*: *budget*, else ``$SHMSTORE_BUDGET``, else 50%.

    :raises ArgumentError: the budget (argument or variable) cannot be read.
    """
    if budget is not None:
        return parse_budget(budget, directory, "cache budget")
    from_env = os.environ.get(ENV_BUDGET, "").strip()
    if from_env:
        return parse_budget(from_env, directory, ENV_BUDGET)
    return parse_budget(_DEFAULT_BUDGET, directory)


@contextlib.contextmanager
def budget_lock(directory: CacheDirectory) -> Iterator[None]:
    """Hold ``budget.lock`` of *directory* (waiting for it).

    One process at a time measures, evicts and reserves, so two loads
    cannot both count the same free bytes; gc holds it too, so it only ever
    sees temporary files whose loader already holds their lock.

    :raises SegmentError: the lock file cannot be made or is a link.
    """
    lock = filelock.FileLock(directory.budget_lock_path(), mode=0o600)
    acquire(lock)
    try:
        yield
    finally:
        lock.release()


def remove_leftovers(directory: CacheDirectory) -> list[str]:
    """Remove the temporary files of loaders that died (their lock died with them).

    Called under the budget lock, so a live loader's file is always locked.

    :returns: the names of the files removed.
    """
    removed = []
    for f in directory.files(Kind.TEMPORARY):
        outcome, why = remove_unused(f.path)
        if outcome is Removal.REMOVED:
            _log.info("removed %s, left by a loader that died", f.name)
            removed.append(f.name)
        elif outcome is Removal.REFUSED:
            _log.warning("left %s alone: %s", f.path, why)
    return removed


def _holders(busy: Sequence[Listed], named: Sequence[Listed] = ()) -> str:
    said = []
    if busy or not named:
        said.append(_listing(busy, "segments in use") if busy else "no cached segment is in use")
    if named:
        said.append(_listing(named, "named arrays (never evicted to make room)"))
    return "; ".join(said)


def _listing(files: Sequence[Listed], what: str) -> str:
    listed = ", ".join(describe_segment(f.path, f.key) for f in files[:8])
    more = f" and {len(files) - 8} more" if len(files) > 8 else ""
    total = sum(f.st.st_size for f in files)
    return f"{len(files)} {what} hold {total} bytes: {listed}{more}"


def reserve(directory: CacheDirectory, budget: int, temporary: str, header: SegmentHeader) -> int:
    """Create *temporary* with its space reserved, evicting unused segments to make room.

    :param budget: bytes the cache may take.
    :returns: its descriptor (see :func:`create_segment`), holding a shared ``flock``.
    :raises CacheFullError: no room in the budget or the file system.
    :raises SegmentError: the file cannot be created (the directory is not writable).
    """
    needed = header.file_size
    what = header.source.describe()
    if needed > budget:
        raise CacheFullError(
            f"{what} needs {needed} bytes of cache, more than its whole budget of "
            f"{budget} bytes ({directory.path}); raise {ENV_BUDGET} or ask for fewer rows"
        )
    with budget_lock(directory):
        remove_leftovers(directory)
        listed = directory.files(Kind.SEGMENT, Kind.STALE, Kind.TEMPORARY)
        used = sum(f.allocated for f in listed)
        # Stale blocks first (no view asks for them again), then by last use.
        oldest_first = iter(
            sorted(
                (f for f in listed if f.kind is not Kind.TEMPORARY),
                key=lambda f: (f.kind is Kind.SEGMENT, f.st.st_atime_ns),
            )
        )
        busy: list[Listed] = []
        named: list[Listed] = []

        def evict_one() -> int | None:
            """Evict the least recently used unmapped cached copy; bytes freed, None if none.

            Named arrays are never evicted to make room.
            """
            for candidate in oldest_first:
                outcome, why = remove_unused(candidate.path, keep_named=True)
                if outcome is Removal.REMOVED:
                    _log.info("evicted segment %s to make room", candidate.key)
                    return candidate.allocated
                if outcome in (Removal.ABSENT, Removal.GONE):
                    return candidate.allocated
                if outcome is Removal.IN_USE:
                    busy.append(candidate)
                elif outcome is Removal.NAMED:
                    named.append(candidate)
                else:
                    _log.warning("cannot evict %s: %s", candidate.path, why)
            return None

        while used + needed > budget:
            freed = evict_one()
            if freed is None:
                raise CacheFullError(
                    f"no room in the cache {directory.path} for {what}: it needs {needed} "
                    f"bytes, the budget is {budget} bytes and {used} are taken; "
                    f"{_holders(busy, named)}. Drop the arrays that map them (or unpin "
                    f"their handles), unlink named arrays no longer needed, or raise "
                    f"{ENV_BUDGET}"
                )
            used -= freed
        while True:
            try:
                return create_segment(temporary, header)
            except OSError as err:
                if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise SegmentError(
                        f"cannot create {temporary} for {what} ({err.strerror or err}): "
                        f"the cache directory must be writable by this user; set "
                        f"{ENV_DIRECTORY} to a directory on a tmpfs it can write"
                    ) from err
                # The budget allows it but the file system is full (other
                # files share it): evict on, then try again.
                if evict_one() is None:
                    free = shutil.disk_usage(directory.path).free
                    raise CacheFullError(
                        f"the file system holding the cache {directory.path} is full: "
                        f"{what} needs {needed} bytes and {free} are free; "
                        f"{_holders(busy, named)}, the rest is taken by other files"
                    ) from err
