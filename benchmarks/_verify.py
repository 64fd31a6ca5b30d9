"""Item 11: what checking checksums costs: cold loads and appends, with and without.

"With": data written by shmstore, which records CRC32C checksums and checks
them on every load.  "Without": the same bytes, same layout and filters,
written by h5py: no checksums, loaded unverified (``info.checksums`` is
``None``).  For appends "without" there is no public switch: the raw-file
write is replaced, in this process, by one that skips summing
(``shmstore._raw.write_raw`` called without ``ranges``), so the same appends
run with no checksum computed or recorded.  Every round runs both ways in a
shuffled order; figures are medians.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from _common import GB, GiB, MiB, Results, Row, Settings, median, signal_like, warm, workspace

import shmstore
from shmstore import _raw

TARGET = 1.10  # with / without, at most


def _cold(store: shmstore.Store, cache: shmstore.Cache, name: str) -> float:
    cache.evict(all=True)
    start = time.perf_counter()
    with store.view(name, mode="shared"):
        pass
    seconds = time.perf_counter() - start
    cache.evict(all=True)
    return seconds


def _pair(
    results: Results,
    label: str,
    nbytes: int,
    times: tuple[list[float], list[float]],
    unit: str = "GB/s",
) -> None:
    with_sums, without = times
    scale = GB if unit == "GB/s" else MiB
    ours = nbytes / median(with_sums) / scale
    theirs = nbytes / median(without) / scale
    ratio = median(with_sums) / median(without)
    results.note("11", f"| {label} | {ours:.2f} {unit} | {theirs:.2f} {unit} | {ratio:.2f}x |")
    results.add(
        Row(
            "11",
            f"{label}: time with checksums / without",
            f"{ours:.2f} {unit}",
            f"{theirs:.2f} {unit} (no checksums)",
            ratio,
            f"≤ {TARGET:.2f}x",
            ratio <= TARGET,
        )
    )


def _loads(s: Settings, results: Results, files: Path, shm: Path) -> None:
    contiguous = np.random.default_rng(0).random(s.load_bytes // 8).reshape(-1, 128)
    signal = signal_like(s.load_bytes)
    sums, bare = files / "sums.h5", files / "bare.h5"
    with shmstore.open(sums, "w") as store:
        store.write("contiguous", contiguous)
        store.write(
            "gzip-shuffle",
            signal,
            chunks=(1024, 256),
            compression={"compression": "gzip", "shuffle": True},
        )
    with h5py.File(bare, "w") as f:
        f["contiguous"] = contiguous
        f.create_dataset(
            "gzip-shuffle", data=signal, chunks=(1024, 256), compression="gzip", shuffle=True
        )
    del contiguous, signal
    for path in (sums, bare):
        warm(path)
    cache = shmstore.Cache(shm / "cache", budget=s.load_bytes * 3)
    times: dict[tuple[str, str], list[float]] = {}
    with shmstore.open(sums, cache=cache) as ours, shmstore.open(bare, cache=cache) as theirs:
        if theirs.info("contiguous").checksums is not None:
            raise RuntimeError("the h5py file has checksums: the comparison is void")
        for _ in range(s.repeat):
            runs = [(name, way) for name in ("contiguous", "gzip-shuffle") for way in "ab"]
            random.shuffle(runs)
            for name, way in runs:
                store = ours if way == "a" else theirs
                times.setdefault((name, way), []).append(_cold(store, cache, name))
    cache.clear()
    for name in ("contiguous", "gzip-shuffle"):
        _pair(
            results,
            f"cold load, {name} {s.load_bytes / GiB:g} GiB",
            s.load_bytes,
            (times[(name, "a")], times[(name, "b")]),
        )


@contextmanager
def _no_sums() -> Iterator[None]:
    """Raw-file writes that skip the checksums (appends then record none)."""
    original: Callable[..., Any] = _raw.write_raw

    def bare(
        path: Path, offset: int, data: np.ndarray, *, durable: bool = False, ranges: Any = None
    ) -> Any:
        original(path, offset, data, durable=durable)
        return None if ranges is None else np.empty((0, 2), np.uint64)

    _raw.write_raw = bare  # type: ignore[assignment]
    try:
        yield
    finally:
        _raw.write_raw = original  # type: ignore[assignment]


def _appends(s: Settings, results: Results, files: Path) -> None:
    """Appends into a store on tmpfs: the disk's write-back would time itself, not the sums."""
    total = s.load_bytes // 4
    big = np.random.default_rng(1).random((16 * MiB) // 8).reshape(-1, 64)
    small = big[: (64 * 1024) // (64 * 8)]
    cases = {
        "appends of 16 MiB": (big, max(1, total // big.nbytes)),
        "appends of 64 KiB": (small, max(1, min(1000, total // small.nbytes))),
    }
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(s.repeat):
        runs = [(label, way) for label in cases for way in "ab"]
        random.shuffle(runs)
        for label, way in runs:
            rows, count = cases[label]
            path = files / f"append-{way}.h5"
            with shmstore.open(path, "w") as store:
                store.write("x", rows[:1], appendable=True)
                with _no_sums() if way == "b" else _nothing():
                    start = time.perf_counter()
                    for _ in range(count):
                        store.append("x", rows)
                    times.setdefault((label, way), []).append(time.perf_counter() - start)
                verified = store.info("x").checksums is not None and store.verify("x") > 0
            if way == "a" and not verified:
                raise RuntimeError("appends with checksums recorded none")
            shutil.rmtree(path.with_name(path.name + ".raw"), ignore_errors=True)
            path.unlink()
    for label, (rows, count) in cases.items():
        pair = (times[(label, "a")], times[(label, "b")])
        _pair(results, label, rows.nbytes * count, pair, "MiB/s")


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def verification(s: Settings, results: Results) -> None:
    """Item 11: cold loads and appends, with checksums and without, side by side."""
    with workspace("verify") as (files, shm):
        _loads(s, results, files, shm)
        (shm / "appends").mkdir()
        _appends(s, results, shm / "appends")
