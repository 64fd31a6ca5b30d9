"""Making what was written survive a power cut, when a store asks for it (``durable=True``).

``write``/``append``/``delete`` return once their bytes are in the page
cache, which is enough against a ``kill -9`` of the writer.  Against a power
cut or a kernel crash the bytes must reach the disk first: ``fsync`` of the
file, and of its directory where a file was created or removed (the name is
part of the directory).  Off by default: an fsync costs a disk round trip.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["durable_from_env", "fsync_dir", "fsync_file"]


def durable_from_env() -> bool:
    """``SHMSTORE_DURABLE`` as a flag: ``1``, ``true``, ``yes`` or ``on`` turn it on."""
    return os.environ.get("SHMSTORE_DURABLE", "").strip().lower() in ("1", "true", "yes", "on")


def fsync_file(path: Path) -> None:
    """Flush the data and metadata of the file *path* to its disk."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush the directory *path* (its names) to its disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
