import json

import numpy as np

# was: from data_base.isf_data_base.IO.LoaderDumper import shared_numpy_store
from shmstore import shared_numpy_store

voltages = np.arange(3_000.0).reshape(1_000, 3)

store = shared_numpy_store.SharedNumpyStore("arrays")
store.save(voltages[:600], "voltages")  # saved appendable: append_save works after it
store.append_save(voltages[600:], "voltages")
print(store.names(), "in", store.path.name)  # no name__shape__dtype files

shared = store.load("voltages", start_row=0, end_row=500, allow_create_shm=True)
print("shared:", shared.shape, "writeable:", shared.flags.writeable)
again = store.load("voltages", start_row=0, end_row=500)
print("the same call gives the same array:", again is shared)

print("memmap:", store.load("voltages", mode="memmap")[-1])
private = store.load("voltages", mode="memory")  # a private, writeable copy
private[0, 0] = -1.0

# Every fixed-size dtype, as the original saved them: here text and datetimes.
store.save(np.array(["soma", "dendrite", "axon"], dtype="<U8"), "labels")
store.save(np.array(["2026-05-01T12:00"], dtype="<M8[m]"), "started")
try:
    store.load("labels")  # nobody loaded it into shared memory yet
except shared_numpy_store.NotInSharedMemoryError as err:  # a ValueError, as before
    print("NotInSharedMemoryError:", err)
print(store.load("labels", allow_create_shm=True))
print(store.load("started", mode="memory"))

# Named arrays from numpy (or empty) are writable, as the original's were:
# an output buffer that worker processes attach by name and fill in place.
handle, results = shared_numpy_store.shared_array_empty((4, 3), "f8", "results")
_, in_a_worker = shared_numpy_store.shared_array_from_shared_mem_name("results")
in_a_worker[2] = 7.0  # in a real job: in another process of the node
print("results:", results[2])  # the same pages
handle.unlink()  # named arrays live until unlinked (or evict/gc once unmapped)

# dump writes Loader.json (JSON, never a pickle); the data base's own load
# step, Loader(**rest).get(savedir), gives the store back.
shared_numpy_store.dump(store, "arrays")
with open("arrays/Loader.json") as f:
    description = json.load(f)
print(description)
del description["Loader"]
loaded = shared_numpy_store.Loader(**description).get("arrays")
print("loaded back:", loaded.load("voltages", mode="memory").shape)
store.close()  # flushes pending rows, frees shared copies no process maps
