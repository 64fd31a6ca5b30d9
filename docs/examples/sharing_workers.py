"""Send a handle to worker processes; each maps the node's copy of the slice.

Run ``python sharing_workers.py [DIRECTORY]``.  Uses multiprocessing with
the ``spawn`` start method, which is what clusters and macOS/Windows use and
which the pickled handle is made for.
"""

import multiprocessing
import sys
import tempfile
from pathlib import Path

import numpy as np

import shmstore


def column_sums(handle: shmstore.Handle) -> list[float]:
    """Runs in a worker: attach to the node's copy (microseconds), compute, detach."""
    with handle.view() as arr:
        return arr.sum(axis=0).tolist()


def main() -> None:
    directory = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
    path = directory / "data.h5"
    activations = np.random.default_rng(1).standard_normal((40_000, 4))  # 1.28 MB

    with shmstore.open(path, mode="w") as store:
        store.write("activations", activations)

    with shmstore.open(path) as store:
        handle = store.handle("activations", rows=(0, 20_000))  # small and picklable
        print("handle rows:", handle.rows, "cache blocks:", handle.keys)

    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(column_sums, [handle] * 4)

    expected = activations[:20_000].sum(axis=0)
    for sums in results:
        np.testing.assert_allclose(sums, expected)
    print(f"{len(results)} tasks, sums {np.round(results[0], 3)}")
    print("ok: tasks in 2 spawned workers summed the same shared slice")


if __name__ == "__main__":  # required with spawn: workers import this module
    main()
