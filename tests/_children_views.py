"""Functions run in spawned worker processes by the view and handle tests.

They live in an importable module so that ``multiprocessing`` with the
``spawn`` start method can find them.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np

import shmstore


def view_rows(handle: Any) -> tuple[int, float, bool]:
    """View *handle* in this process: (pid, sum of the rows, writeable flag)."""
    with handle.view() as arr:
        return (
            os.getpid(),
            float(np.asarray(arr, dtype=np.float64).sum()),
            bool(arr.flags.writeable),
        )


def try_to_write(handle: Any) -> str:
    """Try to change the shared rows; return the error's type name, or "" if it worked."""
    with handle.view("shared") as arr:
        try:
            arr[0] = 12345
        except (ValueError, TypeError) as err:
            return type(err).__name__
    return ""


def _anonymous_kib() -> int:
    with open("/proc/self/smaps_rollup", encoding="ascii") as rollup:
        for line in rollup:
            if line.startswith("Anonymous:"):
                return int(line.split()[1])
    return 0


def load_and_measure(path: str, name: str, cache_dir: str) -> tuple[int, int]:
    """Load all of *name* into the cache; return (peak growth of private memory, slice bytes).

    Private memory is the process's anonymous memory (heap, buffers, private
    copies), sampled every millisecond while the load runs; the shared
    segment is file-backed memory and does not count.
    """
    cache = shmstore.Cache(directory=cache_dir)
    with shmstore.open(path, cache=cache) as store:
        info = store.info(name)
        baseline = _anonymous_kib()
        peak = baseline
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _anonymous_kib())
                time.sleep(0.001)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            with store.view(name, mode="shared") as arr:
                nbytes = arr.nbytes
        finally:
            done.set()
            sampler.join()
        peak = max(peak, _anonymous_kib())
    assert nbytes == info.nbytes
    return (peak - baseline) * 1024, nbytes


def view_bytes(handle: Any) -> tuple[str, bytes]:
    """View *handle* in this process: the rows' dtype (``str``) and their bytes."""
    with handle.view("shared") as arr:
        return arr.dtype.str, arr.tobytes()
