"""shmstore: numpy arrays in HDF5 files, shared between the processes of one node.

Open a store with :func:`open`; see ``DESIGN.md`` for the contract.
"""

from __future__ import annotations

from ._cache import Cache, CacheEntry
from ._handle import Handle
from ._signals import Uninterruptible
from ._store import Store
from ._store import open_store as open
from .errors import (
    ArgumentError,
    ArrayNotFoundError,
    CacheFullError,
    InvalidStoreError,
    LayoutError,
    LockTimeoutError,
    ManifestError,
    NotContiguousError,
    ReadOnlyError,
    RowsError,
    SegmentError,
    SegmentNotFoundError,
    ShmStoreError,
    StoreNotFoundError,
    UnsupportedDtypeError,
)
from .manifest import ArrayInfo, Manifest

__version__ = "0.1.0"

__all__ = [
    "ArgumentError",
    "ArrayInfo",
    "ArrayNotFoundError",
    "Cache",
    "CacheEntry",
    "CacheFullError",
    "Handle",
    "InvalidStoreError",
    "LayoutError",
    "LockTimeoutError",
    "Manifest",
    "ManifestError",
    "NotContiguousError",
    "ReadOnlyError",
    "RowsError",
    "SegmentError",
    "SegmentNotFoundError",
    "ShmStoreError",
    "Store",
    "StoreNotFoundError",
    "Uninterruptible",
    "UnsupportedDtypeError",
    "__version__",
    "open",
]
