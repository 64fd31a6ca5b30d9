"""The store's side of sharing: datasets described for the cache, blocks filled from the file.

``_sharing`` turns rows into the cache blocks that cover them and knows
nothing of HDF5; here a dataset is described to it (its files, their
identities, its generation: :meth:`Views.described`) and the bytes of a
block are read out of the file, checked against their checksums on the way
(:meth:`Views.block_fill`, with ``_load``).  :meth:`Views.view_array` serves
rows in each view mode, falling back from the cache when it is full.

A :class:`~shmstore.Handle` serves from here too, in the process that uses
it: :func:`open_views` opens the store read-only for one view.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from . import _hdf5, _written
from ._catalog import Catalog
from ._fill import FileBlock
from ._identity import Stat, stat_of
from ._memmap import source_block
from ._opening import OpenFile
from ._reading import Reader
from ._rows import RowsLike
from .errors import (
    ArgumentError,
    CacheFullError,
    InvalidStoreError,
    LayoutError,
    SegmentError,
    StoreNotFoundError,
)
from .manifest import ArrayInfo

if TYPE_CHECKING:
    from ._cache import Cache
    from ._sharing import Described, Fill

__all__ = ["VIEW_MODES", "ViewMode", "Views", "open_views"]

_log = logging.getLogger("shmstore")

ViewMode = Literal["shared", "memmap", "memory", "auto"]
"""How a view serves rows: from the node's cache, mapped from the file, copied, or the first
that works."""
VIEW_MODES = ("shared", "memmap", "memory", "auto")


class Views:
    """Views of rows of the datasets of the store open as *opened*.

    :param cache: makes the node cache the views use, when first needed.
    """

    def __init__(
        self, opened: OpenFile, catalog: Catalog, reader: Reader, cache: Callable[[], Cache]
    ) -> None:
        self._opened = opened
        self._catalog = catalog
        self._reader = reader
        self._make_cache = cache
        self._cache: Cache | None = None
        self._descriptions: dict[str, Described] = {}

    @property
    def cache(self) -> Cache:
        """The node cache of the views (made on first use)."""
        if self._cache is None:
            self._cache = self._make_cache()
        return self._cache

    def info(self, name: str) -> ArrayInfo:
        """The :class:`ArrayInfo` of dataset *name* (see :meth:`Store.info`)."""
        return self._catalog.info(name)

    def _files_of(self, info: ArrayInfo) -> tuple[tuple[str, ...], tuple[Stat, ...]]:
        """The files of dataset *info* (the HDF5 file first) and their identities now.

        :raises StoreNotFoundError: the HDF5 file was removed since the store was opened.
        :raises InvalidStoreError: a raw file of the dataset is missing or cannot be examined.
        """
        self._opened.check_same_file()
        path = self._opened.path
        files = tuple(str(p) for p in self._catalog.source_files(info.name))
        stats = []
        for file in files:
            try:
                stats.append(stat_of(file))
            except FileNotFoundError as err:
                if file == str(path):
                    raise StoreNotFoundError(
                        f"{path} was removed while open: open it again"
                    ) from err
                raise InvalidStoreError(
                    f"the raw file {file} of {info.name!r} is missing: it must stay beside "
                    f"{path.name}"
                ) from err
            except OSError as err:
                raise InvalidStoreError(f"cannot examine {file} of {info.name!r}: {err}") from err
        return files, tuple(stats)

    def described(self, info: ArrayInfo) -> Described:
        """What the sharing layer needs to serve *info*'s rows from the node's blocks.

        Kept per dataset while its files keep their identity (one ``stat``
        each); made again after any change, and then the node's blocks of
        this dataset that no view will ask for again are removed.
        """
        # Imported here, as the cache: a store that only reads never needs them.
        from ._sharing import Described, block_nbytes, block_target, drop_stale, note

        known = self._descriptions.get(info.name)
        if (
            known is not None
            and known.version == info.version
            and known.shape == info.shape
            and known.current()
        ):
            return known
        path = self._opened.path
        files, stats = self._files_of(info)
        epoch = _written.trusted(path, stats) if info.generation is not None else None
        chunk_rows = info.chunks[0] if info.chunks is not None else None
        described = Described.of(
            path=str(path),
            dataset=info.name,
            files=files,
            stats=stats,
            generation=f"{info.generation}.{epoch}" if epoch is not None else None,
            version=info.version,
            dtype=info.dtype,
            shape=info.shape,
            block=block_nbytes(info.row_nbytes, chunk_rows, block_target()),
        )
        self._descriptions[info.name] = described
        if note(described):
            drop_stale(self.cache, described)
        return described

    def block_fill(self, info: ArrayInfo, lo: int, hi: int) -> Fill:
        """How to load the bytes ``[lo, hi)`` of dataset *info* into a block."""
        from ._load import block_filler, check_chunks

        path = self._opened.path
        row = info.row_nbytes
        first, last = lo // row, -(-hi // row)
        what = f"{path.name}:{info.name}[{first}:{last}]"
        dataset = _hdf5.open_dataset(self._opened.file, info.name)
        verifier = self._reader.verifier(info, dataset)
        try:
            source, offset = source_block(dataset, info, path)
            return FileBlock(source, offset + lo, what, verifier, lo)
        except LayoutError:  # chunked, or never written: decoded here, or by HDF5
            pass
        index = self._reader.chunk_index(dataset, info, (first, last), hdf5_reads=False)

        def check_hdf5(a: int, b: int) -> None:
            """Before HDF5 reads rows (what shmstore cannot decode): check its lookups."""
            self._reader.chunk_index(dataset, info, (a, b), hdf5_reads=True)
            if verifier is not None and index is not None:
                check_chunks(path, index, verifier, (a, b), what)

        return block_filler(
            dataset,
            info,
            lo,
            hi,
            path=path,
            what=what,
            index=index,
            check_hdf5=check_hdf5,
            verifier=verifier,
        )

    def _shared(
        self, info: ArrayInfo, start: int, stop: int
    ) -> tuple[np.ndarray[Any, Any], Described]:
        from ._sharing import view_rows

        described = self.described(info)
        array = view_rows(
            self.cache, described, start, stop, lambda lo, hi: self.block_fill(info, lo, hi)
        )
        if array is None:  # a lookup returns None, a load never does
            raise SegmentError(
                f"{self._opened.path}:{info.name}: rows {start}:{stop} were not loaded"
            )
        return array, described

    def view_array(
        self, name: str, rows: RowsLike, mode: ViewMode
    ) -> tuple[np.ndarray[Any, Any], Described | None]:
        """The array a view of rows *rows* of *name* yields in *mode* (see :meth:`Store.view`),
        and the description of the dataset when it is shared.

        :raises ArgumentError: an unknown *mode*.
        """
        if mode not in VIEW_MODES:
            raise ArgumentError(f"view mode must be one of {', '.join(VIEW_MODES)}, got {mode!r}")
        info, start, stop = self._catalog.rows_of(name, rows)
        if mode == "memory" or not info.shape:
            array = self._reader.read(name, rows)
            array.flags.writeable = False
            return array, None
        if mode == "memmap":
            return self._reader.memmap(name, rows), None
        try:
            return self._shared(info, start, stop)
        except CacheFullError as err:
            if mode == "shared":
                raise
            fallback = "memmap" if info.memory_mappable else "memory"
            _log.info(
                "%s: no room in the cache for %r (%s); using %s",
                self._opened.path,
                name,
                err,
                fallback,
            )
            if info.memory_mappable:
                array = self._reader.memmap(name, rows)
            else:
                array = self._reader.read(name, rows)
            array.flags.writeable = False
            return array, None

    def __enter__(self) -> Views:
        return self

    def __exit__(self, *exc: object) -> None:
        self._opened.close()


def open_views(path: str | os.PathLike[str], cache: Cache) -> Views:
    """The views of the store at *path*, opened read-only until the ``with`` block ends.

    :raises StoreNotFoundError, InvalidStoreError, ManifestError, LockTimeoutError:
        as :func:`shmstore.open` in mode ``"r"``.
    """
    opened = OpenFile(path, "r", lock_timeout=30.0, durable=None)
    try:
        catalog = Catalog(opened)
    except BaseException:
        opened.close()
        raise
    return Views(opened, catalog, Reader(opened, catalog), lambda: cache)
