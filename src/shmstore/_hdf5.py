"""h5py at the level the store needs: opening, describing and creating datasets.

Every dataset is opened with a dataset access list whose external-file prefix
is ``${ORIGIN}``, so the raw file of an appendable dataset is found beside the
HDF5 file wherever the pair was moved, whatever the working directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from h5py import h5d, h5f, h5p, h5s, h5t

from ._dtype import is_supported, unsupported_reason
from .manifest import ArrayInfo, Layout

__all__ = [
    "FILTER_NAMES",
    "create_external",
    "data_ranges",
    "describe",
    "external_files",
    "external_spans",
    "open_dataset",
    "walk_datasets",
]

# HDF5's registered filter ids; a filter not listed is named by HDF5 itself.
FILTER_NAMES = {
    1: "gzip",
    2: "shuffle",
    3: "fletcher32",
    4: "szip",
    5: "nbit",
    6: "scaleoffset",
    32000: "lzf",
    32001: "blosc",
    32004: "lz4",
    32008: "bitshuffle",
    32015: "zstd",
    32026: "blosc2",
}
_NOT_COMPRESSION = frozenset({2, 3})

_DAPL = h5p.create(h5p.DATASET_ACCESS)
_DAPL.set_efile_prefix(b"${ORIGIN}")


def open_dataset(file: h5py.File, name: str) -> h5py.Dataset:
    """Open dataset *name* with external files resolved beside the HDF5 file.

    When this process already holds the dataset open through h5py with
    another external-file prefix, HDF5 refuses a second prefix; the dataset
    is then opened with the prefix it has.  shmstore never lets HDF5 read
    external data (it finds raw files itself, see ``_memmap``), so the
    prefix only matters to other code.

    :raises KeyError: no such object.
    """
    try:
        return h5py.Dataset(h5d.open(file.id, name.encode(), dapl=_DAPL))
    except KeyError as err:
        if "external file prefix" not in str(err):
            raise
        return h5py.Dataset(h5d.open(file.id, name.encode()))


def walk_datasets(file: h5py.File, skip: str) -> list[str]:
    """Paths of every dataset in *file* ("grp/sub/ds"), except under group *skip*."""
    found: list[str] = []

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset) and not (name == skip or name.startswith(skip + "/")):
            found.append(name)

    file.visititems(visit)
    return sorted(found)


def _layout(dcpl: Any) -> Layout:
    layout = dcpl.get_layout()
    if layout == h5d.CHUNKED:
        return "chunked"
    if layout == h5d.COMPACT:
        return "compact"
    if layout == h5d.VIRTUAL:
        return "virtual"
    return "external" if dcpl.get_external_count() > 0 else "contiguous"


def _compression(dcpl: Any) -> tuple[str | None, int | None]:
    for index in range(dcpl.get_nfilters()):
        code, _flags, values, raw_name = dcpl.get_filter(index)
        if code in _NOT_COMPRESSION:
            continue
        name = FILTER_NAMES.get(code) or raw_name.decode(errors="replace") or f"filter-{code}"
        level = int(values[0]) if code == 1 and len(values) > 0 else None
        return name, level
    return None, None


def describe(dataset: h5py.Dataset, name: str, version: int = 0) -> ArrayInfo | str:
    """The :class:`ArrayInfo` of *dataset*, or why shmstore cannot serve it."""
    dtype = dataset.dtype
    if dataset.shape is None:
        return f"{name!r} is an empty (null dataspace) dataset and holds no array"
    if dtype.subdtype is not None:
        # numpy folds an array element type into the shape, so neither the
        # dtype nor the shape a read returns would be the dataset's own.
        base, inner = dtype.subdtype
        return (
            f"{name!r} has the HDF5 array type {dtype} as its element type, which shmstore does "
            f"not serve: rewrite it with shape {(*dataset.shape, *inner)} and dtype {base}"
        )
    if not is_supported(dtype):
        return unsupported_reason(dtype, repr(name))
    dcpl = dataset.id.get_create_plist()
    layout = _layout(dcpl)
    compression, level = _compression(dcpl) if layout == "chunked" else (None, None)
    maxshape: tuple[int | None, ...] = tuple(dataset.maxshape or ())
    appendable = bool(maxshape) and maxshape[0] is None and layout in ("external", "chunked")
    return ArrayInfo(
        name=name,
        shape=tuple(int(n) for n in dataset.shape),
        dtype=dtype,
        layout=layout,
        chunks=tuple(dataset.chunks) if layout == "chunked" else None,
        compression=compression,
        compression_opts=level,
        appendable=appendable,
        version=version,
    )


def external_files(dataset: h5py.Dataset, origin: Path) -> list[tuple[Path, int, int]]:
    """The external raw files of *dataset*: ``(path, byte offset, size in bytes)``.

    Relative names are resolved against *origin* (the HDF5 file's directory),
    as the ``${ORIGIN}`` prefix makes HDF5 itself do.  ``size`` is
    ``h5f.UNLIMITED`` for a file that grows with the dataset.
    """
    dcpl = dataset.id.get_create_plist()
    files = []
    for index in range(dcpl.get_external_count()):
        raw_name, offset, size = dcpl.get_external(index)
        path = Path(os.fsdecode(raw_name))
        files.append((path if path.is_absolute() else origin / path, int(offset), int(size)))
    return files


def external_spans(
    dataset: h5py.Dataset, origin: Path, start: int, stop: int
) -> list[tuple[Path, int, int]]:
    """Where bytes ``[start, stop)`` of *dataset*'s data lie: ``(path, file offset, length)``.

    The data runs through the external files in order, each holding its
    declared size (the last may be unlimited).  Bytes past the end of the
    last file's size are in no span: the lengths then add up to less than
    ``stop - start``.
    """
    spans: list[tuple[Path, int, int]] = []
    begins = 0  # offset in the data where the current file's part begins
    for path, offset, size in external_files(dataset, origin):
        ends = stop if size == h5f.UNLIMITED else begins + size
        low, high = max(start, begins), min(stop, ends)
        if low < high:
            spans.append((path, offset + low - begins, high - low))
        if ends >= stop:
            break
        begins = ends
    return spans


def create_external(
    group: h5py.Group, name: str, dtype: np.dtype[Any], shape: tuple[int, ...], raw_name: str
) -> h5py.Dataset:
    """Create an appendable contiguous dataset stored in the raw file *raw_name*.

    The dataset is unlimited along axis 0 and stored in one external file of
    unlimited size: h5py's high-level ``create_dataset`` would insist on
    chunks for an unlimited axis, so it is made through the low-level API.
    Nothing is written to the raw file here.
    """
    dcpl = h5p.create(h5p.DATASET_CREATE)
    dcpl.set_external(raw_name.encode(), 0, h5f.UNLIMITED)
    # Fill values would be written into the raw file on every extent change.
    dcpl.set_fill_time(h5d.FILL_TIME_NEVER)
    space = h5s.create_simple(shape, (h5s.UNLIMITED, *shape[1:]))
    type_id = h5t.py_create(dtype, logical=True)
    dataset_id = h5d.create(group.id, name.encode(), type_id, space, dcpl=dcpl, dapl=_DAPL)
    return h5py.Dataset(dataset_id)


def data_ranges(dataset: h5py.Dataset) -> list[tuple[int, int]]:
    """Byte ranges ``(start, stop)`` of the HDF5 file holding *dataset*'s data.

    Contiguous storage is one range, chunked storage one per written chunk;
    compact and external storage hold no data range of their own.
    """
    dsid = dataset.id
    layout = dsid.get_create_plist().get_layout()
    if layout == h5d.CONTIGUOUS:
        offset = dsid.get_offset()
        size = dsid.get_storage_size()
        return [(offset, offset + size)] if offset is not None and size else []
    if layout != h5d.CHUNKED:
        return []
    ranges: list[tuple[int, int]] = []
    if hasattr(dsid, "chunk_iter"):
        dsid.chunk_iter(
            lambda info: ranges.append((info.byte_offset, info.byte_offset + info.size))
        )
        return ranges
    for index in range(dsid.get_num_chunks()):
        info = dsid.get_chunk_info(index)
        ranges.append((info.byte_offset, info.byte_offset + info.size))
    return ranges
