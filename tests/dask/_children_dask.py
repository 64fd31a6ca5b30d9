"""Functions the Dask tests run in the workers of a ``distributed`` cluster.

They live in an importable module so that worker processes (spawned) find
them by name.  Each returns plain values, so the test can compare what every
worker saw.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

import shmstore
import shmstore.dask as shmdask


def memory() -> tuple[int, int]:
    """This process's ``(RssAnon, RssShmem)`` in bytes: private pages, and shared memory mapped."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssShmem"):
            fields[key] = int(value.split()[0]) * 1024  # reported in kB
    return fields["RssAnon"], fields["RssShmem"]


def sum_rows(task: int, handle: shmstore.Handle, per_task: int) -> tuple[float, int, int, int]:
    """Sum rows ``[task * per_task, (task + 1) * per_task)`` of the handle's array.

    Returns the sum, this process's id, the address of the array's data (one
    per process if the mapping is reused) and this thread's id.
    """
    array = shmdask.attach(handle)
    rows = array[task * per_task : (task + 1) * per_task]
    return (
        float(rows.sum()),
        os.getpid(),
        array.__array_interface__["data"][0],
        threading.get_ident(),
    )


def touch_all(handle: shmstore.Handle) -> float:
    """Read every page of the handle's array in this worker (so that it is mapped in)."""
    return float(shmdask.attach(handle).sum())


def origin_of(handle: shmstore.Handle) -> tuple[int, float, int, str]:
    """Who loaded the node's copy of the handle's rows (pid, time, inode), and which cache holds it.

    The same for every process that maps the copy of one load.
    """
    cache = handle.cache
    header = cache.header(handle.keys[0])
    inode = os.stat(cache.directory / f"{handle.keys[0]}.seg").st_ino
    return header.creator_pid, header.created, inode, str(cache.directory)


def pinned_slices() -> list[tuple[str, tuple[int, int], bool]]:
    """The dataset, rows and "still mapped" of every slice pinned in this process."""
    return [(h.name, h.rows, h.cached() is not None) for h in shmdask.pinned()]


def pid() -> int:
    return os.getpid()


def warm_up(path: str) -> float:
    """Import and run every part a task uses once, so later memory growth is the tasks' own."""
    with shmstore.open(path) as store:
        handle = store.handle("warm")
    total = float(shmdask.attach(handle).sum())
    shmdask.unpin_all()
    return total + float(np.zeros(1).sum())
