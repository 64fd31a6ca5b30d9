"""Read-only memory maps of contiguous datasets, straight out of their file.

HDF5 stores a contiguous dataset as one block at a byte offset of the HDF5
file, or of an external raw file; mapping that block is zero-copy.  The
offset h5py reports is only trusted after checking that the storage is
allocated and exactly as large as the array (``get_offset`` is ``None`` or
meaningless for unallocated storage).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ._dtype import empty as new_empty
from ._hdf5 import external_files, external_spans
from .errors import InvalidStoreError, LayoutError, NotContiguousError
from .manifest import ArrayInfo

__all__ = ["check_external", "map_rows", "source_block"]


def check_external(dataset: h5py.Dataset, info: ArrayInfo, file_path: Path) -> None:
    """Check that the external raw files of *dataset* hold every byte of its data.

    HDF5 reads the missing end of a short external file as zeros: a raw file
    that was truncated would be served as wrong data, so it is refused.

    :raises InvalidStoreError: a raw file is missing or shorter than its part.
    """
    for raw_path, offset, length in external_spans(dataset, file_path.parent, 0, info.nbytes):
        try:
            size = os.stat(raw_path).st_size
        except FileNotFoundError as err:
            raise InvalidStoreError(
                f"the raw file {raw_path} of {info.name!r} is missing: it must stay beside "
                f"{file_path.name}"
            ) from err
        if size < offset + length:
            raise InvalidStoreError(
                f"the raw file {raw_path} of {info.name!r} holds {max(size - offset, 0)} bytes, "
                f"but {info.shape} {info.dtype} needs {length} there: it was truncated; "
                "restore it from a copy"
            )


def source_block(dataset: h5py.Dataset, info: ArrayInfo, file_path: Path) -> tuple[Path, int]:
    """The file holding *dataset*'s bytes and the byte offset of its first row.

    :raises NotContiguousError: the layout is chunked, compact or virtual, or
        the data is spread over several external files.
    :raises LayoutError: the storage is not allocated (the dataset was never written).
    :raises InvalidStoreError: the file ends before the dataset's block does, or
        the raw file of an external dataset is missing or short.
    """
    if not info.memory_mappable:
        detail = f", compressed with {info.compression}" if info.compression else ""
        raise NotContiguousError(
            f"{info.name!r} is stored {info.layout}{detail}, so it cannot be memory-mapped: "
            "use read(), or rewrite it with store.write(name, data, overwrite=True) "
            "to make it contiguous"
        )
    if info.layout == "external":
        files = external_files(dataset, file_path.parent)
        if len(files) != 1:
            raise NotContiguousError(
                f"{info.name!r} is spread over {len(files)} external files, so it cannot be "
                "memory-mapped as one block: use read()"
            )
        check_external(dataset, info, file_path)
        raw_path, offset, _size = files[0]
        return raw_path, offset
    offset = dataset.id.get_offset()
    stored = dataset.id.get_storage_size()
    if info.nbytes and (offset is None or stored != info.nbytes):
        raise LayoutError(
            f"{info.name!r} has no complete storage in the file ({stored} of {info.nbytes} "
            "bytes allocated): it was never written; use read() to get its fill value"
        )
    offset = int(offset or 0)
    file_size = os.stat(file_path).st_size
    if offset + info.nbytes > file_size:
        raise InvalidStoreError(
            f"{file_path} is truncated: {info.name!r} needs bytes {offset} to "
            f"{offset + info.nbytes}, the file has {file_size}"
        )
    return file_path, offset


def map_rows(path: Path, offset: int, info: ArrayInfo, start: int, stop: int) -> Any:
    """A read-only ``np.memmap`` of rows ``[start, stop)`` of the block at *offset* of *path*.

    Zero rows give an empty read-only array (a file cannot map zero bytes).
    """
    shape = (stop - start, *info.shape[1:])
    if stop == start or info.row_nbytes == 0:
        empty = new_empty(shape, info.dtype)
        empty.flags.writeable = False
        return empty
    return np.memmap(
        path, dtype=info.dtype, mode="r", offset=offset + start * info.row_nbytes, shape=shape
    )
