"""What the modules of the seed API share: its file names, errors and reports.

:mod:`shmstore.shared_numpy_store` exports them; the default cache is here
too, as named arrays and stores both take ``cache=None``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from ._cache import Cache
from ._handle import cache_for
from .errors import (
    ArrayNotFoundError,
    SegmentExistsError,
    SegmentNotFoundError,
    ShmStoreError,
)

STORE_FILE = "shared_numpy_store.h5"
"""The HDF5 file of a :class:`SharedNumpyStore`, inside its working directory."""

LOADER_FILE = "Loader.json"
"""The loader description :func:`dump` writes and :meth:`Loader.get` reads."""


# -- errors -------------------------------------------------------------------------


class NotInSharedMemoryError(SegmentNotFoundError, ValueError):
    """``load(..., mode="shared_memory", allow_create_shm=False)`` found no copy on the node.

    A ``ValueError`` as in the original, and a :class:`~shmstore.SegmentNotFoundError`.
    """


class ArrayNotInStoreError(ArrayNotFoundError, ValueError):
    """No array of that name was saved: a ``KeyError`` and, as in the original, a ``ValueError``."""


class SharedArrayExistsError(SegmentExistsError):
    """A shared array of that name exists already (with other contents): a ``FileExistsError``."""


class OriginalNotImportedError(ShmStoreError, FileExistsError):
    """A file of the original module holds the array being written, and it is not imported.

    Writing the name would hide the file's rows: run
    :meth:`SharedNumpyStore.import_original` first.
    """


# -- what import_original did ----------------------------------------------------------

Outcome = Literal["imported", "skipped", "refused"]


class OriginalFile(BaseModel):
    """One file of the original module, and what :meth:`SharedNumpyStore.import_original` did.

    :param file: the file's name in the working directory.
    :param name: the array its name says it holds (``None`` when it says none).
    :param outcome: ``"imported"``, ``"skipped"`` (in the store already, or
        no array) or ``"refused"`` (an array that cannot be imported until
        fixed; :attr:`reason` says what to do).
    :param reason: why, in words.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    file: str
    name: str | None
    outcome: Literal["imported", "skipped", "refused"]
    reason: str


class ImportReport(BaseModel):
    """What :meth:`SharedNumpyStore.import_original` did with each file, by file name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    files: tuple[OriginalFile, ...] = ()

    @property
    def imported(self) -> list[str]:
        """The names of the arrays imported, sorted."""
        return sorted(f.name for f in self.files if f.outcome == "imported" and f.name)

    @property
    def skipped(self) -> list[OriginalFile]:
        """The files skipped: arrays in the store already, and files that hold no array."""
        return [f for f in self.files if f.outcome == "skipped"]

    @property
    def refused(self) -> list[OriginalFile]:
        """The files that could not be imported, each with what to do."""
        return [f for f in self.files if f.outcome == "refused"]

    def __str__(self) -> str:
        if not self.files:
            return "no files of the original shared_numpy_store"
        return "\n".join(f"{f.file}: {f.outcome} ({f.reason})" for f in self.files)


# -- shared arrays by name ---------------------------------------------------------


def default_cache(cache: Cache | None) -> Cache:
    return cache_for(None, None) if cache is None else cache
