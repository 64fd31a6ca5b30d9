"""One shared-memory segment: a self-describing file in the cache directory.

A segment is a copy of rows ``[start, stop)`` of one dataset, named by a key
derived from what it is a copy of (:class:`SegmentSource`).  Its file,
``<key>.seg``, is laid out as::

    offset 0   b"SHMSTSEG"                 8 bytes of magic
    offset 8   header length               4 bytes, unsigned little endian
    offset 12  header checksum             CRC-32 of the JSON header, unsigned little
                                           endian (0: none, written before checksums)
    offset 16  JSON header                 SegmentHeader, UTF-8
    ...        zero padding
    data_offset                            the rows, C order, page aligned

so it can be mapped knowing nothing but its key: the header says what the
bytes are (dtype with its field names and byte order, shape) and what they
are a copy of (the source files by identity, dataset, version, rows).

A *named* segment (header ``named``) is no copy of anything: an array a user
made under a name (``shared_numpy_store.shared_array_from_numpy``), which
the cache never evicts to make room.  One made ``writable`` is mapped
``PROT_READ | PROT_WRITE`` by whoever asks for it writable; every other
segment is only ever mapped read-only.

Locking: a process that maps a segment holds a shared ``flock`` on it.  A
mapping made by ``mmap`` keeps a duplicate of the descriptor, and a
``flock`` belongs to the open file description, so the lock lives exactly as
long as the mapping and dies with a crashed process.  Eviction takes the
exclusive lock without waiting and removes only what it got.

This module knows nothing of HDF5 nor of the cache directory's policies
(budget, eviction): see ``_cache.py``.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import json
import math
import mmap
import os
import re
import stat
import struct
import time
import weakref
import zlib
from typing import Any, Literal, NamedTuple, cast

import numpy as np
from pydantic import BaseModel, ConfigDict, NonNegativeInt, ValidationError, model_validator

from ._dtype import DType
from ._dtype import empty as new_empty
from ._full_write import write_all
from ._identity import Stat, stat_of, unchanged
from .errors import ArgumentError, LockTimeoutError, SegmentError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "KEY_PATTERN",
    "MAGIC",
    "PAGE",
    "SEGMENT_SUFFIX",
    "BlockHeader",
    "FileIdentity",
    "RefusedFileError",
    "SegmentHeader",
    "SegmentSource",
    "check_key",
    "create_segment",
    "encode_header",
    "forget_headers",
    "lock_shared",
    "map_data",
    "map_writable",
    "new_header",
    "open_in_directory",
    "open_segment",
    "read_block_header",
    "read_header",
    "segment_key",
    "try_lock_exclusive",
    "view_of",
]

MAGIC = b"SHMSTSEG"
FORMAT = "shmstore-segment"
FORMAT_VERSION = 1
SEGMENT_SUFFIX = ".seg"
KEY_PATTERN = re.compile(r"[0-9a-f]{32}")
"""A key: 32 lowercase hexadecimal digits (the first 128 bits of a sha256)."""

PAGE = mmap.ALLOCATIONGRANULARITY
"""Alignment of ``data_offset`` in bytes: ``mmap`` offsets must be multiples of it."""

_PREFIX = struct.Struct("<8sI4x")
_CHECKSUM = struct.Struct("<I")  # at offset 12, the reserved bytes of _PREFIX
_MAX_HEADER = 1 << 20  # bytes; a header is a few hundred bytes per source file
_FIRST_READ = 4096  # bytes read at once on attach: prefix and header in one pread
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
# Written into a header only when set, so that copies keep the header they always had.
_NAMED_FIELDS = frozenset({"named", "writable"})


class RefusedFileError(SegmentError):
    """A file at a cache name is not what the name stands for: damaged, planted or unsafe.

    It is never mapped.  Under the key's load lock it may be removed and
    the rows loaded again: nothing valid is lost.
    """


class FileIdentity(BaseModel):
    """Which version of a file: device, inode, size in bytes, mtime in ns.

    Every write through shmstore changes the size or the mtime of one of a
    dataset's files, and a file replaced by another has another inode, so a
    segment whose identities no longer match the files is stale.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    dev: int
    ino: int
    size: NonNegativeInt
    mtime_ns: int

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> FileIdentity:
        """The identity of the file at *path* now (a link is followed, as ``open`` would).

        The path is kept absolute (not resolved), so the identity can be
        checked again from any working directory.

        :raises FileNotFoundError: there is no such file.
        """
        dev, ino, size, mtime_ns = stat_of(path)
        return cls(path=os.path.abspath(path), dev=dev, ino=ino, size=size, mtime_ns=mtime_ns)

    @property
    def stat(self) -> Stat:
        """``(dev, ino, size, mtime_ns)``, as :func:`shmstore._identity.stat_of` gives them."""
        return (self.dev, self.ino, self.size, self.mtime_ns)

    def may_still_hold(self) -> bool:
        """True if :attr:`path` is still this file (device, inode) and no shorter.

        A block stays valid across appends, which only grow a file; a file
        that shrank was truncated or rewritten by something else, so what was
        loaded from it may be gone.
        """
        try:
            dev, ino, size, _ = stat_of(self.path)
        except FileNotFoundError:
            return False
        return (dev, ino) == (self.dev, self.ino) and size >= self.size

    def is_current(self) -> bool:
        """True if the file at :attr:`path` still has this identity (False if it is gone).

        :raises OSError: the file cannot be checked (see :func:`shmstore._identity.unchanged`).
        """
        return unchanged(self.path, self.stat)


class SegmentSource(BaseModel):
    """What a segment's bytes are a copy of: rows ``[start, stop)`` of a dataset.

    :param path: the source file, for display.
    :param identity: the source file and every other file its bytes come
        from (external raw files), as they were when the copy was made.
    :param version: the dataset's version number in its manifest.
    :param generation: for a block (``docs/design.md``, "Blocks and
        identity"), the generation of the dataset it is a copy of.  A
        block's *identity* is the files as they were when it was loaded:
        appends grow them and the block stays valid while they are the same
        files (device and inode).
    :param block: for a block, the bytes ``[lo, hi)`` of the dataset (C
        order) it holds; *start* and *stop* are then the rows these bytes
        touch, for display.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    identity: tuple[FileIdentity, ...]
    dataset: str
    version: NonNegativeInt
    start: NonNegativeInt
    stop: NonNegativeInt
    # Left out of keys and headers when unset, so segments made before blocks
    # keep their keys and headers.
    generation: str | None = None
    block: tuple[NonNegativeInt, NonNegativeInt] | None = None

    @model_validator(mode="after")
    def _rows_ordered(self) -> SegmentSource:
        if self.start > self.stop:
            raise ValueError(f"rows [{self.start}, {self.stop}) end before they start")
        return self

    def describe(self) -> str:
        """``path:dataset[start:stop]``, for messages."""
        return f"{self.path}:{self.dataset}[{self.start}:{self.stop}]"


class SegmentHeader(BaseModel):
    """The self-description at the start of every segment file.

    :param dtype: the dtype of the rows, byte order and field names included.
    :param shape: the shape of the copy (rows first).
    :param created: unix time in seconds of the load.
    :param data_offset: where the rows start in the file, in bytes; a
        multiple of :data:`PAGE`.
    :param nbytes: bytes of rows, ``prod(shape) * dtype.itemsize``.
    :param named: an array made under a name, no copy of a source: never
        evicted to make room (only by ``unlink``, ``evict`` or ``gc`` once no
        process maps it).
    :param writable: a named array processes may map writable.
    """

    # pydantic before 2.7 needs this for the np.dtype field, even with its validators.
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    format: Literal["shmstore-segment"] = "shmstore-segment"
    format_version: Literal[1] = 1
    key: str
    dtype: DType
    shape: tuple[NonNegativeInt, ...]
    source: SegmentSource
    created: float
    creator_pid: int
    data_offset: NonNegativeInt
    nbytes: NonNegativeInt
    named: bool = False
    writable: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> SegmentHeader:
        if self.writable and not self.named:
            raise ValueError("only a named segment can be writable")
        if not KEY_PATTERN.fullmatch(self.key):
            raise ValueError(f"key {self.key!r} is not 32 hexadecimal digits")
        if self.dtype.hasobject:
            raise ValueError(f"dtype {self.dtype} holds Python objects, which cannot be shared")
        if self.nbytes != math.prod(self.shape) * self.dtype.itemsize:
            raise ValueError(
                f"nbytes {self.nbytes} is not shape {self.shape} times itemsize "
                f"{self.dtype.itemsize}"
            )
        if self.data_offset % PAGE or self.data_offset < _PREFIX.size:
            raise ValueError(f"data_offset {self.data_offset} is not a page boundary after 0")
        return self

    @property
    def file_size(self) -> int:
        """Bytes of the whole file: header, padding and data."""
        return self.data_offset + self.nbytes


@functools.lru_cache(maxsize=4096)
def segment_key(source: SegmentSource) -> str:
    """The key of the segment holding a copy of *source*.

    The sha256 of the segment format and the source's canonical JSON (sorted
    keys, no spaces), cut to 32 hexadecimal digits: the same on every process
    and every version of pydantic, for the same source.  The format version
    is hashed too, so a later format never meets this one's files under the
    same name.  Remembered per source: asking again costs a hash of the
    frozen model.
    """
    canonical = json.dumps(
        source.model_dump(mode="json", exclude_none=True), sort_keys=True, separators=(",", ":")
    )
    text = f"{FORMAT}/{FORMAT_VERSION}\n{canonical}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def check_key(key: object) -> str:
    """*key* if it is a well-formed key, so that a file name made from it stays in the directory.

    :raises SegmentError: anything but 32 lowercase hexadecimal digits
        (``"../x"``, ``"a/b"``, an empty string, a non-string).
    """
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise SegmentError(
            f"{key!r} is not a cache key: a key is 32 lowercase hexadecimal digits, "
            "as Cache.key(source) returns"
        )
    return key


def encode_header(header: SegmentHeader) -> bytes:
    """The fixed prefix and the JSON header, as written at offset 0 of the file."""
    unset = {field for field in _NAMED_FIELDS if not getattr(header, field)}
    text = header.model_dump_json(exclude=unset, exclude_none=True).encode()
    prefix = _PREFIX.pack(MAGIC, len(text))
    return prefix[:12] + _CHECKSUM.pack(zlib.crc32(text)) + text


def new_header(
    key: str,
    source: SegmentSource,
    dtype: np.dtype[Any],
    shape: tuple[int, ...],
    *,
    named: bool = False,
    writable: bool = False,
) -> SegmentHeader:
    """The header of a new segment of *dtype* and *shape*, its data offset included.

    :param named: a named array (see :class:`SegmentHeader`), *writable* or not.

    :raises ArgumentError: a negative dimension, a dtype holding Python
        objects, or a dtype of no bytes.
    """
    if any(n < 0 for n in shape):
        raise ArgumentError(f"cannot cache {source.describe()}: shape {shape} has a negative size")
    if dtype.hasobject or dtype.itemsize == 0:
        raise ArgumentError(
            f"cannot cache {source.describe()}: dtype {dtype} "
            + ("holds Python objects" if dtype.hasobject else "has no bytes")
        )
    draft = SegmentHeader(
        key=key,
        dtype=dtype,
        shape=shape,
        source=source,
        created=time.time(),
        creator_pid=os.getpid(),
        data_offset=PAGE,
        nbytes=math.prod(shape) * dtype.itemsize,
        named=named,
        writable=writable,
    )
    # The offset's own digits count in the header's length: size the header for a large one.
    room = len(encode_header(draft.model_copy(update={"data_offset": 1 << 60})))
    return draft.model_copy(update={"data_offset": -(-room // PAGE) * PAGE})


def open_in_directory(path: str, flags: int, mode: int = 0o600) -> int:
    """``os.open(path, flags, mode)``, following a link neither at *path* nor at its directory.

    The directory is opened first with ``O_NOFOLLOW`` and the name opened
    in it, so a cache directory replaced by a link after the ``Cache`` was
    made (and checked) is not followed either.

    :raises OSError: as ``os.open``; ``ENOTDIR`` when the directory is a
        link or not a directory, ``ELOOP`` when *path* is a link.
    """
    directory, name = os.path.split(path)
    dir_fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return os.open(name, flags | os.O_NOFOLLOW, mode, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def open_segment(
    path: str, *, shared: bool = False, writable: bool = False, dir_fd: int | None = None
) -> tuple[int, os.stat_result]:
    """Open the cache file *path*, refusing anything that is not ours and private.

    Read-only, or read-write with *writable* (to map a writable named array).

    ``O_NOFOLLOW`` refuses a symbolic link, there or as the directory
    (:func:`open_in_directory`), ``O_NONBLOCK`` keeps a FIFO
    planted under the name from blocking the open.  Returns the descriptor
    and its ``fstat``.

    :param shared: take the shared ``flock`` (see :func:`lock_shared`)
        before the ``fstat``, so that one ``fstat`` both checks the file and
        shows, by ``st_nlink == 0``, that an evictor unlinked it between
        the open and the lock.  A lock on a refused file is harmless: it is
        released with the descriptor, which is closed.
    :raises FileNotFoundError: no such file.
    :raises SegmentError: a symbolic link (or in a directory that is one), not
        a regular file, a file of another user, or one readable or writable
        by group or others.
    :param dir_fd: the directory, opened already (``O_PATH``, not
        following a link), to open the name in: saves opening it each time.
    :raises LockTimeoutError: *shared*, and an exclusive holder did not let go.
    """
    flags = _OPEN_FLAGS | (os.O_RDWR if writable else os.O_RDONLY)
    try:
        if dir_fd is None:
            fd = open_in_directory(path, flags)
        else:
            fd = os.open(path.rpartition(os.sep)[2], flags | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise RefusedFileError(
                f"refusing cache file {path}: it is a symbolic link; cache files never are "
                "(Cache.gc() removes it)"
            ) from err
        if err.errno == errno.ENOENT:
            raise
        if err.errno == errno.ENOTDIR:
            raise SegmentError(
                f"refusing cache file {path}: its directory is a symbolic link or not a "
                "directory (links are not followed)"
            ) from err
        raise SegmentError(f"cannot open cache file {path}: {err.strerror}") from err
    try:
        if shared:
            lock_shared(fd, path)
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "is not a regular file"
    elif st.st_uid != os.geteuid():
        problem = f"belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()})"
    elif st.st_mode & 0o077:
        problem = f"has mode {stat.S_IMODE(st.st_mode):o}, open to group or others (want 600)"
    if problem is not None:
        os.close(fd)
        raise RefusedFileError(f"refusing cache file {path}: it {problem}; it is never mapped")
    return fd, st


# (st_dev, st_ino, st_size, st_mtime_ns) -> validated header.  A published
# segment never changes, and a later file reusing the inode has another
# mtime, so a header validated once need not be parsed again.
_HEADERS: dict[tuple[int, int, int, int], SegmentHeader] = {}


def read_header(fd: int, st: os.stat_result, path: str, key: str) -> SegmentHeader:
    """Read and check the header of the open segment *fd*, which should hold *key*.

    Checked: the magic, the header validates as :class:`SegmentHeader`, its
    checksum (when recorded) is that of its text, its key is *key*, and the
    file holds exactly ``data_offset + nbytes`` bytes.
    A header is validated once per file and process, then remembered.

    :raises SegmentError: any of these checks fails.
    """
    memo = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    header = _HEADERS.get(memo)
    if header is None:
        header = _parse_header(fd, st, path)
        if len(_HEADERS) >= 4096:
            _HEADERS.clear()
        _HEADERS[memo] = header
    if header.key != key:
        raise RefusedFileError(f"{path} holds the segment of key {header.key}, not {key}")
    return header


def _parse_header(fd: int, st: os.stat_result, path: str) -> SegmentHeader:
    first = os.pread(fd, _FIRST_READ, 0)
    if len(first) < _PREFIX.size:
        raise RefusedFileError(f"{path} is not a shmstore segment: only {st.st_size} bytes")
    magic, length = _PREFIX.unpack_from(first)
    if magic != MAGIC:
        raise RefusedFileError(f"{path} is not a shmstore segment: magic {magic!r}, not {MAGIC!r}")
    if length > _MAX_HEADER:
        raise RefusedFileError(f"{path} is damaged: header length {length} bytes")
    end = _PREFIX.size + length
    text = first[_PREFIX.size : end]
    if len(first) < end:
        text += os.pread(fd, end - len(first), len(first))
    try:
        header = SegmentHeader.model_validate_json(text)
    except ValidationError as err:
        raise RefusedFileError(f"{path} has an invalid header: {err}") from err
    # A flipped byte may leave valid JSON that says something else (another
    # byte order, another source): the checksum tells.
    (checksum,) = _CHECKSUM.unpack_from(first, 12)
    if checksum and checksum != zlib.crc32(text):
        raise RefusedFileError(
            f"{path} is damaged: its header's checksum is {checksum:08x}, its text's "
            f"{zlib.crc32(text):08x}"
        )
    if header.data_offset < end:
        raise RefusedFileError(f"{path} is damaged: its data offset lies inside its header")
    if st.st_size != header.file_size:
        raise RefusedFileError(
            f"{path} is damaged: it holds {st.st_size} bytes, its header says "
            f"{header.file_size} ({header.data_offset} of header, {header.nbytes} of data)"
        )
    return header


class BlockHeader(NamedTuple):
    """The fields of a block's header that mapping it needs (see :func:`read_block_header`)."""

    key: str
    data_offset: int
    nbytes: int
    generation: str | None
    block: tuple[int, int] | None
    named: bool


# Each field a block is matched by appears once in a header: the JSON a loader
# wrote from a validated SegmentHeader, whose CRC-32 says it is unchanged.
# Quotes inside JSON strings are escaped, so no string can fake a field.
_KEY_FIELD = re.compile(rb'"key":"([0-9a-f]{32})"')
_OFFSET_FIELD = re.compile(rb'"data_offset":(\d+)')
_NBYTES_FIELD = re.compile(rb'"nbytes":(\d+)')
_GENERATION_FIELD = re.compile(rb'"generation":"([0-9A-Za-z.]*)"')
_BLOCK_FIELD = re.compile(rb'"block":\[(\d+),(\d+)\]')
_NAMED_FIELD = re.compile(rb'"named":true')

# (st_dev, st_ino, st_size, st_mtime_ns) -> the header of a block file: a
# published block never changes (see _HEADERS).
_BLOCK_HEADERS: dict[tuple[int, int, int, int], BlockHeader] = {}


def read_block_header(fd: int, st: os.stat_result, path: str, key: str) -> BlockHeader:
    """The header of the open segment *fd*, checked without building the pydantic model.

    Mapping a cached block must cost microseconds: this checks the magic,
    the header's CRC-32 (so its text is what the loader wrote from a
    validated :class:`SegmentHeader`), its key, and that the file holds
    exactly ``data_offset + nbytes`` bytes, and reads the few fields a block
    is matched by.  Remembered per file and process, as :func:`read_header`.

    :raises SegmentError: any check fails, or the text is not such a header.
    """
    memo = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    header = _BLOCK_HEADERS.get(memo)
    if header is None:
        header = _parse_block_header(fd, st, path)
        if len(_BLOCK_HEADERS) >= 65536:
            _BLOCK_HEADERS.clear()
        _BLOCK_HEADERS[memo] = header
    if header.key != key:
        raise RefusedFileError(f"{path} holds the segment of key {header.key}, not {key}")
    return header


def _parse_block_header(fd: int, st: os.stat_result, path: str) -> BlockHeader:
    first = os.pread(fd, _FIRST_READ, 0)
    if len(first) < _PREFIX.size or first[:8] != MAGIC:
        raise RefusedFileError(f"{path} is not a shmstore segment")
    _, length = _PREFIX.unpack_from(first)
    end = _PREFIX.size + length
    if length > _MAX_HEADER:
        raise RefusedFileError(f"{path} is damaged: header length {length} bytes")
    text = first[_PREFIX.size : end]
    if len(first) < end:
        text += os.pread(fd, end - len(first), len(first))
    (checksum,) = _CHECKSUM.unpack_from(first, 12)
    if checksum != zlib.crc32(text):
        raise RefusedFileError(f"{path} is damaged: its header's checksum does not match its text")
    key = _KEY_FIELD.search(text)
    offset = _OFFSET_FIELD.search(text)
    nbytes = _NBYTES_FIELD.search(text)
    if key is None or offset is None or nbytes is None:
        raise RefusedFileError(f"{path} has an invalid header: no key, data_offset or nbytes")
    generation = _GENERATION_FIELD.search(text)
    block = _BLOCK_FIELD.search(text)
    header = BlockHeader(
        key=key.group(1).decode(),
        data_offset=int(offset.group(1)),
        nbytes=int(nbytes.group(1)),
        generation=generation.group(1).decode() if generation is not None else None,
        block=(int(block.group(1)), int(block.group(2))) if block is not None else None,
        named=_NAMED_FIELD.search(text) is not None,
    )
    if header.data_offset % PAGE or header.data_offset < end:
        raise RefusedFileError(f"{path} is damaged: data offset {header.data_offset}")
    if st.st_size != header.data_offset + header.nbytes:
        raise RefusedFileError(
            f"{path} is damaged: it holds {st.st_size} bytes, its header says "
            f"{header.data_offset + header.nbytes}"
        )
    return header


def forget_headers() -> None:
    """Forget every remembered header (the next attach of each parses it again)."""
    _HEADERS.clear()
    _BLOCK_HEADERS.clear()


def try_lock_exclusive(fd: int) -> bool:
    """Take the exclusive ``flock`` of *fd* without waiting; False if a mapping holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def lock_shared(fd: int, path: str, timeout: float = 10.0) -> None:
    """Take the shared ``flock`` of *fd*, waiting out an exclusive holder.

    Exclusive holders (eviction, ``entries``, ``gc``) keep it for an
    unlink or a test, microseconds; polling instead of a blocking ``flock``
    bounds the wait should something hold it for good.

    :raises LockTimeoutError: still held exclusively after *timeout* seconds.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        pass
    else:
        return
    deadline = time.monotonic() + timeout
    pause = 50e-6
    while True:
        time.sleep(pause)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise LockTimeoutError(
                    f"{path} stayed locked for eviction for over {timeout} s; a process "
                    "holds its exclusive lock (see `lsof` on it)"
                ) from None
            pause = min(pause * 2, 5e-3)
        else:
            return


def create_segment(path: str, header: SegmentHeader) -> int:
    """Create the file *path* (a temporary name) with all its space reserved and its header.

    Returns its read-write descriptor, which holds a shared ``flock``: the
    loader's mark (``gc`` removes a temporary file only when it gets the
    exclusive lock, that is when its loader is dead), which after the rename
    becomes the lock of the loader's own mapping.

    :raises FileExistsError: *path* exists.
    :raises OSError: ``ENOSPC`` or ``EDQUOT`` when the file system has no
        room; the file is removed.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask: attach refuses anything else
        # Locked before it holds anything: a temporary file without a lock is,
        # to gc and to the next loader, the leftover of a dead loader.
        fcntl.flock(fd, fcntl.LOCK_SH)
        # Reserve every page before a byte is written: a full tmpfs fails here
        # with ENOSPC, instead of a SIGBUS at the first page fault that finds no page.
        os.posix_fallocate(fd, 0, header.file_size)
        write_all(fd, encode_header(header), 0)
    except BaseException:
        try:
            os.unlink(path)
        finally:
            os.close(fd)
        raise
    return fd


def map_writable(fd: int, header: SegmentHeader) -> tuple[mmap.mmap | None, np.ndarray[Any, Any]]:
    """A writeable array on the data of the segment being built, and its mapping.

    The mapping is ``None`` for a segment of no bytes (``mmap`` of length 0
    is illegal); the array is then a private empty one.
    """
    if header.nbytes == 0:
        return None, new_empty(header.shape, header.dtype)
    mapping = mmap.mmap(fd, header.nbytes, flags=mmap.MAP_SHARED, offset=header.data_offset)
    return mapping, np.frombuffer(mapping, dtype=header.dtype).reshape(header.shape)


def map_data(
    fd: int, header: SegmentHeader, *, writable: bool
) -> tuple[object, np.ndarray[Any, Any]]:
    """Map the data of the open, shared-locked segment *fd*, read-only or *writable*.

    Returns the mapping's *base*, the object whose life is the mapping's
    (and the shared lock's), and an array on it.  Arrays made from the
    base with :func:`view_of` keep it alive.  The caller may close *fd*:
    the base holds a duplicate of it.  *writable* needs a descriptor open
    for writing and is for writable named segments only (the caller checks).

    Read-only is ``PROT_READ``: a worker cannot write the shared pages, not
    even through ``ctypes``; numpy marks the array read-only and refuses to
    change that.
    """
    if header.nbytes == 0:
        # No pages to map, but the segment is in use all the same: a duplicate
        # descriptor keeps the shared lock until the array is garbage.  An
        # array that owns its (no) bytes, so that every view keeps it, and
        # the descriptor, alive; viewed as the dtype (see _dtype.empty).
        empty = np.empty(header.shape, dtype=header.dtype)
        empty.flags.writeable = writable
        weakref.finalize(empty, os.close, os.dup(fd))
        return empty, view_of(empty, header)
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    mapping = mmap.mmap(
        fd, header.nbytes, flags=mmap.MAP_SHARED, prot=prot, offset=header.data_offset
    )
    return mapping, view_of(mapping, header)


def view_of(base: object, header: SegmentHeader) -> np.ndarray[Any, Any]:
    """A new array on the mapping *base* made by :func:`map_data` (writable as it is).

    Each caller gets its own array object (changing its ``shape`` or
    ``dtype`` attributes in place affects no one else); all share the pages.
    """
    if isinstance(base, np.ndarray):
        same: np.ndarray[Any, Any] = base.view(header.dtype)
        return same
    array: np.ndarray[Any, Any] = np.ndarray(
        header.shape, dtype=header.dtype, buffer=cast(mmap.mmap, base)
    )
    return array
