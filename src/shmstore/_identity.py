"""A file's identity, and whether the file at a path still has it.

A file's identity is ``(st_dev, st_ino, st_size, st_mtime_ns)``: every
write through shmstore changes the size or the mtime of one of a dataset's
files, and a file replaced by another has another inode.  A copy of a file's
bytes is current while the file has the identity it had when they were
read (``docs/design.md``, "Blocks and identity").

This is on the hot path of every view of a handle: one ``os.stat`` per
file, no pydantic, no HDF5.
"""

from __future__ import annotations

import os

__all__ = ["Stat", "stat_of", "unchanged"]

Stat = tuple[int, int, int, int]
"""``(st_dev, st_ino, st_size, st_mtime_ns)`` of a file."""


def stat_of(path: str | os.PathLike[str]) -> Stat:
    """The identity of the file at *path* now (a link is followed, as ``open`` would).

    :raises OSError: as ``os.stat`` (``FileNotFoundError`` when there is no such file).
    """
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def unchanged(path: str | os.PathLike[str], seen: Stat) -> bool:
    """True if the file at *path* still has the identity *seen*; False if it is gone.

    :raises OSError: the file cannot be checked for another reason than its
        absence (a directory without search permission, an I/O error): the
        caller decides what that means.
    """
    try:
        return stat_of(path) == seen
    except FileNotFoundError:
        return False
