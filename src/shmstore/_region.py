"""One contiguous read-only address range made of several files mapped side by side.

A view of rows that span several blocks is one ndarray: the range is
reserved with an anonymous ``PROT_NONE`` mapping, each block file is mapped
``MAP_SHARED | MAP_FIXED`` at its place in it, and the whole range is
unmapped when the last array on it is garbage (``docs/design.md``, "Blocks
and identity").  Python's ``mmap`` module cannot map at a given address, so
this goes through ``ctypes`` to the C library's ``mmap`` and ``munmap``.

A fixed mapping holds a reference to the open file like any other, so the
shared ``flock`` a reader took on a block's descriptor lives exactly as long
as the block is mapped here, after the descriptor is closed too.

This module knows nothing of blocks, HDF5 or the cache directory.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import weakref
from collections.abc import Callable
from typing import Any

from ._segment import PAGE
from .errors import SegmentError

__all__ = ["Region", "memory_of", "round_up"]

_MAP_FIXED = 0x10  # Linux, every architecture; the mmap module does not export it
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)
_MAP_FAILED = ctypes.c_void_p(-1).value

_libc = ctypes.CDLL(None, use_errno=True)
_mmap = _libc.mmap
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int64,  # off_t: 64 bits on every 64-bit Linux
]
_munmap = _libc.munmap
_munmap.restype = ctypes.c_int
_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def round_up(nbytes: int) -> int:
    """*nbytes* rounded up to a whole number of pages."""
    return -(-nbytes // PAGE) * PAGE


_Then = list[Callable[[], object]]

# Weak references whose callbacks run once an mmap is unmapped (see on_release).
_PENDING: set[weakref.ReferenceType[Any]] = set()


def _unmap(address: int, length: int, then: _Then) -> None:
    _munmap(address, length)
    for callback in then:  # after the unmap: the mapping's locks are gone now
        callback()


class Region:
    """An address range of *length* bytes (a whole number of pages) to map *count* files into.

    Place the files with :meth:`place`; :attr:`target` is then the object
    whose life is the mapping's, and :func:`memory_of` gives a read-only
    buffer over all of it from which arrays are made: the range (with every
    file mapped in it, and so their locks) is unmapped when nothing refers
    to the target any more.  One file is mapped with Python's ``mmap``; more
    go side by side into a range reserved with an anonymous ``PROT_NONE``
    mapping.

    :raises SegmentError: the address space cannot be reserved (a process
        address-space limit, ``ulimit -v``).
    """

    def __init__(self, length: int, count: int) -> None:
        if length <= 0 or length % PAGE or count < 1:
            raise ValueError(f"a region is a positive whole number of pages, not {length} bytes")
        self.length = length
        self.target: object = None
        """What arrays on the region keep alive (``None`` until a file is placed)."""
        self._address = 0
        self._then: _Then = []
        if count == 1:
            return
        address = _mmap(
            None,
            length,
            0,  # PROT_NONE: reserved, not accessible
            mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE,
            -1,
            0,
        )
        if address is None or address == _MAP_FAILED:
            raise SegmentError(
                f"cannot reserve {length} bytes of address space for a view "
                f"({os.strerror(ctypes.get_errno())}): the process's address space is limited "
                "(ulimit -v); ask for fewer rows, or raise the limit"
            )
        self._address = address
        buffer = (ctypes.c_char * length).from_address(address)
        # The buffer is what arrays keep alive (through memory_of): when it
        # goes, the range goes.
        weakref.finalize(buffer, _unmap, address, length, self._then)
        self.target = buffer

    def place(self, fd: int, offset: int, file_offset: int, length: int) -> None:
        """Map *length* bytes of *fd* from *file_offset* read-only at *offset* in the range.

        *length* may end inside a page (the file's last): the page is mapped whole.

        :raises SegmentError: the kernel refused the mapping.
        """
        if offset < 0 or offset + length > self.length or offset % PAGE or file_offset % PAGE:
            raise ValueError(
                f"cannot place {length} bytes at {offset} of a {self.length}-byte region"
            )
        if not self._address:
            try:
                self.target = mmap.mmap(
                    fd, length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=file_offset
                )
            except OSError as err:
                raise SegmentError(f"cannot map a cache block ({err.strerror or err})") from err
            return
        address = self._address + offset
        flags = mmap.MAP_SHARED | _MAP_FIXED
        placed = _mmap(address, round_up(length), mmap.PROT_READ, flags, fd, file_offset)
        if placed != address:
            errno = ctypes.get_errno()
            raise SegmentError(f"cannot map a cache block into a view ({os.strerror(errno)})")

    def on_release(self, callback: Callable[[], object]) -> None:
        """Call *callback* once the range is unmapped (after its files are placed).

        After the unmap, so the callback sees the files no longer locked by
        this process.
        """
        if self._address:
            self._then.append(callback)
            return

        # An mmap unmaps before it calls back its weak references.
        def released(ref: weakref.ReferenceType[Any]) -> None:
            _PENDING.discard(ref)
            callback()

        _PENDING.add(weakref.ref(self.target, released))


def memory_of(target: object) -> Any:
    """A read-only buffer over a region's :attr:`Region.target`, keeping it alive."""
    if isinstance(target, mmap.mmap):
        return target  # mapped PROT_READ: its buffer is read-only
    return memoryview(target).toreadonly()  # type: ignore[arg-type]
