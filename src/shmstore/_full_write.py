"""Writing every byte of a buffer to a file descriptor.

``os.write`` and ``os.pwrite`` may write fewer bytes than asked: a signal
that interrupts a large write, or Linux's limit of about 2 GiB
(``0x7ffff000`` bytes) per call.  Every write of file data in shmstore goes
through :func:`write_all`, which goes on until the last byte is written, in
pieces of at most 1 GiB.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["write_all"]

_PIECE = 1 << 30  # bytes asked of one system call at most: under Linux's limit per call


def write_all(fd: int, data: ReadableBuffer, offset: int | None = None) -> None:
    """Write all of *data* to *fd*: at byte *offset* (``pwrite``), or at its position.

    With *offset* ``None`` the bytes go where the descriptor's position is
    (``write``), and the position moves past them, as for a journal appended to.

    :param data: any C-contiguous buffer; its bytes are written in memory order.
    :raises OSError: the write fails (``ENOSPC``, ``EIO``, ...) or takes no byte;
        some of the bytes may be written.
    """
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        piece = view[done : done + _PIECE]
        written = os.write(fd, piece) if offset is None else os.pwrite(fd, piece, offset + done)
        if not written:
            # A regular file never takes 0 bytes of a non-empty write but when it
            # cannot grow; looping would hang the writer instead of failing it.
            raise OSError(errno.ENOSPC, "no byte of the write was taken")
        done += written
