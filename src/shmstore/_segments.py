"""One shared-memory segment: a self-describing file in the cache directory.

Layout of ``<key>.seg``::

    b"SHMSEG01" | header length (4 bytes, little endian) | JSON header | ... | data
                                                                           ^ data_offset,
                                                                             page aligned

The header (:class:`SegmentHeader`) says what the bytes are (dtype with
field names and byte order, shape) and what they are a copy of (the source
files by identity, dataset, version, rows), so a segment can be mapped
knowing nothing but its key.  This module knows nothing of HDF5.

Locking: a process that maps a segment holds a shared ``flock`` on it.  The
mapping made by ``mmap`` keeps a duplicate of the file descriptor, and
``flock`` belongs to the open file description, so the lock lives exactly as
long as the mapping, and dies with a crashed process.  Eviction takes the
exclusive lock without waiting and removes only what it got.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import mmap
import os
import re
import stat
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, NonNegativeInt, ValidationError

from ._dtype import DType
from .errors import SegmentError

__all__ = [
    "KEY_PATTERN",
    "PAGE",
    "FileIdentity",
    "SegmentHeader",
    "SegmentSource",
    "create_segment",
    "header_bytes",
    "key_of",
    "map_segment",
    "open_checked",
    "read_header",
]

MAGIC = b"SHMSEG01"
_PREFIX = struct.Struct("<8sI")
PAGE = mmap.PAGESIZE
KEY_PATTERN = re.compile(r"^[0-9a-f]{32}$")
_MAX_HEADER = 1 << 20


class FileIdentity(BaseModel):
    """Which version of a file: device, inode, size in bytes, mtime in ns.

    Every write through shmstore changes the size or the mtime of one of a
    dataset's files; a file replaced by another has another inode.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    dev: int
    ino: int
    size: NonNegativeInt
    mtime_ns: int

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> FileIdentity:
        """The identity of *path* now.  :raises FileNotFoundError: it is gone."""
        st = os.stat(path)
        return cls(
            path=os.fspath(path),
            dev=st.st_dev,
            ino=st.st_ino,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
        )


class SegmentSource(BaseModel):
    """What a segment's bytes are a copy of: rows ``[start, stop)`` of a dataset."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    identity: tuple[FileIdentity, ...]
    dataset: str
    version: NonNegativeInt
    start: NonNegativeInt
    stop: NonNegativeInt


class SegmentHeader(BaseModel):
    """The self-description at the start of every segment file."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    format: str = "shmstore-segment"
    format_version: int = 1
    key: str
    dtype: DType
    shape: tuple[NonNegativeInt, ...]
    source: SegmentSource
    created: float
    creator_pid: int
    data_offset: NonNegativeInt
    nbytes: NonNegativeInt


def key_of(source: SegmentSource) -> str:
    """The cache key of *source*: the same on every process for the same source."""
    return hashlib.sha256(source.model_dump_json().encode()).hexdigest()[:32]


def header_bytes(header: SegmentHeader) -> bytes:
    """The prefix and JSON header, as written at the start of the file."""
    text = header.model_dump_json().encode()
    return _PREFIX.pack(MAGIC, len(text)) + text


def _data_offset(header_size: int) -> int:
    return -(-header_size // PAGE) * PAGE


def new_header(
    key: str, source: SegmentSource, dtype: np.dtype[Any], shape: tuple[int, ...]
) -> SegmentHeader:
    """The header of a new segment of *dtype* and *shape* (its data offset included)."""
    draft = SegmentHeader(
        key=key,
        dtype=dtype,
        shape=shape,
        source=source,
        created=time.time(),
        creator_pid=os.getpid(),
        data_offset=0,
        nbytes=math.prod(shape) * dtype.itemsize,
    )
    # The offset's own digits change the header's length: size it for the largest offset.
    room = len(header_bytes(draft.model_copy(update={"data_offset": 1 << 62})))
    return draft.model_copy(update={"data_offset": _data_offset(room)})


def open_checked(path: str | Path, flags: int = os.O_RDONLY) -> tuple[int, os.stat_result]:
    """Open a cache file without following a link, and check it is ours and private.

    :raises FileNotFoundError: no such file.
    :raises SegmentError: a symlink, not a regular file, another owner, or
        readable or writable by group or others.
    """
    try:
        # O_NONBLOCK: a FIFO planted under a segment's name must not hang the open.
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == 40:  # ELOOP: the name is a symbolic link
            raise SegmentError(f"{path} is a symbolic link; cache files must not be") from err
        raise
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "is not a regular file"
    elif st.st_uid != _UID:
        problem = f"belongs to uid {st.st_uid}, not to this user ({os.getuid()})"
    elif st.st_mode & 0o077:
        problem = f"has mode {stat.S_IMODE(st.st_mode):o}, open to group or others (want 600)"
    if problem:
        os.close(fd)
        raise SegmentError(f"refusing cache file {path}: it {problem}")
    return fd, st


_HEADERS: dict[tuple[int, int, int, str], SegmentHeader] = {}
_UID = os.getuid()


def read_header(fd: int, st: os.stat_result, path: str | Path, key: str) -> SegmentHeader:
    """Read and validate the header of the open segment *fd*, which should be *key*'s.

    Published segments never change, so a validated header is remembered per
    (device, inode, size, key) and the next mapping skips the JSON work.  (An
    inode reused by a later segment of the same key holds the same header
    but for its creation time and pid.)

    :raises SegmentError: bad magic, a header that does not validate, or a
        file size that disagrees with it.
    """
    memo = (st.st_dev, st.st_ino, st.st_size, key)
    header = _HEADERS.get(memo)
    if header is not None:
        return header
    prefix = os.pread(fd, _PREFIX.size, 0)
    if len(prefix) < _PREFIX.size:
        raise SegmentError(f"{path} is too short to be a segment ({st.st_size} bytes)")
    magic, length = _PREFIX.unpack(prefix)
    if magic != MAGIC or length > _MAX_HEADER:
        raise SegmentError(f"{path} is not a shmstore segment (bad magic or header length)")
    text = os.pread(fd, length, _PREFIX.size)
    try:
        header = SegmentHeader.model_validate_json(text)
    except ValidationError as err:
        raise SegmentError(f"{path} has an invalid header: {err}") from err
    if header.nbytes != math.prod(header.shape) * header.dtype.itemsize:
        raise SegmentError(
            f"{path}: header size {header.nbytes} disagrees with its shape and dtype"
        )
    if header.data_offset % PAGE or header.data_offset < _PREFIX.size + length:
        raise SegmentError(
            f"{path}: data offset {header.data_offset} is not a page after the header"
        )
    if header.key != key:
        raise SegmentError(f"{path} holds the segment of key {header.key}, not {key}")
    if st.st_size != header.data_offset + header.nbytes:
        raise SegmentError(
            f"{path} holds {st.st_size} bytes, its header says {header.data_offset + header.nbytes}"
        )
    if len(_HEADERS) > 4096:
        _HEADERS.clear()
    _HEADERS[memo] = header
    return header


def map_segment(fd: int, header: SegmentHeader) -> np.ndarray[Any, Any]:
    """A read-only array on the data of the open, shared-locked segment *fd*.

    The caller may close *fd* afterwards: the mapping keeps its own duplicate,
    and with it the shared lock.
    """
    if header.nbytes == 0:
        empty = np.empty(header.shape, dtype=header.dtype)
        empty.flags.writeable = False
        return empty
    mapping = mmap.mmap(
        fd, header.nbytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=header.data_offset
    )
    return np.frombuffer(mapping, dtype=header.dtype).reshape(header.shape)


def create_segment(tmp_path: Path, header: SegmentHeader) -> int:
    """Create *tmp_path* with all its space allocated and its header written.

    Returns its descriptor, holding a shared ``flock``: the loader's lock,
    which tells ``gc`` the file is not a leftover, and which becomes the
    mapping's lock once published.

    :raises OSError: ``ENOSPC`` when the file system has no room (the file is removed).
    """
    fd = os.open(tmp_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        # Reserve every page before a byte is written: a full tmpfs then fails
        # here with ENOSPC instead of a SIGBUS on some later page fault.
        os.posix_fallocate(fd, 0, header.data_offset + header.nbytes)
        os.pwrite(fd, header_bytes(header), 0)
    except BaseException:
        os.close(fd)
        tmp_path.unlink(missing_ok=True)
        raise
    return fd


def writable_map(fd: int, header: SegmentHeader) -> tuple[mmap.mmap | None, np.ndarray[Any, Any]]:
    """A writable array on the data of the segment being built (for the loader's fill)."""
    if header.nbytes == 0:
        return None, np.empty(header.shape, dtype=header.dtype)
    mapping = mmap.mmap(fd, header.nbytes, flags=mmap.MAP_SHARED, offset=header.data_offset)
    return mapping, np.frombuffer(mapping, dtype=header.dtype).reshape(header.shape)


def try_lock(fd: int, exclusive: bool) -> bool:
    """Take the shared or exclusive ``flock`` of *fd* without waiting; False if held."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def clear_header_memo() -> None:
    """Forget remembered headers (after a fork)."""
    _HEADERS.clear()
