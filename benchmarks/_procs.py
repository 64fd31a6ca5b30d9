"""Items 4 and 5: node memory for N workers, and a stampede of processes on one cold slice."""

from __future__ import annotations

import multiprocessing
import os
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Any

import numpy as np
from _common import Curves, GiB, Results, Row, Settings, block_size, median, warm, workspace

import shmstore
from shmstore._commands._demo import h5py_worker, measure_workers, shared_worker


def memory(s: Settings, results: Results) -> None:
    with workspace("memory") as (files, shm):
        path = files / "memory.h5"
        with shmstore.open(path, "w") as store:
            store.write("m", np.random.default_rng(0).random(s.load_bytes // 8).reshape(-1, 128))
        warm(path)
        cache = shmstore.Cache(shm / "cache", budget=s.load_bytes * 3)
        with shmstore.open(path, cache=cache) as store:
            handle = store.handle("m")
        handle.pin()
        directory = str(cache.directory)
        shared_bytes = sum(
            os.stat(cache.directory / f"{key}.seg").st_blocks * 512 for key in handle.keys
        )
        handle.unpin()
        worst = 0.0
        curves = Curves(
            "workers on the node, each using the whole slice",
            "node memory (GiB)",
            [float(n) for n in s.workers],
            {"shmstore (shared memory)": [], "h5py (a copy per worker)": []},
            {f"the slice ({s.load_bytes / GiB:g} GiB)": s.load_bytes / GiB},
        )
        for n in s.workers:
            ours = measure_workers(shared_worker, (handle, directory), n) + shared_bytes
            theirs = measure_workers(h5py_worker, (str(path), "m"), n)
            worst = max(worst, ours / s.load_bytes)
            curves.curves["shmstore (shared memory)"].append(ours / GiB)
            curves.curves["h5py (a copy per worker)"].append(theirs / GiB)
            results.note(
                "4",
                f"| {n} | {ours / GiB:.3f} | {ours / s.load_bytes:.2f}x | "
                f"{theirs / GiB:.3f} | {theirs / s.load_bytes:.2f}x |",
            )
        results.series["4"] = curves
        results.add(
            Row(
                "4",
                f"node memory, N = {', '.join(map(str, s.workers))} workers, worst",
                f"{worst:.2f}x the slice",
                "h5py: N x the slice",
                None,
                "≤ 1.1x",
                worst <= 1.1,
            )
        )


def _stampede_worker(path: str, cache: shmstore.Cache, barrier: Barrier, out: Queue[Any]) -> None:
    store = shmstore.open(path, cache=cache)
    handle = store.handle("s")
    # A worker that has done work before: the code paths of a load are warm
    # (imports, first validations), in the baseline process as in the stampede.
    with store.view("warm-up", mode="shared"):
        pass
    barrier.wait()
    start = time.perf_counter()  # CLOCK_MONOTONIC: comparable between processes
    with store.view("s", mode="shared") as arr:
        end = time.perf_counter()
        same = bool(arr[-1, -1] == float(arr.size - 1)) and bool(
            (arr[:, 0] == np.arange(0, arr.size, arr.shape[1], dtype=np.float64)).all()
        )
    # Who made each block and when: every process must see the same file per block
    # (a block loaded twice would be a second file, published over the first).
    headers = [cache.header(key) for key in handle.keys]
    made = tuple((h.creator_pid, h.created) for h in headers)
    out.put((start, end, made, same))
    store.close()


def _round(path: str, cache: shmstore.Cache, processes: int) -> tuple[float, int]:
    """*processes* fresh processes released together on the uncached slice.

    :returns: the wall time from the first release to the last view (s), and
        how many processes loaded some of its blocks.
    :raises RuntimeError: wrong data, or a block loaded more than once.
    """
    context = multiprocessing.get_context("spawn")
    cache.evict(all=True)
    barrier, out = context.Barrier(processes), context.Queue()
    started = [
        context.Process(target=_stampede_worker, args=(path, cache, barrier, out))
        for _ in range(processes)
    ]
    for p in started:
        p.start()
    reports = [out.get(timeout=300) for _ in started]
    for p in started:
        p.join(60)
    if not all(r[3] for r in reports):
        raise RuntimeError("a stampede worker saw wrong data")
    if len({r[2] for r in reports}) != 1:
        raise RuntimeError("the stampede's processes saw different files for one block")
    blocks = reports[0][2]
    loaded = [e for e in cache.entries() if e.dataset == "s"]
    if len(loaded) != len(blocks):
        raise RuntimeError(
            f"the stampede left {len(loaded)} blocks of the slice, not {len(blocks)}"
        )
    wall = max(r[1] for r in reports) - min(r[0] for r in reports)
    return wall, len({pid for pid, _ in blocks})


def stampede(s: Settings, results: Results) -> None:
    """N fresh processes on one cold slice, against one fresh process on it, interleaved."""
    with workspace("stampede") as (files, shm), block_size(s.block):
        path = files / "stampede.h5"
        with shmstore.open(path, "w") as store:
            store.write("s", np.arange(s.load_bytes // 8, dtype=np.float64).reshape(-1, 128))
            store.write("warm-up", np.zeros((1, 128)))
            blocks = len(store.handle("s").keys)
        warm(path)
        cache = shmstore.Cache(shm / "cache", budget=s.load_bytes * 3)
        walls, singles, loaders = [], [], []
        for _ in range(max(3, s.repeat)):
            # The baseline is the same harness with one process: the same first-use
            # costs of a fresh interpreter (tqdm, the load path) on both sides.
            singles.append(_round(str(path), cache, 1)[0])
            wall, loaded = _round(str(path), cache, s.stampede)
            walls.append(wall)
            loaders.append(loaded)
        cache.evict(all=True)
        ratio = median(walls) / median(singles)
        results.note(
            "5",
            f"{s.stampede} fresh processes released by a barrier on {s.load_bytes / GiB:g} GiB "
            f"in {blocks} blocks, {len(walls)} rounds: wall {median(walls):.3f} s; one fresh "
            f"process, same harness: {median(singles):.3f} s; one load per block in every "
            f"round; processes that loaded some of the blocks, per round: {loaders}",
        )
        results.add(
            Row(
                "5",
                f"stampede: {s.stampede} processes, one cold slice ({blocks} blocks)",
                f"{median(walls):.3f} s",
                f"{median(singles):.3f} s (one process)",
                ratio,
                "≤ 1.0x, one load per block",
                ratio <= 1.0,
            )
        )


MEMORY_HEADER = (
    "| workers | shmstore node memory (GiB) | of the slice | h5py node memory (GiB) "
    "| of the slice |\n"
    "|---|---|---|---|---|"
)
