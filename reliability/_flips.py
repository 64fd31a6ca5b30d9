"""Flipped bytes inside stored data: never a wrong value (invariant 10).

One kind of case per place data live, each in a child process of its own
(``_common.run_cases``).  A store is written through shmstore (so its data
have checksums), then one bit of one byte inside the data is flipped, where
a disk fault, a bad copy or another program writing at the wrong offset
would flip it:

* ``contiguous``: the dataset's block inside the HDF5 file;
* ``raw``: the raw file of an appendable dataset written in several appends;
* ``chunked``: an uncompressed stored chunk;
* ``gzip``: a chunk compressed with gzip and shuffle;
* ``zstd``: a chunk compressed with zstd (hdf5plugin), decoded by shmstore.

Then every way of getting rows is tried: a shared view of every row, its
repetition (nothing may have been published), a worker's ``handle.view()``
of the damaged rows, ``read`` of every row, ``verify``, a window of rows
that touches the damaged checksum range (or chunk) and one that does not.
Right: every call over the damaged rows raises a ``ShmStoreError`` (an
``IntegrityError``, or a decoder's complaint), every call over other rows
returns the true rows, and no view of the damaged rows is left cached.
Wrong: any returned value that differs from what was written.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import random
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from _common import (
    FAILED,
    LEAK,
    OK,
    REFUSED,
    WRONG,
    Case,
    Row,
    Settings,
    cases_by_kind,
    run_into_rows,
)

SECTION = "Flipped bytes in data"
SHM = Path("/dev/shm")
BLOCK = "64K"
MIB = 1 << 20

KINDS: dict[str, tuple[str, int, int]] = {
    "contiguous": ("a bit flipped in a contiguous dataset inside the HDF5 file", 40, 250),
    "raw": ("a bit flipped in the raw file of an appendable dataset (several appends)", 40, 250),
    "chunked": ("a bit flipped in an uncompressed stored chunk", 40, 250),
    "gzip": ("a bit flipped in a stored chunk compressed with gzip and shuffle", 40, 250),
    "zstd": ("a bit flipped in a stored chunk compressed with zstd (decoded by shmstore)", 40, 250),
}


class _WrongError(Exception):
    """A call returned rows that differ from what was written."""


class _FalseAlarmError(Exception):
    """A call over intact rows raised."""


class _MissedError(Exception):
    """A check that must find the damage did not (no wrong value, but a broken promise)."""


def _truth(rng: np.random.Generator, kind: str) -> np.ndarray[Any, Any]:
    width = int(rng.integers(1, 40))
    dtype = rng.choice(["<f8", "<i4", "<u2"])
    itemsize = np.dtype(dtype).itemsize
    rows = int(rng.integers(2 * MIB, 6 * MIB)) // (width * itemsize)
    values = rng.integers(0, 1 << 14, size=(rows, width))
    if kind in ("gzip", "zstd"):  # compressible, but not trivially
        values = np.cumsum(values % 7, axis=0)
    return values.astype(dtype)


def _write(path: Path, kind: str, data: np.ndarray[Any, Any], rng: np.random.Generator) -> None:
    import shmstore

    with shmstore.open(path, "w") as store:
        store.write("pad", np.arange(int(rng.integers(1, 5000)), dtype="<f8"))
        if kind == "contiguous":
            store.write("x", data)
        elif kind == "raw":
            cuts = sorted({0, len(data), *(int(c) for c in rng.integers(1, len(data), 4))})
            store.write("x", data[: cuts[1]], appendable=True)
            for lo, hi in itertools.pairwise(cuts[1:]):
                store.append("x", data[lo:hi])
        else:
            chunk_rows = int(rng.integers(200, 5000))
            chunk_cols = data.shape[1] if rng.random() < 0.5 else max(1, data.shape[1] // 2)
            options: dict[str, Any] = {"chunks": (chunk_rows, chunk_cols)}
            if kind == "gzip":
                options["compression"] = {
                    "compression": "gzip",
                    "compression_opts": 4,
                    "shuffle": True,
                }
            elif kind == "zstd":
                import hdf5plugin

                options["compression"] = dict(hdf5plugin.Zstd(), shuffle=True)
            store.write("x", data, **options)


def _flip(path: Path, offset: int, bit: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ (1 << bit)]))


def _damage(path: Path, kind: str, data: np.ndarray[Any, Any], rng: random.Random) -> range:
    """Flip a bit inside the data of ``x``; the rows whose reads must fail."""
    row = data.shape[1] * data.itemsize
    with h5py.File(path, "r") as f:
        dataset = f["x"]
        if kind in ("contiguous", "raw"):
            at = rng.randrange(data.nbytes)
            if kind == "contiguous":
                target, offset = path, dataset.id.get_offset()
            else:
                name, offset, _ = dataset.external[0]
                target = path.parent / name
            # The range of checksums the byte is in: cut every MiB and where an append began.
            record = json.loads(dataset.attrs["shmstore_record"])
            keys = f[record["checksums"]["location"]][: record["checksums"]["count"], 0]
            i = int(np.searchsorted(keys, at, side="right"))
            first, last = (int(keys[i - 1]) if i else 0), int(keys[i])
            damaged = range(first // row, -(-last // row))
        else:
            chunk = dataset.id.get_chunk_info(rng.randrange(dataset.id.get_num_chunks()))
            target, offset = path, chunk.byte_offset
            at = rng.randrange(chunk.size)
            start = chunk.chunk_offset[0]
            damaged = range(start, min(start + dataset.chunks[0], len(data)))
    _flip(target, offset + at, rng.randrange(8))
    return damaged


def _clean_window(damaged: range, rows: int, rng: random.Random) -> tuple[int, int] | None:
    """Rows away from the damaged ones, or None when there are none."""
    spans = [(0, damaged.start), (damaged.stop, rows)]
    spans = [s for s in spans if s[1] > s[0]]
    if not spans:
        return None
    lo, hi = rng.choice(spans)
    a, b = sorted((rng.randrange(lo, hi), rng.randrange(lo, hi) + 1))
    return a, b


def _must_fail(what: str, call: Callable[[], Any], truth: np.ndarray[Any, Any]) -> str:
    """Run *call* over damaged rows: a ShmStoreError is right; rows returned must be true."""
    import shmstore

    try:
        got = call()
    except shmstore.ShmStoreError as err:
        if not str(err):
            raise _FalseAlarmError(f"{what}: {type(err).__name__} without a message") from err
        return type(err).__name__
    if got is not None and not np.array_equal(got, truth):
        raise _WrongError(f"{what} returned rows that differ from what was written")
    return f"no error from {what} (rows true)"


def _view_copy(store: Any, rows: tuple[int, int] | None) -> np.ndarray[Any, Any]:
    with store.view("x", rows, mode="shared") as arr:
        return np.array(arr)


def _handle_copy(handle: Any) -> np.ndarray[Any, Any]:
    with handle.view("shared") as arr:
        return np.array(arr)


def _check(
    path: Path, cache: Any, data: np.ndarray[Any, Any], damaged: range, rng: random.Random
) -> str:
    import shmstore

    bad = (damaged.start, damaged.stop)
    pick = rng.randrange(damaged.start, damaged.stop)
    touching = (pick, pick + 1)
    seen = []
    with shmstore.open(path, cache=cache) as store:
        # A shared view loads whole blocks: rows sharing a block with damaged
        # rows cannot be shared either.
        per = store.handle("x").block_rows or len(data)
        blocked = range(damaged.start // per * per, min(len(data), -(-damaged.stop // per) * per))
        seen.append(_must_fail("a shared view of every row", lambda: _view_copy(store, None), data))
        seen.append(
            _must_fail(
                "a second shared view", lambda: _view_copy(store, bad), data[bad[0] : bad[1]]
            )
        )
        handle = store.handle("x", bad)
        seen.append(
            _must_fail("handle.view()", lambda: _handle_copy(handle), data[bad[0] : bad[1]])
        )
        if handle.cached() is not None:
            raise _WrongError("the damaged rows are cached after every view of them failed")
        seen.append(_must_fail("read of every row", lambda: store.read("x"), data))
        try:
            store.verify("x")
        except shmstore.IntegrityError:
            pass
        else:
            raise _MissedError("verify passed the damaged data")
        seen.append(
            _must_fail(
                f"read of rows {touching}",
                lambda: store.read("x", touching),
                data[touching[0] : touching[1]],
            )
        )
        for window, calls in (
            (_clean_window(damaged, len(data), rng), ("read", "verify")),
            (_clean_window(blocked, len(data), rng), ("view",)),
        ):
            if window is None:
                continue
            a, b = window
            for call in calls:
                try:
                    if call == "verify":
                        store.verify("x", window)
                        continue
                    got = store.read("x", window) if call == "read" else _view_copy(store, window)
                except shmstore.ShmStoreError as err:
                    raise _FalseAlarmError(
                        f"{call} of rows {window}, away from the damage: {err}"
                    ) from err
                if not np.array_equal(got, data[a:b]):
                    raise _WrongError(
                        f"{call} of rows {window}, away from the damage, returned wrong rows"
                    )
    return ", ".join(sorted(set(seen)))


def _leftovers(directory: Path) -> list[str]:
    if not directory.is_dir():
        return []
    return [p.name for p in directory.iterdir() if p.suffix in (".tmp",)]


def check_case(case: Case) -> tuple[str, str]:
    """Run one case in this (child) process; ``(outcome, detail)``."""
    logging.getLogger("shmstore").setLevel(logging.CRITICAL)
    os.environ["SHMSTORE_BLOCK"] = BLOCK
    work = Path(case.workdir) / f"flips-{case.kind}-{case.seed}-{uuid.uuid4().hex[:6]}"
    work.mkdir(parents=True)
    directory = SHM / f"shmstore-relflip-{uuid.uuid4().hex[:12]}"
    rng = random.Random(case.seed)
    try:
        import shmstore

        data = _truth(np.random.default_rng(case.seed), case.kind)
        path = work / "flips.h5"
        _write(path, case.kind, data, np.random.default_rng(case.seed + 1))
        damaged = _damage(path, case.kind, data, rng)
        cache = shmstore.Cache(directory)
        try:
            seen = _check(path, cache, data, damaged, rng)
        except _WrongError as err:
            return WRONG, f"{case!r}: {err}"
        except (_FalseAlarmError, _MissedError) as err:
            return FAILED, f"{case!r}: {err}"
        left = _leftovers(directory)
        if left:
            return LEAK, f"{case!r}: left {left}"
        detail = f"rows {damaged.start}:{damaged.stop} refused ({seen})"
        return (REFUSED if "no error" not in seen else OK), detail
    except Exception as err:  # classified: any escape is a failure of the harness or the library
        return FAILED, f"{case!r}: {type(err).__name__}: {err}"
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def run(settings: Settings) -> list[Row]:
    """Every kind, a number of seeds each; one Row per kind."""
    work = Path(settings.workdir) / "flips"
    work.mkdir(parents=True, exist_ok=True)
    kinds = dict(KINDS)
    try:
        import hdf5plugin  # noqa: F401
    except ImportError:
        kinds.pop("zstd")
    cases, rows = cases_by_kind(
        SECTION, kinds, settings, lambda kind, seed: Case(kind, seed, str(work))
    )
    try:
        run_into_rows(check_case, cases, rows, workers=settings.workers, timeout=180)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return list(rows.values())
