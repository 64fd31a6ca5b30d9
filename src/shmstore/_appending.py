"""Appending rows: in place and crash-safe where it can be, journaled where it cannot.

An append to a raw file (an appendable contiguous dataset) writes the rows
into the raw file first, then their checksums into the room left for them,
then grows the dataset's extent and flushes (one in-place object-header
write), then rewrites the dataset's record in place.  A writer killed
between the extent and the record leaves a dataset longer than its record:
that is recognised when the dataset is next used as an append that never
returned, and its complete rows are kept (``Catalog.lookup``).

An append to a chunked dataset grows its chunk index (B-tree nodes split
and move), and a record or table of checksums that must grow allocates
space: either is no more crash-safe than ``write``, so such an append runs
under the undo journal (``Catalog.change``).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from . import _hdf5, _metadata, _sums
from ._catalog import Catalog
from ._integrity import RANGE_NBYTES
from ._memmap import check_external
from ._names import check_name
from ._opening import OpenFile
from ._writing import Writer, as_rows, check_rows_fit, chunk_digest
from .errors import LayoutError
from .manifest import FORMAT_VERSION, ArrayInfo, Checksums

__all__ = ["Appender"]


class Appender:
    """Appends rows to datasets of the store open for writing as *opened*."""

    def __init__(self, opened: OpenFile, catalog: Catalog, writer: Writer) -> None:
        self._opened = opened
        self._catalog = catalog
        self._writer = writer
        # Where each table of checksums lies (offset, capacity): fixed while it lives.
        self._tables: dict[str, tuple[int, int]] = {}

    def append(self, name: str, rows: object) -> ArrayInfo:
        """Add *rows* at the end of dataset *name*, creating it if absent.

        See :meth:`Store.append`.
        """
        self._opened.check_writable(f"append to {name!r}")
        if not self._catalog.contains(name):
            check_name(name)
            return self._writer.write(
                name, rows, chunks=None, compression=None, appendable=True, overwrite=False
            )
        info = self._catalog.info(name)
        arr = as_rows(rows, f"rows appended to {name!r}")
        if not info.appendable:
            raise LayoutError(
                f"{name!r} has a fixed size ({info.layout}, {info.rows} rows): rewrite it with "
                f"store.write({name!r}, data, appendable=True, overwrite=True) to make it "
                "appendable"
            )
        check_rows_fit(info, arr)
        if len(arr) == 0:
            return info
        path = self._opened.path
        data = np.ascontiguousarray(arr, dtype=info.dtype)
        old, new = info.rows, info.rows + len(data)
        spans = self._spans(info, new) if info.layout == "external" else []
        self._opened.reopen_writable()
        if self._catalog.format == 1:
            self._catalog.migrate()
        grown = info.model_copy(
            update={
                "shape": (new, *info.shape[1:]),
                "version": _metadata.next_version(info.version),
                # A dataset of another tool gets its record, and so a generation, now.
                "generation": info.generation or _metadata.new_generation(),
            }
        )
        checksums = info.checksums
        what = f"{name!r} in {path}"
        summed, in_place = self._plan(info, grown, data.nbytes)
        with nullcontext() if in_place else self._catalog.change():
            file = self._opened.file
            dataset = _hdf5.open_dataset(file, name)
            if info.layout == "external":
                # Rows first, then their checksums, extent last: the extent
                # never covers unwritten bytes or bytes without checksums.
                entries = self._append_raw(spans, data, name, summed)
                if entries is not None and checksums is not None:
                    checksums = _sums.extend_ranges(
                        file,
                        path,
                        checksums,
                        entries,
                        self._table(checksums, name),
                        journaled=not in_place,
                    )
                dataset.id.set_extent((new, *info.shape[1:]))
            else:
                dataset.resize(new, axis=0)
                dataset[old:new] = _hdf5.as_stored(data)
                file.flush()
                if checksums is not None:
                    checksums = _sums.extend_chunks(file, path, dataset, checksums, old, what=what)
                grown = grown.model_copy(update={"chunk_digest": chunk_digest(dataset)})
            grown = grown.model_copy(update={"checksums": checksums})
            file.flush()
            _metadata.write_record(file, dataset, _metadata.record_of(grown), flush=in_place)
            if not in_place:
                _metadata.write_store_record(file)
                self._catalog.format = FORMAT_VERSION
        self._catalog.remember(grown)
        self._opened.touch()
        return grown

    def _spans(self, info: ArrayInfo, new: int) -> list[tuple[Path, int, int]]:
        """Where rows ``info.rows`` to *new* of an external dataset go: ``(path, offset, length)``.

        :raises InvalidStoreError: a raw file is missing or shorter than its rows.
        :raises LayoutError: the external files have a fixed size the rows would overflow.
        """
        name, path = info.name, self._opened.path
        dataset = _hdf5.open_dataset(self._opened.file, name)
        # New rows after a hole would make the hole part of the dataset.
        check_external(dataset, info, path)
        begin, end = info.rows * info.row_nbytes, new * info.row_nbytes
        spans = _hdf5.external_spans(dataset, path.parent, begin, end)
        if sum(length for _, _, length in spans) < end - begin:
            raise LayoutError(
                f"{name!r} is stored in external files of a fixed total size, which "
                f"{new} rows would overflow: rewrite it with store.write({name!r}, data, "
                "appendable=True, overwrite=True)"
            )
        return spans

    def _plan(
        self, info: ArrayInfo, grown: ArrayInfo, nbytes: int
    ) -> tuple[tuple[int, int] | None, bool]:
        """How to sum *nbytes* appended to *info*: ``(begin, size)`` of their ranges
        (``None``: no checksums of ranges to extend); and whether the append runs
        in place."""
        checksums = info.checksums
        # Checksums of ranges grow only from where they end: rows another
        # tool added would leave a gap (they stay unverified, until seal).
        extend, fits = (
            _sums.append_plan(
                self._opened.path,
                checksums,
                self._table(checksums, info.name),
                info.nbytes,
                nbytes,
            )
            if checksums is not None and checksums.per == "range"
            else (checksums is not None, True)
        )
        # Rows and extent of a raw file, their checksums in the room left
        # for them, and a record of the same size, are rewritten in place in
        # a crash-safe order (see the module's docstring); the rest is journaled.
        in_place = (
            info.layout == "external"
            and self._catalog.format == FORMAT_VERSION
            and _metadata.fits(
                _hdf5.open_dataset(self._opened.file, info.name), _metadata.record_of(grown)
            )
            and (fits or not extend)
        )
        summed = None
        if extend and info.layout == "external" and checksums is not None:
            summed = (info.nbytes, checksums.range_nbytes or RANGE_NBYTES)
        return summed, in_place

    def _table(self, checksums: Checksums, name: str) -> tuple[int, int]:
        """Offset and capacity of the table of *checksums* of dataset *name*, looked up
        once per store."""
        place = self._tables.get(checksums.location)
        if place is None:
            what = f"{name!r} in {self._opened.path}"
            place = _sums.table(self._opened.file, checksums, what)
            self._tables[checksums.location] = place
        return place

    def _append_raw(
        self,
        spans: list[tuple[Path, int, int]],
        data: np.ndarray[Any, Any],
        name: str,
        summed: tuple[int, int] | None,
    ) -> np.ndarray[Any, Any] | None:
        """Write appended rows *data* into the raw file spans *spans* (they may run on).

        :param summed: ``(begin, size)``: sum them per range as they go.
        :returns: their checksum entries, when *summed*.
        """
        raw = data.reshape(-1).view(np.uint8)
        done = 0
        found = []
        for raw_path, offset, length in spans:
            ranges = None if summed is None else (summed[0] + done, summed[1])
            piece = raw[done : done + length]
            found.append(self._writer.write_raw(raw_path, offset, piece, name, ranges))
            done += length
        if summed is None:
            return None
        return np.concatenate([np.empty((0, 2), np.uint64), *(e for e in found if e is not None)])
