import os

import numpy as np

import shmstore

# Small blocks so that a small file shows it: 128 KiB each, 1,024 rows of this
# dataset (the default is 64 MiB). The same as `export SHMSTORE_BLOCK=128K`.
os.environ["SHMSTORE_BLOCK"] = "128K"

data = np.ones((8_000, 32), dtype=np.float32)  # 128-byte rows: 1,024,000 bytes
with shmstore.open("data.h5", mode="w") as store:
    store.write("data", data)

# A budget of 700 KiB: room for five blocks (each is its data plus a 4 KiB header).
cache = shmstore.Cache(budget="700K")  # bytes, "64G" or "50%" of the tmpfs
print("budget:", cache.budget, "bytes")


def cached() -> list[tuple[int, int]]:
    """The rows of each block of "data" the node holds."""
    return sorted(e.rows for e in cache.entries() if e.dataset == "data")


with shmstore.open("data.h5", cache=cache) as store:
    with store.view("data", rows=(0, 3_000), mode="shared"):  # loads blocks 0, 1, 2
        pass  # the with block is over: its blocks stay cached, no longer in use
    print("one view:", cached())

    with store.view("data", rows=(2_000, 5_000), mode="shared") as held:
        # Blocks 1 and 2 are shared with the first view; 3 and 4 are loaded.
        print("second view:", cached())

        # No room for block 5 while `held` maps blocks 1 to 4: the least
        # recently used block that no process maps (block 0) makes room.
        with store.view("data", rows=(5_000, 6_000), mode="shared"):
            print("third view:", cached())

            # Every cached block is in use now: no room for blocks 6 and 7.
            try:
                with store.view("data", rows=(6_144, 8_000), mode="shared"):
                    pass
            except shmstore.CacheFullError as err:  # an OSError
                print("CacheFullError:", err)

            # mode="auto" (the default) falls back to a memory map of the file
            # (contiguous datasets) or a private copy.
            with store.view("data", rows=(6_144, 8_000)) as arr:
                print("mode='auto':", arr.shape, arr.sum())
