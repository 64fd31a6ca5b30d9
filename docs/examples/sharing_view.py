"""Use the node's single copy of a slice in a ``with`` block: ``store.view``.

Run ``python sharing_view.py [DIRECTORY]``.  The cache is ``$SHMSTORE_DIR``
if set, else the node's default (``/dev/shm/shmstore-<uid>``).
"""

import sys
import tempfile
from pathlib import Path

import numpy as np

import shmstore

directory = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
path = directory / "data.h5"
activations = np.arange(50_000 * 8, dtype=np.float64).reshape(50_000, 8)  # 3.2 MB

with shmstore.open(path, mode="w") as store:
    store.write("activations", activations)

cache = shmstore.Cache()  # SHMSTORE_DIR, else $JOB_SHMTMPDIR/shmstore, else /dev/shm
with shmstore.open(path, cache=cache) as store:
    with store.view("activations", rows=(0, 10_000), mode="shared") as arr:
        np.testing.assert_array_equal(arr, activations[:10_000])
        assert not arr.flags.writeable  # every process maps the same read-only pages
        [entry] = [e for e in cache.entries() if e.dataset == "activations"]
        print(f"cached {entry.nbytes} bytes of rows {entry.rows}, in use: {entry.in_use}")
        assert entry.in_use  # mapped by this process: it cannot be evicted now

    # The same rows again: mapped from the cache, no HDF5 read.
    with store.view("activations", rows=(0, 10_000)) as arr:  # mode "auto"
        print("sum of the slice:", float(arr.sum()))

    with store.view("activations", rows=(0, 100), mode="memmap") as arr:  # from the file
        np.testing.assert_array_equal(arr, activations[:100])
    with store.view("activations", rows=(0, 100), mode="memory") as arr:  # a private copy
        np.testing.assert_array_equal(arr, activations[:100])

print("ok: one shared copy served every view of the slice")
