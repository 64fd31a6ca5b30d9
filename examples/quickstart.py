"""The README's main job: write a sample store, read it back, share a slice.

Run ``python examples/quickstart.py [DIRECTORY]``.  It writes ``sample.h5``
(a temporary directory when none is given) holding a contiguous array, an
appendable one grown by ``append``, and a gzip-compressed one, then reads
rows back with ``read`` (a private copy), ``memmap`` (zero-copy) and by row
ranges, loads a slice into a node cache in shared memory and has two worker
processes map it through a handle.  Every result is checked against numpy;
the cache is a temporary directory on /dev/shm, removed at the end.
"""

from __future__ import annotations

import multiprocessing
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import shmstore


def main(directory: Path) -> None:
    path = directory / "sample.h5"
    rng = np.random.default_rng(0)
    activations = rng.standard_normal((100_000, 64), dtype=np.float32)  # 25.6 MB
    spikes = np.arange(40_000, dtype="<i8").reshape(-1, 4)
    lookup = np.linspace(0.0, 1.0, 50_000).reshape(-1, 5)

    with shmstore.open(path, mode="w") as store:
        store.write("activations", activations)
        store.append("run1/spikes", spikes[:5_000])
        store.append("run1/spikes", spikes[5_000:])
        store.write("lookup", lookup, compression="gzip")

    with shmstore.open(path) as store:
        print(f"{path}: {len(store)} datasets, metadata format {store.format_version}")
        for name in store:
            info = store.info(name)
            detail = f", {info.compression}" if info.compression else ""
            print(f"  {name:14} {info.shape!s:14} {info.dtype!s:8} {info.layout}{detail}")

        started = time.perf_counter()
        rows = store.read("activations", rows=slice(1_000, 2_000))
        read_ms = (time.perf_counter() - started) * 1e3
        assert np.array_equal(rows, activations[1_000:2_000])

        started = time.perf_counter()
        mapped = store.memmap("activations", rows=(-500, None))
        map_us = (time.perf_counter() - started) * 1e6
        assert np.array_equal(mapped, activations[-500:])
        assert not mapped.flags.writeable

        tail = store.memmap("run1/spikes", rows=(9_990, 10_000))
        assert np.array_equal(tail, spikes[9_990:])
        assert np.array_equal(store.read("lookup"), lookup)
        try:
            store.memmap("lookup")
        except shmstore.NotContiguousError as err:
            print(f"  memmap of a compressed dataset is refused: {err}")

    print(f"read 1000 rows (256 KB) in {read_ms:.2f} ms; mapped 500 rows in {map_us:.0f} us")
    share(path, activations)
    print("all reads matched numpy")


def worker(handle: shmstore.Handle) -> tuple[float, float]:
    """In a worker process: map the node's copy; (microseconds taken, sum of the rows)."""
    started = time.perf_counter()
    with handle.view() as arr:
        taken = (time.perf_counter() - started) * 1e6
        return taken, float(arr.sum(dtype=np.float64))


def share(path: Path, activations: np.ndarray) -> None:
    """Load rows into a node cache once, and let two spawned workers map them."""
    cache = shmstore.Cache(
        directory=tempfile.mkdtemp(prefix="shmstore-quickstart-", dir="/dev/shm")
    )
    try:
        with shmstore.open(path, cache=cache) as store:
            started = time.perf_counter()
            with store.view("activations", rows=(0, 50_000), mode="shared") as arr:
                load_ms = (time.perf_counter() - started) * 1e3
                assert np.array_equal(arr, activations[:50_000])
            handle = store.handle("activations", rows=(0, 50_000))
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            results = pool.map(worker, [handle, handle])
        expected = float(activations[:50_000].sum(dtype=np.float64))
        assert all(total == expected for _, total in results)
        (entry,) = cache.entries()
        print(
            f"shared {entry.nbytes / 1e6:.1f} MB once (loaded in {load_ms:.1f} ms); two workers "
            f"mapped it in {', '.join(f'{us:.0f}' for us, _ in results)} us"
        )
    finally:
        shutil.rmtree(cache.directory, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
