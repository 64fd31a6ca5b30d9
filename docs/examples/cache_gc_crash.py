"""Evict, gc, and what a crash leaves: a killed process's blocks become evictable.

Run ``python cache_gc_crash.py [DIRECTORY]``.  Makes its own cache directory
under ``$SHMSTORE_DIR`` (or a temporary one).
"""

import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import shmstore

# A worker that maps the slice, says so, and waits to be killed.
WORKER = """
import pickle, sys, time
handle = pickle.loads(bytes.fromhex(sys.argv[1]))
arr = handle.pin()          # map the node's copy and keep it mapped
print("mapped", arr.shape, flush=True)
time.sleep(60)
"""

directory = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
path = directory / "data.h5"
cache_dir = Path(os.environ.get("SHMSTORE_DIR") or tempfile.mkdtemp(dir="/dev/shm"))
cache = shmstore.Cache(cache_dir / "gc-demo")

with shmstore.open(path, mode="w") as store:
    store.write("data", np.arange(1_000.0).reshape(100, 10))
with shmstore.open(path, cache=cache) as store:
    handle = store.handle("data", rows=(0, 50))

worker = subprocess.Popen(
    [sys.executable, "-c", WORKER, pickle.dumps(handle).hex()],
    stdout=subprocess.PIPE,
    text=True,
)
print("worker:", worker.stdout.readline().strip())
print("evicted while mapped:", [a.outcome for a in cache.evict(all=True)])  # in use: kept
assert [e.in_use for e in cache.entries()] == [True]

worker.kill()  # SIGKILL: no cleanup code runs in the worker
worker.wait()
# The kernel dropped the dead process's mapping, and with it its lock.
assert [e.in_use for e in cache.entries()] == [False]
print("evicted after the crash:", cache.evict(all=True))
assert cache.entries() == []

# A block of an old generation is never served, and goes once a view sees the new one.
with shmstore.open(path, cache=cache) as store, store.view("data", rows=(0, 50)):
    pass
(old,) = cache.entries()
with shmstore.open(path, mode="a") as store:
    store.write("data", np.zeros((100, 10)), overwrite=True)
with handle.view() as arr:  # the old handle now serves the new data...
    np.testing.assert_array_equal(arr, np.zeros((50, 10)))
(new,) = cache.entries()  # ...and the old generation's block is gone
print("old block:", old.key, old.generation, "new block:", new.key, new.generation)
assert (new.key, new.generation) != (old.key, old.generation)
print("gc would remove:", cache.gc(dry_run=True))

print("ok: a crashed worker's block became evictable and an old generation's block went")
