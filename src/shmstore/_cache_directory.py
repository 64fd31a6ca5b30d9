"""The cache directory: its file names, its safety checks, listing and safe removal.

Files in the directory (``docs/design.md``, "Blocks and identity"):
``<key>.seg`` (published segments), ``<key>.stale`` (retired blocks still
mapped), ``<key>.lock`` (load locks), ``<key>.<pid>.<hex>.tmp`` (segments
being built; the loader holds a shared ``flock`` on it), ``budget.lock``
(held while space is measured, made and reserved, and by ``gc``).

Nobody else gets in: the directory is 0700 and files 0600, of this user,
checked on every open; links are never followed; keys are validated, so no
name leaves the directory.  A file is removed only under an exclusive
``flock`` taken without waiting (:func:`remove_unused`): a mapping holds a
shared one, so what is in use is never removed.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

import filelock

from ._cache_types import CacheEntry, FileKind
from ._segment import (
    SEGMENT_SUFFIX,
    open_in_directory,
    open_segment,
    read_header,
    try_lock_exclusive,
)
from .errors import SegmentError

__all__ = [
    "ENV_DIRECTORY",
    "CacheDirectory",
    "Kind",
    "Listed",
    "Removal",
    "acquire",
    "default_directory",
    "describe_segment",
    "kind_of",
    "prepare_directory",
    "remove_unused",
]

_log = logging.getLogger("shmstore")

ENV_DIRECTORY = "SHMSTORE_DIR"
_BUDGET_LOCK = "budget.lock"
_LOCK_SUFFIX = ".lock"
_STALE_SUFFIX = ".stale"
_SEGMENT_NAME = re.compile(r"([0-9a-f]{32})\.seg")
_STALE_NAME = re.compile(r"([0-9a-f]{32})\.stale")
_TEMPORARY_NAME = re.compile(r"([0-9a-f]{32})\.[0-9]+\.[0-9a-f]{8}\.tmp")
_LOCK_NAME = re.compile(r"([0-9a-f]{32})\.lock")
_OPEN_ANY = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_POLL_SECONDS = 0.005  # how often a waiter tries a lock another process holds

# (cache directory with a trailing separator, pid) -> the directory opened O_PATH
# (see CacheDirectory.fd).  Keyed by pid: a forked child opens its own.
_DIRECTORY_FDS: dict[tuple[str, int], int] = {}


def default_directory() -> Path:
    """The cache directory when none is given.

    ``$SHMSTORE_DIR``, else ``$JOB_SHMTMPDIR/shmstore`` (the per-job tmpfs of
    SLURM sites that set it), else ``/dev/shm/shmstore-<uid>``.
    """
    chosen = os.environ.get(ENV_DIRECTORY, "").strip()
    if chosen:
        return Path(chosen)
    job = os.environ.get("JOB_SHMTMPDIR", "").strip()
    if job:
        return Path(job) / "shmstore"
    return Path("/dev/shm") / f"shmstore-{os.getuid()}"


class Kind(enum.Enum):
    """What a file of the directory is, by its name (the value is a :data:`FileKind`)."""

    SEGMENT = "segment"
    STALE = "stale block"
    TEMPORARY = "temporary"
    LOCK = "lock"
    BUDGET_LOCK = "budget lock"
    OTHER = "other"

    @property
    def label(self) -> FileKind:
        """The kind as :class:`CacheAction` names it."""
        return self.value


@dataclass(frozen=True)
class Listed:
    """A file found in the directory: its name, path, kind, key and ``lstat``."""

    name: str
    path: str
    kind: Kind
    key: str  # "" for the budget lock and names shmstore does not make
    st: os.stat_result  # lstat

    @property
    def allocated(self) -> int:
        """Bytes of the file system the file takes."""
        return self.st.st_blocks * 512 if stat.S_ISREG(self.st.st_mode) else 0


def kind_of(name: str) -> tuple[Kind, str]:
    """The kind of the file named *name*, and the key in its name (``""`` if none)."""
    for kind, pattern in (
        (Kind.SEGMENT, _SEGMENT_NAME),
        (Kind.STALE, _STALE_NAME),
        (Kind.TEMPORARY, _TEMPORARY_NAME),
        (Kind.LOCK, _LOCK_NAME),
    ):
        match = pattern.fullmatch(name)
        if match is not None:
            return kind, match.group(1)
    return (Kind.BUDGET_LOCK if name == _BUDGET_LOCK else Kind.OTHER), ""


def prepare_directory(directory: Path) -> None:
    """Create *directory* 0700, or check an existing one is this user's and private.

    :raises SegmentError: a symbolic link, not a directory, another user's,
        or it cannot be created.
    """
    try:
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except FileNotFoundError:
            directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                directory.mkdir(mode=0o700)
    except OSError as err:  # a file in the way, a read-only or missing /dev/shm, ...
        raise SegmentError(
            f"cannot create the cache directory {directory} ({err.strerror or err}): set "
            f"{ENV_DIRECTORY} to a directory on a tmpfs this user can write"
        ) from err
    # Checked through a descriptor, so what is checked is what is changed.
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        # O_DIRECTORY | O_NOFOLLOW answers ENOTDIR for a link to a directory too.
        if err.errno in (errno.ELOOP, errno.ENOTDIR) and directory.is_symlink():
            problem = "is a symbolic link (links are not followed: name the real directory)"
        elif err.errno == errno.ENOTDIR:
            problem = "is not a directory"
        else:
            problem = f"cannot be opened ({err.strerror})"
        raise SegmentError(f"the cache directory {directory} {problem}") from err
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise SegmentError(
                f"the cache directory {directory} belongs to uid {st.st_uid}, not to this user "
                f"(uid {os.geteuid()}); set {ENV_DIRECTORY} to a directory of your own"
            )
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            _log.warning(
                "cache directory %s had mode %o, open to group or others; tightened to 700",
                directory,
                mode,
            )
        if mode != 0o700:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def acquire(lock: filelock.BaseFileLock) -> None:
    """Acquire *lock*, translating a link planted under its name and other failures.

    :raises SegmentError: the lock file is a symbolic link (``gc`` removes it),
        or cannot be created or opened (a read-only or vanished directory,
        no permission, something else under its name).
    :raises filelock.Timeout: the lock's timeout passed.
    """
    try:
        # filelock polls a lock another process holds (every 50 ms by
        # default); the budget lock is held for milliseconds and a waiter
        # on a load wants the segment as soon as it is published.
        lock.acquire(poll_interval=_POLL_SECONDS)
    except filelock.Timeout:
        raise
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise SegmentError(
                f"refusing lock file {lock.lock_file}: it is a symbolic link; Cache.gc() removes it"
            ) from err
        raise SegmentError(
            f"cannot lock {lock.lock_file} ({err.strerror or err}): the cache directory must "
            f"be writable by this user; set {ENV_DIRECTORY} to a directory on a tmpfs it can write"
        ) from err


class Removal(enum.Enum):
    """What :func:`remove_unused` did (or, in a dry run, would do)."""

    REMOVED = "removed"
    ABSENT = "no such file"
    GONE = "removed or replaced meanwhile by another process"
    IN_USE = "in use"
    NAMED = "a named array"
    REFUSED = "refused"


def _is_named(fd: int, st: os.stat_result, path: str) -> bool:
    """True when the open segment *fd* is a named array (False when its header is unreadable)."""
    kind, key = kind_of(path.rsplit(os.sep, 1)[-1])
    if kind is not Kind.SEGMENT:
        return False
    try:
        return read_header(fd, st, path, key).named
    except SegmentError:
        return False  # damaged: garbage, whatever it was


def remove_unused(
    path: str, *, dry_run: bool = False, keep_named: bool = False
) -> tuple[Removal, str]:
    """Unlink the cache file *path* if no process holds a ``flock`` on it.

    Returns what happened (with *dry_run*, what would happen, and nothing
    is removed) and, when refused, why.  Never follows a link, never
    removes a file of another user, never waits.  With *keep_named*, a named array
    is kept (looked at under the exclusive lock, so that it is the file
    removed that is no named array).
    """
    try:
        fd = open_in_directory(path, _OPEN_ANY)
    except FileNotFoundError:
        return Removal.ABSENT, ""
    except OSError as err:
        return Removal.REFUSED, f"cannot open it ({err.strerror})"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return Removal.REFUSED, "it is not a regular file"
        if st.st_uid != os.geteuid():
            return Removal.REFUSED, f"it belongs to uid {st.st_uid}, not to this user"
        if not try_lock_exclusive(fd):
            return Removal.IN_USE, ""
        # Unlink only the file we hold locked: the name may have been evicted
        # and loaded again between our open and our lock.
        try:
            now = os.lstat(path)
        except FileNotFoundError:
            return Removal.GONE, ""
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return Removal.GONE, ""
        if keep_named and _is_named(fd, st, path):
            return Removal.NAMED, ""
        if not dry_run:
            try:
                os.unlink(path)
            except FileNotFoundError:
                return Removal.GONE, ""
            except OSError as err:  # a read-only file system, a directory we cannot write
                return Removal.REFUSED, f"cannot remove it ({err.strerror or err})"
        return Removal.REMOVED, ""
    finally:
        os.close(fd)  # releases the exclusive lock, after the unlink


def describe_segment(path: str, key: str) -> str:
    """``key (N bytes, source)`` of a segment for messages, as far as it can be read."""
    try:
        fd, st = open_segment(path)
    except (OSError, SegmentError):
        return key
    try:
        header = read_header(fd, st, path, key)
    except SegmentError:
        return f"{key} ({st.st_size} bytes)"
    finally:
        os.close(fd)
    return f"{key} ({header.nbytes} bytes of {header.source.describe()})"


class CacheDirectory:
    """One cache directory: the paths of a key's files, listing, and the directory's descriptor.

    :param path: the directory, an absolute path (not resolved: its last
        component is checked not to be a link when it is prepared).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.prefix = f"{path}{os.sep}"
        """The directory with a trailing separator: file names are appended to it."""

    def prepare(self) -> None:
        """Create the directory 0700, or check it is this user's and private.

        :raises SegmentError: see :func:`prepare_directory`.
        """
        prepare_directory(self.path)

    def segment_path(self, key: str) -> str:
        """The path of the published segment *key*."""
        return f"{self.prefix}{key}{SEGMENT_SUFFIX}"

    def stale_path(self, key: str) -> str:
        """The path of the retired block *key*."""
        return f"{self.prefix}{key}{_STALE_SUFFIX}"

    def lock_path(self, key: str) -> str:
        """The path of the load lock of *key*."""
        return f"{self.prefix}{key}{_LOCK_SUFFIX}"

    def budget_lock_path(self) -> str:
        """The path of the lock held while space is measured, made and reserved."""
        return f"{self.prefix}{_BUDGET_LOCK}"

    def temporary_path(self, key: str) -> str:
        """A new name, unique to this process, to build the segment *key* under."""
        return f"{self.prefix}{key}.{os.getpid()}.{secrets.token_hex(4)}.tmp"

    def files(self, *kinds: Kind) -> list[Listed]:
        """The files of the directory, sorted by name; only those of *kinds* when given.

        A name is classified before its file is examined: the lock files of
        every key ever loaded pile up until ``gc``, and a load, which lists
        segments, must not pay a ``stat`` for each of them.  A directory
        removed since it was prepared holds no files; the next load makes it
        again.
        """
        listed = []
        try:
            found = os.scandir(self.path)
        except FileNotFoundError:  # removed since (a job's tmpfs went with the job)
            return []
        with found:
            for entry in found:
                kind, key = kind_of(entry.name)
                if kinds and kind not in kinds:
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                listed.append(Listed(entry.name, entry.path, kind, key, st))
        listed.sort(key=lambda f: f.name)
        return listed

    def fd(self, *, recheck: bool = False) -> int:
        """The directory opened ``O_PATH`` (never through a link): once per process.

        Blocks are opened in it by name, so a lookup costs no open of the
        directory, and a directory replaced by a link since is not followed.
        One descriptor per directory and process, kept for the process's
        life.  *recheck* (on a load, after the directory was made again if
        it had been removed) opens it anew if the path names another
        directory now.

        :raises SegmentError: the directory is gone, or a link.
        """
        slot = (self.prefix, os.getpid())
        held = _DIRECTORY_FDS.get(slot)
        if held is not None and recheck:
            try:
                now, same = os.lstat(self.path), os.fstat(held)
                moved = (now.st_dev, now.st_ino) != (same.st_dev, same.st_ino)
            except OSError:
                moved = True
            if moved:
                os.close(_DIRECTORY_FDS.pop(slot))
                held = None
        if held is None:
            try:
                held = os.open(self.path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as err:
                raise SegmentError(
                    f"cannot open the cache directory {self.path} ({err.strerror or err}): "
                    "it is gone, or a link (links are not followed)"
                ) from err
            _DIRECTORY_FDS[slot] = held
        return held

    def entries(self) -> list[CacheEntry]:
        """Every published segment and retired block, sorted by key (see :meth:`Cache.entries`).

        Files that are not valid segments are left out, each with a warning in the log.
        """
        found = []
        for f in self.files(Kind.SEGMENT, Kind.STALE):
            try:
                fd, st = open_segment(f.path)
            except FileNotFoundError:
                continue
            except SegmentError as err:
                _log.warning("entries: ignoring %s", err)
                continue
            try:
                header = read_header(fd, st, f.path, f.key)
                in_use = not try_lock_exclusive(fd)
            except SegmentError as err:
                _log.warning("entries: ignoring %s", err)
                continue
            finally:
                os.close(fd)
            found.append(
                CacheEntry(
                    key=f.key,
                    path=header.source.path,
                    dataset=header.source.dataset,
                    rows=(header.source.start, header.source.stop),
                    nbytes=header.nbytes,
                    in_use=in_use,
                    last_access=st.st_atime_ns / 1e9,
                    created=header.created,
                    named=header.named,
                    writable=header.writable,
                    generation=header.source.generation,
                    block=header.source.block,
                    stale=f.kind is Kind.STALE,
                )
            )
        return found
