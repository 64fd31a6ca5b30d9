"""Code written for ``shared_numpy_store`` runs after one change of import.

Run ``python migrating_shared_numpy_store.py [DIRECTORY]``.
"""

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from shmstore import shared_numpy_store  # was: from data_base....LoaderDumper import ...

directory = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
voltages = np.arange(3_000.0).reshape(1_000, 3)

store = shared_numpy_store.SharedNumpyStore(directory / "arrays")
store.save(voltages[:600], "voltages")  # saved appendable: append_save works after save
store.append_save(voltages[600:], "voltages")
print(store.names(), "in", store.path.name)  # one HDF5 file, not name__shape__dtype files

shared = store.load("voltages", start_row=0, end_row=500, allow_create_shm=True)
np.testing.assert_array_equal(shared, voltages[:500])
assert not shared.flags.writeable  # shared copies of saved arrays are read-only
assert store.load("voltages", start_row=0, end_row=500) is shared  # same call, same array

np.testing.assert_array_equal(store.load("voltages", mode="memmap"), voltages)
private = store.load("voltages", mode="memory")  # a private, writeable copy
private[0, 0] = -1.0

try:
    store.load("voltages", start_row=0, end_row=10)  # nobody loaded these rows
except shared_numpy_store.NotInSharedMemoryError as err:  # a ValueError, as before
    print("NotInSharedMemoryError:", err)

# Every fixed-size dtype, as the original saved them: text, datetimes, records.
labels = np.array(["soma", "dendrite", "axon"], dtype="<U8")
store.save(labels, "labels")
store.save(np.array(["2026-05-01T12:00"], dtype="<M8[m]"), "started")
np.testing.assert_array_equal(store.load("labels", allow_create_shm=True), labels)

# Named arrays from numpy (or empty) are writable, as the original's were:
# an output buffer that worker processes attach by name and fill in place.
handle, results = shared_numpy_store.shared_array_empty((4, 3), "f8", "results")
_, in_a_worker = shared_numpy_store.shared_array_from_shared_mem_name("results")
in_a_worker[2] = 7.0  # in a real job: in another process of the node
assert (results[2] == 7.0).all()  # the same pages
handle.unlink()  # named arrays live until unlinked (or evict/gc once unmapped)

# dump writes Loader.json (JSON, never a pickle); the data base's own load
# step, Loader(**rest).get(savedir), gives the store back.
shared_numpy_store.dump(store, directory / "arrays")
description = json.loads((directory / "arrays" / shared_numpy_store.LOADER_FILE).read_text())
print(description)
del description["Loader"]
again = shared_numpy_store.Loader(**description).get(directory / "arrays")
np.testing.assert_array_equal(again.load("voltages", mode="memory"), voltages)
store.close()  # flushes pending rows, frees shared copies no process maps

print("ok: the seed API saved, appended, loaded in three modes, shared writable and dumped JSON")
