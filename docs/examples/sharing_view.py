import numpy as np

import shmstore

activations = np.arange(400_000.0).reshape(50_000, 8)  # 3,200,000 bytes
with shmstore.open("data.h5", mode="w") as store:
    store.write("activations", activations)

# The node's cache: $SHMSTORE_DIR, else $JOB_SHMTMPDIR/shmstore,
# else /dev/shm/shmstore-<uid>
cache = shmstore.Cache()
with shmstore.open("data.h5", cache=cache) as store:
    with store.view("activations", rows=(0, 10_000), mode="shared") as arr:
        # Read-only: every process of the node maps these same pages.
        print(arr.shape, "writeable:", arr.flags.writeable)
        for entry in cache.entries():
            print(f"cached: {entry.dataset} rows {entry.rows}, in use: {entry.in_use}")

    # The same rows again: mapped from the cache, no HDF5 read.
    with store.view("activations", rows=(0, 10_000)) as arr:  # mode "auto"
        print("sum of the slice:", float(arr.sum()))

    with store.view("activations", rows=(0, 2), mode="memmap") as arr:  # from the file
        print(arr)
    with store.view("activations", rows=(0, 2), mode="memory") as arr:  # a private copy
        print(arr)

for entry in cache.entries():  # no view is open now: the block may be evicted
    print(f"cached: {entry.dataset} rows {entry.rows}, in use: {entry.in_use}")
