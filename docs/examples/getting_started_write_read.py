import numpy as np

import shmstore

activations = np.arange(80_000, dtype=np.float32).reshape(10_000, 8)  # 320,000 bytes
lookup = np.linspace(0.0, 1.0, 5_000).reshape(1_000, 5)

with shmstore.open("data.h5", mode="w") as store:  # "w": create, or truncate
    store.write("activations", activations)  # contiguous: memory-mappable
    store.write("lookup", lookup, compression="gzip")  # chunked and compressed
    # appendable: grows on axis 0
    store.append("run1/spikes", np.arange(40).reshape(10, 4))
    store.append("run1/spikes", np.arange(40, 80).reshape(10, 4))

with shmstore.open("data.h5") as store:  # mode "r" is the default
    print(store.names())  # nested groups as "group/dataset"
    info = store.info("activations")
    print(info.shape, info.dtype, info.layout, info.nbytes, "bytes")

    rows = store.read("activations", rows=slice(100, 102))  # a private, writeable copy
    print(rows)
    last = store.read("activations", rows=(-1, None))  # negative: from the end
    print(last)
    print(store.read("run1/spikes").shape)  # both appends

    try:
        store.read("activations", rows=(9_990, 10_010))  # past the end: never clipped
    except shmstore.RowsError as err:  # also an IndexError
        print("RowsError:", err)
    try:
        store.read("missing")
    except KeyError as err:  # shmstore.ArrayNotFoundError is a KeyError
        print(type(err).__name__, err)
