import statistics
import time

import numpy as np

import shmstore

with shmstore.open("data.h5", mode="w") as store:
    store.write("data", np.ones((100_000, 16), dtype=np.float32))  # 6,400,000 bytes
    handle = store.handle("data", rows=(0, 100_000))

started = time.perf_counter()
with handle.view() as arr:  # cold: loads the slice into shared memory
    cold = time.perf_counter() - started

attach = []
for _ in range(200):
    started = time.perf_counter()
    with handle.view() as arr:  # warm: a stat of the file; the mapping is reused
        attach.append(time.perf_counter() - started)

print(f"cold load: {cold * 1e3:.1f} ms ({6.4 / cold:.0f} MB/s)")
print(f"attach, median of 200: {statistics.median(attach) * 1e6:.0f} µs")
