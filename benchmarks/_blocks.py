"""Items 8-10: what blocks buy: overlapping windows, appends, and the choice of block size."""

from __future__ import annotations

import multiprocessing
import os
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import numpy as np
from _common import GB, GiB, MiB, Results, Row, Settings, block_size, median, warm, workspace

import shmstore

WINDOW = 0.6  # each job's window: this share of the rows
OFFSETS = (0.0, 0.1, 0.2, 0.3)  # where the four windows start, as shares of the rows


def _cached_files(cache: shmstore.Cache) -> dict[str, int]:
    """Every block file in the cache and the bytes it occupies in shared memory."""
    return {
        e.key: os.stat(cache.directory / f"{e.key}.seg").st_blocks * 512 for e in cache.entries()
    }


# -- item 8 ----------------------------------------------------------------------------


def _window_job(
    path: str, cache: shmstore.Cache, rows: tuple[int, int], out: Queue[Any], done: Event
) -> None:
    """A job that takes its window of the rows and holds it until *done*."""
    with shmstore.open(path, cache=cache) as store, store.view("w", rows, mode="shared") as arr:
        out.put(float(arr[0, 0]) == float(rows[0] * arr.shape[1]))
        done.wait(120)


def windows(s: Settings, results: Results) -> None:
    """Four jobs on overlapping windows of one dataset: shared memory against their union."""
    with workspace("windows") as (files, shm), block_size(s.block):
        path = files / "windows.h5"
        nbytes = min(s.load_bytes, 256 * MiB)  # the 256 MiB; the quick run's 64
        rows = nbytes // (128 * 8)
        with shmstore.open(path, "w") as store:
            store.write("w", np.arange(rows * 128, dtype=np.float64).reshape(rows, 128))
            block_rows = store.handle("w").block_rows or rows
        warm(path)
        cache = shmstore.Cache(shm / "cache", budget=nbytes * 4)
        spans = [(int(rows * o), int(rows * o) + int(rows * WINDOW)) for o in OFFSETS]
        context = multiprocessing.get_context("spawn")
        out, done = context.Queue(), context.Event()
        jobs = [
            context.Process(target=_window_job, args=(str(path), cache, span, out, done))
            for span in spans
        ]
        for job in jobs:
            job.start()
        try:
            right = [out.get(timeout=300) for _ in jobs]
            held = sum(_cached_files(cache).values())
            with shmstore.open(path, cache=cache) as store:
                before = set(_cached_files(cache))
                # A nested slice of rows already cached loads nothing.
                with store.view("w", (spans[0][0], spans[0][1] // 2), mode="shared"):
                    nested = sum(v for k, v in _cached_files(cache).items() if k not in before)
        finally:
            done.set()
            for job in jobs:
                job.join(60)
        if not all(right):
            raise RuntimeError("a window job saw wrong data")
        lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
        first, last = lo // block_rows, -(-hi // block_rows)
        union = (min(last * block_rows, rows) - first * block_rows) * 128 * 8
        ratio = held / union
        results.note(
            "8",
            f"4 jobs (separate processes) on windows of {WINDOW:.0%} of the rows of "
            f"{nbytes / MiB:.0f} MiB, starting at {', '.join(f'{o:.0%}' for o in OFFSETS)}; "
            f"blocks of {block_rows} rows ({block_rows * 1024 / MiB:g} MiB): shared memory "
            f"{held / MiB:.1f} MiB, union of their rows rounded out to blocks "
            f"{union / MiB:.1f} MiB, one copy per job would be "
            f"{len(spans) * WINDOW * nbytes / MiB:.0f} MiB. A nested slice (half of the first "
            f"window) then added {nested} bytes.",
        )
        results.add(
            Row(
                "8",
                "sliding windows: shared memory, 4 jobs",
                f"{held / MiB:.1f} MiB",
                f"{union / MiB:.1f} MiB (union of rows, whole blocks)",
                ratio,
                "≤ 1.05x",
                ratio <= 1.05 and nested == 0,
            )
        )


# -- item 9 ----------------------------------------------------------------------------


def _view_all(store: shmstore.Store, name: str) -> float:
    start = time.perf_counter()
    with store.view(name, mode="shared") as arr:
        seconds = time.perf_counter() - start
        del arr
    return seconds


def appends(s: Settings, results: Results) -> None:
    """Bytes loaded again after an append to another dataset, and to the same one."""
    with workspace("appends") as (files, shm), block_size(s.block):
        path = files / "appends.h5"
        rows, k = s.load_bytes // (128 * 8), 1000
        with shmstore.open(path, "w") as store:
            data = np.random.default_rng(0).random((rows, 128))
            store.write("big", data, appendable=True)
            store.write("log", np.zeros((1, 16)), appendable=True)
            block_rows = store.handle("big").block_rows or rows
        warm(path)
        cache = shmstore.Cache(shm / "cache", budget=s.load_bytes * 4)
        with shmstore.open(path, "a", cache=cache) as store:
            cold = _view_all(store, "big")
            before = _cached_files(cache)
            store.append("log", np.ones((1, 16)))
            other_s = _view_all(store, "big")
            after_other = _cached_files(cache)
            other = sum(v for key, v in after_other.items() if key not in before)
            tail = np.random.default_rng(1).random((k, 128))
            store.append("big", tail)
            same_s = _view_all(store, "big")
            same = sum(v for key, v in _cached_files(cache).items() if key not in after_other)
            with store.view("big", (rows, rows + k), mode="shared") as arr:
                if not np.array_equal(arr, tail):
                    raise RuntimeError("the appended rows read back wrong")
        allowed = (k + block_rows) * 128 * 8
        results.note(
            "9",
            f"{s.load_bytes / MiB:.0f} MiB appendable dataset in blocks of {block_rows} rows, "
            f"cached (cold view {cold:.3f} s). After a 1-row append to another dataset of the "
            f"file: {other} bytes loaded again, view {other_s * 1e3:.2f} ms. After appending "
            f"{k} rows ({k * 1024 / MiB:.2f} MiB) to it: {same / MiB:.2f} MiB loaded, view "
            f"{same_s * 1e3:.1f} ms; the bound, k rows plus one block: {allowed / MiB:.2f} MiB.",
        )
        results.add(
            Row(
                "9",
                "bytes loaded again after an append to another dataset",
                f"{other} B",
                f"{cold * 1e3:.0f} ms cold load",
                None,
                "0",
                other == 0,
            )
        )
        results.add(
            Row(
                "9",
                f"bytes loaded again after appending {k} rows to the dataset",
                f"{same / MiB:.2f} MiB",
                f"{allowed / MiB:.2f} MiB (k rows + 1 block)",
                same / allowed,
                "≤ 1.0x",
                same <= allowed,
            )
        )


# -- item 10 ---------------------------------------------------------------------------


def _load_with_block(path: Path, shm: Path, size: str, s: Settings) -> tuple[float, float]:
    """Seconds of a cold load of the whole dataset, and of one row alone, at one block size."""
    whole, one = [], []
    with block_size(size):
        cache = shmstore.Cache(shm / f"cache-{size}", budget=s.load_bytes * 3)
        with shmstore.open(path, cache=cache) as store:
            for _ in range(s.repeat):
                cache.evict(all=True)
                whole.append(_view_all(store, "b"))
                cache.evict(all=True)
                start = time.perf_counter()
                with store.view("b", (0, 1), mode="shared") as arr:
                    one.append(time.perf_counter() - start)
                    del arr
            cache.evict(all=True)
    return median(whole), median(one)


def block_sizes(s: Settings, results: Results) -> None:
    """Cold-load speed and the cost of one cold row against the block size."""
    sizes = ("1M", "8M", "64M") if s.quick else ("4M", "16M", "64M", "256M")
    with workspace("blocksize") as (files, shm):
        path = files / "blocksize.h5"
        with shmstore.open(path, "w") as store:
            store.write("b", np.random.default_rng(0).random(s.load_bytes // 8).reshape(-1, 128))
        warm(path)
        figures = {size: _load_with_block(path, shm, size, s) for size in sizes}
        for size, (whole, one) in figures.items():
            results.note(
                "10",
                f"| {size} | {s.load_bytes / whole / GB:.2f} | {one * 1e3:.1f} |",
            )
        default = figures["64M"][0]
        best = min(whole for whole, _ in figures.values())
        results.add(
            Row(
                "10",
                f"cold load of {s.load_bytes / GiB:g} GiB, default block (64 MiB)",
                f"{s.load_bytes / default / GB:.2f} GB/s",
                f"{s.load_bytes / best / GB:.2f} GB/s (best block size)",
                best / default,
                "",
                None,
            )
        )


BLOCK_SIZE_HEADER = (
    "| block size | cold load of the whole dataset (GB/s) | cold view of one row (ms) |\n"
    "|---|---|---|"
)
