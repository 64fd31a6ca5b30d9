import pickle

import numpy as np
from distributed import Client, LocalCluster

import shmstore
import shmstore.dask


def row_sum(row: int, handle: shmstore.Handle) -> float:
    weights = shmstore.dask.attach(handle)  # mapped once per worker, then reused
    return float(weights[row].sum())


def pins() -> list[str]:
    """What this worker keeps mapped."""
    return [f"{h.name} rows {h.rows}" for h in shmstore.dask.pinned()]


if __name__ == "__main__":  # worker processes are started anew: they import this file
    weights = np.random.default_rng(0).random((10_000, 64))  # 5,120,000 bytes
    with shmstore.open("model.h5", mode="w") as store:
        store.write("weights", weights)
        handle = store.handle("weights")  # rows of a dataset: no data inside
    print("a handle pickles to", len(pickle.dumps(handle)), "bytes")

    cluster = LocalCluster(n_workers=2, threads_per_worker=2, dashboard_address=":0")
    with cluster, Client(cluster) as client:
        futures = client.map(row_sum, range(100), handle=handle)
        sums = client.gather(futures)
        print("first sums:", np.round(sums[:3], 6))
        print("numpy says:", np.round(weights[:3].sum(axis=1), 6))
        print("each worker pins:", sorted(client.run(pins).values()))

    # The node's cache held one copy, which both workers mapped.
    cache = shmstore.Cache()  # $SHMSTORE_DIR, or /dev/shm/shmstore-<uid>
    print("cached:", [(e.dataset, e.rows, e.nbytes) for e in cache.entries()])
