"""Flipped bits in stored data (invariant 10): neighbours, an oracle of our own, the cache audited.

Each case writes a store of one to three datasets through shmstore (so their
data have checksums): the dataset under test, of the case's kind, and up to
two neighbours of any kind, written and appended to in an interleaved order.
Then one bit of one byte inside the data of the dataset under test is
flipped, where a disk fault, a bad copy or another program writing at the
wrong offset would flip it:

* ``contiguous``: its bytes inside the HDF5 file (``dataset.id.get_offset()``);
* ``raw``: its raw file, the data written in a first piece and 2-5 appends;
* ``chunked``: an uncompressed stored chunk (``dataset.id.get_chunk_info``);
* ``gzip``: a stored chunk compressed with gzip (and sometimes shuffle);
* ``zstd``: a stored chunk compressed with zstd (hdf5plugin), decoded by shmstore.

Chunked datasets are sometimes grown by appends too.  Dtypes (``<f8``,
``<i4``, ``<u2``), shapes (1-D, 2-D rows of odd widths that cut the 1 MiB
ranges, 3-D) and cache block sizes (64 KiB to 1 MiB) vary with the seed.

Which rows a flip must make unreadable is worked out here, not asked of the
library: the range of the flipped byte is cut at every MiB and where an
append began; a chunk's rows are those of the chunk.  Then, in an order that
varies, every way of getting rows is tried: a shared view of every row (and
again, after it failed), ``read`` of every row, ``read`` and ``verify`` of a
window holding the flipped byte's row, ``verify`` of the dataset, and a
``handle.view()`` in a worker process (which maps the cache without the
store open) of the damaged rows; ``read``, ``verify``, a shared view and a
worker's ``handle.view()`` of windows away from the damage (often right
beside it); and every row of the neighbours.  Afterwards every block file in
the cache is compared byte by byte with what was written.

* **wrong**: any call, or any cached block, gave bytes that differ from what
  was written (the expected arrays are made again from the seed);
* **refused** (the right answer): every call over the damaged rows raised a
  ``ShmStoreError`` with a message, every other call returned the true rows;
* **ok**: a call over the damaged rows returned the true rows (never seen: a
  single flipped bit always changes a CRC32C);
* **failed**: another exception type, an error without a message, an error
  over rows away from the damage, ``verify`` passing the damaged rows, or a
  block over the damaged bytes published;
* **hang** / **crash**: of the case's process or of its worker;
* **leak**: half-built or retired block files left after ``gc``, or
  descriptors left open in the case's process.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import itertools
import logging
import os
import pickle
import random
import select
import shutil
import struct
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from _common import (
    CRASH,
    FAILED,
    HANG,
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
MIB = 1 << 20
WORKER_TIMEOUT = 60.0

KINDS: dict[str, tuple[str, int, int]] = {
    "contiguous": (
        "a bit flipped in a contiguous dataset (HDF5 file), among 1-3 datasets",
        40,
        300,
    ),
    "raw": (
        "a bit flipped in the raw file of a dataset written in pieces (a write, 1-6 appends)",
        40,
        300,
    ),
    "chunked": ("a bit flipped in an uncompressed stored chunk (some grown by appends)", 40, 300),
    "gzip": ("a bit flipped in a gzip-compressed stored chunk (some grown by appends)", 40, 300),
    "zstd": ("a bit flipped in a zstd-compressed stored chunk, decoded by shmstore", 40, 300),
}
CHUNKED = ("chunked", "gzip", "zstd")


# -- what is written -------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One dataset of a case's store: everything needed to make its values again."""

    name: str
    kind: str
    dtype: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...] | None
    cuts: tuple[int, ...]  # rows where an append begins; () for one write
    shuffle: bool
    seed: int

    @property
    def row_nbytes(self) -> int:
        return int(np.dtype(self.dtype).itemsize * np.prod(self.shape[1:], dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.row_nbytes * self.shape[0]


def _spec(name: str, kind: str, nbytes: int, rng: random.Random) -> Spec:
    dtype = rng.choice(["<f8", "<f8", "<i4", "<i4", "<u2"])
    itemsize = np.dtype(dtype).itemsize
    shape_kind = rng.random()
    if shape_kind < 0.2:
        rest: tuple[int, ...] = ()
    elif shape_kind < 0.8:  # odd widths: rows never divide a MiB, ranges cut rows
        rest = (rng.randrange(3, 40, 2),)
    elif shape_kind < 0.9:
        rest = (rng.choice([2, 6, 10, 12, 16]),)
    else:
        rest = (3, 5)
    row = itemsize * int(np.prod(rest, dtype=np.int64))
    rows = max(8, nbytes // row)
    chunks = None
    if kind in CHUNKED:
        chunk_rows = max(1, rng.choice([16, 48, 100, 256]) * 1024 // row)
        chunk_rest: tuple[int, ...] = rest
        if rest and rng.random() < 0.4:  # chunks that cut rows too
            chunk_rest = (max(1, rest[0] // rng.choice([2, 3])), *rest[1:])
        chunks = (min(chunk_rows, rows), *chunk_rest)
    cuts: tuple[int, ...] = ()
    if kind == "raw" or (kind in CHUNKED and rng.random() < 0.3):
        pieces = rng.randint(2, 5) if kind == "raw" else rng.randint(1, 3)
        found = {rng.randrange(1, rows) for _ in range(pieces)}
        if rng.random() < 0.3:  # a one-row append
            found.add(rows - 1)
        cuts = tuple(sorted(found))
    shuffle = kind in ("gzip", "zstd") and rng.random() < 0.5
    return Spec(name, kind, dtype, (rows, *rest), chunks, cuts, shuffle, rng.randrange(2**32))


def plan(case: Case, kinds: list[str]) -> list[Spec]:
    """The datasets of *case*'s store; the one under test first (named ``x``, maybe in a group)."""
    rng = random.Random(f"integrity-{case.kind}-{case.seed}")
    name = "x" if rng.random() < 0.7 else "grp/x"
    specs = [_spec(name, case.kind, rng.randint(2 * MIB + 1, 4 * MIB), rng)]
    for i in range(rng.choice([0, 1, 1, 2])):
        kind = rng.choice(kinds)
        specs.append(_spec(f"n{i}", kind, rng.randint(64 * 1024, 3 * MIB // 2), rng))
    return specs


def values(spec: Spec) -> np.ndarray[Any, Any]:
    """The rows of *spec*, made from its seed alone (the same every time)."""
    rng = np.random.default_rng(spec.seed)
    dtype = np.dtype(spec.dtype)
    if spec.kind in ("gzip", "zstd"):  # compressible, but not trivially
        steps = rng.integers(0, 7, size=spec.shape).astype(np.int64)
        return np.cumsum(steps, axis=0).astype(dtype)
    raw = rng.integers(0, 256, size=spec.nbytes, dtype=np.uint8)
    return raw.view(dtype).reshape(spec.shape)


def _options(spec: Spec) -> dict[str, Any]:
    options: dict[str, Any] = {"appendable": bool(spec.cuts) or spec.kind == "raw"}
    if spec.chunks is not None:
        options["chunks"] = spec.chunks
    if spec.kind == "gzip":
        options["compression"] = {
            "compression": "gzip",
            "compression_opts": 4,
            "shuffle": spec.shuffle,
        }
    elif spec.kind == "zstd":
        import hdf5plugin

        options["compression"] = dict(hdf5plugin.Zstd(), shuffle=spec.shuffle)
    return options


def write(path: Path, specs: list[Spec], rng: random.Random) -> None:
    """Write every dataset's first piece, then their appends interleaved, reopening at times."""
    import shmstore

    order = list(specs)
    rng.shuffle(order)
    pending: list[tuple[Spec, int, int]] = []
    arrays = {s.name: values(s) for s in specs}
    store = shmstore.open(path, "w")
    try:
        for spec in order:
            bounds = [0, *spec.cuts, spec.shape[0]]
            store.write(spec.name, arrays[spec.name][: bounds[1]], **_options(spec))
            pending += [(spec, lo, hi) for lo, hi in itertools.pairwise(bounds[1:])]
        # Appends interleaved across datasets, each dataset's in order.
        while pending:
            spec, lo, hi = pending.pop(
                rng.choice(
                    [i for i, p in enumerate(pending) if p[0] not in [q[0] for q in pending[:i]]]
                )
            )
            if rng.random() < 0.2:
                store.close()
                store = shmstore.open(path, "a")
            store.append(spec.name, arrays[spec.name][lo:hi])
    finally:
        store.close()


# -- the flip, and the rows it must make unreadable ------------------------------------


@dataclass(frozen=True)
class Damage:
    file: str  # which file was flipped
    at: int  # the byte's offset in that file
    bit: int
    span: tuple[int, int]  # the dataset's bytes whose checksum the flip breaks
    rows: tuple[int, int]  # the rows those bytes are in: every read over them must fail
    flipped_row: int  # a row whose stored bytes hold the flip (a row of the chunk, for chunks)

    def describe(self) -> str:
        return (
            f"bit {self.bit} of byte {self.at} of {Path(self.file).name} (dataset bytes "
            f"{self.span[0]}:{self.span[1]}, rows {self.rows[0]}:{self.rows[1]})"
        )


def range_of(spec: Spec, byte: int) -> tuple[int, int]:
    """The checksum range holding dataset byte *byte*: cut every MiB and where an append began."""
    cuts = {0, spec.nbytes, *range(MIB, spec.nbytes, MIB)}
    cuts |= {c * spec.row_nbytes for c in spec.cuts}
    ordered = sorted(cuts)
    start = max(c for c in ordered if c <= byte)
    end = min(c for c in ordered if c > byte)
    return start, end


def flip(path: Path, spec: Spec, rng: random.Random) -> Damage:
    """Flip one bit inside the stored data of *spec*; where, and what it must break."""
    row = spec.row_nbytes
    with h5py.File(path, "r") as f:
        dataset = f[spec.name]
        if spec.kind in CHUNKED:
            chunk = dataset.id.get_chunk_info(rng.randrange(dataset.id.get_num_chunks()))
            target, at = path, chunk.byte_offset + rng.randrange(chunk.size)
            first = int(chunk.chunk_offset[0])
            last = min(first + dataset.chunks[0], spec.shape[0])
            rows = (first, last)
            span = (first * row, last * row)
            flipped_row = rng.randrange(first, last)
        else:
            byte = rng.randrange(spec.nbytes)
            if spec.kind == "contiguous":
                target, at = path, dataset.id.get_offset() + byte
            else:
                # The raw file(s): (name beside the HDF5 file, offset, size), in order.
                left = byte
                for name, offset, size in dataset.external:
                    if left < size:
                        target, at = path.parent / name, offset + left
                        break
                    left -= size
                else:
                    raise RuntimeError(f"byte {byte} is past the external files of {spec.name}")
            span = range_of(spec, byte)
            rows = (span[0] // row, -(-span[1] // row))
            flipped_row = byte // row
    bit = rng.randrange(8)
    with open(target, "r+b") as out:
        out.seek(at)
        old = out.read(1)[0]
        out.seek(at)
        out.write(bytes([old ^ (1 << bit)]))
    return Damage(str(target), at, bit, span, rows, flipped_row)


# -- the worker process ------------------------------------------------------------------

_WORKER_CODE = r"""
import hashlib, logging, os, pickle, struct, sys
logging.getLogger("shmstore").setLevel(logging.CRITICAL)
import numpy as np
import shmstore
inp, out = sys.stdin.buffer, sys.stdout.buffer
def answer(handle):
    try:
        with handle.view("shared") as arr:
            got = np.ascontiguousarray(arr)
            digest = hashlib.sha256(got.reshape(-1).view(np.uint8).data).hexdigest()
            shape, dtype = got.shape, got.dtype.str
        del arr, got
        return ("value", digest, shape, dtype)
    except shmstore.ShmStoreError as err:
        return ("refused", type(err).__name__, str(err))
    except Exception as err:
        return ("error", f"{type(err).__module__}.{type(err).__name__}", str(err))
while True:
    head = inp.read(8)
    if len(head) < 8:
        break
    block, handles = pickle.loads(inp.read(struct.unpack("<Q", head)[0]))
    os.environ["SHMSTORE_BLOCK"] = block  # the block size of the case's process
    data = pickle.dumps([answer(h) for h in handles])
    out.write(struct.pack("<Q", len(data)) + data)
    out.flush()
"""

# The worker of this process (started at its first case, again after one died).
_WORKER: dict[str, subprocess.Popen[bytes]] = {}


class WorkerError(Exception):
    """The worker process died (its outcome: a crash) or overran its time (a hang)."""

    def __init__(self, outcome: str, text: str) -> None:
        super().__init__(text)
        self.outcome = outcome


def _worker() -> subprocess.Popen[bytes]:
    proc = _WORKER.get("proc")
    if proc is None or proc.poll() is not None:
        proc = _WORKER["proc"] = subprocess.Popen(
            [sys.executable, "-c", _WORKER_CODE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
    return proc


def _stop_worker() -> None:
    proc = _WORKER.pop("proc", None)
    if proc is not None:
        with contextlib.suppress(OSError):
            proc.kill()
        proc.wait(10)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def _read_exactly(fd: int, n: int, deadline: float) -> bytes:
    import time

    parts = []
    while n > 0:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError
        part = os.read(fd, n)
        if not part:
            raise EOFError
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def in_worker(handles: list[Any]) -> list[tuple[Any, ...]]:
    """``handle.view("shared")`` of each handle in the worker process: its answers."""
    import time

    proc = _worker()
    assert proc.stdin is not None
    assert proc.stdout is not None
    data = pickle.dumps((os.environ["SHMSTORE_BLOCK"], handles))
    try:
        proc.stdin.write(struct.pack("<Q", len(data)) + data)
        proc.stdin.flush()
        deadline = time.monotonic() + WORKER_TIMEOUT
        fd = proc.stdout.fileno()
        size = struct.unpack("<Q", _read_exactly(fd, 8, deadline))[0]
        return pickle.loads(_read_exactly(fd, size, deadline))  # type: ignore[no-any-return]
    except TimeoutError:
        _stop_worker()
        raise WorkerError(HANG, f"the worker gave no answer in {WORKER_TIMEOUT:.0f} s") from None
    except (EOFError, OSError):
        code = proc.wait(10)
        _stop_worker()
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        raise WorkerError(CRASH, f"the worker process died ({how})") from None


# -- checking ----------------------------------------------------------------------------

_RANK = {OK: 0, REFUSED: 1, LEAK: 2, FAILED: 3, HANG: 4, CRASH: 5, WRONG: 6}


def _digest(array: np.ndarray[Any, Any]) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data).hexdigest()


def _same(got: Any, want: np.ndarray[Any, Any]) -> bool:
    if not isinstance(got, np.ndarray) or got.shape != want.shape or got.dtype != want.dtype:
        return False
    a = np.ascontiguousarray(got).reshape(-1).view(np.uint8)
    return bool(np.array_equal(a, np.ascontiguousarray(want).reshape(-1).view(np.uint8)))


class Tally:
    """What the calls of one case did."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []
        self.refusals: Counter[str] = Counter()
        self.passed: list[str] = []  # calls over the damage that returned the true rows
        self.calls = 0

    def problem(self, outcome: str, text: str) -> None:
        self.problems.append((outcome, text))

    def outcome(self) -> tuple[str, str]:
        if self.problems:
            worst = max(self.problems, key=lambda p: _RANK[p[0]])
            more = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            return worst[0], worst[1] + more
        refused = ", ".join(f"{n}x {name}" for name, n in sorted(self.refusals.items()))
        if self.passed:
            return OK, f"{self.calls} calls; true rows despite the flip from {self.passed}"
        return REFUSED, f"{self.calls} calls; refused: {refused}"

    def must_refuse(
        self, what: str, call: Callable[[], Any], want: np.ndarray[Any, Any] | None
    ) -> None:
        """*call* reads damaged bytes: a ShmStoreError is right; rows returned must be true.

        *want* ``None``: the call returns no rows (``verify``), and must raise.
        """
        import shmstore

        self.calls += 1
        try:
            got = call()
        except shmstore.ShmStoreError as err:
            if not str(err).strip():
                self.problem(FAILED, f"{what}: {type(err).__name__} without a message")
            else:
                self.refusals[type(err).__name__] += 1
            return
        except Exception as err:
            self.problem(FAILED, f"{what}: {type(err).__module__}.{type(err).__name__}: {err}")
            return
        if want is None:
            self.problem(FAILED, f"{what} passed the flipped bit (returned {got!r})")
        elif not _same(got, want):
            self.problem(WRONG, f"{what} returned rows that differ from what was written")
        else:
            self.passed.append(what)

    def must_return(
        self, what: str, call: Callable[[], Any], want: np.ndarray[Any, Any] | None
    ) -> None:
        """*call* reads intact bytes only: it must return the true rows (*want* ``None``:
        ``verify``, which must return a positive count of bytes checked)."""
        import shmstore

        self.calls += 1
        try:
            got = call()
        except shmstore.ShmStoreError as err:
            self.problem(FAILED, f"{what}, away from the damage: {type(err).__name__}: {err}")
            return
        except Exception as err:
            self.problem(FAILED, f"{what}: {type(err).__module__}.{type(err).__name__}: {err}")
            return
        if want is None:
            if not isinstance(got, int) or got <= 0:
                self.problem(FAILED, f"{what} checked nothing (returned {got!r})")
        elif not _same(got, want):
            self.problem(WRONG, f"{what}, away from the damage, returned wrong rows")

    def worker_answer(
        self, what: str, answer: tuple[Any, ...], want: np.ndarray[Any, Any], damaged: bool
    ) -> None:
        self.calls += 1
        kind = answer[0]
        if kind == "value":
            _, digest, shape, dtype = answer
            right = (
                digest == _digest(want)
                and tuple(shape) == want.shape
                and np.dtype(dtype) == want.dtype
            )
            if not right:
                self.problem(WRONG, f"{what} in the worker returned rows unlike those written")
            elif damaged:
                self.passed.append(what)
        elif kind == "refused":
            if not damaged:
                self.problem(
                    FAILED, f"{what} in the worker, away from the damage: {answer[1]}: {answer[2]}"
                )
            elif not answer[2].strip():
                self.problem(FAILED, f"{what} in the worker: {answer[1]} without a message")
            else:
                self.refusals[answer[1]] += 1
        else:
            self.problem(FAILED, f"{what} in the worker: {answer[1]}: {answer[2]}")


def _view_copy(store: Any, name: str, rows: tuple[int, int] | None = None) -> np.ndarray[Any, Any]:
    with store.view(name, rows, mode="shared") as arr:
        copy = np.array(arr)
    del arr
    return copy


def _window_with(row: int, rows: int, rng: random.Random) -> tuple[int, int]:
    """A window of rows holding *row*."""
    a = max(0, row - rng.choice([0, 1, rng.randrange(1, 2000)]))
    b = min(rows, row + 1 + rng.choice([0, 1, rng.randrange(1, 2000)]))
    return a, b


def _window_away(
    bad: tuple[int, int], rows: int, rng: random.Random, *, beside: bool
) -> tuple[int, int] | None:
    """A window of rows outside ``[bad)``, ending at or starting at it when *beside*."""
    sides = [s for s in ((0, bad[0]), (bad[1], rows)) if s[1] > s[0]]
    if not sides:
        return None
    lo, hi = rng.choice(sides)
    length = rng.randint(1, min(hi - lo, rng.choice([1, 50, 5000, hi - lo])))
    if beside:
        return (hi - length, hi) if hi == bad[0] else (lo, lo + length)
    a = rng.randrange(lo, hi - length + 1)
    return a, a + length


def _view_window_away(
    store: Any, name: str, damage: Damage, rows: int, rng: random.Random
) -> tuple[int, int] | None:
    """Rows outside every cache block that holds damaged rows (a view loads whole blocks)."""
    bad_keys = set(store.handle(name, damage.rows).keys)
    for attempt in range(30):
        window = _window_away(damage.rows, rows, rng, beside=attempt < 10 and rng.random() < 0.5)
        if window is not None and not bad_keys & set(store.handle(name, window).keys):
            return window
    return None


def audit_cache(
    directory: Path,
    specs: list[Spec],
    truth: dict[str, np.ndarray[Any, Any]],
    damage: Damage,
    tally: Tally,
) -> int:
    """Compare every block in the cache with what was written; the number of blocks."""
    import shmstore

    cache = shmstore.Cache(directory)
    blocks = 0
    target = specs[0].name
    for entry in cache.entries():
        if entry.block is None or entry.dataset not in truth:
            tally.problem(FAILED, f"a segment the case did not make: {entry.key} {entry.dataset}")
            continue
        lo, hi = entry.block
        want = np.ascontiguousarray(truth[entry.dataset]).reshape(-1).view(np.uint8)[lo:hi]
        try:
            got = cache.attach(entry.key)
        except shmstore.SegmentNotFoundError:
            continue
        blocks += 1
        same = bool(np.array_equal(got, want))
        del got
        if not same:
            tally.problem(
                WRONG,
                f"the cached block of bytes {lo}:{hi} of {entry.dataset!r} "
                "differs from what was written",
            )
        elif entry.dataset == target and lo < damage.span[1] and hi > damage.span[0]:
            tally.problem(
                FAILED,
                f"a block of bytes {lo}:{hi} of {target!r}, over the flipped bit, was published",
            )
    return blocks


def check(
    path: Path, directory: Path, specs: list[Spec], damage: Damage, rng: random.Random
) -> tuple[Tally, int]:
    """Every way of getting rows, in a varying order; the tally, and the blocks audited."""
    import shmstore

    tally = Tally()
    truth = {s.name: values(s) for s in specs}
    spec = specs[0]
    name, rows, want = spec.name, spec.shape[0], truth[spec.name]
    cache = shmstore.Cache(directory)
    with shmstore.open(path, cache=cache) as store:
        near = _window_with(damage.flipped_row, rows, rng)
        away = _window_away(damage.rows, rows, rng, beside=rng.random() < 0.5)
        view_away = _view_window_away(store, name, damage, rows, rng)
        # (what the call must do, what it is, the call, the rows it must return)
        calls: list[tuple[str, str, Callable[[], Any], np.ndarray[Any, Any] | None]] = [
            ("refuse", "a shared view of every row", partial(_view_copy, store, name), want),
            ("refuse", "read of every row", partial(store.read, name), want),
            ("refuse", f"read of rows {near}", partial(store.read, name, near), want[slice(*near)]),
            ("refuse", f"verify of rows {near}", partial(store.verify, name, near), None),
            ("refuse", "verify", partial(store.verify, name), None),
            (
                "refuse",
                f"a shared view of rows {near}",
                partial(_view_copy, store, name, near),
                want[slice(*near)],
            ),
        ]
        worker: list[tuple[str, Any, np.ndarray[Any, Any], bool]] = [
            ("handle.view() of every row", store.handle(name), want, True),
            (
                f"handle.view() of rows {damage.rows}",
                store.handle(name, damage.rows),
                want[slice(*damage.rows)],
                True,
            ),
        ]
        if away is not None:
            calls += [
                (
                    "return",
                    f"read of rows {away}",
                    partial(store.read, name, away),
                    want[slice(*away)],
                ),
                ("return", f"verify of rows {away}", partial(store.verify, name, away), None),
            ]
        if view_away is not None:
            calls.append(
                (
                    "return",
                    f"a shared view of rows {view_away}",
                    partial(_view_copy, store, name, view_away),
                    want[slice(*view_away)],
                )
            )
            worker.append(
                (
                    f"handle.view() of rows {view_away}",
                    store.handle(name, view_away),
                    want[slice(*view_away)],
                    False,
                )
            )
        for other in specs[1:]:
            o, right = other.name, truth[other.name]
            calls += [
                ("return", f"a shared view of {o!r}", partial(_view_copy, store, o), right),
                ("return", f"read of {o!r}", partial(store.read, o), right),
                ("return", f"verify of {o!r}", partial(store.verify, o), None),
            ]
        calls.append(("worker", "the worker", lambda: None, None))
        rng.shuffle(calls)
        for must, what, call, rows_wanted in calls:
            if must == "refuse":
                tally.must_refuse(what, call, rows_wanted)
            elif must == "return":
                tally.must_return(what, call, rows_wanted)
            else:
                answers = in_worker([h for _, h, _, _ in worker])
                for (said, _, expect, damaged), answer in zip(worker, answers, strict=True):
                    tally.worker_answer(said, answer, expect, damaged)
        # Nothing of the damaged rows may have been published by any of that.
        tally.must_refuse(
            "a shared view of every row, again", partial(_view_copy, store, name), want
        )
        if store.handle(name, damage.rows).cached() is not None:
            tally.problem(FAILED, "handle.cached() of the damaged rows found them cached")
    gc.collect()
    blocks = audit_cache(directory, specs, truth, damage, tally)
    return tally, blocks


def _open_fds() -> set[str]:
    return {p.name for p in Path("/proc/self/fd").iterdir()}


def _fd_targets(fds: set[str]) -> list[str]:
    targets = []
    for fd in sorted(fds):
        with contextlib.suppress(OSError):
            targets.append(str(Path(f"/proc/self/fd/{fd}").readlink()))
    return targets


def check_case(case: Case) -> tuple[str, str]:
    """Run one case in this (child) process; ``(outcome, detail)``."""
    import shmstore

    logging.getLogger("shmstore").setLevel(logging.CRITICAL)  # refusals are logged
    rng = random.Random(f"integrity-case-{case.seed}")
    block = rng.choice(["64K", "64K", "256K", "1M"])
    os.environ["SHMSTORE_BLOCK"] = block
    kinds = ["contiguous", "raw", "chunked", "gzip"] + (["zstd"] if _has_zstd() else [])
    work = Path(case.workdir) / f"integrity-{case.kind}-{case.seed}-{uuid.uuid4().hex[:6]}"
    directory = SHM / f"shmstore-relint-{uuid.uuid4().hex[:12]}"
    specs = plan(case, kinds)
    head = f"{case!r} {specs[0].kind} {specs[0].dtype}{list(specs[0].shape)}"
    try:
        _worker()
        fds = _open_fds()
        work.mkdir(parents=True)
        path = work / "integrity.h5"
        write(path, specs, rng)
        damage = flip(path, specs[0], rng)
        head += f", {damage.describe()}, block {block}, {len(specs) - 1} neighbours"
        try:
            tally, blocks = check(path, directory, specs, damage, rng)
        except WorkerError as err:
            return err.outcome, f"{head}: {err}"
        outcome, detail = tally.outcome()
        gc.collect()
        if directory.is_dir():
            shmstore.Cache(directory).gc()
            left = [p.name for p in directory.iterdir() if p.suffix in (".tmp", ".stale")]
            if left and _RANK[outcome] < _RANK[LEAK]:
                outcome, detail = LEAK, f"left in the cache after gc: {left}"
        # A process keeps one descriptor (O_PATH) of each cache directory it used, for good.
        held = str(directory)
        opened = [t for t in _fd_targets(_open_fds() - fds) if t != held]
        if opened and _RANK[outcome] < _RANK[LEAK]:
            outcome, detail = LEAK, f"descriptors left open: {opened}"
        with open("/proc/self/maps") as maps:
            mapped = sorted({line.split()[-1] for line in maps if held in line})
        if mapped and _RANK[outcome] < _RANK[LEAK]:
            outcome, detail = LEAK, f"block files left mapped: {mapped}"
        return outcome, f"{head}: {detail}; {blocks} cached blocks right"
    except Exception as err:  # classified: any escape is a failure of the harness or the library
        return FAILED, f"{head}: {type(err).__module__}.{type(err).__name__}: {err}"
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def _has_zstd() -> bool:
    try:
        import hdf5plugin  # noqa: F401
    except ImportError:
        return False
    return True


def run(settings: Settings) -> list[Row]:
    """Every kind, a number of seeds each; one Row per kind."""
    work = Path(settings.workdir) / "integrity"
    work.mkdir(parents=True, exist_ok=True)
    kinds = dict(KINDS)
    if not _has_zstd():
        kinds.pop("zstd")
    cases, rows = cases_by_kind(
        SECTION, kinds, settings, lambda kind, seed: Case(kind, seed, str(work))
    )
    try:
        run_into_rows(check_case, cases, rows, workers=settings.workers, timeout=180)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return list(rows.values())
