"""Worker processes for the cache tests (importable, so spawn can find them).

Run as a script it is a loader or a mapper for the crash and in-use tests:
``python _children_cache.py load CACHE_DIR SOURCE_JSON`` loads slowly and
prints ``filling`` when it starts; ``... map CACHE_DIR KEY`` maps a segment,
prints ``mapped`` and sleeps.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import shmstore
from shmstore._segment import FileIdentity, SegmentSource

ROWS, WIDTH = 2_000, 64  # 1 MiB of float64


def expected() -> np.ndarray:
    """The rows every loader writes."""
    return np.arange(ROWS * WIDTH, dtype="<f8").reshape(ROWS, WIDTH)


def make_source(origin: Path, version: int = 1) -> SegmentSource:
    """A source describing *origin* (any real file) as the copied data."""
    return SegmentSource(
        path=str(origin),
        identity=(FileIdentity.of(origin),),
        dataset="data",
        version=version,
        start=0,
        stop=ROWS,
    )


def slow_fill(counter: Path | None, seconds: float) -> Any:
    """A fill that records one line in *counter*, then writes the rows in 20 steps."""

    def fill(out: np.ndarray) -> None:
        if counter is not None:
            with counter.open("a") as log:
                log.write(f"{os.getpid()}\n")
        print("filling", flush=True)
        rows = expected()
        for part in np.array_split(np.arange(ROWS), 20):
            out[part] = rows[part]
            time.sleep(seconds / 20)

    return fill


def stampede(cache_dir: str, source_json: str, counter: str, barrier: Any, results: Any) -> None:
    """Wait for the others, then ask for the slice; put (key, sum of what was mapped)."""
    cache = shmstore.Cache(directory=cache_dir)
    source = SegmentSource.model_validate_json(source_json)
    barrier.wait()
    array = cache.get(source, np.dtype("<f8"), (ROWS, WIDTH), slow_fill(Path(counter), 0.3))
    results.put((cache.key(source), float(array.sum())))


def main() -> None:
    command, cache_dir, argument = sys.argv[1:4]
    cache = shmstore.Cache(directory=cache_dir)
    if command == "load":
        source = SegmentSource.model_validate_json(argument)
        cache.get(source, np.dtype("<f8"), (ROWS, WIDTH), slow_fill(None, 0.4))
        print("loaded", flush=True)
    elif command == "map":
        array = cache.attach(argument)
        print("mapped", float(array.sum()), flush=True)
        time.sleep(60)


if __name__ == "__main__":
    main()
