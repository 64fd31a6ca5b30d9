import multiprocessing

import numpy as np

import shmstore


def column_sums(handle: shmstore.Handle) -> list[float]:
    # Runs in a worker: maps the node's copy (microseconds once it is loaded).
    with handle.view() as arr:
        return [round(float(s), 3) for s in arr.sum(axis=0)]


if __name__ == "__main__":  # required with spawn: workers import this module
    rng = np.random.default_rng(1)
    activations = rng.standard_normal((40_000, 4))  # 1,280,000 bytes
    with shmstore.open("data.h5", mode="w") as store:
        store.write("activations", activations)

    with shmstore.open("data.h5") as store:
        handle = store.handle("activations", rows=(0, 20_000))  # small and picklable
    print("handle of rows", handle.rows, "in", len(handle.keys), "block")

    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(column_sums, [handle] * 4)  # 4 tasks in 2 worker processes
    for sums in results:
        print(sums)
