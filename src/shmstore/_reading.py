"""Reading rows out of the file: private copies, checks against checksums, memory maps.

Bytes are checked against their checksums (``_integrity``) on their way in,
wherever shmstore reads them itself: contiguous and external data are read
by shmstore, range by range; chunked data are read by HDF5, after the
stored chunks under the rows were checked.  The checks of a dataset (its
checked chunk index, the verifier of its checksums) are made once per
version of it and shared with the loads into the cache (``_serving``).
A memory map cannot be checked: its pages are read by the kernel.
"""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np

from . import _hdf5, _sums
from ._catalog import Catalog
from ._dtype import empty as new_empty
from ._fill import FileBlock, check_block, read_block
from ._h5errors import translated
from ._integrity import Verifier
from ._memmap import check_external, map_rows, source_block
from ._opening import OpenFile
from ._rows import RowsLike
from .errors import InvalidStoreError
from .manifest import ArrayInfo

__all__ = ["Reader"]

_Version = tuple[str, int, tuple[int, ...]]  # a dataset's name, version and shape


class Reader:
    """Reads rows of the datasets of the store open as *opened*, checked as they come."""

    def __init__(self, opened: OpenFile, catalog: Catalog) -> None:
        self._opened = opened
        self._catalog = catalog
        self._chunk_indexes: dict[_Version, Any] = {}
        self._verifiers: dict[_Version, Verifier | None] = {}

    def read(self, name: str, rows: RowsLike) -> np.ndarray[Any, Any]:
        """A private in-memory copy of rows *rows* of dataset *name* (see :meth:`Store.read`)."""
        info, start, stop = self._catalog.rows_of(name, rows)
        path = self._opened.path
        dataset = _hdf5.open_dataset(self._opened.file, name)
        if info.layout == "external":
            check_external(dataset, info, path)
        index = self.chunk_index(dataset, info, (start, stop), hdf5_reads=True)
        verifier = self.verifier(info, dataset)
        if verifier is not None and index is not None:
            from ._load import check_chunks

            # Through h5py's own descriptor: the bytes HDF5 is about to read.
            own = self._opened.descriptor()
            source = path if own is None else own
            check_chunks(source, index, verifier, (start, stop), f"{info.name!r}")
        elif verifier is not None:
            # Read by shmstore, checked on the way in: HDF5 would not check.
            out = new_empty((stop - start, *info.shape[1:]) if info.shape else (), info.dtype)
            block = self.file_block(info, dataset, start, f"{path.name}:{name}", verifier)
            read_block(block, memoryview(out.reshape(-1).view(np.uint8).data))
            return out
        with translated(
            InvalidStoreError,
            f"reading rows {start}:{stop} of {name!r} from {path} failed",
            why=lambda err: _hdf5.missing_filters(dataset) or str(err),
            errors=(OSError, RuntimeError, ValueError),
        ):
            if not info.shape:
                return np.asarray(dataset[()], dtype=info.dtype)
            out = new_empty((stop - start, *info.shape[1:]), info.dtype)
            if out.size:
                dataset.read_direct(_hdf5.as_stored(out), source_sel=np.s_[start:stop])
        return out

    def verify(self, name: str, rows: RowsLike) -> int:
        """Check rows *rows* of *name* against their checksums (see :meth:`Store.verify`)."""
        info, start, stop = self._catalog.rows_of(name, rows)
        dataset = _hdf5.open_dataset(self._opened.file, name)
        verifier = self.verifier(info, dataset, fresh=True)
        if verifier is None or stop == start:
            return 0
        path = self._opened.path
        what = f"{path.name}:{name}[{start}:{stop}]"
        if info.layout == "chunked":
            from ._load import check_chunks

            index = self.chunk_index(dataset, info, (start, stop), hdf5_reads=False)
            return check_chunks(path, index or {}, verifier, (start, stop), what)
        block = self.file_block(info, dataset, start, what, verifier)
        return check_block(block, (stop - start) * info.row_nbytes)

    def memmap(self, name: str, rows: RowsLike) -> np.ndarray[Any, Any]:
        """A read-only ``np.memmap`` of rows *rows* of *name* (see :meth:`Store.memmap`)."""
        info, start, stop = self._catalog.rows_of(name, rows)
        self._opened.check_same_file()
        dataset = _hdf5.open_dataset(self._opened.file, name)
        path, offset = source_block(dataset, info, self._opened.path)
        if not info.shape:
            return np.memmap(path, dtype=info.dtype, mode="r", offset=offset, shape=())
        return map_rows(path, offset, info, start, stop)  # type: ignore[no-any-return]

    def chunk_index(
        self, dataset: h5py.Dataset, info: ArrayInfo, rows: tuple[int, int], *, hdf5_reads: bool
    ) -> dict[tuple[int, ...], Any] | None:
        """The checked chunk index of a chunked dataset; None for other layouts.

        The whole index is checked once per version of the dataset (a pass
        over its chunk list); when HDF5 will read *rows* (*hdf5_reads*),
        its lookups of their chunks are checked too (see ``_chunk_index``).

        :raises InvalidStoreError: the chunk index is damaged.
        """
        if info.layout != "chunked":
            return None
        from ._chunk_index import check_chunk_index, check_lookups

        what = f"{info.name!r} in {self._opened.path}"
        key = (info.name, info.version, info.shape)
        index = self._chunk_indexes.get(key)
        if index is None:
            index = check_chunk_index(dataset, info, self._opened.path, what)
            self._chunk_indexes[key] = index
        if hdf5_reads:
            check_lookups(dataset, info, index, rows, what)
        return index

    def verifier(
        self, info: ArrayInfo, dataset: h5py.Dataset, *, fresh: bool = False
    ) -> Verifier | None:
        """What checks *info*'s bytes as they load (read once per version); ``None``: unverified.

        :raises IntegrityError: the checksums themselves are damaged.
        """
        key = (info.name, info.version, info.shape)
        if not fresh and key in self._verifiers:
            return self._verifiers[key]
        if info.checksums is None:
            found = None
        else:
            path = self._opened.path
            source = None if info.layout == "chunked" else source_block(dataset, info, path)
            found = _sums.verifier(
                self._opened.file, path, info, source, opened=self._opened.descriptor()
            )
        self._verifiers[key] = found
        return found

    def file_block(
        self,
        info: ArrayInfo,
        dataset: h5py.Dataset,
        start: int,
        what: str,
        verifier: Verifier | None,
    ) -> FileBlock:
        """The bytes of rows ``[start, ...)`` of a contiguous or external dataset, as a block.

        Data inside the HDF5 file are read through the descriptor h5py has
        open (see :meth:`OpenFile.descriptor`); a raw file by its path.
        """
        path, offset = source_block(dataset, info, self._opened.path)
        lo = start * info.row_nbytes
        opened = self._opened.descriptor() if path == self._opened.path else None
        return FileBlock(path if opened is None else opened, offset + lo, what, verifier, lo)
