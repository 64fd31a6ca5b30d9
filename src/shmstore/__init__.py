"""shmstore: numpy arrays in HDF5 files, shared between the processes of one node.

Open a store with :func:`open`, which returns a :class:`Store`; its views
and handles give rows of a dataset from the node's shared copy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._signals import Uninterruptible
from .errors import (
    ArgumentError,
    ArrayNotFoundError,
    CacheFullError,
    IntegrityError,
    InvalidStoreError,
    LayoutError,
    LockTimeoutError,
    ManifestError,
    NotContiguousError,
    ReadOnlyError,
    RowsError,
    SegmentError,
    SegmentExistsError,
    SegmentNotFoundError,
    ShmStoreError,
    StoreNotFoundError,
    UnsupportedDtypeError,
)

if TYPE_CHECKING:
    from . import shared_numpy_store
    from ._cache import Cache, CacheAction, CacheEntry
    from ._handle import Handle
    from ._opening import Mode
    from ._rows import RowsLike
    from ._serving import ViewMode
    from ._store import Store
    from ._store import open_store as open
    from .manifest import ArrayInfo, Checksums, Manifest

# Imported on first use (PEP 562): h5py, pydantic and filelock take most of the
# time of an import, and a program that only catches shmstore's errors, or
# only passes handles around, should not pay for them.
_LAZY = {
    "ArrayInfo": (".manifest", "ArrayInfo"),
    "Cache": ("._cache", "Cache"),
    "CacheAction": ("._cache", "CacheAction"),
    "CacheEntry": ("._cache", "CacheEntry"),
    "Checksums": (".manifest", "Checksums"),
    "Handle": ("._handle", "Handle"),
    "Manifest": (".manifest", "Manifest"),
    "Mode": ("._opening", "Mode"),
    "RowsLike": ("._rows", "RowsLike"),
    "ViewMode": ("._serving", "ViewMode"),
    "Store": ("._store", "Store"),
    "open": ("._store", "open_store"),
    "shared_numpy_store": (".shared_numpy_store", ""),
}


def __getattr__(name: str) -> Any:
    try:
        module_name, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'shmstore' has no attribute {name!r}") from None
    module = importlib.import_module(module_name, __name__)
    value = getattr(module, attribute) if attribute else module
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


#: The installed version of shmstore, a :pep:`440` version string.
__version__ = "0.2.0.dev0"

__all__ = [
    "ArgumentError",
    "ArrayInfo",
    "ArrayNotFoundError",
    "Cache",
    "CacheAction",
    "CacheEntry",
    "CacheFullError",
    "Checksums",
    "Handle",
    "IntegrityError",
    "InvalidStoreError",
    "LayoutError",
    "LockTimeoutError",
    "Manifest",
    "ManifestError",
    "Mode",
    "NotContiguousError",
    "ReadOnlyError",
    "RowsError",
    "RowsLike",
    "SegmentError",
    "SegmentExistsError",
    "SegmentNotFoundError",
    "ShmStoreError",
    "Store",
    "StoreNotFoundError",
    "Uninterruptible",
    "UnsupportedDtypeError",
    "ViewMode",
    "__version__",
    "open",
    "shared_numpy_store",
]
