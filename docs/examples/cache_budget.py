"""A cache with a budget: least recently used slices make room; in-use ones never do.

Run ``python cache_budget.py [DIRECTORY]``.  Makes its own cache directory
under ``$SHMSTORE_DIR`` (or a temporary one) with a budget of 1 MiB.
"""

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

import shmstore

directory = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
path = directory / "data.h5"
data = np.ones((4_000, 32), dtype=np.float32)  # 128 rows = 16 KiB; 4000 rows = 500 KiB

with shmstore.open(path, mode="w") as store:
    store.write("data", data)

cache_dir = Path(os.environ.get("SHMSTORE_DIR") or tempfile.mkdtemp(dir="/dev/shm"))
cache = shmstore.Cache(cache_dir / "budget-demo", budget="1M")  # bytes, "64G" or "50%"
print(cache)

with shmstore.open(path, cache=cache) as store:
    with store.view("data", rows=(0, 3_000), mode="shared"):  # 384,000 bytes
        pass  # the block is over: the slice stays cached but is not in use
    with store.view("data", rows=(1_000, 4_000), mode="shared") as held:  # needs 384,000 more
        print([(e.rows, e.nbytes, e.in_use) for e in cache.entries()])

        # No room for a third slice while the others are held or recent?  The
        # least recently used slice no process maps is evicted to make room.
        with store.view("data", rows=(500, 3_500), mode="shared"):
            rows_cached = sorted(e.rows for e in cache.entries())
            print("after a third load:", rows_cached)
            assert (0, 3_000) not in rows_cached  # evicted: unused and oldest
            assert (1_000, 4_000) in rows_cached  # kept: `held` maps it

            # Both cached slices are in use now, so a fourth cannot fit:
            try:
                with store.view("data", rows=(0, 4_000), mode="shared"):
                    pass
            except shmstore.CacheFullError as err:  # an OSError
                print("CacheFullError:", err)
            # mode "auto" falls back to a memory map (contiguous) or a private copy.
            with store.view("data", rows=(0, 4_000), mode="auto") as arr:
                np.testing.assert_array_equal(arr, data)

print("ok: the budget evicted the unused slice and refused to evict slices in use")
