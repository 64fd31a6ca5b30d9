"""The soak: many real processes on one store and one cache for a bounded time.

Seven spawned processes share one HDF5 file and one cache directory on
``/dev/shm`` (unique, removed after) with a small budget, so that loads
evict each other:

* two *readers* open the store, map random row slices with
  ``store.view(mode="shared")``, check every value, and now and then keep
  an array past its block for a while, checking it again later (unchanged,
  and its segment file still in place: a mapped segment is never evicted);
* one *handle reader* makes handles and maps them with ``handle.view``,
  pins and unpins them, checking the same way;
* two *appenders* append batches to an appendable dataset each, and record
  every acknowledged row count in shared memory;
* one *writer* rewrites two datasets (contiguous and chunked) with
  ``overwrite=True`` and a new version pattern: a reader must see one
  whole version, never a mix, never an older one than it saw before;
* one *evictor* calls ``evict``, ``gc`` and ``entries`` in a loop.

Every value stored is a known function of its row index (and of the
version, for rewritten datasets), so a wrong value is seen.  Each process
counts its operations: ``CacheFullError`` (the budget is small) is a
legitimate refusal, any other exception a failure.  At the end of its loop
a process drops everything, collects garbage and counts its open file
descriptors (against the count before the loop) and its mappings into the
cache directory (must be none).  The parent then checks that every process
finished within ``soak_seconds`` plus a grace period (else HANG), that
after ``gc`` the cache holds no temporary file, no orphan lock, only
current, unmapped, correct segments within the budget, and that the store
has every acknowledged row, each one right.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing as mp
import os
import queue
import random
import shutil
import signal
import tempfile
import time
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _common import CRASH, FAILED, HANG, LEAK, LOST, OK, REFUSED, WRONG, Row, Settings, Timer

SECTION = "Soak"
SHM = Path("/dev/shm")
ROWS, WIDTH = 512, 32  # rows of the rewritten datasets, columns of every dataset
MAX_SLICE = 192  # rows of one view at most: 48 KiB of data
BUDGET = 384 * 1024  # a few slices: loads evict each other, and sometimes find no room
VERSION_SCALE = 1_000_000  # value = version * VERSION_SCALE + row * WIDTH + column
LOCK_TIMEOUT = 30.0  # seconds a store lock may be waited for: more is a failure
GRACE = 45.0  # seconds past soak_seconds before a process is a HANG
REWRITTEN = ("fixed", "chunked")
APPENDED = ("log0", "log1")
F8 = np.dtype("<f8")
I8 = np.dtype("<i8")

# kind -> (how many processes, what the Row says)
KINDS: dict[str, tuple[int, str]] = {
    "reader": (2, "readers: store.view(mode='shared') of random slices, some kept a while"),
    "handle": (1, "handle reader: handle.view(mode='shared'), pin/unpin"),
    "appender": (2, "appenders: append batches to an appendable dataset each"),
    "writer": (1, "writer: rewrites a contiguous and a chunked dataset (overwrite=True)"),
    "evictor": (1, "evictor: cache.evict(all=True), evict(key), gc(), entries() in a loop"),
}


@dataclass(frozen=True)
class Plan:
    """What every process of one soak needs to know (pickled to each child)."""

    store: str
    cache_dir: str
    budget: int
    seconds: float
    seed: int


# -- the data ---------------------------------------------------------------------


def expected(name: str, start: int, stop: int, version: int = 0) -> np.ndarray[Any, Any]:
    """The rows ``[start, stop)`` of dataset *name* at *version* (appended ones have none)."""
    values = np.arange(start * WIDTH, stop * WIDTH, dtype=I8).reshape(stop - start, WIDTH)
    if name in APPENDED:
        return values
    return (values + version * VERSION_SCALE).astype(F8)


def version_of(name: str, array: np.ndarray[Any, Any]) -> int:
    """The version a slice of a rewritten dataset says it is (from its first value)."""
    return int(array.flat[0]) // VERSION_SCALE if name in REWRITTEN and array.size else 0


def check_slice(
    name: str, start: int, array: np.ndarray[Any, Any], *, mapped: bool = True
) -> tuple[int, str]:
    """``(version, "")`` when *array* is rows *start*... of *name* of one version, else why not."""
    version = version_of(name, array)
    want = expected(name, start, start + len(array), version)
    if array.dtype != want.dtype or array.shape != want.shape:
        return version, f"{name}[{start}:] is {array.dtype} {array.shape}, not {want.shape}"
    if mapped and array.flags.writeable:
        return version, f"{name}[{start}:] is writeable"
    if not np.array_equal(array, want):
        bad = np.argwhere(array != want)[0]
        return version, (
            f"{name}[{start}:{start + len(array)}] version {version}: at {tuple(bad)} "
            f"{array[tuple(bad)]!r}, not {want[tuple(bad)]!r} (a mix of versions, or wrong rows)"
        )
    return version, ""


def make_store(path: Path) -> None:
    """Create the store the soak runs on: two rewritten datasets, two appended ones."""
    import shmstore

    with shmstore.open(path, "w") as store:
        store.write("fixed", expected("fixed", 0, ROWS))
        store.write("chunked", expected("chunked", 0, ROWS), chunks=(64, WIDTH))
        for name in APPENDED:
            store.write(name, expected(name, 0, 64), appendable=True)


# -- in the worker processes -----------------------------------------------------------


class _LogCounter(logging.Handler):
    """Counts the cache's loads and evictions, and keeps its warnings, from its log."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: Counter[str] = Counter()
        self.warnings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = str(record.msg)
        if message.startswith("loaded "):
            self.counts["loads"] += 1
        elif message.startswith("evicted segment") and "to make room" in message:
            self.counts["evictions for room"] += 1
        if record.levelno >= logging.WARNING:
            self.counts["warnings"] += 1
            if len(self.warnings) < 3:
                self.warnings.append(record.getMessage()[:300])


def _open_fds() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


def _maps_into(directory: str) -> list[str]:
    prefix = directory.rstrip("/") + "/"
    with open("/proc/self/maps") as maps:
        return [line.strip() for line in maps if prefix in line]


def _mapping_ok(array: np.ndarray[Any, Any], directory: str) -> str:
    """ "" when *array* is backed by a segment file of *directory* that is still in place."""
    address = array.__array_interface__["data"][0]
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            low, high = (int(x, 16) for x in fields[0].split("-"))
            if low <= address < high:
                path = fields[5].strip() if len(fields) > 5 else ""
                break
        else:
            return f"no mapping holds address {address:#x}"
    if not path.startswith(directory.rstrip("/") + "/"):
        return f"the array is not mapped from the cache but from {path!r}"
    if path.endswith(" (deleted)"):
        return f"the segment {path} was removed while mapped (evicted in use)"
    try:
        if os.stat(path).st_ino != int(fields[4]):
            return f"the segment {path} was replaced while mapped"
    except FileNotFoundError:
        return f"the segment {path} is gone while mapped"
    return ""


class _Worker:
    """One process's loop: counts, outcomes, examples."""

    def __init__(self, kind: str, index: int, plan: Plan) -> None:
        import shmstore

        self.kind, self.index, self.plan = kind, index, plan
        self.rng = random.Random(plan.seed * 1000 + index)
        self.cache = shmstore.Cache(plan.cache_dir, plan.budget)
        self.ops: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.examples: list[str] = []
        self.seen: dict[str, int] = {}  # dataset -> highest version seen (never older after)
        self.held: list[tuple[str, int, int, np.ndarray[Any, Any]]] = []
        self.pins: dict[int, np.ndarray[Any, Any]] = {}  # id(handle) -> the array pin() gave

    def bad(self, outcome: str, detail: str) -> None:
        self.outcomes[outcome] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{outcome}: {self.kind}{self.index}: {detail}"[:600])

    def open(self, mode: str = "r") -> Any:
        import shmstore

        return shmstore.open(self.plan.store, mode, cache=self.cache, lock_timeout=LOCK_TIMEOUT)

    def check(self, name: str, start: int, array: np.ndarray[Any, Any], latest: int) -> bool:
        """Check a newly attached slice; *latest* is the newest version any writer began.

        *latest* is read after the attach: the writer raises it before it writes.
        """
        version, wrong = check_slice(name, start, array)
        if not wrong and version > latest:
            wrong = f"{name} version {version} is newer than any written ({latest})"
        if not wrong and version < self.seen.get(name, 0):
            wrong = f"{name} version {version} after version {self.seen[name]} was seen: stale"
        if not wrong:
            wrong = _mapping_ok(array, self.plan.cache_dir)
        if wrong:
            self.bad(WRONG, wrong)
            return False
        self.seen[name] = max(version, self.seen.get(name, 0))
        self.ops["reads"] += 1
        return True

    def recheck_held(self) -> None:
        """Every kept array still holds what it held, from a segment still in place."""
        for name, start, version, array in self.held:
            got, wrong = check_slice(name, start, array)
            if not wrong and got != version:
                wrong = f"a kept {name}[{start}:] changed from version {version} to {got}"
            if not wrong:
                wrong = _mapping_ok(array, self.plan.cache_dir)
            if wrong:
                self.bad(WRONG, f"kept array: {wrong}")
            else:
                self.ops["rechecks of kept arrays"] += 1

    def random_rows(self, rows: int) -> tuple[int, int]:
        """Rows of one view: half the time one of a few slices every process asks for."""
        popular = [start for start in (0, 32, 96) if start < rows]
        if self.rng.random() < 0.5:
            start = self.rng.choice(popular)
            return start, min(rows, start + 64)
        start = self.rng.randrange(rows)
        return start, min(rows, start + self.rng.randint(1, MAX_SLICE))

    def drop_all(self) -> None:
        self.held.clear()
        self.pins.clear()


def _reader_op(w: _Worker, latest: Any) -> None:
    """Open the store, map one to four slices (keeping some), close it."""
    with w.open() as store:
        for _ in range(w.rng.randint(1, 4)):
            name = w.rng.choice(REWRITTEN + APPENDED)
            start, stop = w.random_rows(store.info(name).rows)
            with store.view(name, (start, stop), mode="shared") as array:
                w.ops["attaches"] += 1
                if (
                    w.check(name, start, array, latest.value)
                    and w.rng.random() < 0.2
                    and len(w.held) < 2
                ):
                    w.held.append((name, start, version_of(name, array), array))
    if w.held and w.rng.random() < 0.15:
        w.recheck_held()
        w.held.pop(w.rng.randrange(len(w.held)))


def _handle_op(w: _Worker, latest: Any, handles: list[Any], pinned: list[Any]) -> None:
    """Make a handle, or view one, or pin one (kept a while), or unpin one."""
    if len(handles) < 6 or w.rng.random() < 0.05:
        name = w.rng.choice(REWRITTEN + APPENDED)
        with w.open() as store:
            start, stop = w.random_rows(store.info(name).rows)
            handles.append(store.handle(name, (start, stop)))
            w.ops["handles made"] += 1
        if len(handles) > 6:
            _unpin(w, pinned, handles.pop(0))
        return
    handle = w.rng.choice(handles)
    if w.rng.random() < 0.3 and handle not in pinned and len(pinned) < 2:
        array = handle.pin()
        w.ops["pins"] += 1
        w.ops["attaches"] += 1
        if w.check(handle.name, handle.rows[0], array, latest.value):
            pinned.append(handle)
            w.held.append((handle.name, handle.rows[0], version_of(handle.name, array), array))
            w.pins[id(handle)] = array
        else:
            handle.unpin()
        del array
        return
    if pinned and w.rng.random() < 0.2:
        w.recheck_held()
        _unpin(w, pinned, pinned[w.rng.randrange(len(pinned))])
        return
    with handle.view("shared") as array:
        w.ops["attaches"] += 1
        w.check(handle.name, handle.rows[0], array, latest.value)


def _unpin(w: _Worker, pinned: list[Any], handle: Any) -> None:
    """Unpin *handle* if pinned, and forget the array its pin returned."""
    if handle not in pinned:
        return
    pinned.remove(handle)
    mine = w.pins.pop(id(handle))
    w.held = [h for h in w.held if h[3] is not mine]
    del mine
    handle.unpin()
    w.ops["unpins"] += 1


def _appender_op(w: _Worker, acked: Any) -> None:
    name = APPENDED[w.index % len(APPENDED)]
    with w.open("a") as store:
        rows = store.info(name).rows
        if rows < acked.value:
            w.bad(LOST, f"{name} has {rows} rows, {acked.value} were acknowledged")
        count = w.rng.randint(1, 24)
        store.append(name, expected(name, rows, rows + count))
        acked.value = rows + count  # acknowledged: append returned
        w.ops["appends"] += 1
        w.ops["rows appended"] += count
    time.sleep(w.rng.uniform(0.05, 0.2))  # the others get the store between appends


def _writer_op(w: _Worker, latest: Any, done: Any) -> None:
    version = latest.value + 1
    latest.value = version  # before the write: no reader may see a newer one
    with w.open("a") as store:
        store.write("fixed", expected("fixed", 0, ROWS, version), overwrite=True)
        w.ops["rewrites"] += 1
        store.write(
            "chunked", expected("chunked", 0, ROWS, version), chunks=(64, WIDTH), overwrite=True
        )
        w.ops["rewrites"] += 1
    done.value = version
    time.sleep(w.rng.uniform(0.05, 0.3))  # readers get the store between rewrites


def _removed(actions: list[Any]) -> int:
    """How many files ``Cache.evict`` or ``Cache.gc`` removed, of the records they return."""
    return sum(a.outcome == "removed" for a in actions)


def _evictor_op(w: _Worker) -> None:
    choice = w.rng.random()
    if choice < 0.4:
        w.ops["evictions"] += _removed(w.cache.evict(all=True))
        w.ops["evict calls"] += 1
    elif choice < 0.6:
        entries = w.cache.entries()
        w.ops["entries calls"] += 1
        if entries:
            w.ops["evictions"] += _removed(w.cache.evict([w.rng.choice(entries).key]))
            w.ops["evict calls"] += 1
    else:
        w.ops["gc removals"] += _removed(w.cache.gc())
        w.ops["gc calls"] += 1
    time.sleep(w.rng.uniform(0.0, 0.1))


def worker(kind: str, index: int, plan: Plan, shared: dict[str, Any]) -> None:  # noqa: PLR0915
    """The body of one soak process: waits for *go*, loops for ``plan.seconds``, reports."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    report: dict[str, Any] = {"kind": kind, "index": index}
    results = shared["results"]
    try:
        import shmstore

        logger = logging.getLogger("shmstore")
        counter = _LogCounter()
        logger.addHandler(counter)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        w = _Worker(kind, index, plan)
        with w.open() as store:  # warm up: the imports and the first open make lasting fds
            store.info("fixed")
            # A view opens the cache directory once per process, for good.
            with contextlib.suppress(shmstore.CacheFullError), store.view("fixed", rows=(0, 1)):
                pass
        gc.collect()
        fds_before = _open_fds()
        shared["ready"].put(index)
        shared["go"].wait()
        handles: list[Any] = []
        pinned: list[Any] = []
        end = time.monotonic() + plan.seconds
        while (began := time.monotonic()) < end:
            try:
                if kind == "reader":
                    _reader_op(w, shared["latest"])
                elif kind == "handle":
                    _handle_op(w, shared["latest"], handles, pinned)
                elif kind == "appender":
                    _appender_op(w, shared[f"acked{index}"])
                elif kind == "writer":
                    _writer_op(w, shared["latest"], shared["written"])
                else:
                    _evictor_op(w)
                w.outcomes[OK] += 1
            except shmstore.CacheFullError as err:
                w.outcomes[REFUSED] += 1
                w.ops["CacheFullError"] += 1
                if not str(err):
                    w.bad(FAILED, "CacheFullError without a message")
            except Exception as err:
                w.bad(FAILED, f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=6)}")
            took = round((time.monotonic() - began) * 1000)
            w.ops["slowest operation (ms)"] = max(w.ops["slowest operation (ms)"], took)
            w.ops["busy (ms)"] += took
        w.recheck_held()
        for handle in pinned:
            handle.unpin()
        w.drop_all()
        del handles, pinned
        gc.collect()
        fds_after = _open_fds()
        maps = _maps_into(plan.cache_dir)
        if fds_after > fds_before:
            w.bad(LEAK, f"{fds_after - fds_before} file descriptors more than before the loop")
        if maps:
            w.bad(LEAK, f"{len(maps)} mappings into the cache left: {maps[0]}")
        w.ops.update(counter.counts)
        report.update(
            ops=dict(w.ops),
            outcomes=dict(w.outcomes),
            examples=w.examples,
            warnings=counter.warnings,
            fds=(fds_before, fds_after),
            maps=len(maps),
        )
    except BaseException as err:
        report.update(
            outcomes={FAILED: 1},
            examples=[f"harness: {type(err).__name__}: {err}\n{traceback.format_exc(limit=8)}"],
        )
    results.put(report)


# -- in the parent ---------------------------------------------------------------------


def _rows_of_block(entry: Any, data: np.ndarray[Any, Any]) -> tuple[int, np.ndarray[Any, Any]]:
    """The first whole row in a cached block, and the whole rows it holds (it may cut rows)."""
    row = WIDTH * 8
    lo, hi = entry.block
    first, last = -(-lo // row), hi // row
    dtype = F8 if entry.dataset in REWRITTEN else I8
    return first, data[first * row - lo : last * row - lo].view(dtype).reshape(-1, WIDTH)


def _final_checks(plan: Plan, shared: dict[str, Any], row: Row) -> None:  # noqa: PLR0915
    """After every process ended: the cache after gc, and every acknowledged row."""
    import shmstore
    from shmstore._cache import Cache

    cache = Cache(plan.cache_dir, plan.budget)
    # Blocks of generations older than the file's are retired when a view
    # describes the dataset (the cache alone cannot tell): describe each.
    with shmstore.open(plan.store, "r", cache=cache) as store:
        for name in (*REWRITTEN, *APPENDED):
            store.handle(name)
    cache.gc()
    names = sorted(p.name for p in Path(plan.cache_dir).iterdir())
    segments = {n[: -len(".seg")] for n in names if n.endswith(".seg")}
    for name in names:
        if name.endswith(".tmp"):
            row.add(LEAK, f"temporary file {name} left after gc")
        elif name.endswith(".lock") and name != "budget.lock":
            if name[: -len(".lock")] not in segments:
                row.add(LEAK, f"lock file {name} without its segment left after gc")
        elif not name.endswith(".seg") and name != "budget.lock":
            row.add(LEAK, f"unexpected file {name} in the cache directory")
    row.add(OK, "no temporary file, no orphan lock")
    entries = cache.entries()
    if {e.key for e in entries} != segments:
        row.add(LEAK, f"segments {sorted(segments)} but entries lists {[e.key for e in entries]}")
    garbage = [a.name for a in cache.gc(dry_run=True) if a.outcome == "would remove"]
    if garbage:
        row.add(LEAK, f"gc would still remove {garbage}: stale segments")
    allocated = sum((Path(plan.cache_dir) / f"{k}.seg").stat().st_blocks * 512 for k in segments)
    if allocated > plan.budget:
        row.add(LEAK, f"segments take {allocated} bytes, over the budget of {plan.budget}")
    final_version = shared["written"].value
    began = shared["latest"].value
    for entry in entries:
        if entry.in_use:
            row.add(LEAK, f"segment {entry.key} is still in use after every process ended")
        first, array = _rows_of_block(entry, cache.attach(entry.key))
        version, wrong = check_slice(entry.dataset, first, array)
        if not wrong and entry.dataset in REWRITTEN and version not in (final_version, began):
            wrong = f"cached {entry.dataset} is version {version}, the file {final_version}"
        row.add(WRONG if wrong else OK, f"cached segment {entry.key}: {wrong}")
        del array
    gc.collect()
    maps = _maps_into(plan.cache_dir)
    row.add(LEAK if maps else OK, f"the parent still maps the cache: {maps[:1]}")
    row.note += f"{len(segments)} segments ({allocated} bytes) left after gc; "

    with shmstore.open(plan.store, "r", cache=cache) as store:
        for index, name in enumerate(APPENDED):
            acked = shared[f"acked{index}"].value
            data = store.read(name)
            if len(data) < acked:
                row.lost_rows += acked - len(data)
                row.add(LOST, f"{name} has {len(data)} rows, {acked} were acknowledged")
            _, wrong = check_slice(name, 0, data, mapped=False)
            row.add(WRONG if wrong else OK, f"{name} reopened: {wrong}")
            row.note += f"{name} {len(data)} rows ({acked} acknowledged); "
        for name in REWRITTEN:
            data = store.read(name)
            version, wrong = check_slice(name, 0, data, mapped=False)
            if not wrong and version not in (final_version, began):
                wrong = f"{name} is version {version}, the writer acknowledged {final_version}"
            if not wrong and len(data) != ROWS:
                wrong = f"{name} has {len(data)} rows, not {ROWS}"
            row.add(WRONG if wrong else OK, f"{name} reopened: {wrong}")


def soak(settings: Settings) -> tuple[list[Row], Counter[str]]:  # noqa: PLR0915  (one story)
    """Run the soak; its Rows, and the operations done by all the processes together.

    One Row per kind of process (its outcomes; its operations in the note) and
    one for the checks at the end.  The processes are those of :data:`KINDS`,
    whatever ``settings.workers``: seven processes keep two cores busy.
    """
    ctx = mp.get_context("spawn")
    base = Path(settings.workdir) / f"soak-{uuid.uuid4().hex[:8]}"
    base.mkdir(parents=True, exist_ok=True)
    cache_dir = tempfile.mkdtemp(prefix="shmstore-soak-", dir=SHM)
    Path(cache_dir).rmdir()  # the Cache makes it, 0700
    plan = Plan(str(base / "soak.h5"), cache_dir, BUDGET, settings.soak_seconds, settings.seed)
    make_store(Path(plan.store))
    shared: dict[str, Any] = {
        "results": ctx.Queue(),
        "latest": ctx.Value("q", 0),
        "written": ctx.Value("q", 0),
        **{f"acked{i}": ctx.Value("q", 64) for i in range(len(APPENDED))},
    }
    ready = shared["ready"] = ctx.Queue()
    go = shared["go"] = ctx.Event()
    # Blocks of 16 KiB: a dataset is several, and views share some of them.
    block_before = os.environ.get("SHMSTORE_BLOCK")
    os.environ["SHMSTORE_BLOCK"] = "16K"
    procs: list[tuple[str, int, Any]] = []
    index = 0
    for kind, (count, _) in KINDS.items():
        for _ in range(count):
            per_kind = sum(1 for k, _, _ in procs if k == kind)
            p = ctx.Process(
                target=worker,
                args=(kind, per_kind, plan, shared),
                name=f"soak-{kind}{per_kind}",
                daemon=True,
            )
            procs.append((kind, index, p))
            index += 1
    rows = {kind: Row(SECTION, f"{count} {what}") for kind, (count, what) in KINDS.items()}
    final = Row(SECTION, "after the run: cache after gc, store reopened, every process ended")
    reports: list[dict[str, Any]] = []
    total: Counter[str] = Counter()
    ops_of: dict[str, Counter[str]] = {kind: Counter() for kind in KINDS}
    try:
        for _, _, p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=120)
        started = time.monotonic()
        go.set()
        deadline = started + settings.soak_seconds + GRACE
        while len(reports) < len(procs) and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                reports.append(shared["results"].get(timeout=1))
            if all(not p.is_alive() for _, _, p in procs) and shared["results"].empty():
                time.sleep(0.5)
                if shared["results"].empty():
                    break
        for _, _, p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        elapsed = time.monotonic() - started
        got = {(r["kind"], r["index"]) for r in reports}
        per_kind_index: Counter[str] = Counter()
        for kind, _, p in procs:
            i = per_kind_index[kind]
            per_kind_index[kind] += 1
            if p.is_alive():
                os.kill(p.pid or 0, signal.SIGKILL)
                p.join(10)
                rows[kind].add(HANG, f"{kind}{i} still running {elapsed:.0f} s after the start")
            elif (kind, i) not in got:
                rows[kind].add(CRASH, f"{kind}{i} died without a report (exit code {p.exitcode})")
        for report in reports:
            row = rows[report["kind"]]
            for outcome, n in report.get("outcomes", {}).items():
                row.counts[outcome] = row.counts.get(outcome, 0) + n
                row.cases += n
            for example in report.get("examples", []):
                if len(row.examples) < 5:
                    row.examples.append(example[:400])
            ops_of[report["kind"]].update(report.get("ops", {}))
            if report.get("warnings") and "warned" not in row.note:
                row.note += f"the cache warned, e.g. {report['warnings'][0][:150]}; "
        for kind, row in rows.items():
            ops = ops_of[kind]
            total.update(ops)
            row.note += ", ".join(f"{op} {n}" for op, n in sorted(ops.items()))
            row.seconds = elapsed
        if not any(r.n(HANG) for r in rows.values()):
            _final_checks(plan, shared, final)
        else:
            final.note += "skipped the cache checks: a process hung; "
        final.note += "totals: " + ", ".join(
            f"{op} {total[op]}"
            for op in ("attaches", "reads", "appends", "rewrites", "evictions", "loads")
        )
        final.note += f", evictions for room {total['evictions for room']}"
        final.note += f", CacheFullError {total['CacheFullError']}"
        final.seconds = time.monotonic() - started
    finally:
        if block_before is None:
            os.environ.pop("SHMSTORE_BLOCK", None)
        else:
            os.environ["SHMSTORE_BLOCK"] = block_before
        for _, _, p in procs:
            if p.is_alive():
                os.kill(p.pid or 0, signal.SIGKILL)
                p.join(10)
        shutil.rmtree(cache_dir, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)
    return [*rows.values(), final], total


def run(settings: Settings) -> list[Row]:
    """The soak section of RELIABILITY.md: ``settings.soak_seconds`` of seven processes."""
    with Timer() as t:
        rows, _ = soak(settings)
    rows[-1].seconds = t.seconds
    return rows
