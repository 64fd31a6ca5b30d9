"""What the block tests run in separate processes (spawned: importable functions only)."""

from __future__ import annotations

from typing import Any

import numpy as np

import shmstore


def view_at_the_barrier(path: str, cache_dir: str, name: str, barrier: Any, results: Any) -> None:
    """Wait at *barrier*, view all rows of *name*; report who made each block and the data."""
    cache = shmstore.Cache(cache_dir)
    with shmstore.open(path, cache=cache) as store:
        handle = store.handle(name)
        barrier.wait()
        with handle.view("shared") as arr:
            made = tuple(
                (cache.header(key).creator_pid, cache.header(key).created) for key in handle.keys
            )
            results.put((made, arr.copy()))


def load_everything(path: str, cache_dir: str, name: str) -> None:
    """View all rows of *name* (loading them) and exit: the test kills it on the way."""
    cache = shmstore.Cache(cache_dir)
    with shmstore.open(path, cache=cache) as store, store.view(name, mode="shared"):
        pass


def hold_rows(path: str, cache_dir: str, name: str, rows: Any, events: Any) -> None:
    """Map rows *rows* of *name*, set the first of *events*, hold until the second is set."""
    ready, done = events
    cache = shmstore.Cache(cache_dir)
    with shmstore.open(path, cache=cache) as store, store.view(name, rows, mode="shared"):
        ready.set()
        done.wait(60)


def sum_of_rows(handle: Any) -> float:
    """A worker's use of a handle: the sum of its rows, read from the node's blocks."""
    with handle.view("shared") as arr:
        return float(np.asarray(arr, dtype=np.float64).sum())
