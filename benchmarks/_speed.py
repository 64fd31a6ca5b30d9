"""Items 1-3: attaching to a cached slice, cold loads of contiguous and compressed data."""

from __future__ import annotations

import fcntl
import mmap
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np
import SharedArray
from _common import (
    GB,
    THREADS,
    Curves,
    GiB,
    MiB,
    Results,
    Row,
    Settings,
    collect,
    fresh_tmpfs_fd,
    median,
    signal_like,
    thread_count,
    timed,
    warm,
    workspace,
)

import shmstore

ONE_BLOCK_RATIO = 1.5  # a first view within one block, to SharedArray.attach
PER_BLOCK_S = 2e-6  # each further block of a view
REPEATED_S = 5e-6  # a view of rows the process maps already


def _attach_in_fresh_process(
    handle: Any, path: str, sa_name: str, repeat: int
) -> tuple[float, float, float, float]:
    """In a spawned process, imports done and the store open: first views, then repeats (s).

    :returns: the first ``handle.view``, the first ``store.view`` (after the
        first view's array is gone), the first ``SharedArray.attach`` of a
        slice of the same size, and the median of later ``handle.view`` calls.
    """
    import gc

    store = shmstore.open(path, cache=handle.cache)
    start = time.perf_counter()
    with handle.view("shared") as arr:
        first = time.perf_counter() - start
    del arr
    gc.collect()
    start = time.perf_counter()
    with store.view(handle.name, mode="shared") as arr:
        first_store = time.perf_counter() - start
    del arr
    start = time.perf_counter()
    other = SharedArray.attach(sa_name)
    first_sa = time.perf_counter() - start
    del other
    later = []
    for _ in range(repeat):
        start = time.perf_counter()
        with handle.view("shared") as arr:
            later.append(time.perf_counter() - start)
        del arr
    store.close()
    return first, first_store, first_sa, median(later)


def _floor(source: Path, segment: str, nbytes: int, offset: int) -> float:
    """The system calls of an attach alone, in Python: stat the source, open, lock, map.

    What every attach of shmstore needs (the never-stale check, the lock that
    keeps a mapped block from eviction); SharedArray does neither.
    """
    start = time.perf_counter()
    os.stat(source)
    fd = os.open(segment, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    os.fstat(fd)
    mapping = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=offset)
    os.close(fd)
    array = np.frombuffer(mapping, dtype=np.float64)
    seconds = time.perf_counter() - start
    del array
    mapping.close()
    return seconds


def _name(label: str) -> str:
    return "size_" + label.replace(" ", "")


def _repeated(handle: Any, times: int) -> float:
    """Median seconds of a ``handle.view`` while this process maps the rows already."""
    held = handle.pin()
    seconds = []
    for _ in range(times):
        start = time.perf_counter()
        with handle.view("shared") as arr:
            seconds.append(time.perf_counter() - start)
        del arr
    del held
    handle.unpin()
    return median(seconds)


def attach(s: Settings, results: Results) -> None:  # noqa: PLR0915
    with workspace("attach") as (files, shm):
        path = files / "attach.h5"
        with shmstore.open(path, "w") as store:
            for label, nbytes in s.attach_sizes.items():
                store.write(_name(label), np.zeros(nbytes // 8))  # zeros: only the size matters
        cache = shmstore.Cache(shm / "cache", budget=sum(s.attach_sizes.values()) * 2)
        context = multiprocessing.get_context("spawn")
        one_block: list[tuple[float, float, float]] = []  # handle, store, SharedArray: fresh
        warm_single: list[float] = []
        per_block: list[float] = []
        repeated: list[float] = []
        curves = Curves(
            "slice size, and the number of cache blocks it spans (log scale)",
            "time of one attach (µs)",
            [nbytes / MiB for nbytes in s.attach_sizes.values()],
        )
        curves.curves = {
            "first handle.view in a fresh process": [],
            "handle.view": [],
            "handle.view while the process maps the rows": [],
            "SharedArray.attach": [],
        }
        with shmstore.open(path, cache=cache) as store:
            for label, nbytes in s.attach_sizes.items():
                handle = store.handle(_name(label))
                handle.pin()  # the load, not measured
                handle.unpin()
                collect()
                blocks = len(handle.keys)
                ours, theirs, views, floor = [], [], [], []
                header = cache.header(handle.keys[0])
                segment = str(cache.directory / f"{handle.keys[0]}.seg")
                name = f"shm://shmstore-bench-{os.getpid()}"
                SharedArray.create(name, nbytes // 8, dtype=np.float64)
                try:
                    # No gc.collect() next to a timing: it evicts the CPU caches and
                    # triples every figure (stat 3.6 -> 42 µs). Dropping the last array
                    # unmaps at once (reference counting), so each repeat attaches anew.
                    for _ in range(max(50, s.repeat * 10)):
                        start = time.perf_counter()
                        with handle.view("shared") as arr:
                            ours.append(time.perf_counter() - start)
                        del arr
                        start = time.perf_counter()
                        with store.view(_name(label), mode="shared") as arr:
                            views.append(time.perf_counter() - start)
                        del arr
                        start = time.perf_counter()
                        other = SharedArray.attach(name)
                        theirs.append(time.perf_counter() - start)
                        del other
                        floor.append(_floor(path, segment, header.nbytes, header.data_offset))
                    again = _repeated(handle, max(50, s.repeat * 10))
                    with context.Pool(1) as pool:
                        fresh = [
                            pool.apply(_attach_in_fresh_process, (handle, str(path), name, 20))
                            for _ in range(3)
                        ]
                finally:
                    SharedArray.delete(name[len("shm://") :])
                firsts, first_views, first_sas, laters = (list(c) for c in zip(*fresh, strict=True))
                repeated.append(again)
                curves.x_ticks[nbytes / MiB] = f"{label}\n{blocks} block{'s' * (blocks > 1)}"
                for curve, seconds in zip(
                    curves.curves.values(),
                    (median(firsts), median(ours), again, median(theirs)),
                    strict=True,
                ):
                    curve.append(seconds * 1e6)
                if blocks == 1:
                    one_block.append((median(firsts), median(first_views), median(first_sas)))
                    warm_single.append(median(ours))
                elif warm_single:
                    per_block.append((median(ours) - min(warm_single)) / (blocks - 1))
                results.note(
                    "1",
                    f"| {label} | {blocks} | {median(firsts) * 1e6:.0f} | "
                    f"{median(first_views) * 1e6:.0f} | {median(first_sas) * 1e6:.0f} | "
                    f"{median(ours) * 1e6:.0f} | {median(views) * 1e6:.0f} | "
                    f"{median(theirs) * 1e6:.0f} | {median(laters) * 1e6:.0f} | "
                    f"{again * 1e6:.1f} | {median(floor) * 1e6:.0f} |",
                )
        results.series["1"] = curves
        for way, index in (("handle.view", 0), ("store.view", 1)):
            worst = max(o[index] / o[2] for o in one_block)
            results.add(
                Row(
                    "1",
                    f"first {way} in a fresh process, rows within one block, worst size",
                    f"{max(o[index] for o in one_block) * 1e6:.0f} µs",
                    f"{max(o[2] for o in one_block) * 1e6:.0f} µs (first SharedArray.attach)",
                    worst,
                    f"≤ {ONE_BLOCK_RATIO}x",
                    worst <= ONE_BLOCK_RATIO,
                )
            )
        if per_block:
            results.add(
                Row(
                    "1",
                    "each further block of a view (handle.view), worst size",
                    f"{max(per_block) * 1e6:.2f} µs",
                    "",
                    None,
                    f"≤ {PER_BLOCK_S * 1e6:.0f} µs",
                    max(per_block) <= PER_BLOCK_S,
                )
            )
        results.add(
            Row(
                "1",
                "a view of rows the process maps already, worst size",
                f"{max(repeated) * 1e6:.1f} µs",
                "",
                None,
                f"≤ {REPEATED_S * 1e6:.0f} µs",
                max(repeated) <= REPEATED_S,
            )
        )


ATTACH_HEADER = (
    "| size | blocks | first handle.view, fresh process (µs) | first store.view, fresh process "
    "(µs) | first SharedArray.attach, fresh process (µs) | handle.view (µs) | store.view (µs) "
    "| SharedArray.attach (µs) | handle.view, fresh process, later (µs) | handle.view while "
    "mapped (µs) | floor: stat + open + flock + mmap in Python (µs) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


# -- item 2 ----------------------------------------------------------------------------


def _cold(store: shmstore.Store, cache: shmstore.Cache, name: str) -> float:
    cache.evict(all=True)
    collect()
    start = time.perf_counter()
    with store.view(name, mode="shared") as arr:
        pass
    seconds = time.perf_counter() - start
    del arr
    collect()
    cache.evict(all=True)
    return seconds


def _by_hand(path: Path, name: str) -> float:
    """SharedArray.create of the slice's shape, then h5py read_direct into it."""
    shm_name = f"shmstore-bench-hand-{os.getpid()}"
    start = time.perf_counter()
    with h5py.File(path, "r") as f:
        dataset = f[name]
        target = SharedArray.create(f"shm://{shm_name}", dataset.shape, dtype=dataset.dtype)
        dataset.read_direct(target)
    seconds = time.perf_counter() - start
    del target
    SharedArray.delete(shm_name)
    return seconds


def _ceilings(path: Path, offset: int, nbytes: int, shm: Path) -> dict[str, float]:  # noqa: PLR0915
    """Seconds for four ways of putting *nbytes* of *path* from *offset* into tmpfs."""
    src = os.open(path, os.O_RDONLY)
    out: dict[str, float] = {}
    try:
        fd = fresh_tmpfs_fd(shm)  # (a) fresh file, mapped, touched page by page
        os.ftruncate(fd, nbytes)
        start = time.perf_counter()
        m = mmap.mmap(fd, nbytes)
        view = np.frombuffer(m, dtype=np.uint8)
        view[:: mmap.PAGESIZE] = 1
        out["touch fresh tmpfs pages one by one"] = time.perf_counter() - start
        del view
        m.close()
        os.close(fd)
        fd = fresh_tmpfs_fd(shm)  # (b) fallocate + MAP_POPULATE, then a read into it
        start = time.perf_counter()
        os.posix_fallocate(fd, 0, nbytes)
        m = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
        buffer = memoryview(m)
        done = 0
        while done < nbytes:
            done += os.preadv(src, [buffer[done : done + (64 << 20)]], offset + done)
        out["posix_fallocate + MAP_POPULATE + preadv"] = time.perf_counter() - start
        buffer.release()
        m.close()
        os.close(fd)
        fd = fresh_tmpfs_fd(shm)  # (c) an in-kernel copy
        start = time.perf_counter()
        done = 0
        try:
            while done < nbytes:
                done += os.copy_file_range(src, fd, nbytes - done, offset + done, done)
            out["copy_file_range"] = time.perf_counter() - start
        except OSError:  # EXDEV across file systems
            done = 0
            start = time.perf_counter()
            while done < nbytes:
                done += os.sendfile(fd, src, offset + done, nbytes - done)
            out["sendfile (copy_file_range: EXDEV)"] = time.perf_counter() - start
        os.close(fd)
        buffer_array = np.ones(nbytes, dtype=np.uint8)  # (d) into memory already mapped and touched
        buffer = memoryview(buffer_array)
        start = time.perf_counter()
        done = 0
        while done < nbytes:
            done += os.preadv(src, [buffer[done : done + (64 << 20)]], offset + done)
        out["preadv into mapped, touched memory"] = time.perf_counter() - start
        buffer.release()
    finally:
        os.close(src)
    return out


def cold_contiguous(s: Settings, results: Results) -> None:
    with workspace("cold") as (files, shm):
        path = files / "cold.h5"
        with shmstore.open(path, "w") as store:
            store.write("c", np.random.default_rng(0).random(s.load_bytes // 8).reshape(-1, 128))
        with h5py.File(path, "r") as f:
            offset = f["c"].id.get_offset()
        warm(path)
        cache = shmstore.Cache(shm / "cache", budget=s.load_bytes * 3)
        ours, hand = [], []
        by_threads: dict[int, list[float]] = {n: [] for n in THREADS}
        ceilings: dict[str, list[float]] = {}
        with shmstore.open(path, cache=cache) as store:
            for _ in range(s.repeat):
                ours.append(_cold(store, cache, "c"))
                hand.append(_by_hand(path, "c"))
                for n, into in by_threads.items():
                    with thread_count(n):
                        into.append(_cold(store, cache, "c"))
                for what, seconds in _ceilings(path, offset, s.load_bytes, shm).items():
                    ceilings.setdefault(what, []).append(seconds)
        gbps = s.load_bytes / median(ours) / GB
        hand_gbps = s.load_bytes / median(hand) / GB
        results.note("2", f"| shmstore cold load (store.view, mode='shared') | {gbps:.2f} |")
        results.note("2", f"| SharedArray.create + h5py read_direct | {hand_gbps:.2f} |")
        results.series["2"] = Curves(
            "threads of a load (SHMSTORE_THREADS)",
            "cold-load speed (GB/s)",
            [float(n) for n in THREADS],
            {"contiguous, shmstore": [s.load_bytes / median(v) / GB for v in by_threads.values()]},
            {"contiguous, SharedArray.create + h5py read_direct": hand_gbps},
        )
        best = 0.0
        for what, values in ceilings.items():
            rate = s.load_bytes / median(values) / GB
            if "already mapped" not in what and "touched memory" not in what:
                best = max(best, rate)
            results.note("2", f"| ceiling: {what} | {rate:.2f} |")
        results.note(
            "2",
            f"\nshmstore reaches {gbps / best:.0%} of the best tmpfs ceiling ({best:.2f} GB/s).",
        )
        ratio = gbps / hand_gbps
        results.add(
            Row(
                "2",
                f"cold load, contiguous {s.load_bytes / GiB:g} GiB",
                f"{gbps:.2f} GB/s",
                f"{hand_gbps:.2f} GB/s (SharedArray + read_direct)",
                ratio,
                "≥ 1.5x",
                ratio >= 1.5,
            )
        )


# -- item 3 ----------------------------------------------------------------------------


def cold_chunked(s: Settings, results: Results) -> None:
    with workspace("chunked") as (files, shm):
        path = files / "chunked.h5"
        data = signal_like(s.load_bytes)
        with h5py.File(path, "w") as f:
            f.create_dataset(
                "gzip+shuffle", data=data, chunks=(1024, 256), compression="gzip", shuffle=True
            )
            f.create_dataset(
                "zstd+shuffle", data=data, chunks=(1024, 256), shuffle=True, **hdf5plugin.Zstd()
            )
        del data
        warm(path)
        cache = shmstore.Cache(shm / "cache", budget=s.load_bytes * 3)
        curves = Curves(
            "threads of a load (SHMSTORE_THREADS)",
            "cold-load speed (GB/s)",
            [float(n) for n in THREADS],
            marks={"cores of the machine": float(len(os.sched_getaffinity(0)))},
        )
        with shmstore.open(path, cache=cache) as store, h5py.File(path, "r") as f:
            for name in ("gzip+shuffle", "zstd+shuffle"):
                stored: list[int] = []
                f[name].id.chunk_iter(lambda c, sizes=stored: sizes.append(c.size))
                ratio_c = s.load_bytes / sum(stored)
                times: dict[int, list[float]] = {n: [] for n in THREADS}
                h5py_times: list[float] = []
                for _ in range(s.repeat):
                    for threads, into in times.items():
                        with thread_count(threads):
                            into.append(_cold(store, cache, name))
                    out = np.empty(f[name].shape, f[name].dtype)
                    h5py_times.append(timed(lambda n=name, o=out: f[n].read_direct(o)))
                    del out
                rate = {k: s.load_bytes / median(v) / GB for k, v in times.items()}
                h5py_rate = s.load_bytes / median(h5py_times) / GB
                curves.curves[f"{name}, shmstore"] = list(rate.values())
                curves.references[f"{name}, h5py read_direct"] = h5py_rate
                ratio = rate[2] / h5py_rate
                results.note(
                    "3",
                    f"| {name} | {ratio_c:.1f}x | {h5py_rate:.2f} | {rate[1]:.2f} | "
                    f"{rate[2]:.2f} | {ratio:.2f} |",
                )
                results.add(
                    Row(
                        "3",
                        f"cold load, {name} {s.load_bytes / GiB:g} GiB",
                        f"{rate[2]:.2f} GB/s (2 threads)",
                        f"{h5py_rate:.2f} GB/s (h5py read_direct)",
                        ratio,
                        "≥ 1.7x",
                        ratio >= 1.7,
                    )
                )
        results.series["3"] = curves


CHUNKED_HEADER = (
    "| dataset | compression ratio | h5py read_direct (GB/s) | shmstore, 1 thread (GB/s) | "
    "shmstore, 2 threads (GB/s) | ratio to h5py |\n|---|---|---|---|---|---|"
)
