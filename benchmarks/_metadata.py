"""Item 7: what opening a store and using one dataset cost with few or many datasets in it.

One store of 10 small datasets and one of many (10,000; quick: 1,000), each
also the file of a ``SharedNumpyStore``; every operation on one dataset is
timed on both, interleaved, and the ratio of the medians is the figure: the
metadata is a record per dataset, read when the dataset is first used, so
the ratio should stay near 1.  Stores of the powers of ten in between are
timed alike, for the figure of cost against the number of datasets.  Also:
``durable=True`` against the default for a one-row ``append`` (the price of
an ``fsync`` per change).
"""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np
from _common import Curves, Results, Row, Settings, median, timed, workspace

import shmstore
from shmstore.shared_numpy_store import STORE_FILE, SharedNumpyStore

METADATA_TARGET = 1.5
_ROW = np.arange(10.0)


def _build(directory: Path, count: int) -> Path:
    """A store of *count* datasets ``trial_NNNNN`` (10 float64 each) and an appendable ``log``."""
    directory.mkdir()
    path = directory / STORE_FILE
    with shmstore.open(path, "w") as store:
        for i in range(count):
            store.write(f"trial_{i:05d}", _ROW + i)
        store.write("log", _ROW.reshape(1, -1), appendable=True)
    return path


def _store_ops(path: Path, count: int, k: int) -> dict[str, float]:
    """One round of the single-dataset operations on the store at *path* (seconds each)."""
    rng = np.random.default_rng(k)
    first, second = (f"trial_{i:05d}" for i in rng.choice(count, 2, replace=False))
    times: dict[str, float] = {}
    start = time.perf_counter()
    store = shmstore.open(path, "r")
    store.close()
    times["open (mode 'r') and close"] = time.perf_counter() - start
    with shmstore.open(path, "r") as store:
        times["info of a dataset not used yet"] = timed(lambda: store.info(first))
        times["read of a dataset not used yet"] = timed(lambda: store.read(second))
    with shmstore.open(path, "a") as store:
        name = f"new_{k}"
        times["write of a new dataset"] = timed(lambda: store.write(name, _ROW))
        times["append of one row"] = timed(lambda: store.append("log", _ROW.reshape(1, -1)))
        times["delete of a dataset"] = timed(lambda: store.delete(name))
    start = time.perf_counter()
    with h5py.File(path, "r") as file:
        file[first][()]
    times["h5py: open, read one dataset, close"] = time.perf_counter() - start
    return times


def _seed_ops(directory: Path, count: int, k: int, cache: shmstore.Cache) -> dict[str, float]:
    """One round of ``SharedNumpyStore`` operations on the store in *directory* (seconds each)."""
    sns = SharedNumpyStore(directory, cache=cache)
    name = f"trial_{int(np.random.default_rng(k + 1).integers(count)):05d}"
    times = {
        "SharedNumpyStore.save": timed(lambda: sns.save(_ROW, f"saved_{k}")),
        "SharedNumpyStore.append_save": timed(lambda: sns.append_save(_ROW.reshape(1, -1), "log")),
        "SharedNumpyStore.load (memory)": timed(lambda: sns.load(name, mode="memory")),
        "SharedNumpyStore.load (shared memory, first)": timed(
            lambda: sns.load(f"saved_{k}", allow_create_shm=True)
        ),
    }
    sns.close()
    return times


def _durable_append(directory: Path, repeat: int) -> tuple[float, float]:
    """Median seconds of a one-row ``append``: default, and ``durable=True``."""
    path = directory / "durable.h5"
    with shmstore.open(path, "w") as store:
        store.write("log", _ROW.reshape(1, -1), appendable=True)
    plain: list[float] = []
    durable: list[float] = []
    for _ in range(repeat):
        for flag, into in ((False, plain), (True, durable)):
            with shmstore.open(path, "a", durable=flag) as store:
                into.append(timed(lambda s=store: s.append("log", _ROW.reshape(1, -1))))
    return median(plain), median(durable)


def metadata_scale(s: Settings, results: Results) -> None:
    few, many = 10, s.metadata_datasets
    between = [10**k for k in range(2, 8) if few < 10**k < many]
    repeat = max(3 * s.repeat, 9)
    with workspace("metadata") as (files, shm):
        build_started = time.perf_counter()
        stores = {few: _build(files / "few", few), many: _build(files / "many", many)}
        build = time.perf_counter() - build_started
        stores |= {count: _build(files / f"n{count}", count) for count in between}
        stores = dict(sorted(stores.items()))
        cache = shmstore.Cache(directory=shm / "cache", budget="1G")
        samples: dict[int, dict[str, list[float]]] = {count: {} for count in stores}
        for k in range(repeat):
            for count, path in stores.items():  # interleaved: drift hits both alike
                measured = {
                    **_store_ops(path, count, k),
                    **_seed_ops(path.parent, count, k, cache),
                }
                for op, seconds in measured.items():
                    samples[count].setdefault(op, []).append(seconds)
        plain, durable = _durable_append(files, repeat)
        cache.evict(all=True)
    results.series["7"] = Curves(
        "datasets in the store",
        "time of the operation (ms)",
        [float(count) for count in stores],
        {
            op: [median(samples[count][op]) * 1000 for count in stores]
            for op in samples[few]
            if not op.startswith("SharedNumpyStore")
        },
    )
    worst = ("", 0.0)
    for op in samples[few]:
        a, b = median(samples[few][op]), median(samples[many][op])
        ratio = b / a
        judged = not op.startswith("h5py")
        met = "yes" if ratio <= METADATA_TARGET else "**no**"
        results.note(
            "7",
            f"| {op} | {a * 1000:.2f} | {b * 1000:.2f} | {ratio:.2f}x | {met if judged else ''} |",
        )
        if judged and ratio > worst[1]:
            worst = (op, ratio)
    results.note(
        "7",
        f"\nEach figure the median of {repeat} rounds, the two stores interleaved; building them "
        f"({few} and {many:,} datasets with `write`) took {build:.0f} s. A one-row `append` costs "
        f"{plain * 1000:.2f} ms by default and {durable * 1000:.2f} ms with `durable=True` "
        f"({durable / plain:.1f}x: an fsync of the raw file, the HDF5 file and their directory "
        "before it returns).",
    )
    results.add(
        Row(
            "7",
            f"worst of {len(samples[few]) - 1} one-dataset operations: {worst[0]}",
            f"{median(samples[many][worst[0]]) * 1000:.2f} ms ({many:,} datasets)",
            f"{median(samples[few][worst[0]]) * 1000:.2f} ms ({few} datasets)",
            worst[1],
            f"≤ {METADATA_TARGET}x",
            worst[1] <= METADATA_TARGET,
        )
    )


METADATA_HEADER = (
    "| operation on one dataset | ms, 10 datasets | ms, many datasets | ratio | ≤ 1.5x |\n"
    "|---|---|---|---|---|"
)
