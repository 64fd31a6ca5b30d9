"""Functions run in spawned processes by the ``shared_numpy_store`` tests.

They live in an importable module so that ``multiprocessing`` with the
``spawn`` start method can find them.  Each returns plain values, so the
parent can compare what every process saw.
"""

from __future__ import annotations

import os
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Any

import numpy as np

import shmstore
from shmstore import shared_numpy_store as sns


def _segment_origin(cache: shmstore.Cache, key: str) -> tuple[int, float, int]:
    """Who loaded segment *key* and when, and its inode: the same for every process of one load."""
    header = cache.header(key)
    inode = os.stat(cache.directory / f"{key}.seg").st_ino
    return header.creator_pid, header.created, inode


def load_shared_at_once(  # noqa: PLR0917 - a spawn target, called with positional args
    working_dir: str,
    name: str,
    rows: tuple[int | None, int | None],
    cache: shmstore.Cache,
    barrier: Barrier,
    results: Queue[Any],
) -> None:
    """Wait for the others, then load *rows* of *name* with ``allow_create_shm=True``.

    Puts the rows, whether they are writeable, and the origin of the
    segment they are mapped from on *results*.
    """
    store = sns.SharedNumpyStore(working_dir, cache=cache)
    barrier.wait()
    arr = store.load(name, start_row=rows[0], end_row=rows[1], allow_create_shm=True)
    with shmstore.open(store.path) as opened:
        (key,) = opened.handle(name, rows).keys
    results.put((arr.ravel().tolist(), bool(arr.flags.writeable), _segment_origin(cache, key)))


def from_disk_at_once(
    path: str, name: str | None, cache: shmstore.Cache, barrier: Barrier, results: Queue[Any]
) -> None:
    """Wait for the others, then ``shared_array_from_disk(path, name=name)``; put what it gave."""
    barrier.wait()
    handle, arr = sns.shared_array_from_disk(path, name=name, cache=cache)
    results.put((handle.name, arr.ravel().tolist(), _segment_origin(cache, handle.key)))


def attach_by_name(name: str, cache: shmstore.Cache) -> tuple[list[float], bool, str]:
    """Attach *name* by name in this process: its values, whether writeable, its dtype."""
    _, arr = sns.shared_array_from_shared_mem_name(name, cache=cache)
    return arr.ravel().tolist(), bool(arr.flags.writeable), str(arr.dtype)


def sum_of_handle(handle: Any) -> float:
    """The sum of the array a pickled :class:`SharedArrayHandle` attaches in this process."""
    return float(np.frombuffer(handle.buf, dtype=handle.dtype).sum())


def load_attached_only(
    working_dir: str, name: str, cache: shmstore.Cache
) -> tuple[list[float], bool]:
    """A worker that must not load: ``load(name)`` with ``allow_create_shm=False``."""
    arr = sns.SharedNumpyStore(working_dir, cache=cache).load(name)
    return arr.ravel().tolist(), bool(arr.flags.writeable)


def save(working_dir: str, name: str, values: list[float]) -> None:
    """Save *values* as *name* from another process."""
    sns.SharedNumpyStore(working_dir).save(np.asarray(values), name)


def hold_writer_lock(store_path: str, ready: Any, release: Any) -> None:
    """Open the store for writing (its exclusive lock), say so, and hold it until told."""
    with shmstore.open(store_path, "a"):
        ready.set()
        release.wait(60)


def fill_rows(name: str, cache: shmstore.Cache, start: int, stop: int) -> bool:
    """Attach the named array *name* as it was made and write row index i into rows [start, stop).

    Returns whether the array was writable (the parent checks the rows).
    """
    handle, arr = sns.shared_array_from_shared_mem_name(name, cache=cache)
    for row in range(start, stop):
        arr[row] = row
    writable = handle.writable
    handle.close()
    return writable


def attach_writable(name: str, cache: shmstore.Cache) -> str:
    """Attach *name* with ``writable=True``: "" if that worked, else the error's class names."""
    try:
        sns.shared_array_from_shared_mem_name(name, writable=True, cache=cache)
    except Exception as err:  # the parent compares the class names
        return " ".join(cls.__name__ for cls in type(err).__mro__[:3])
    return ""


def make_named_and_exit(name: str, cache: shmstore.Cache) -> str:
    """Make the writable named array *name* (zeros) and return its key; the process then exits."""
    handle, arr = sns.shared_array_empty((4, 2), "<i8", name, cache=cache)
    arr[:] = 7
    return handle.key


def hold_named(name: str, cache: shmstore.Cache, ready: Any, release: Any) -> None:
    """Map the named array *name*, say so, and keep it mapped until told."""
    _, arr = sns.shared_array_from_shared_mem_name(name, cache=cache)
    ready.set()
    release.wait(60)
    del arr
