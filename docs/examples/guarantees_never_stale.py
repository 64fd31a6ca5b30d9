import h5py
import numpy as np

import shmstore

with shmstore.open("data.h5", mode="w") as store:
    store.write("data", np.zeros((1_000, 4)))
    handle = store.handle("data", rows=(0, 100))

with handle.view() as arr:
    try:
        arr[0, 0] = 1.0  # nobody writes into the node's shared copy
    except ValueError as err:
        print("ValueError:", err)
    print("rows 0 to 99 hold", np.unique(arr))

with shmstore.open("data.h5", mode="a") as store:  # a change through shmstore
    store.write("data", np.ones((1_000, 4)), overwrite=True)
with handle.view() as arr:  # the same handle serves the new version
    print("after the write:", np.unique(arr))

# A change by another tool: shmstore sees that the file changed, and the new
# bytes do not match the checksums recorded when "data" was written: an
# error, never the old rows, never unchecked new ones.
with h5py.File("data.h5", "r+") as f:
    f["data"][:100] = 2.0
try:
    with handle.view() as arr:
        pass
except shmstore.IntegrityError as err:
    print("IntegrityError:", err)

# The change was on purpose: record checksums of the data as it is now.
with shmstore.open("data.h5", mode="a") as store:
    store.seal("data")
with handle.view() as arr:
    print("after seal:", np.unique(arr))
