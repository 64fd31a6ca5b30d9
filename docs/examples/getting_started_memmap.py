import numpy as np

import shmstore

weights = np.random.default_rng(0).standard_normal((20_000, 16))  # 2,560,000 bytes

with shmstore.open("data.h5", mode="w") as store:
    store.write("weights", weights)  # contiguous
    store.write("weights_gz", weights, compression="gzip")  # chunked

with shmstore.open("data.h5") as store:
    print("weights:", store.info("weights").memory_mappable)
    print("weights_gz:", store.info("weights_gz").memory_mappable)
    mapped = store.memmap("weights", rows=(1_000, 2_000))  # no byte read until touched
    print(mapped.shape, "writeable:", mapped.flags.writeable)  # read-only
    print("same values:", bool((mapped == weights[1_000:2_000]).all()))

    try:
        store.memmap("weights_gz")
    except shmstore.NotContiguousError as err:  # a LayoutError, a ValueError
        print("NotContiguousError:", err)
