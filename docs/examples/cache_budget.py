"""A cache with a budget: least recently used blocks make room; blocks in use never do.

Run ``python cache_budget.py [DIRECTORY]``.  Makes its own cache directory
under ``$SHMSTORE_DIR`` (or a temporary one) with a budget of 700 KiB.
"""

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

import shmstore

directory = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
path = directory / "data.h5"
data = np.ones((8_000, 32), dtype=np.float32)  # 128-byte rows: 1,024,000 bytes

with shmstore.open(path, mode="w") as store:
    store.write("data", data)

# Blocks of 128 KiB (1,024 rows here; the default is 64 MiB), and a budget
# for five of them: each block's file is its data plus a 4 KiB header.
os.environ["SHMSTORE_BLOCK"] = "128K"
cache_dir = Path(os.environ.get("SHMSTORE_DIR") or tempfile.mkdtemp(dir="/dev/shm"))
cache = shmstore.Cache(cache_dir / "budget-demo", budget="700K")  # bytes, "64G" or "50%"
print(cache)


def cached() -> list[tuple[int, int]]:
    """The row ranges of the blocks the node holds."""
    return sorted(e.rows for e in cache.entries())


with shmstore.open(path, cache=cache) as store:
    with store.view("data", rows=(0, 3_000), mode="shared"):  # blocks 0, 1, 2
        pass  # the block is over: its blocks stay cached but are not in use
    with store.view("data", rows=(2_000, 5_000), mode="shared") as held:
        # Blocks 1 and 2 are shared with the first view; 3 and 4 are loaded.
        print("two views:", cached())
        assert cached() == [(0, 1024), (1024, 2048), (2048, 3072), (3072, 4096), (4096, 5120)]

        # No room for block 5 while blocks 1 to 4 are held?  The least recently
        # used block that no process maps (block 0) is evicted to make room.
        with store.view("data", rows=(5_000, 6_000), mode="shared"):
            print("after a third view:", cached())
            assert (0, 1024) not in cached()  # evicted: unused and oldest
            assert (2048, 3072) in cached()  # kept: `held` maps it

            # Every cached block is in use now, so the whole dataset cannot fit:
            try:
                with store.view("data", mode="shared"):
                    pass
            except shmstore.CacheFullError as err:  # an OSError
                print("CacheFullError:", err)
            # mode "auto" falls back to a memory map (contiguous) or a private copy.
            with store.view("data", mode="auto") as arr:
                np.testing.assert_array_equal(arr, data)

print("ok: overlapping views shared blocks, the budget evicted the unused block, never one in use")
