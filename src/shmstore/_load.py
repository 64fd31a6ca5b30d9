"""Filling a shared buffer with rows of a chunked dataset, straight into the segment.

The cache hands the loader a writeable array mapped on the new segment; the
rows are written into it directly, never through a private copy of the
slice, so a loader's own memory stays small next to the slice.  (Contiguous
and external datasets are one block of one file: the kernel copies them,
see :mod:`._fill`.)

* :func:`chunk_filler`: when shmstore can decode every filter of the
  dataset itself (deflate, shuffle, and zstd with the ``zstandard`` package),
  threads read the stored chunks with ``pread`` at the offsets HDF5 reports
  and decode them into the mapping in parallel.  HDF5 decodes under one
  global lock, so its own reading cannot use a second core.
* :func:`dataset_filler` otherwise: h5py's ``read_direct`` into the mapping,
  a block of rows at a time, so HDF5's conversion buffers stay at a block.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any, cast

import h5py
import numpy as np

from ._chunk_index import stored_chunks
from ._dtype import empty as new_empty
from ._fill import FileFill, progress, worker_count
from ._full_write import write_all
from ._h5errors import translated
from ._hdf5 import as_stored, missing_filters
from ._integrity import Verifier, chunk_number
from .errors import InvalidStoreError
from .manifest import ArrayInfo

__all__ = ["BLOCK_BYTES", "block_filler", "check_chunks", "chunk_filler", "dataset_filler"]

BLOCK_BYTES = 64 << 20
"""Bytes per ``read_direct`` of :func:`dataset_filler`: the progress step."""

_DEFLATE = h5py.h5z.FILTER_DEFLATE
_SHUFFLE = h5py.h5z.FILTER_SHUFFLE
_ZSTD = 32015  # the registered HDF5 filter id of zstd (hdf5plugin.Zstd)
_SIMPLE_KINDS = frozenset("biufc")


def dataset_filler(
    dataset: h5py.Dataset, info: ArrayInfo, start: int, what: str
) -> Callable[[np.ndarray[Any, Any]], None]:
    """A fill callback reading rows ``start, start + len(out)`` of *dataset* into ``out``.

    :raises InvalidStoreError: (when called) HDF5 cannot read or decode the rows.
    """

    def fill(out: np.ndarray[Any, Any]) -> None:
        rows = len(out)
        step = max(1, BLOCK_BYTES // max(info.row_nbytes, 1))
        with (
            translated(
                InvalidStoreError,
                f"reading {what} failed",
                why=lambda err: missing_filters(dataset) or str(err),
                errors=(OSError, RuntimeError, ValueError),
            ),
            progress(out.nbytes, what) as bar,
        ):
            for first in range(0, rows, step):
                last = min(rows, first + step)
                dataset.read_direct(
                    as_stored(out),
                    source_sel=np.s_[start + first : start + last],
                    dest_sel=np.s_[first:last],
                )
                bar.update((last - first) * info.row_nbytes)

    return fill


# -- decoding chunks ourselves ---------------------------------------------------------


def _zstd_decoder(nbytes: int) -> Callable[[bytes], bytes] | None:
    """A zstd decoder of chunks of *nbytes* bytes, or ``None`` without the ``zstandard`` package.

    The HDF5 filter's frames need not record their decoded size, so the
    decoder is told it; a frame that records more than a chunk's bytes is
    damaged, and refused before zstd allocates what it records.  One
    decompressor per thread: they are not shared safely.

    The decoder raises ``ValueError`` for a damaged chunk (zstd's own
    ``ZstdError`` chained to it), as :func:`_decode` expects of every stage.
    """
    try:
        import zstandard
    except ImportError:
        return None
    local = threading.local()

    def decode(data: bytes) -> bytes:
        decompressor = getattr(local, "decompressor", None)
        if decompressor is None:
            decompressor = local.decompressor = zstandard.ZstdDecompressor()
        try:
            recorded = zstandard.frame_content_size(data)  # -1: not recorded
            if recorded > nbytes:
                raise ValueError(f"its zstd frame records {recorded} bytes, a chunk holds {nbytes}")
            return cast(bytes, decompressor.decompress(data, max_output_size=nbytes))
        except zstandard.ZstdError as err:
            raise ValueError(str(err)) from err

    return decode


@dataclass(frozen=True)
class _Stage:
    """One filter of the pipeline, undone by *decode*.

    *decode* takes the stored bytes and returns them decoded; damaged bytes
    make it raise ``zlib.error`` or ``ValueError``, which :func:`_decode`
    reports as a damaged chunk (any other exception is a bug, and surfaces).

    Shuffle has no *decode*: it is undone into the segment itself (it is
    the first filter applied, so the last undone), see :func:`_place`.
    """

    filter_id: int
    decode: Callable[[bytes], bytes] | None = None
    itemsize: int = 0


def _unshuffle_into(data: bytes, itemsize: int, target: np.ndarray[Any, Any]) -> None:
    """Undo HDF5's shuffle of *data* into the C-contiguous *target*.

    Shuffle stores byte ``j`` of element ``i`` at ``j * n + i``: the bytes
    are ``itemsize`` planes of ``n``.  One strided copy per plane is several
    times faster than numpy's transpose of the planes.
    """
    planes = np.frombuffer(data, dtype=np.uint8)
    count = len(planes) // itemsize
    flat = target.reshape(-1).view(np.uint8)
    elements = flat[: count * itemsize].reshape(count, itemsize)
    for plane, values in enumerate(planes[: count * itemsize].reshape(itemsize, count)):
        elements[:, plane] = values
    flat[count * itemsize :] = planes[count * itemsize :]  # a tail of < itemsize bytes stays


def _pipeline(dataset: h5py.Dataset) -> list[_Stage] | None:
    """The stages that undo *dataset*'s filters, in the order they were applied; ``None``
    when one of them is not one shmstore decodes."""
    dcpl = dataset.id.get_create_plist()
    chunk_nbytes = int(np.prod(dataset.chunks)) * dataset.dtype.itemsize
    stages: list[_Stage] = []
    for index in range(dcpl.get_nfilters()):
        filter_id, _, values, _ = dcpl.get_filter(index)
        if filter_id == _DEFLATE:
            # Told the decoded size, zlib allocates its output once instead of growing it.
            stages.append(
                _Stage(filter_id, functools.partial(zlib.decompress, bufsize=chunk_nbytes))
            )
        elif filter_id == _SHUFFLE and index == 0:
            itemsize = values[0] if values else dataset.dtype.itemsize
            stages.append(_Stage(filter_id, itemsize=int(itemsize)))
        elif filter_id == _ZSTD and (zstd := _zstd_decoder(chunk_nbytes)) is not None:
            stages.append(_Stage(filter_id, zstd))
        else:
            return None
    return stages


def chunk_filler(
    dataset: h5py.Dataset,
    info: ArrayInfo,
    start: int,
    path: Path,
    what: str,
    *,
    index: dict[tuple[int, ...], Any] | None = None,
    verifier: Verifier | None = None,
) -> ChunkWriter | None:
    """A fill decoding the chunks of rows ``start, start + len(out)`` in threads.

    ``None`` when shmstore cannot decode *dataset* itself: not chunked, a
    filter other than deflate, shuffle or zstd (or zstd without the
    ``zstandard`` package), or a dtype that is not a plain number (HDF5
    converts compound and other types on the way, which this path does not).

    :param path: the HDF5 file, which holds the chunks.
    :param index: the stored chunks by coordinates, as
        :func:`~shmstore._chunk_index.check_chunk_index` returns them (listed
        here when not given).
    :param verifier: the checksums of the stored chunks, checked before decoding.
    :raises IntegrityError: (when filling) a chunk does not match its checksum.
    :raises InvalidStoreError: (when filling) a chunk cannot be read or decoded.
    """
    chunks = dataset.chunks
    dtype = dataset.dtype
    if (
        chunks is None
        or dtype.kind not in _SIMPLE_KINDS
        or dtype.fields is not None
        or dtype.subdtype is not None
        or dataset.id.get_type().get_size() != dtype.itemsize
        or dtype != info.dtype
        or not info.shape
    ):
        return None
    stages = _pipeline(dataset)
    if stages is None:
        return None
    return ChunkWriter(
        path=path,
        what=what,
        start=start,
        shape=info.shape,
        dtype=dtype,
        chunks=chunks,
        stages=stages,
        stored=index
        if index is not None
        else {tuple(c.chunk_offset): c for c in stored_chunks(dataset.id)},
        read_missing=functools.partial(_read_region, dataset, what),
        verifier=verifier,
    )


def _read_region(
    dataset: h5py.Dataset, what: str, region: tuple[slice, ...], out: np.ndarray[Any, Any]
) -> None:
    """Read *region* of *dataset* into *out* through HDF5 (a chunk never written).

    HDF5 supplies the fill value and checks it: asking h5py for
    ``dataset.fillvalue`` instead crashes the interpreter on a damaged
    fill-value message (the file fuzzing of ``reliability/`` makes one).

    :raises InvalidStoreError: HDF5 cannot read the region.
    """
    with translated(
        InvalidStoreError,
        f"reading an unwritten chunk of {what} failed",
        errors=(OSError, RuntimeError, ValueError),
    ):
        out[...] = dataset[region]


@dataclass
class ChunkWriter(FileFill):
    """Decodes the chunks over some rows of a dataset into a new segment, in threads.

    A chunk as wide as the dataset lands on contiguous bytes of the segment:
    it is decoded (and unshuffled) into a per-thread buffer and written with
    ``pwrite``.  Narrower chunks land on strided bytes and are stored
    through the mapping.
    """

    path: Path
    what: str
    start: int
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    chunks: tuple[int, ...]
    stages: list[_Stage]
    stored: dict[tuple[int, ...], Any]
    read_missing: Callable[[tuple[slice, ...], np.ndarray[Any, Any]], None]
    verifier: Verifier | None = None

    def write(self, fd: int, data_offset: int, out: np.ndarray[Any, Any]) -> None:
        """Fill *out* (rows ``start, start + len(out)``); see :class:`FileFill`."""
        stop = self.start + len(out)
        if stop == self.start:
            return
        chunks = self.chunks
        grid = [range(self.start // chunks[0] * chunks[0], stop, chunks[0])] + [
            range(0, n, c) for n, c in zip(self.shape[1:], chunks[1:], strict=True)
        ]
        row_nbytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        whole_rows = tuple(chunks[1:]) == tuple(self.shape[1:])
        chunk_nbytes = int(np.prod(chunks)) * self.dtype.itemsize
        scratch = threading.local()
        lock = threading.Lock()
        source_fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with progress(out.nbytes, self.what) as bar:

                def one(origin: tuple[int, ...]) -> None:
                    target, source = _overlap(origin, chunks, self.shape, self.start, stop)
                    chunk = self.stored.get(origin)
                    if chunk is None:  # never written: HDF5 reads the fill value
                        rows = target[0]
                        region = (
                            slice(rows.start + self.start, rows.stop + self.start),
                            *target[1:],
                        )
                        self.read_missing(region, out[target])
                    else:
                        data, shuffled = _decode(
                            source_fd,
                            chunk,
                            self.stages,
                            chunk_nbytes,
                            self.what,
                            verifier=self.verifier,
                        )
                        if whole_rows:
                            buffer = getattr(scratch, "buffer", None)
                            if buffer is None:
                                buffer = scratch.buffer = np.empty(chunk_nbytes, np.uint8)
                            rows = source[0]
                            raw = _unshuffled(data, shuffled, buffer)
                            write_all(
                                fd,
                                raw[rows.start * row_nbytes : rows.stop * row_nbytes],
                                data_offset + target[0].start * row_nbytes,
                            )
                        else:
                            _place(
                                data,
                                shuffled=shuffled,
                                dtype=self.dtype,
                                chunks=chunks,
                                destination=out[target],
                                source=source,
                            )
                    with lock:
                        bar.update(
                            math.prod(t.stop - t.start for t in target) * self.dtype.itemsize
                        )

                _run_all(one, product(*grid))
        finally:
            os.close(source_fd)


def _unshuffled(data: bytes, shuffled: int, buffer: np.ndarray[Any, Any]) -> memoryview:
    """The chunk's bytes in element order: *data* itself, or unshuffled into *buffer*."""
    if not shuffled:
        return memoryview(data)
    _unshuffle_into(data, shuffled, buffer)
    return memoryview(buffer.data).cast("B")


def _overlap(
    origin: tuple[int, ...],
    chunks: tuple[int, ...],
    shape: tuple[int, ...],
    start: int,
    stop: int,
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Where the chunk at *origin* lands in the rows ``[start, stop)``, and which part of it."""
    low = max(origin[0], start)
    high = min(origin[0] + chunks[0], stop)
    target = [slice(low - start, high - start)]
    source = [slice(low - origin[0], high - origin[0])]
    for corner, size, length in zip(origin[1:], chunks[1:], shape[1:], strict=True):
        end = min(corner + size, length)
        target.append(slice(corner, end))
        source.append(slice(0, end - corner))
    return tuple(target), tuple(source)


def _read_chunk(fd: int, chunk: Any, what: str, verifier: Verifier | None) -> bytes:
    """The stored bytes of *chunk*, checked against its checksum when it has one.

    :raises IntegrityError: they do not match it.
    :raises InvalidStoreError: the file ends inside the chunk.
    """
    data = os.pread(fd, chunk.size, chunk.byte_offset)
    if len(data) != chunk.size:
        raise InvalidStoreError(
            f"the file ends inside a chunk of {what} (at byte {chunk.byte_offset}): it is truncated"
        )
    if verifier is not None:
        verifier.check_chunk(chunk.chunk_offset, data, chunk.byte_offset)
    return data


def _decode(
    fd: int,
    chunk: Any,
    stages: list[_Stage],
    nbytes: int,
    what: str,
    *,
    verifier: Verifier | None = None,
) -> tuple[bytes, int]:
    """One stored chunk, read at its offset, checked, with its filters undone in reverse order.

    :returns: the bytes, and the item size of the shuffle still to undo (0: none).
    """
    data = _read_chunk(fd, chunk, what, verifier)
    shuffled = 0
    try:
        for index in reversed(range(len(stages))):
            if chunk.filter_mask & (1 << index):  # a set bit: the filter was skipped
                continue
            stage = stages[index]
            if stage.decode is None:
                shuffled = stage.itemsize
            else:
                data = stage.decode(data)
    except (zlib.error, ValueError) as err:  # what deflate and zstd raise for damaged input
        raise InvalidStoreError(f"a chunk of {what} cannot be decoded ({err}): damaged") from err
    if len(data) != nbytes:
        raise InvalidStoreError(
            f"a chunk of {what} decodes to {len(data)} bytes instead of {nbytes}: damaged"
        )
    return data, shuffled


def _place(
    data: bytes,
    *,
    shuffled: int,
    dtype: np.dtype[Any],
    chunks: tuple[int, ...],
    destination: np.ndarray[Any, Any],
    source: tuple[slice, ...],
) -> None:
    """Put the part *source* of the decoded chunk *data* into *destination*.

    A whole chunk that lands on contiguous rows of the segment is unshuffled
    straight into it; others go through one chunk-sized array.
    """
    if not shuffled:
        destination[...] = np.frombuffer(data, dtype=dtype).reshape(chunks)[source]
        return
    whole = all(s.start == 0 and s.stop == n for s, n in zip(source, chunks, strict=True))
    if whole and destination.flags.c_contiguous:
        _unshuffle_into(data, shuffled, destination)
        return
    chunk = np.empty(chunks, dtype=dtype)
    _unshuffle_into(data, shuffled, chunk)
    destination[...] = chunk[source]


def _run_all(work: Callable[[tuple[int, ...]], None], items: Iterator[tuple[int, ...]]) -> None:
    """Run *work* on every item in :func:`worker_count` threads; the first error is raised.

    Returns (or raises) only when no thread runs any more, so the caller may
    unmap what they write into: an interrupt cancels what has not started
    and waits for what has.
    """
    pool = ThreadPoolExecutor(worker_count(), thread_name_prefix="shmstore-decode")
    futures: list[Future[None]] = []
    try:
        futures = [pool.submit(work, item) for item in items]
        for future in futures:
            future.result()
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    finally:
        pool.shutdown(wait=True)


def check_chunks(
    path: Path | int,
    stored: dict[tuple[int, ...], Any],
    verifier: Verifier,
    rows: tuple[int, int],
    what: str,
) -> int:
    """Check the stored chunks over rows ``[first, last)`` against their checksums.

    Before HDF5 reads rows itself (filters shmstore does not decode, rows cut
    by a block, :meth:`Store.read`), and for :meth:`Store.verify`: the stored
    bytes are read once more, at the speed of the page cache.

    :param path: the HDF5 file, or a descriptor open on it (used, not closed).
    :returns: the bytes of the chunks that have checksums.
    :raises IntegrityError: a chunk does not match its checksum.
    :raises InvalidStoreError: the file ends inside a chunk.
    """
    first, last = rows
    rows_per = verifier.chunks[0] if verifier.chunks else 1
    low = first // rows_per * rows_per
    chosen = [c for origin, c in stored.items() if low <= origin[0] < last]
    if not chosen:
        return 0
    fd = os.dup(path) if isinstance(path, int) else os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def one(item: tuple[int, ...]) -> None:
        _read_chunk(fd, chosen[item[0]], what, verifier)

    try:
        _run_all(one, ((i,) for i in range(len(chosen))))
    finally:
        os.close(fd)
    checked = 0
    for chunk in chosen:
        number = chunk_number(chunk.chunk_offset, verifier.chunks or (1,), verifier.shape)
        if verifier.sums.chunk(number) is not None:
            checked += chunk.size
    return checked


# -- filling one block ----------------------------------------------------------------


@dataclass(frozen=True)
class _AsRows(FileFill):
    """A fill of rows, given a block's bytes: the block holds whole rows ``[start, ...)``."""

    inner: Callable[[np.ndarray[Any, Any]], object] | FileFill
    dtype: np.dtype[Any]
    row_shape: tuple[int, ...]

    def write(self, fd: int, data_offset: int, out: np.ndarray[Any, Any]) -> None:
        """Fill *out* (bytes) as the rows it holds; see :class:`FileFill`."""
        rows = out.view(self.dtype).reshape((-1, *self.row_shape))
        if isinstance(self.inner, FileFill):
            self.inner.write(fd, data_offset, rows)
        else:
            self.inner(rows)


def block_filler(
    dataset: h5py.Dataset,
    info: ArrayInfo,
    lo: int,
    hi: int,
    *,
    path: Path,
    what: str,
    index: dict[tuple[int, ...], Any] | None = None,
    check_hdf5: Callable[[int, int], object] = lambda first, last: None,
    verifier: Verifier | None = None,
) -> Callable[[np.ndarray[Any, Any]], object] | FileFill:
    """A fill of the block holding bytes ``[lo, hi)`` of *dataset* (C order), not contiguous.

    A block of whole rows is decoded into place (chunks in threads, or
    HDF5 for what shmstore cannot decode); one that cuts rows (rows not a
    divisor of the block size) reads the rows it touches and copies its bytes.

    :param path: the HDF5 file, which holds the chunks.
    :param check_hdf5: called with rows ``first, last`` before HDF5 is left
        to read them (to check its chunk lookups, which it does not check,
        and the chunks' checksums).
    :param verifier: the checksums of the stored chunks, checked before
        they are decoded.
    :raises InvalidStoreError: the chunk lookups are damaged; (when filling)
        the rows cannot be read or decoded.
    :raises IntegrityError: (when filling) a chunk does not match its checksum.
    """
    row = info.row_nbytes
    first, last = lo // row, -(-hi // row)
    if lo % row == 0 and hi % row == 0:
        rows_fill = chunk_filler(dataset, info, first, path, what, index=index, verifier=verifier)
        if rows_fill is None:
            check_hdf5(first, last)
        inner = rows_fill if rows_fill is not None else dataset_filler(dataset, info, first, what)
        return _AsRows(inner, info.dtype, info.shape[1:])
    check_hdf5(first, last)
    read = dataset_filler(dataset, info, first, what)

    def fill(out: np.ndarray[Any, Any]) -> None:
        rows = new_empty((last - first, *info.shape[1:]), info.dtype)
        read(rows)
        start = lo - first * row
        out[...] = rows.reshape(-1).view(np.uint8)[start : start + (hi - lo)]

    return fill
