"""Bodies of the child processes of the cache tests, and the data they share.

An importable module, so ``spawn`` and ``forkserver`` children can find
them.  Each child makes its own :class:`Cache` of the parent's directory and
reports through a queue or an event; none shares anything else with the
parent.
"""

from __future__ import annotations

import ctypes
import hashlib
import multiprocessing
import multiprocessing.context
import os
import queue
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shmstore import _mappings
from shmstore._cache import Cache, CacheAction
from shmstore._segment import FileIdentity, SegmentSource
from shmstore.errors import CacheFullError

SHM = Path("/dev/shm")
ROWS, WIDTH = 256, 512  # 1 MiB of float64
F8 = np.dtype("<f8")
SHAPE = (ROWS, WIDTH)


def removed_names(actions: list[CacheAction]) -> list[str]:
    """The names of the files ``Cache.gc`` removed (or, in a dry run, would remove)."""
    return [a.name for a in actions if a.outcome in ("removed", "would remove")]


def evicted_keys(actions: list[CacheAction]) -> list[str]:
    """The keys whose files ``Cache.evict`` (or ``clear``) removed."""
    return [a.key for a in actions if a.outcome == "removed"]


def expected(version: int = 0) -> np.ndarray[Any, Any]:
    """The rows a loader of *version* writes: distinct values, so a partial copy shows."""
    return np.arange(ROWS * WIDTH, dtype=F8).reshape(SHAPE) + version * 1e7


def fill_expected(version: int = 0) -> Callable[[np.ndarray[Any, Any]], None]:
    """A fill callback writing :func:`expected` of *version*."""

    def fill(out: np.ndarray[Any, Any]) -> None:
        out[...] = expected(version)

    return fill


def make_source(
    origin: Path, version: int = 0, start: int = 0, stop: int = ROWS, dataset: str = "data"
) -> SegmentSource:
    """A source whose bytes come from *origin* (any real file), rows ``[start, stop)``."""
    return SegmentSource(
        path=str(origin),
        identity=(FileIdentity.of(origin),),
        dataset=dataset,
        version=version,
        start=start,
        stop=stop,
    )


def forkserver() -> multiprocessing.context.ForkServerContext:
    """A context whose children fork from a server that has imported the test children.

    Starting one costs milliseconds instead of a new interpreter's import of
    numpy and pydantic, which keeps the loops of kills fast.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tests._cache_children"])
    return context


def segment_file(cache: Cache, key: str) -> Path:
    """The file of the segment *key* in *cache*."""
    return cache.directory / f"{key}.seg"


def result_of(processes: Any, results: Any, timeout: float = 60.0) -> Any:
    """The next thing put in *results* by one of *processes* (one or a list).

    Fails at once, instead of after *timeout* seconds, when every process
    died without reporting (a SIGBUS, a SIGSEGV, an exception).
    """
    group = processes if isinstance(processes, list) else [processes]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return results.get(timeout=0.05)
        except queue.Empty:
            if not any(p.is_alive() for p in group):
                try:
                    return results.get(timeout=0.5)
                except queue.Empty:
                    codes = [p.exitcode for p in group]
                    raise AssertionError(f"died before reporting (exit codes {codes})") from None
    raise AssertionError(f"nothing reported in {timeout} s")


def names(directory: str | Path) -> list[str]:
    """The names of the files in *directory*, sorted."""
    return sorted(path.name for path in Path(directory).iterdir())


def _mapped_inode(path: str) -> int | None:
    """The inode of the file *path* as this process maps it (from /proc/self/maps)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].strip() == path:
                return int(fields[4])
    return None


def stampede(directory: str, source_json: str, log: str, barrier: Any, results: Any) -> None:
    """Wait for all the others, then ask for the slice; report what was mapped.

    The fill appends a line to *log* (one line per load) and takes a while,
    so the others arrive during the load.
    """
    cache = Cache(directory=directory)
    source = SegmentSource.model_validate_json(source_json)

    def fill(out: np.ndarray[Any, Any]) -> None:
        with open(log, "a") as loads:
            loads.write(f"{os.getpid()}\n")
        time.sleep(0.3)
        out[...] = expected()

    barrier.wait()
    array = cache.get(source, F8, SHAPE, fill)
    key = cache.key(source)
    results.put(
        (
            os.getpid(),
            key,
            hashlib.sha256(array.tobytes()).hexdigest(),
            _mapped_inode(f"{directory}/{key}.seg"),
        )
    )


def slow_loader(directory: str, source_json: str, version: int, started: Any) -> None:
    """Load the slice in ten slow steps, setting *started* when the fill begins."""
    cache = Cache(directory=directory)
    source = SegmentSource.model_validate_json(source_json)
    rows = expected(version)

    def fill(out: np.ndarray[Any, Any]) -> None:
        started.set()
        for part in np.array_split(np.arange(len(rows)), 10):
            out[part] = rows[part]
            time.sleep(0.01)

    cache.get(source, F8, SHAPE, fill)


def hold(directory: str, key: str, ready: Any, results: Any) -> None:
    """Map the segment *key*, report its sum, and keep it mapped until killed."""
    array = Cache(directory=directory).attach(key)
    results.put(float(array.sum()))
    ready.set()
    time.sleep(120)


def try_to_write(directory: str, key: str, results: Any) -> None:
    """Try every ordinary way of writing into the mapped segment; report each error."""
    array = Cache(directory=directory).attach(key)
    mapping: Any = array.base  # the mmap itself
    errors: list[str] = []
    attempts: tuple[Callable[[], object], ...] = (
        lambda: array.__setitem__((0, 0), -1.0),
        lambda: array.fill(-1.0),
        lambda: setattr(array.flags, "writeable", True),
        lambda: np.copyto(array, 0.0),
        lambda: mapping.__setitem__(0, 0),
    )
    for attempt in attempts:
        try:
            attempt()
        except (ValueError, TypeError) as err:
            errors.append(f"{type(err).__name__}: {err}")
        else:
            errors.append("written")
    results.put(errors)


def poke(directory: str, key: str) -> None:
    """Write into the mapped pages behind numpy's back: PROT_READ must make this fault."""
    array = Cache(directory=directory).attach(key)
    ctypes.memset(array.ctypes.data, 0, 8)


def fork_child_registry(directory: str, key: str, parent_address: int, results: Any) -> None:
    """In a forked child: report the registry's size and whether attach maps afresh."""
    inherited = len(_mappings.MAPPINGS)
    array = Cache(directory=directory).attach(key)
    results.put((inherited, array.ctypes.data != parent_address, float(array.sum())))


def fill_a_small_tmpfs(directory: str, results: Any) -> None:
    """On a tmpfs of 8 MiB holding a 3 MiB file: evict to fit, then fail cleanly.

    Reports, in order: the first load's outcome, the second's (needs the
    first evicted: the file system, not the budget, is short), and the
    third's (nothing evictable: CacheFullError).
    """
    cache = Cache(directory=directory, budget="1G")  # the budget never binds: the tmpfs does
    origin = Path(directory).parent / "filler.bin"
    sources = [
        SegmentSource(path=str(origin), identity=(), dataset=name, version=0, start=0, stop=rows)
        for name, rows in (("a", 256), ("b", 512), ("c", 512))
    ]

    def get(source: SegmentSource) -> np.ndarray[Any, Any]:
        return cache.get(source, F8, (source.stop, 1024), lambda out: out.fill(1.0))

    outcome: list[str] = []
    first = get(sources[0])  # 2 MiB
    outcome.append(f"loaded {first.nbytes}")
    del first
    second = get(sources[1])  # 4 MiB: fits only once the first is evicted
    outcome.append(f"loaded {second.nbytes}; segments {len(cache.entries())}")
    try:
        get(sources[2])  # 4 MiB more while the second is mapped
    except CacheFullError as err:
        outcome.append(f"CacheFullError: {err}")
    else:
        outcome.append("loaded")
    outcome.append(f"files {names(directory)}")
    results.put(outcome)
