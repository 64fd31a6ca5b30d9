"""A Dask array read from the node's cache: ``shmstore.dask.from_store``.

Run ``python dask_from_store.py [DIRECTORY]`` (needs ``pip install 'shmstore[dask]'``).
"""

import sys
import tempfile
from pathlib import Path

import dask
import numpy as np

import shmstore
import shmstore.dask

directory = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
path = directory / "features.h5"
features = np.arange(2_000_000, dtype=np.float32).reshape(250_000, 8)  # 8,000,000 bytes
with shmstore.open(path, mode="w") as store:
    store.write("plain", features)  # contiguous
    store.write("packed", features, chunks=(10_000, 8), compression="gzip")

for name in ("plain", "packed"):
    # Blocks of 50,000 rows (1,600,000 bytes); each is one slice of the node's
    # cache, loaded once per node and mapped by every task that needs it.
    array = shmstore.dask.from_store(path, name, chunks=(50_000, 8))
    print(name, array.shape, array.dtype, array.numblocks, "blocks")
    with dask.config.set(scheduler="threads"):  # or a distributed Client
        total = array.sum(dtype=np.float64).compute()
        column_means = array[1_000:2_000].mean(axis=0).compute()
    assert total == features.sum(dtype=np.float64)
    np.testing.assert_allclose(column_means, features[1_000:2_000].mean(axis=0))

print("ok: from_store(...).sum() equals numpy's, contiguous and compressed")
