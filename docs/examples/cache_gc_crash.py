import multiprocessing
import time

import numpy as np

import shmstore


def worker(handle, ready):
    handle.pin()  # map the node's copy of the rows and keep it mapped
    ready.set()
    time.sleep(60)  # killed long before this ends


if __name__ == "__main__":  # the worker process imports this file
    with shmstore.open("data.h5", mode="w") as store:
        store.write("data", np.arange(1_000.0).reshape(100, 10))
        handle = store.handle("data", rows=(0, 50))

    cache = shmstore.Cache()  # the node's cache, the one the handle uses
    ready = multiprocessing.Event()
    process = multiprocessing.Process(target=worker, args=(handle, ready))
    process.start()
    ready.wait()

    print("in use:", [e.in_use for e in cache.entries()])
    actions = cache.evict(all=True)  # never waits, never fails: what is in use stays
    print("evict:", [(a.outcome, a.reason) for a in actions])

    process.kill()  # SIGKILL: no clean-up code runs in the worker
    process.join()
    # The kernel unmapped the dead process's memory, and with it dropped its lock.
    print("after the kill, in use:", [e.in_use for e in cache.entries()])
    print("evict:", [(a.outcome, a.reason) for a in cache.evict(all=True)])
    print("entries:", cache.entries())

    # An old generation's block is never served; it goes once a view sees the new one.
    with handle.view() as arr:
        print("cached:", [(e.dataset, e.rows) for e in cache.entries()])
        print("first row:", arr[0, :3])
    old = cache.entries()[0]
    with shmstore.open("data.h5", mode="a") as store:
        store.write("data", np.zeros((100, 10)), overwrite=True)  # a new generation
    with handle.view() as arr:  # the same handle serves the new data...
        print("after the write, first row:", arr[0, :3])
    new = cache.entries()[0]  # ...and the old generation's block is gone
    print("blocks:", len(cache.entries()), "new:", new.generation != old.generation)

    # gc removes what no process needs; dry_run=True only says what it would do.
    actions = cache.gc(dry_run=True)
    removable = [a.reason for a in actions if a.outcome == "would remove"]
    print("gc would remove:", removable)
    # `arr` still maps the new block, so gc keeps it.
    print("gc keeps:", [a.reason for a in actions if a.kind == "segment"])
