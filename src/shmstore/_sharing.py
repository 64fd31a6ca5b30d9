"""Sharing: rows of a dataset as the cache blocks that cover them, and one array over them.

A dataset's bytes (C order) are cut into blocks of a fixed size (a whole
number of pages, and of chunk rows for chunked datasets when that is not
much larger; ``SHMSTORE_BLOCK``).  A view of rows ``[a, b)`` maps the blocks
over bytes ``[a * row, b * row)`` side by side (``_region.py``) and is one
read-only ndarray on them (``docs/design.md``, "Blocks and identity").

A block's key is made of the dataset's identity (its file's path and its
name: the key's first 16 hex digits, so the blocks of one dataset are found
by name) and of its generation and bytes.  The generation is the one in the
dataset's record while shmstore wrote the file last (``_written.py``), else
one made from the identities of the files, so a change by another tool is
never served stale.  Appends keep the generation: full blocks stay valid and
only the last, partial block is replaced.

What a process knows of a dataset (:class:`Described`) is what the hot path
needs: a ``stat`` of each source file tells that it still holds, and the
keys follow by arithmetic; no HDF5 call, no pydantic model.

This module knows nothing of HDF5: the store describes datasets and makes
the fills.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from ._cache import Block, BlockFill, Cache, parse_budget
from ._identity import Stat, unchanged
from ._region import memory_of
from ._segment import FORMAT, PAGE, FileIdentity, SegmentSource
from .errors import ArgumentError

__all__ = [
    "DEFAULT_BLOCK",
    "ENV_BLOCK",
    "Described",
    "Fill",
    "adopt_plan",
    "block_keys",
    "block_nbytes",
    "block_target",
    "carried_plan",
    "drop_stale",
    "note",
    "retire_dataset",
    "view_rows",
]

ENV_BLOCK = "SHMSTORE_BLOCK"
DEFAULT_BLOCK = 64 << 20
"""Bytes per block unless ``SHMSTORE_BLOCK`` says otherwise (see ``docs/design.md``)."""
_UNALIGNED_LIMIT = 4  # a chunk-aligned block may be this many times the target, no more
_PLANS = 256  # row ranges remembered per description

Fill = BlockFill


@functools.lru_cache(maxsize=16)
def _parse_block(text: str) -> int:
    if "%" in text:
        raise ArgumentError(f"invalid {ENV_BLOCK} {text!r}: give bytes, or a size such as 64M")
    return max(PAGE, parse_budget(text, "/", ENV_BLOCK) // PAGE * PAGE)


def block_target() -> int:
    """The block size asked for, in bytes: ``$SHMSTORE_BLOCK`` (``64M``, bytes), else 64 MiB.

    :raises ArgumentError: the variable cannot be read as a size.
    """
    text = os.environ.get(ENV_BLOCK, "").strip()
    return _parse_block(text) if text else DEFAULT_BLOCK


def block_nbytes(row_nbytes: int, chunk_rows: int | None, target: int) -> int:
    """Bytes per block of a dataset: whole pages; whole chunk rows when that costs little.

    :param chunk_rows: rows per chunk of a chunked dataset (``None`` otherwise):
        a block boundary inside a chunk would make two blocks decode it.
    """
    unit = PAGE if chunk_rows is None else math.lcm(chunk_rows * row_nbytes, PAGE)
    if unit <= target:
        return target // unit * unit
    if unit <= _UNALIGNED_LIMIT * target:
        return unit
    return target  # chunks this large and odd: some are decoded by two blocks


# The first SHA-256 of a process is slow (OpenSSL sets itself up): paid here,
# at import, rather than by a worker's first view.
hashlib.sha256(b"")


@functools.lru_cache(maxsize=4096)
def _prefix(path: str, dataset: str) -> str:
    return hashlib.sha256(f"{FORMAT}/dataset\n{path}\n{dataset}".encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=65536)
def _key(prefix: str, generation: str, block: int, lo: int, hi: int) -> str:
    text = f"{FORMAT}/block\n{generation}\n{block}\n{lo}\n{hi}"
    return prefix + hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Described:
    """What a process knows of a dataset to serve its rows from blocks.

    :param files: the HDF5 file, then the dataset's raw files, absolute.
    :param stats: their identities when the generation was decided.
    :param generation: the record's generation when *trusted*, else one
        made from *stats* (the file was changed by another tool).
    :param block: bytes per block.
    """

    path: str
    dataset: str
    files: tuple[str, ...]
    stats: tuple[Stat, ...]
    generation: str
    trusted: bool
    version: int
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    block: int
    # The blocks of row ranges asked for (see _plan): a cache, not part of what it is.
    plans: dict[tuple[int, int], _Plan] = field(
        default_factory=dict, compare=False, repr=False, hash=False
    )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["plans"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @classmethod
    def of(
        cls,
        *,
        path: str,
        dataset: str,
        files: tuple[str, ...],
        stats: tuple[Stat, ...],
        generation: str | None,
        version: int,
        dtype: np.dtype[Any],
        shape: tuple[int, ...],
        block: int,
    ) -> Described:
        """Describe a dataset; *generation* is its record's, if shmstore wrote the file last."""
        trusted = generation is not None
        if generation is None:
            text = f"{stats}\n{version}"
            generation = "f" + hashlib.sha256(text.encode()).hexdigest()[:16]
        return cls(path, dataset, files, stats, generation, trusted, version, dtype, shape, block)

    @functools.cached_property
    def prefix(self) -> str:
        """The first 16 hex digits of the keys of every block of this dataset."""
        return _prefix(self.path, self.dataset)

    @functools.cached_property
    def row_nbytes(self) -> int:
        """Bytes per row."""
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        """Bytes of the whole dataset."""
        return self.shape[0] * self.row_nbytes

    def current(self) -> bool:
        """True while every file still has the identity seen (one ``stat`` each)."""
        try:
            for path, seen in zip(self.files, self.stats, strict=True):
                if not unchanged(path, seen):
                    return False
        except OSError:
            return False  # cannot be checked: taken for changed
        return True

    def span(self, index: int) -> tuple[int, int]:
        """Bytes ``[lo, hi)`` of the dataset that block *index* holds."""
        lo = index * self.block
        return lo, min(lo + self.block, self.nbytes)

    def source(self, index: int) -> SegmentSource:
        """What block *index* is a copy of (for its header)."""
        lo, hi = self.span(index)
        row = self.row_nbytes
        # gc removes a block whose files are gone or replaced.
        identity = tuple(
            FileIdentity(path=f, dev=dev, ino=ino, size=size, mtime_ns=mtime_ns)
            for f, (dev, ino, size, mtime_ns) in zip(self.files, self.stats, strict=True)
        )
        return SegmentSource(
            path=self.path,
            identity=identity,
            dataset=self.dataset,
            version=0,  # appends keep a block valid: the version is not part of it
            start=lo // row,
            stop=-(-hi // row),
            generation=self.generation,
            block=(lo, hi),
        )

    def is_stale(self, generation: str | None, span: tuple[int, int]) -> bool:
        """True for a block of this dataset (of *generation*, bytes *span*) no view asks for again.

        Of another generation, or an old last block (a tail an append has
        grown since).  Blocks that cannot be of this block size are left
        alone (another process may use another size; one whose blocks look
        like old tails of this size is taken for them: reloaded, never stale).
        """
        if generation != self.generation:
            return True
        lo, hi = span
        if lo % self.block or (hi - lo) > self.block:
            return False
        return hi != min(lo + self.block, self.nbytes)


# (cache directory, block keys) -> this process's region mapping them (weakly:
# the arrays keep it alive).  A second view of the same blocks reuses it.
_REGIONS: dict[tuple[str, ...], weakref.ReferenceType[Any]] = {}


# (region's slot, byte offset, items) -> an array this process made on it: a
# repeated view of the same rows is a view of that array (no buffer to make).
_ARRAYS: dict[tuple[tuple[str, ...], int, int], weakref.ReferenceType[Any]] = {}


def _forget_regions_after_fork() -> None:
    # A forked child inherits its parent's mappings, but their locks belong to
    # open file descriptions the parent shares: the child maps afresh.
    _REGIONS.clear()
    _ARRAYS.clear()


os.register_at_fork(after_in_child=_forget_regions_after_fork)


def _remember(table: dict[Any, weakref.ReferenceType[Any]], slot: Any, target: object) -> None:
    def forget(ref: weakref.ReferenceType[Any]) -> None:
        if table.get(slot) is ref:
            table.pop(slot, None)

    table[slot] = weakref.ref(target, forget)


def _after_unmap(cache: Cache, described: Described, keys: tuple[str, ...]) -> None:
    """Once this process unmaps blocks: remove them if retired and no process maps them.

    Only when this process has seen the dataset change since (its blocks
    were then retired, see :func:`drop_stale`): a look at the directory on
    every unmap would cost each view a system call per block.
    """
    if _SEEN.get((described.path, described.dataset)) != (described.generation, described.nbytes):
        cache.remove_retired(keys)


def _empty(described: Described, rows: int) -> np.ndarray[Any, Any]:
    array = np.empty((rows, *described.shape[1:]), dtype=described.dtype)
    array.flags.writeable = False
    return array


class _Plan(NamedTuple):
    """Rows ``[start, stop)`` of a dataset as blocks: what every view of them computes."""

    slot: tuple[str, ...]  # the blocks' keys
    blocks: tuple[Block, ...]
    offset: int  # bytes from the first block's start to row *start*
    items: int  # items of the dtype
    shape: tuple[int, ...]


def _plan(described: Described, start: int, stop: int) -> _Plan:
    """The blocks of rows ``[start, stop)`` (some), remembered per description."""
    plans = described.plans
    plan = plans.get((start, stop))
    if plan is not None:
        return plan
    row, size = described.row_nbytes, described.block
    lo, hi = start * row, stop * row
    first, last = lo // size, -(-hi // size)
    prefix, generation = described.prefix, described.generation
    blocks = tuple(
        Block(_key(prefix, generation, size, *described.span(i)), generation, described.span(i), i)
        for i in range(first, last)
    )
    plan = _Plan(
        slot=tuple(b.key for b in blocks),
        blocks=blocks,
        offset=lo - first * size,
        items=(stop - start) * (row // described.dtype.itemsize),
        shape=(stop - start, *described.shape[1:]),
    )
    if len(plans) >= _PLANS:
        plans.clear()
    plans[(start, stop)] = plan
    return plan


_CARRIED_BLOCKS = 4  # a handle carries its rows' keys when they are this few blocks


def carried_plan(described: Described, start: int, stop: int) -> _Plan | None:
    """The blocks of rows ``[start, stop)`` for a handle to carry to a worker, if few.

    A worker's first view then computes no key: a process's first SHA-256
    costs several times a cached view's whole cost.
    """
    if stop <= start or described.row_nbytes == 0:
        return None
    plan = _plan(described, start, stop)
    return plan if len(plan.blocks) <= _CARRIED_BLOCKS else None


def adopt_plan(described: Described, start: int, stop: int, plan: _Plan) -> None:
    """Remember *plan* (from :func:`carried_plan`) as the blocks of rows ``[start, stop)``."""
    described.plans[(start, stop)] = plan


def block_keys(described: Described, start: int, stop: int) -> tuple[str, ...]:
    """The keys of the blocks holding rows ``[start, stop)`` (none for no bytes)."""
    if stop <= start or described.row_nbytes == 0:
        return ()
    return _plan(described, start, stop).slot


def view_rows(
    cache: Cache,
    described: Described,
    start: int,
    stop: int,
    fill: Callable[[int, int], Fill] | None,
    *,
    timeout: float | None = None,
    on_load: Callable[[Block], object] | None = None,
) -> np.ndarray[Any, Any] | None:
    """A read-only array of rows ``[start, stop)``, on the node's blocks; ``None`` if absent.

    :param fill: makes the fill of the bytes ``[lo, hi)`` of the dataset,
        for the blocks this process loads; ``None`` maps only what the node
        holds, and returns ``None`` when a block is missing.
    :raises CacheFullError, LockTimeoutError, SegmentError: as :meth:`Cache.map_blocks`.
    """
    if stop <= start or described.row_nbytes == 0:
        return _empty(described, max(stop - start, 0))
    plan = _plan(described, start, stop)
    slot = (cache.prefix, *plan.slot)
    made = _ARRAYS.get((slot, plan.offset, plan.items))
    array: np.ndarray[Any, Any] | None = made() if made is not None else None
    if array is None:
        ref = _REGIONS.get(slot)
        target = ref() if ref is not None else None
        if target is None:
            region = cache.map_blocks(
                plan.blocks,
                source=lambda block: described.source(block.number),
                fill=None if fill is None else lambda block: fill(*block.span),
                timeout=timeout,
                on_load=on_load,
            )
            if region is None:
                return None
            target = region.target
            _remember(_REGIONS, slot, target)
            region.on_release(functools.partial(_after_unmap, cache, described, plan.slot))
        flat = np.frombuffer(
            memory_of(target), dtype=described.dtype, count=plan.items, offset=plan.offset
        )
        array = flat.reshape(plan.shape)
        _remember(_ARRAYS, (slot, plan.offset, plan.items), array)
    # Each caller its own ndarray (it may reshape it), on the same pages.
    mine: np.ndarray[Any, Any] = array.view()
    return mine


# (file, dataset) -> (generation, bytes) this process last described: a new
# state means blocks of an older one may be left in the cache.
_SEEN: dict[tuple[str, str], tuple[str, int]] = {}


def note(described: Described) -> bool:
    """Remember *described*; True if this process had not seen the dataset so before."""
    slot, state = (described.path, described.dataset), (described.generation, described.nbytes)
    if _SEEN.get(slot) == state:
        return False
    _SEEN[slot] = state
    return True


def retire_dataset(cache: Cache, path: str, dataset: str) -> list[str]:
    """Retire every block of *dataset* of the file *path* (it was deleted)."""
    return cache.drop_blocks(_prefix(path, dataset), lambda generation, span: True)


def drop_stale(cache: Cache, described: Described) -> list[str]:
    """Unlink the node's blocks of this dataset that no view will ask for again.

    See :meth:`Described.is_stale` and :meth:`Cache.drop_blocks`.
    """
    return cache.drop_blocks(described.prefix, described.is_stale)
