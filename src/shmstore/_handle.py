"""Handles: small, picklable references to rows of a dataset, for workers.

A handle carries no array data, only what names the slice (file, dataset,
rows) and the identity of the files it was made from.  In a worker,
``handle.view()`` stats those files; when they are unchanged and the node's
cache holds the slice, it maps the shared copy without opening the HDF5 file.
When a file changed, it opens the store, learns the new version, and serves
(or loads) that one: a handle never serves an old version.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._cache import Cache
from ._segment import SegmentSource, segment_key
from .errors import RowsError, StoreNotFoundError

if TYPE_CHECKING:
    from ._store import ViewMode

__all__ = ["Handle", "cache_for"]


@functools.lru_cache(maxsize=32)
def cache_for(directory: str | None, budget: int | str | None) -> Cache:
    """The process's :class:`Cache` for *directory* and *budget* (made once, then reused)."""
    return Cache(directory=directory, budget=budget)


class Handle:
    """Rows ``[start, stop)`` of dataset *name* of the store at *path*.

    Make one with :meth:`Store.handle`; send it to worker processes (it
    pickles to under 1 KB) and use :meth:`view` there.
    """

    def __init__(
        self,
        *,
        source: SegmentSource,
        dtype: np.dtype[Any],
        shape: tuple[int, ...],
        cache_directory: str | None,
        cache_budget: int | None,
    ) -> None:
        self._source = source
        self._key = segment_key(source)
        self.dtype = dtype
        """The dtype of the rows."""
        self.shape = shape
        """The shape of the slice: ``(rows, *row shape)``."""
        self._cache_directory = cache_directory
        self._cache_budget = cache_budget
        self._pinned: np.ndarray[Any, Any] | None = None

    @property
    def path(self) -> Path:
        """The HDF5 file."""
        return Path(self._source.path)

    @property
    def name(self) -> str:
        """The dataset."""
        return self._source.dataset

    @property
    def rows(self) -> tuple[int, int]:
        """``(start, stop)``: the rows this handle stands for."""
        return self._source.start, self._source.stop

    @property
    def key(self) -> str:
        """The cache key of the node's copy of these rows (as ``Cache.entries`` lists it)."""
        return self._key

    @property
    def version(self) -> int:
        """The dataset's version the handle last saw (it follows newer ones)."""
        return self._source.version

    @property
    def cache(self) -> Cache:
        """The node cache this handle's slice lives in, in the process using it.

        A handle made by a store opened with an explicit ``cache=`` names that
        cache's directory and budget; otherwise it uses each process's default
        cache (``SHMSTORE_DIR``, ``$JOB_SHMTMPDIR/shmstore``, ...), so a handle
        sent to a worker on another node resolves to that node's cache.
        """
        return cache_for(self._cache_directory, self._cache_budget)

    def _part(self, start: int, stop: int) -> Handle:
        """A handle of rows ``[start, stop)`` of this handle's dataset, at the version it saw.

        Rows count from the dataset's first row, not from this handle's; the
        caller checks that they lie within the dataset.
        """
        source = self._source.model_copy(update={"start": start, "stop": stop})
        return Handle(
            source=source,
            dtype=self.dtype,
            shape=(stop - start, *self.shape[1:]),
            cache_directory=self._cache_directory,
            cache_budget=self._cache_budget,
        )

    def __dask_tokenize__(self) -> tuple[str, str, str | None, int | None]:
        # Dask names tasks by a token of their arguments: equal handles give equal
        # tokens, and a new version of the rows (a new key) gives a new one.
        return ("shmstore.Handle", self._key, self._cache_directory, self._cache_budget)

    def __repr__(self) -> str:
        start, stop = self.rows
        return (
            f"<shmstore.Handle {self.name!r}[{start}:{stop}] of {str(self.path)!r}, "
            f"{self.shape} {self.dtype}, version {self.version}>"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_pinned"] = None  # a mapping belongs to one process
        return state

    def is_current(self) -> bool:
        """True while every file of the slice is as the handle saw it (one ``stat`` each).

        False once a write, append or delete changed the dataset's file, or
        the file was replaced: :meth:`view` then serves the new version.
        """
        return self._unchanged()

    def cached(self) -> np.ndarray[Any, Any] | None:
        """The node's copy of the rows, mapped read-only, if it is cached and current; never loads.

        ``None`` when no process of the node has loaded this version of the
        rows (or it was evicted), or the files changed since the handle was made.
        """
        return self._current()

    def _unchanged(self) -> bool:
        """True when every source file still has the identity the handle saw."""
        for seen in self._source.identity:
            try:
                st = os.stat(seen.path)
            except FileNotFoundError:
                return False
            if (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev) != (
                seen.mtime_ns,
                seen.size,
                seen.ino,
                seen.dev,
            ):
                return False
        return True

    def _current(self) -> np.ndarray[Any, Any] | None:
        """The node's copy, if the files are unchanged and it is cached; never loads."""
        return self.cache.find(self._key) if self._unchanged() else None

    def _array(self, mode: ViewMode) -> np.ndarray[Any, Any]:
        if self._pinned is not None and mode in ("auto", "shared") and self._unchanged():
            return self._pinned
        if mode in ("auto", "shared"):
            found = self._current()
            if found is not None:
                return found
        from ._store import open_store

        start, stop = self.rows
        try:
            store = open_store(self.path, "r", cache=self.cache)
        except StoreNotFoundError as err:
            raise StoreNotFoundError(
                f"the store {self.path} of this handle is gone: {err}"
            ) from err
        with store:
            info = store.info(self.name)
            if stop > info.rows:
                raise RowsError(
                    f"this handle's rows {start}:{stop} are outside {self.name!r}, which now "
                    f"has {info.rows} rows"
                )
            array, source = store._view_array(self.name, (start, stop), mode)
        if source is not None:
            self._source, self._key = source, segment_key(source)
            self.dtype, self.shape = array.dtype, array.shape
            if self._pinned is not None:
                # The pin follows the version now served: kept, the old mapping
                # would pass the identity check of the new source and be served.
                self._pinned = array
        return array

    @contextmanager
    def view(self, mode: ViewMode = "auto") -> Iterator[np.ndarray[Any, Any]]:
        """Map the node's copy of the rows (loading it once per node if absent).

        The array is read-only.  Modes are those of :meth:`Store.view`.

        :raises StoreNotFoundError: the HDF5 file is gone.
        :raises RowsError: the dataset shrank below this handle's rows.
        :raises CacheFullError: mode ``"shared"`` and no room in the cache.
        """
        array = self._array(mode)
        try:
            yield array
        finally:
            del array

    def pin(self) -> np.ndarray[Any, Any]:
        """Keep one mapping of the slice for the life of this process (or :meth:`unpin`).

        A pinned segment is in use: the cache never evicts it.  Returns the array.
        When the files change, the next shared view maps the new version and
        the pin moves to it (the old mapping is dropped).

        :raises StoreNotFoundError: the HDF5 file is gone.
        :raises RowsError: the dataset shrank below this handle's rows.
        :raises CacheFullError: no room in the cache.
        """
        self._pinned = self._array("shared")
        return self._pinned

    def unpin(self) -> None:
        """Drop the mapping kept by :meth:`pin` (the segment stays cached, evictable)."""
        self._pinned = None
