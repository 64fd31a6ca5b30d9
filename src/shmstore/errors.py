"""The exceptions shmstore raises.

Every error derives from :class:`ShmStoreError` and from the builtin exception a
user would already catch (``except KeyError`` keeps working for a missing
array).  Errors pickle, so a worker process can raise one and its parent
receives the same type and message.
"""

from __future__ import annotations

__all__ = [
    "ArgumentError",
    "ArrayNotFoundError",
    "CacheFullError",
    "IntegrityError",
    "InvalidStoreError",
    "LayoutError",
    "LockTimeoutError",
    "ManifestError",
    "NotContiguousError",
    "ReadOnlyError",
    "RowsError",
    "SegmentError",
    "SegmentExistsError",
    "SegmentNotFoundError",
    "ShmStoreError",
    "StoreNotFoundError",
    "UnsupportedDtypeError",
]


class ShmStoreError(Exception):
    """Base of every error shmstore raises.

    The message is the single argument, so ``pickle`` round-trips every
    subclass even where a builtin parent (``OSError``, ``KeyError``) would
    otherwise reinterpret its arguments.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[type[ShmStoreError], tuple[str]]:
        return (type(self), (self.message,))

    def __str__(self) -> str:
        return self.message


class ArgumentError(ShmStoreError, ValueError):
    """An argument is invalid: a dataset name, a mode, a filter, an existing name."""


class StoreNotFoundError(ShmStoreError, FileNotFoundError):
    """The HDF5 file does not exist (mode "r" or "r+")."""


class InvalidStoreError(ShmStoreError, OSError):
    """The file is not HDF5, is truncated, or is damaged."""


class IntegrityError(InvalidStoreError):
    """Stored data do not match the checksums recorded when they were written.

    Raised before the data reach a caller or the cache: the message names
    the file, the dataset, the rows and the byte range affected.
    """


class ManifestError(ShmStoreError, ValueError):
    """The manifest is unreadable, invalid, or disagrees with the datasets."""


class ArrayNotFoundError(ShmStoreError, KeyError):
    """No dataset of that name is in the store."""


class RowsError(ShmStoreError, IndexError, ValueError):
    """A row range is outside the dataset, has a step, or is of the wrong type."""


class LayoutError(ShmStoreError, ValueError):
    """The dataset's storage layout does not allow the operation."""


class NotContiguousError(LayoutError):
    """A memory map was asked of a dataset that is chunked, compressed or compact."""


class UnsupportedDtypeError(ShmStoreError, TypeError):
    """The dtype cannot be stored or served (object, variable-length, references, ...)."""


class SegmentError(ShmStoreError, OSError):
    """A cache file is damaged, foreign, or unsafe to map."""


class SegmentExistsError(SegmentError, FileExistsError):
    """The cache holds a segment of that key already (a named array is made once)."""


class SegmentNotFoundError(ShmStoreError, KeyError, FileNotFoundError):
    """The cache holds no segment of that key (never loaded, or evicted).

    Also a ``FileNotFoundError``, as a missing shared-memory object is for
    ``multiprocessing.shared_memory``.
    """


class CacheFullError(ShmStoreError, OSError):
    """The cache has no room for a slice and nothing can be evicted."""


class ReadOnlyError(ShmStoreError, PermissionError):
    """A write was asked of a store opened read-only."""


class LockTimeoutError(ShmStoreError, TimeoutError):
    """Another process held a lock longer than the timeout allowed."""
