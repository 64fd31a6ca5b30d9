"""The API of the ``shared_numpy_store`` module shmstore descends from, on shmstore.

Code written for ``data_base.isf_data_base.IO.LoaderDumper.shared_numpy_store``
keeps working after one change of import::

    from shmstore import shared_numpy_store

Everything here is built on :mod:`shmstore`'s store and node cache, and keeps
their guarantees.  Where this module differs from the original, it is to fix
what the original got wrong:

* A :class:`SharedNumpyStore` keeps its arrays in one HDF5 file,
  ``shared_numpy_store.h5`` in its working directory, every array
  appendable (contiguous, in a raw file beside the HDF5 file), so all three
  load modes work after :meth:`~SharedNumpyStore.save` and after
  :meth:`~SharedNumpyStore.append_save` alike.
* Copies of saved arrays in shared memory (``load(mode="shared_memory")``,
  :func:`shared_array_from_disk`) are read-only: a worker cannot corrupt
  what the other processes of the node see.  Named arrays made from numpy
  or empty (:func:`shared_array_from_numpy`, :func:`shared_array_empty`)
  are writable, as the original's were: output buffers that workers fill
  in place.  Concurrent writes to them are the caller's business.
* A shared copy is never stale: ``load`` checks the files (one ``stat``
  each) and serves the current version after any change, here or in
  another process.
* Jobs that load the same rows at once cause one load; a killed loader
  leaves nothing half written; a full ``/dev/shm`` gives
  :class:`~shmstore.CacheFullError`, never a ``SIGBUS``.
* Errors are exceptions that say what was wrong and what to do, never an
  ``assert``; where the original raised ``ValueError`` (or asserted), the
  error here is a ``ValueError`` too.
* :func:`dump` writes a JSON description (``Loader.json``), never a pickle:
  loading a pickle runs code.
* Shared memory lives in shmstore's cache directory: ``$SHMSTORE_DIR``, else
  ``$JOB_SHMTMPDIR/shmstore`` (SLURM), else ``/dev/shm/shmstore-<uid>``.
"""

from __future__ import annotations

from . import _seed_common
from ._seed_common import (
    ArrayNotInStoreError,
    ImportReport,
    NotInSharedMemoryError,
    OriginalFile,
    OriginalNotImportedError,
    SharedArrayExistsError,
)
from ._seed_loader import Loader, LoaderDescription, check, dump
from ._seed_named import (
    SharedArrayHandle,
    check_filesize_matches_shape,
    get_offset_and_size_in_bytes,
    memmap_from_disk,
    shared_array_empty,
    shared_array_from_disk,
    shared_array_from_numpy,
    shared_array_from_shared_mem_name,
)
from ._seed_store import SharedNumpyStore
from ._signals import Uninterruptible

__all__ = [
    "LOADER_FILE",
    "STORE_FILE",
    "ArrayNotInStoreError",
    "ImportReport",
    "Loader",
    "LoaderDescription",
    "NotInSharedMemoryError",
    "OriginalFile",
    "OriginalNotImportedError",
    "SharedArrayExistsError",
    "SharedArrayHandle",
    "SharedNumpyStore",
    "Uninterruptible",
    "check",
    "dump",
    "memmap_from_disk",
    "shared_array_empty",
    "shared_array_from_disk",
    "shared_array_from_numpy",
    "shared_array_from_shared_mem_name",
]

STORE_FILE = _seed_common.STORE_FILE
"""The HDF5 file of a :class:`SharedNumpyStore`, inside its working directory."""

LOADER_FILE = _seed_common.LOADER_FILE
"""The loader description :func:`dump` writes and :meth:`Loader.get` reads."""

# The original's private helpers, which code written for it may call.
_get_offset_and_size_in_bytes = get_offset_and_size_in_bytes
_check_filesize_matches_shape = check_filesize_matches_shape
