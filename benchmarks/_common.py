"""What every benchmark shares: timing, medians, temporary places, sample data, results."""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

GB = 1e9  # throughputs are in GB/s of 10**9 bytes
MiB = 1 << 20
GiB = 1 << 30
SHM = Path("/dev/shm")


@dataclass
class Settings:
    """Sizes and repeats of one run (full, or ``--quick``)."""

    quick: bool
    repeat: int
    attach_sizes: dict[str, int]
    load_bytes: int
    workers: tuple[int, ...]
    stampede: int
    import_repeat: int
    metadata_datasets: int
    block: str | None = None
    """``SHMSTORE_BLOCK`` for the block items (5, 8, 9): the quick run's slices are small."""


def settings(quick: bool, repeat: int | None) -> Settings:
    if quick:
        return Settings(
            True,
            repeat or 3,
            {"1 MiB": MiB, "16 MiB": 16 * MiB, "160 MiB": 160 * MiB},
            64 * MiB,
            (1, 2, 4),
            4,
            5,
            1000,
            "8M",
        )
    return Settings(
        False,
        repeat or 5,
        {"1 MiB": MiB, "100 MiB": 100 * MiB, "1 GiB": GiB, "4 GiB": 4 * GiB},
        GiB,
        (1, 2, 4, 8),
        8,
        15,
        10_000,
    )


@dataclass
class Row:
    """One line of the headline table: a figure, its baseline, their ratio, the target."""

    item: str
    measure: str
    figure: str
    baseline: str
    ratio: float | None
    target: str
    met: bool | None


@dataclass
class Curves:
    """What one item measured as curves for its figure: named y values against shared x values.

    ``x`` and ``curves[name]`` are in the units their labels name; ``x_ticks``
    labels some x values (a slice size and its number of blocks).
    ``references`` are single values drawn as flat lines (a baseline that does
    not vary with x); ``marks`` are x values drawn as vertical lines (the cores).
    """

    x_label: str
    y_label: str
    x: list[float]
    curves: dict[str, list[float]] = field(default_factory=dict)
    references: dict[str, float] = field(default_factory=dict)
    x_ticks: dict[float, str] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    details: dict[str, list[str]] = field(default_factory=dict)
    series: dict[str, Curves] = field(default_factory=dict)
    """Per item, what its figure draws (items 1, 2, 3, 4 and 7)."""

    def add(self, row: Row) -> None:
        self.rows.append(row)

    def note(self, item: str, line: str) -> None:
        self.details.setdefault(item, []).append(line)


def median(values: list[float]) -> float:
    return statistics.median(values)


def timed(function: Callable[[], object]) -> float:
    """Seconds *function* takes (perf_counter)."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


@contextlib.contextmanager
def workspace(tag: str) -> Iterator[tuple[Path, Path]]:
    """A directory for HDF5 files (``$TMPDIR`` or /tmp, a real disk here) and one on /dev/shm
    for caches; both removed afterwards, also on Ctrl-C."""
    files = Path(tempfile.mkdtemp(prefix=f"shmstore-bench-{tag}-"))
    shm = Path(tempfile.mkdtemp(prefix=f"shmstore-bench-{tag}-", dir=SHM if SHM.is_dir() else None))
    try:
        yield files, shm
    finally:
        shutil.rmtree(files, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)


@contextlib.contextmanager
def block_size(size: str | None) -> Iterator[None]:
    """``SHMSTORE_BLOCK`` set to *size* (``None``: the default) here and in processes started."""
    saved = os.environ.get("SHMSTORE_BLOCK")
    if size is not None:
        os.environ["SHMSTORE_BLOCK"] = size
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("SHMSTORE_BLOCK", None)
        else:
            os.environ["SHMSTORE_BLOCK"] = saved


THREADS = (1, 2, 4, 8)
"""``SHMSTORE_THREADS`` of the cold loads against threads (items 2 and 3): shmstore's
default is the cores, at most 8; a count set by hand is used as given, above the cores too."""


@contextlib.contextmanager
def thread_count(count: int | None) -> Iterator[None]:
    """``SHMSTORE_THREADS`` set to *count* (``None``: the default, the cores) here."""
    saved = os.environ.get("SHMSTORE_THREADS")
    if count is None:
        os.environ.pop("SHMSTORE_THREADS", None)
    else:
        os.environ["SHMSTORE_THREADS"] = str(count)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("SHMSTORE_THREADS", None)
        else:
            os.environ["SHMSTORE_THREADS"] = saved


def signal_like(nbytes: int, row_floats: int = 256) -> np.ndarray:
    """float32 rows of a smooth signal rounded to 0.01: compresses 4-6x with shuffle."""
    count = nbytes // 4
    x = np.sin(np.arange(count, dtype=np.float32) / 1000) * 100
    x += np.random.default_rng(0).normal(0, 0.001, count).astype(np.float32)
    return np.round(x, 2).reshape(-1, row_floats)


def warm(path: Path) -> None:
    """Read *path* once, into the page cache: "cold" means not in shmstore's cache."""
    with open(path, "rb") as f:
        while f.read(64 * MiB):
            pass


def collect() -> None:
    gc.collect()


def fresh_tmpfs_fd(directory: Path) -> int:
    """A new, unlinked file on tmpfs, opened read-write."""
    path = directory / f"ceiling-{os.getpid()}-{time.monotonic_ns()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.unlink(path)
    return fd
