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
assert not shared.flags.writeable  # shared copies are read-only now
assert store.load("voltages", start_row=0, end_row=500) is shared  # same call, same array

np.testing.assert_array_equal(store.load("voltages", mode="memmap"), voltages)
private = store.load("voltages", mode="memory")  # a private, writeable copy
private[0, 0] = -1.0

try:
    store.load("voltages", start_row=0, end_row=10)  # nobody loaded these rows
except shared_numpy_store.NotInSharedMemoryError as err:  # a ValueError, as before
    print("NotInSharedMemoryError:", err)

# dump writes Loader.json (JSON, never a pickle), and Loader.get reads it back.
shared_numpy_store.dump(store, directory / "arrays")
description = json.loads((directory / "arrays" / shared_numpy_store.LOADER_FILE).read_text())
print(description)
again = shared_numpy_store.Loader().get(directory / "arrays")
np.testing.assert_array_equal(again.load("voltages", mode="memory"), voltages)
store.close()  # flushes pending rows, frees shared copies no process maps

print("ok: the seed API saved, appended, loaded in three modes and dumped JSON")
