"""What shmstore wrote last: the identity of an HDF5 file right after its last change.

Blocks are keyed by the generation in each dataset's record, which only
shmstore's own writes keep up to date.  Another tool that writes the file
(h5py, h5repack, a copy over it) changes the file's identity without
touching the records.  So every change through shmstore ends by recording
the file's identity (device, inode, size, mtime in ns) beside it, in
``<file>.written``; a reader trusts the records' generations only while the
file still has that identity and no raw file of the dataset was modified
after it (``docs/design.md``, "Blocks and identity").  Anything else is
treated as a new generation of every dataset in the file.

The record also carries an *epoch*, part of every generation a reader
uses: a writer that finds the file changed by another tool since the
record starts a new epoch before its own change, so the datasets it does
not touch are not taken for unchanged.

Written under the store's write lock, after each change and when a writer
closes the file (HDF5 rewrites its superblock then): a reader that sees a
file changed and the record not yet rewritten takes the change for a
foreign one, which costs a reload and is never stale.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from ._identity import Stat, stat_of

# Stat and stat_of live in _identity.py; the store imports them from here too.
__all__ = ["epoch", "new_epoch", "record", "trusted", "written_path"]

_log = logging.getLogger("shmstore")


class _Written(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["shmstore-written"] = "shmstore-written"
    dev: int
    ino: int
    size: int
    mtime_ns: int
    epoch: str


def written_path(path: Path) -> Path:
    """The record of shmstore's last write of the HDF5 file *path*."""
    return path.with_name(path.name + ".written")


def _read(path: Path) -> _Written | None:
    try:
        return _Written.model_validate_json(written_path(path).read_bytes())
    except (OSError, ValidationError):
        return None


def new_epoch() -> str:
    """A new epoch: every dataset of the file starts a new generation with it."""
    return secrets.token_hex(4)


def epoch(path: Path) -> str:
    """The epoch a writer about to change *path* continues: the recorded one, or a new one.

    Called under the write lock before the file is touched.  If the file is
    not as shmstore left it (another tool wrote it, or no shmstore of this
    version did), nothing tells which datasets changed, so every one starts
    a new generation: a new epoch.
    """
    written = _read(path)
    try:
        now = stat_of(path)
    except OSError:
        return new_epoch()
    if written is None or now != (written.dev, written.ino, written.size, written.mtime_ns):
        return new_epoch()
    return written.epoch


def record(path: Path, epoch: str) -> None:
    """Record the identity *path* has now as shmstore's last write (atomically), and *epoch*.

    A failure is logged, not raised: without the record, readers treat the
    file as changed by another tool, which is safe.
    """
    target = written_path(path)
    temporary = target.with_name(f"{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        dev, ino, size, mtime_ns = stat_of(path)
        text = _Written(
            dev=dev, ino=ino, size=size, mtime_ns=mtime_ns, epoch=epoch
        ).model_dump_json()
        temporary.write_text(text)
        os.replace(temporary, target)
    except OSError as err:
        with contextlib.suppress(OSError):
            temporary.unlink()
        _log.warning(
            "%s: cannot record shmstore's write in %s (%s); caches will reload its datasets",
            path,
            target,
            err,
        )


def trusted(path: Path, stats: Sequence[Stat]) -> str | None:
    """The epoch, when shmstore wrote the file last (its records' generations hold), else None.

    :param stats: the identity of the HDF5 file, then of the raw files of
        one dataset, as they are now.  The HDF5 file must have the identity
        recorded; a raw file may not have been modified after it (shmstore
        writes raw files before the HDF5 file's last change).
    """
    written = _read(path)
    if written is None or stats[0] != (written.dev, written.ino, written.size, written.mtime_ns):
        return None
    if any(mtime_ns > written.mtime_ns for _, _, _, mtime_ns in stats[1:]):
        return None
    return written.epoch
