"""The values the cache's methods take and return: entries, blocks, actions.

Kept apart from :mod:`._cache` so that the modules doing the cache's work
(``_cache_directory``, ``_cache_load``, ``_cache_gc``) can make and read
them without importing the :class:`~shmstore.Cache` front that calls them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict

from ._fill import FileFill

__all__ = ["Block", "BlockFill", "CacheAction", "CacheEntry", "FileKind", "Outcome"]

FileKind = Literal["segment", "stale block", "temporary", "lock", "budget lock", "other"]
"""What a file of the cache directory is, by its name (see :mod:`._cache_directory`)."""

Outcome = Literal["removed", "would remove", "kept", "left alone", "gone"]
"""What :meth:`Cache.gc` or :meth:`Cache.evict` did with a file (see :class:`CacheAction`)."""


class CacheAction(BaseModel):
    """What :meth:`Cache.gc` or :meth:`Cache.evict` did with one file of the cache, and why.

    :param name: the file's name in the cache directory: ``<key>.seg`` (a
        segment), ``<key>.stale`` (a retired block), ``<key>.lock`` (a load
        lock), ``<key>.<pid>.<hex>.tmp`` (a segment being loaded),
        ``budget.lock``, or a name shmstore does not make.
    :param key: the key of the segment the file belongs to (32 hexadecimal
        digits); ``""`` for ``budget.lock`` and names shmstore does not make.
    :param kind: ``"segment"``, ``"stale block"``, ``"temporary"``,
        ``"lock"``, ``"budget lock"`` or ``"other"``, by the file's name.
    :param outcome: ``"removed"``; ``"would remove"`` (a dry run, which
        removes nothing); ``"kept"`` (a process maps or holds it, or it is
        current); ``"left alone"`` (not shmstore's to remove: another user's,
        not a regular file, a name shmstore does not make, or it cannot be
        removed); ``"gone"`` (no such file: never made, or removed meanwhile
        by another process).
    :param reason: why, in plain words (``"in use: a process maps it"``,
        ``"left by a loader that died"``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    key: str
    kind: FileKind
    outcome: Outcome
    reason: str


class CacheEntry(BaseModel):
    """One published segment, as :meth:`Cache.entries` reports it.

    :param key: the segment's key.
    :param path: the source file the rows are a copy of.
    :param rows: ``(start, stop)``, rows ``[start, stop)`` of *dataset*.
    :param nbytes: bytes of data (the file is a page or so larger).
    :param in_use: some process maps it (it cannot be evicted now).
    :param last_access: unix time in seconds of the last new mapping of it.
    :param created: unix time in seconds of its load.
    :param named: a named array (no copy of a file): never evicted to make room.
    :param writable: a named array processes may map writable.
    :param generation: a block's dataset generation (``None`` for other segments).
    :param block: a block's bytes ``[lo, hi)`` of its dataset (``None`` for other segments).
    :param stale: a block of an old generation or an old tail, still mapped
        by some process: no view finds it, and it goes when unmapped.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    path: str
    dataset: str
    rows: tuple[int, int]
    nbytes: int
    in_use: bool
    last_access: float
    created: float
    named: bool = False
    writable: bool = False
    generation: str | None = None
    block: tuple[int, int] | None = None
    stale: bool = False


class Block(NamedTuple):
    """A block to map: bytes ``[lo, hi)`` of a dataset, under a key.

    :param key: the block's key (made by the sharing layer, ``_sharing.py``).
    :param generation: the generation of the dataset the bytes are of.
    :param span: ``(lo, hi)``, the bytes of the dataset (C order) the block holds;
        a whole number of pages unless it is the last block of a dataset.
    :param number: the block's number in its dataset (``lo // block size``).
    """

    key: str
    generation: str
    span: tuple[int, int]
    number: int

    @property
    def nbytes(self) -> int:
        """Bytes of data."""
        return self.span[1] - self.span[0]


BlockFill = Callable[[np.ndarray[Any, Any]], object] | FileFill
"""A fill callback writing a block's ``uint8`` array, or a :class:`FileFill`."""
