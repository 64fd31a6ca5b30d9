"""Handles as Dask task arguments, and a worker plugin that preloads a slice.

Run ``python dask_handles.py [DIRECTORY]`` (needs ``pip install 'shmstore[dask]'``).
Starts a local cluster of 2 worker processes; every task maps the node's one
copy of the slice.
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
from distributed import Client, LocalCluster

import shmstore
import shmstore.dask


def row_sum(row: int, handle: shmstore.Handle) -> float:
    weights = shmstore.dask.attach(handle)  # mapped once per worker, then reused
    return float(weights[row].sum())


if __name__ == "__main__":  # worker processes are spawned: they import this file
    directory = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
    path = directory / "model.h5"
    weights = np.random.default_rng(0).random((10_000, 64))  # 5,120,000 bytes
    with shmstore.open(path, mode="w") as store:
        store.write("weights", weights)
        store.write("lookup", weights[:, :8], chunks=(1_000, 8), compression="gzip")

    with (
        LocalCluster(n_workers=2, threads_per_worker=2, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        # Every worker, present or future, loads rows 0:5000 of "lookup" at start:
        # once per node, however many workers start there.
        client.register_plugin(shmstore.dask.Preload(path, {"lookup": (0, 5_000)}))

        with shmstore.open(path) as store:
            handle = store.handle("weights")  # well under 1 KB to send
        futures = client.map(row_sum, range(100), handle=handle)
        sums = client.gather(futures)

    np.testing.assert_allclose(sums, weights[:100].sum(axis=1))
    cache = shmstore.Cache()  # the node's cache: $SHMSTORE_DIR, or /dev/shm/shmstore-<uid>
    copies = [e for e in cache.entries() if e.path == str(path)]
    # Each dataset is one block (under 64 MiB): lookup's block holds all its rows.
    assert sorted((e.dataset, e.rows) for e in copies) == [
        ("lookup", (0, 10_000)),
        ("weights", (0, 10_000)),
    ]
    print(f"{len(sums)} tasks on 2 workers; {len(copies)} blocks in {cache.directory.name}")
    print("ok: 100 tasks used one copy of the slice per node")
