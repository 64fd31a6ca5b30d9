"""Handles: small, picklable references to rows of a dataset, for workers.

A handle carries no array data, only what names the slice (file, dataset,
rows) and what the sharing layer knows of the dataset (the identity of its
files, its generation).  In a worker, ``handle.view()`` stats those files;
when they are unchanged and the node's cache holds the blocks of the rows,
it maps them without opening the HDF5 file.  When a file changed, it opens
the store, learns the dataset's generation now, and serves (or loads) that
one: a handle never serves an old generation.
"""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._cache import Cache
from ._sharing import Described, adopt_plan, block_keys, carried_plan, view_rows
from ._within import Within
from .errors import RowsError, StoreNotFoundError

if TYPE_CHECKING:
    from ._serving import ViewMode

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
        described: Described,
        rows: tuple[int, int],
        cache_directory: str | None,
        cache_budget: int | None,
    ) -> None:
        self._described = described
        self._rows = rows
        self._cache_directory = cache_directory
        self._cache_budget = cache_budget
        self._pinned: np.ndarray[Any, Any] | None = None
        self._cache: Cache | None = None  # resolved in the process that uses the handle

    @property
    def path(self) -> Path:
        """The HDF5 file."""
        return Path(self._described.path)

    @property
    def name(self) -> str:
        """The dataset."""
        return self._described.dataset

    @property
    def rows(self) -> tuple[int, int]:
        """``(start, stop)``: the rows this handle stands for."""
        return self._rows

    @property
    def dtype(self) -> np.dtype[Any]:
        """The dtype of the rows."""
        return self._described.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the slice: ``(rows, *row shape)``."""
        start, stop = self._rows
        return (stop - start, *self._described.shape[1:])

    @property
    def keys(self) -> tuple[str, ...]:
        """The cache keys of the blocks holding these rows (as ``Cache.entries`` lists them)."""
        return block_keys(self._described, *self._rows)

    @property
    def block_rows(self) -> int | None:
        """Rows per cache block of the dataset, ``None`` when blocks cut rows (odd row sizes)."""
        row, size = self._described.row_nbytes, self._described.block
        return size // row if row and size % row == 0 else None

    @property
    def generation(self) -> str:
        """The generation of the dataset the handle last saw (it follows newer ones)."""
        return self._described.generation

    @property
    def version(self) -> int:
        """The dataset's version the handle last saw (it follows newer ones)."""
        return self._described.version

    @property
    def cache_directory(self) -> str | None:
        """The directory of the cache named by the store's ``cache=``, or None for the default.

        With None, each process uses its own default cache (``SHMSTORE_DIR``, ...).
        """
        return self._cache_directory

    @property
    def cache_budget(self) -> int | None:
        """The budget in bytes of the cache named by the store's ``cache=``, or None."""
        return self._cache_budget

    @property
    def is_pinned(self) -> bool:
        """Whether :meth:`pin` keeps a mapping of the slice in this process."""
        return self._pinned is not None

    @property
    def cache(self) -> Cache:
        """The node cache this handle's slice lives in, in the process using it.

        A handle made by a store opened with an explicit ``cache=`` names that
        cache's directory and budget; otherwise it uses each process's default
        cache (``SHMSTORE_DIR``, ``$JOB_SHMTMPDIR/shmstore``, ...), so a handle
        sent to a worker on another node resolves to that node's cache.
        """
        cache = self._cache
        if cache is None:
            cache = self._cache = cache_for(self._cache_directory, self._cache_budget)
        return cache

    def part(self, start: int, stop: int) -> Handle:
        """A handle of rows ``[start, stop)`` of this handle's dataset, as this one last saw it.

        Rows count from the dataset's first row, not from this handle's.
        Nothing is opened or loaded.

        :param start: the first row.
        :param stop: the row after the last (``start <= stop``).
        :returns: a new handle, of the same dataset version and cache.
        :raises RowsError: the rows are not within the dataset as last seen.
        """
        if not 0 <= start <= stop <= self._described.shape[0]:
            raise RowsError(
                f"rows {start}:{stop} are outside {self.name!r}, which had "
                f"{self._described.shape[0]} rows when this handle last saw it"
            )
        return Handle(
            described=self._described,
            rows=(start, stop),
            cache_directory=self._cache_directory,
            cache_budget=self._cache_budget,
        )

    def __dask_tokenize__(self) -> tuple[str, str, str, int, int, str | None, int | None]:
        # Dask names tasks by a token of their arguments: equal handles give equal
        # tokens, and a new generation of the rows gives a new one.
        start, stop = self._rows
        d = self._described
        return ("shmstore.Handle", d.prefix, d.generation, start, stop, *self._cache_args)

    @property
    def _cache_args(self) -> tuple[str | None, int | None]:
        return self._cache_directory, self._cache_budget

    def __repr__(self) -> str:
        start, stop = self.rows
        return (
            f"<shmstore.Handle {self.name!r}[{start}:{stop}] of {str(self.path)!r}, "
            f"{self.shape} {self.dtype}, version {self.version}>"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_pinned"] = None  # a mapping belongs to one process
        state["_cache"] = None  # so does the cache: another node's may be elsewhere
        # The keys of the rows' blocks, so that the worker's first view need
        # not compute them (a few hundred bytes, for a few blocks only).
        state["_plan"] = carried_plan(self._described, *self._rows)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        plan = state.pop("_plan", None)
        self.__dict__.update(state)
        if plan is not None:
            adopt_plan(self._described, *self._rows, plan)

    def is_current(self) -> bool:
        """True while every file of the slice is as the handle saw it (one ``stat`` each).

        False once a write, append or delete changed the dataset's file, or
        the file was replaced: :meth:`view` then serves the new version.
        A file that is gone is not current: this never raises.
        """
        return self._described.current()

    def cached(self) -> np.ndarray[Any, Any] | None:
        """The node's copy of the rows, mapped read-only, if it is cached and current; never loads.

        ``None`` when the node does not hold every block of the rows (never
        loaded, or evicted), or the files changed since the handle was made.

        :returns: a read-only :class:`numpy.ndarray` of shape :attr:`shape`, or ``None``.
        :raises SegmentError: a cached block cannot be mapped (a damaged block
            file, or no address space left for the mapping).
        """
        return self._current()

    def _current(self) -> np.ndarray[Any, Any] | None:
        """The node's copy, if the files are unchanged and it is cached; never loads."""
        if not self._described.current():
            return None
        return view_rows(self.cache, self._described, *self._rows, None)

    def _array(self, mode: ViewMode) -> np.ndarray[Any, Any]:
        if self._pinned is not None and mode in ("auto", "shared") and self.is_current():
            return self._pinned
        if mode in ("auto", "shared"):
            found = self._current()
            if found is not None:
                return found
        from ._serving import open_views

        start, stop = self.rows
        try:
            store = open_views(self.path, self.cache)
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
            array, described = store.view_array(self.name, (start, stop), mode)
        if described is not None:
            self._described = described
            if self._pinned is not None:
                # The pin follows the generation now served.
                self._pinned = array
        return array

    def view(self, mode: ViewMode = "auto") -> AbstractContextManager[np.ndarray[Any, Any]]:
        """Map the node's copy of the rows (loading it once per node if absent)::

            with handle.view() as arr:
                total = arr.sum()

        The array is read-only.  Modes are those of :meth:`Store.view`.  When
        the files changed since the handle was made, the rows of the current
        version are served.

        :param mode: where the array comes from, as for :meth:`Store.view`;
            default ``"auto"``.
        :returns: a context manager; ``with ... as arr`` gives a read-only
            :class:`numpy.ndarray` of shape :attr:`shape`.
        :raises StoreNotFoundError: the HDF5 file is gone.
        :raises ArrayNotFoundError: the dataset was deleted.
        :raises RowsError: the dataset shrank below this handle's rows.
        :raises CacheFullError: mode ``"shared"`` and no room in the cache.
        :raises NotContiguousError: mode ``"memmap"`` on a chunked dataset.
        :raises IntegrityError: the rows loaded do not match their checksums.
        :raises ArgumentError: an unknown *mode*.
        """
        return Within(self._array(mode))

    def pin(self) -> np.ndarray[Any, Any]:
        """Keep one mapping of the slice for the life of this process (or :meth:`unpin`).

        A pinned segment is in use: the cache never evicts it.
        When the files change, the next shared view maps the new version and
        the pin moves to it (the old mapping is dropped).

        :returns: the pinned array: read-only, of shape :attr:`shape`.
        :raises StoreNotFoundError: the HDF5 file is gone.
        :raises ArrayNotFoundError: the dataset was deleted.
        :raises RowsError: the dataset shrank below this handle's rows.
        :raises CacheFullError: no room in the cache.
        :raises IntegrityError: the rows loaded do not match their checksums.
        """
        self._pinned = self._array("shared")
        return self._pinned

    def unpin(self) -> None:
        """Drop the mapping kept by :meth:`pin` (the segment stays cached, evictable).

        Does nothing for a handle that is not pinned; never raises.
        """
        self._pinned = None
