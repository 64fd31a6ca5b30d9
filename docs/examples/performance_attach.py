"""Time what a worker pays per task: attaching to a cached slice through its handle.

Run ``python performance_attach.py [DIRECTORY]``.  Figures depend on the
machine; ``benchmarks/run.py`` makes the full measurement.
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import shmstore

directory = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
path = directory / "data.h5"
with shmstore.open(path, mode="w") as store:
    store.write("data", np.ones((100_000, 16), dtype=np.float32))  # 6.4 MB
    handle = store.handle("data", rows=(0, 100_000))

started = time.perf_counter()
with handle.view() as arr:  # cold: loads the slice into shared memory
    cold = time.perf_counter() - started
    assert arr.shape == (100_000, 16)

attach = []
for _ in range(200):
    started = time.perf_counter()
    with handle.view() as arr:  # warm: a stat of the file; the mapping is reused
        attach.append(time.perf_counter() - started)

median_us = statistics.median(attach) * 1e6
print(f"cold load {cold * 1e3:.1f} ms ({6.4 / cold:.0f} MB/s); attach median {median_us:.0f} us")
assert median_us < 20_000, "attaching should take microseconds, not a load"

print("ok: a warm attach took far less than a load")
