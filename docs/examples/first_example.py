import multiprocessing

import numpy as np

import shmstore


def mean_of_rows(handle: shmstore.Handle) -> float:
    # Runs in a worker process: maps the node's copy of the rows, read-only.
    with handle.view() as rows:
        return float(rows.mean(dtype=np.float64))


if __name__ == "__main__":  # spawned workers import this file: start them only here
    # 100,000 rows of 16 float32: 6,400,000 bytes
    activations = np.arange(1_600_000, dtype=np.float32).reshape(100_000, 16)
    with shmstore.open("data.h5", mode="w") as store:
        store.write("activations", activations)

    with shmstore.open("data.h5") as store:
        # The first view loads the rows into shared memory, once for the whole node.
        with store.view("activations", rows=(0, 50_000)) as rows:
            mean = float(rows.mean(dtype=np.float64))
            print("this process:", rows.shape, rows.dtype, mean)
        # A handle names those rows; it is small and pickles, so it goes to workers.
        handle = store.handle("activations", rows=(0, 50_000))

    with multiprocessing.get_context("spawn").Pool(2) as pool:
        print("workers:", pool.map(mean_of_rows, [handle, handle]))

    # Three processes used the rows; the node's cache holds them once.
    cached = [e for e in shmstore.Cache().entries() if e.dataset == "activations"]
    print("blocks in the node's cache:", len(cached))
