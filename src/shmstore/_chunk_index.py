"""Checking a chunked dataset's chunk index before its chunks are read.

HDF5's file format of 1.6 (the one shmstore writes, for its crash
behaviour) keeps no checksum of the B-tree that indexes chunks: a flipped
byte there makes HDF5 read a chunk from the wrong place, or miss it and
return the fill value, without an error (the file fuzzing of
``reliability/`` makes both).  So before rows of a chunked dataset are
served, the index is checked against what a sound one holds:

* every chunk lies inside the file, at chunk-aligned coordinates, once;
* no two chunks share bytes;
* a chunk no compressing filter was applied to has exactly a chunk's size;
* HDF5's lookup of each chunk a read needs (the path a read takes through
  the tree's keys) finds the chunk the index lists (its leaves);
* in a dataset shmstore wrote, the index is the one it wrote: the manifest
  holds a digest of it (``ArrayInfo.chunk_digest``).

A compressed chunk from the wrong place also fails to decode; these checks
catch what decoding cannot (uncompressed chunks, a chunk swapped for
another, a chunk the lookup misses).
"""

from __future__ import annotations

import hashlib
import math
import os
from contextlib import AbstractContextManager
from itertools import pairwise, product
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from h5py import h5z

from ._h5errors import translated
from .errors import InvalidStoreError
from .manifest import ArrayInfo

__all__ = ["check_chunk_index", "check_lookups", "digest", "stored_chunks"]

# Filters that leave a chunk's size as it is (fletcher32 adds its 4-byte checksum).
_SIZE_KEEPING = {h5z.FILTER_SHUFFLE: 0, h5z.FILTER_FLETCHER32: 4}


def stored_chunks(dsid: h5py.h5d.DatasetID) -> list[Any]:
    """Every stored chunk's ``StoreInfo``: offset in the dataset, filter mask, byte offset, size.

    The one listing of a dataset's chunks: the checks here, loads, checksums
    and the byte ranges of :func:`shmstore._hdf5.data_ranges` all use it, so
    each works with every HDF5 that h5py may be built on.
    """
    infos: list[Any] = []
    # chunk_iter is one pass (h5py 3.9+ built on HDF5 1.14+); get_chunk_info(i)
    # is the fallback that every h5py shmstore supports has (3.8 lacks chunk_iter).
    if hasattr(dsid, "chunk_iter"):
        try:
            dsid.chunk_iter(infos.append)
            return infos
        except (RuntimeError, NotImplementedError, AttributeError):
            # h5py has chunk_iter but raises NotImplementedError when the HDF5
            # it was built on is older than 1.14: use the fallback below.
            infos.clear()
    return [dsid.get_chunk_info(index) for index in range(dsid.get_num_chunks())]


def digest(stored: list[Any]) -> str:
    """A digest of a chunk index: every chunk's coordinates, byte offset, size and filter mask.

    The manifest records it when shmstore writes or appends to a chunked
    dataset; :func:`check_chunk_index` compares it with the index on the
    first read of each version.
    """
    rows = sorted(
        (*(int(c) for c in chunk.chunk_offset), chunk.byte_offset, chunk.size, chunk.filter_mask)
        for chunk in stored
    )
    # Unsigned: a damaged index can hold offsets up to 2**64 - 1 (HDF5's
    # "undefined address"); the bytes of every valid index are the same as signed.
    packed = np.array(rows, dtype="<u8").tobytes()
    return hashlib.blake2b(packed, digest_size=16).hexdigest()


def _damaged(what: str, why: str) -> InvalidStoreError:
    return InvalidStoreError(
        f"the chunk index of {what} is damaged: {why}; restore the file from a copy"
    )


def _translated(what: str, why: str) -> AbstractContextManager[None]:
    """h5py's errors inside, as :func:`_damaged` says them; *why* has ``{}`` for h5py's words."""
    return translated(
        InvalidStoreError,
        f"the chunk index of {what} is damaged",
        why=why.format,
        advice="restore the file from a copy",
    )


def _expected_size(dataset: h5py.Dataset, mask: int, chunk_nbytes: int) -> int | None:
    """The stored size of a chunk with filter mask *mask*, or None when it compresses."""
    dcpl = dataset.id.get_create_plist()
    extra = 0
    for index in range(dcpl.get_nfilters()):
        if mask & (1 << index):
            continue  # this filter was skipped for the chunk
        code = dcpl.get_filter(index)[0]
        if code not in _SIZE_KEEPING:
            return None
        extra += _SIZE_KEEPING[code]
    return chunk_nbytes + extra


def check_chunk_index(
    dataset: h5py.Dataset, info: ArrayInfo, path: Path, what: str
) -> dict[tuple[int, ...], Any]:
    """The stored chunks of *dataset* by their coordinates, once they pass the checks above.

    HDF5 removes the chunks outside a dataset's extent when it shrinks, so
    every listed chunk starts inside the extent.

    :raises InvalidStoreError: the index cannot be sound.
    """
    chunks = info.chunks
    if chunks is None:
        return {}
    with _translated(what, "HDF5 cannot list its chunks ({})"):
        stored = stored_chunks(dataset.id)
    if info.chunk_digest is not None and digest(stored) != info.chunk_digest:
        raise _damaged(
            what,
            "its chunks are not where shmstore wrote them (the digest in its record differs)",
        )
    file_size = os.stat(path).st_size
    chunk_nbytes = math.prod(chunks) * info.dtype.itemsize
    seen: dict[tuple[int, ...], Any] = {}
    spans: list[tuple[int, int]] = []
    for chunk in stored:
        coords = tuple(int(c) for c in chunk.chunk_offset)
        offset, size = chunk.byte_offset, chunk.size
        if len(coords) != len(chunks) or any(
            c < 0 or c % k or c >= max(n, 1)
            for c, k, n in zip(coords, chunks, info.shape, strict=True)
        ):
            raise _damaged(
                what,
                f"a chunk is listed at {coords}, not a multiple of the chunk shape {chunks} "
                f"inside the shape {info.shape}",
            )
        if coords in seen:
            raise _damaged(what, f"two chunks are listed at {coords}")
        seen[coords] = chunk
        if offset is None or size <= 0 or offset < 0 or offset + size > file_size:
            raise _damaged(
                what,
                f"the chunk at {coords} is said to lie at bytes {offset}+{size}, "
                f"outside the {file_size}-byte file",
            )
        expected = _expected_size(dataset, chunk.filter_mask, chunk_nbytes)
        if expected is not None and size != expected:
            raise _damaged(
                what,
                f"the uncompressed chunk at {coords} is said to hold {size} bytes, "
                f"a chunk holds {expected}",
            )
        spans.append((offset, offset + size))
    spans.sort()
    for (_, end), (begin, _) in pairwise(spans):
        if begin < end:
            raise _damaged(what, f"two chunks share the bytes from {begin}")
    return seen


def check_lookups(
    dataset: h5py.Dataset,
    info: ArrayInfo,
    index: dict[tuple[int, ...], Any],
    rows: tuple[int, int],
    what: str,
) -> None:
    """Check that HDF5's lookup finds the listed chunk for each chunk of *rows*.

    A read through HDF5 finds a chunk by comparing keys on the way down the
    tree; the listing follows the pointers.  A damaged key makes the two
    disagree, and HDF5 would return the fill value for a chunk that is there
    (the file fuzzing of ``reliability/`` makes it).  ``read_direct_chunk``
    takes the read's own path, so each listed chunk is fetched through it
    and compared: this reads the stored (compressed) bytes once more, which
    costs little next to decoding them.  Loads that decode chunks themselves
    read at the listed offsets and need no such check.

    :param index: :func:`check_chunk_index`'s result.
    :raises InvalidStoreError: HDF5's lookup misses a chunk or finds another.
    """
    start, stop = rows
    chunks = info.chunks
    if chunks is None or start >= stop:
        return
    grid = [range(start // chunks[0] * chunks[0], stop, chunks[0])] + [
        range(0, n, k) for n, k in zip(info.shape[1:], chunks[1:], strict=True)
    ]
    for coords in product(*grid):
        listed = index.get(coords)
        if listed is None:
            continue  # never written: HDF5 reads the fill value, as it should
        with _translated(
            what, f"the chunk at {coords} is listed, but HDF5's lookup misses it ({{}})"
        ):
            mask, data = dataset.id.read_direct_chunk(coords)
        if mask != listed.filter_mask or len(data) != listed.size:
            raise _damaged(
                what,
                f"the chunk at {coords} is listed with {listed.size} bytes, but HDF5's "
                f"lookup finds {len(data)}",
            )
