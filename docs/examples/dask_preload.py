import numpy as np
from distributed import Client, LocalCluster

import shmstore
import shmstore.dask


def pins() -> list[str]:
    """What this worker keeps mapped."""
    return [f"{h.name} rows {h.rows}" for h in shmstore.dask.pinned()]


def lookup_mean(handle: shmstore.Handle) -> float:
    lookup = shmstore.dask.attach(handle)  # already mapped: the plugin pinned it
    return float(lookup.mean())


if __name__ == "__main__":  # worker processes are started anew: they import this file
    lookup = np.linspace(0.0, 1.0, 80_000).reshape(10_000, 8)
    with shmstore.open("model.h5", mode="w") as store:
        store.write("lookup", lookup, chunks=(1_000, 8), compression="gzip")

    cluster = LocalCluster(n_workers=2, threads_per_worker=2, dashboard_address=":0")
    with cluster, Client(cluster) as client:
        # Every worker, those running now and those that start later, loads
        # rows 0 to 4999 of "lookup" when it starts, and keeps them mapped.
        preload = shmstore.dask.Preload("model.h5", {"lookup": (0, 5_000)})
        client.register_plugin(preload)
        print("each worker pins:", sorted(client.run(pins).values()))

        # One copy on the node, mapped by both workers: a block of 64 MiB holds
        # all 10,000 rows of this dataset, so the block is all of it.
        cache = shmstore.Cache()  # the node's cache, which the workers share
        print("cached:", [(e.dataset, e.rows, e.in_use) for e in cache.entries()])

        with shmstore.open("model.h5") as store:
            handle = store.handle("lookup", rows=(0, 5_000))
        print("mean:", round(client.submit(lookup_mean, handle).result(), 6))
