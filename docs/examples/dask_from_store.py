import dask
import numpy as np

import shmstore
import shmstore.dask

# 250,000 rows of 8 float32: 8,000,000 bytes
features = np.arange(2_000_000, dtype=np.float32).reshape(250_000, 8)
with shmstore.open("features.h5", mode="w") as store:
    store.write("plain", features)  # contiguous
    store.write("packed", features, chunks=(10_000, 8), compression="gzip")

for name in ("plain", "packed"):
    # Blocks of 50,000 rows (1,600,000 bytes); each is one slice of the node's
    # cache, loaded once per node and mapped by every task that needs it.
    array = shmstore.dask.from_store("features.h5", name, chunks=(50_000, 8))
    print(name, array.shape, array.dtype, array.numblocks, "blocks")
    with dask.config.set(scheduler="threads"):  # or with a distributed Client
        total = array.sum(dtype=np.float64).compute()
        column_means = array[1_000:2_000].mean(axis=0).compute()
    print("  sum:", total)
    print("  means of rows 1000 to 1999:", column_means)
print("numpy:", features.sum(dtype=np.float64), features[1_000:2_000].mean(axis=0))
