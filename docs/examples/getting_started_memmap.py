"""Map rows of a contiguous dataset straight out of the HDF5 file, without a copy.

Run ``python getting_started_memmap.py [DIRECTORY]``.
"""

import sys
import tempfile
from pathlib import Path

import numpy as np

import shmstore

directory = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
path = directory / "data.h5"
weights = np.random.default_rng(0).standard_normal((20_000, 16))  # 2.56 MB

with shmstore.open(path, mode="w") as store:
    store.write("weights", weights)  # contiguous
    store.write("weights_gz", weights, compression="gzip")  # chunked

with shmstore.open(path) as store:
    print(store.info("weights").memory_mappable, store.info("weights_gz").memory_mappable)
    mapped = store.memmap("weights", rows=(1_000, 2_000))  # no byte read until touched
    np.testing.assert_array_equal(mapped, weights[1_000:2_000])
    assert not mapped.flags.writeable  # read-only: nobody corrupts the file through it

    try:
        store.memmap("weights_gz")
    except shmstore.NotContiguousError as err:  # a LayoutError, a ValueError
        print("NotContiguousError:", err)

print("ok: memmap served contiguous rows read-only and refused a chunked dataset")
