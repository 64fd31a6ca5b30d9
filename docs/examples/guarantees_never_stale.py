"""Shared arrays are read-only, and a change to the file is never served stale.

Run ``python guarantees_never_stale.py [DIRECTORY]``.
"""

import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

import shmstore

directory = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
path = directory / "data.h5"

with shmstore.open(path, mode="w") as store:
    store.write("data", np.zeros((1_000, 4)))
    handle = store.handle("data", rows=(0, 100))

with handle.view() as arr:
    try:
        arr[0, 0] = 1.0  # invariant 6: nobody writes into the node's copy
    except ValueError as err:
        print("ValueError:", err)
    np.testing.assert_array_equal(arr, 0.0)

with shmstore.open(path, mode="a") as store:  # a change through shmstore
    store.write("data", np.ones((1_000, 4)), overwrite=True)
with handle.view() as arr:  # invariant 3: the handle serves the new version
    np.testing.assert_array_equal(arr, 1.0)

# A change by another tool: shmstore sees the file's size or mtime change, and
# the new bytes do not match the checksums recorded when "data" was written
# (invariant 10): an error, never the old rows, never unchecked new ones.
with h5py.File(path, "r+") as f:
    f["data"][:100] = 2.0
try:
    with handle.view() as arr:
        pass
except shmstore.IntegrityError:
    print("IntegrityError: the rows h5py changed do not match their checksums")
# The change was on purpose: record checksums of the data as they are now.
with shmstore.open(path, mode="a") as store:
    store.seal("data")
with handle.view() as arr:
    np.testing.assert_array_equal(arr, 2.0)

print("ok: views were read-only and every change to the file was served fresh")
