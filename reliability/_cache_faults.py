"""Faults on the cache side, with real processes.

* ``kill``: a loader (a forked process filling a 4 MiB slice in about
  150 ms) is killed with ``SIGKILL`` after a random delay, sometimes while
  another process waits for its load.  Afterwards nothing attachable is
  partial, the waiter and the next request load again and get the true
  data, ``gc`` leaves no ``.tmp`` file, and no budget is lost (the budget is
  1.5 segments, so a leftover that still counted would refuse the next load).
* ``vanish``: the cache directory is removed (``rm -rf``) while this process
  holds a mapping and another process loads.  The mapping keeps its data;
  the loader and new requests either work (the directory made again, 0700)
  or raise a ``ShmStoreError``.
* ``readonly``: the cache directory becomes read-only (a read-only remount
  of a small tmpfs holding it, as root; or a child with dropped privileges,
  or ``chmod 500``).  Every request gives the true data (a segment already
  there, or mode "auto" reading the file) or a ``ShmStoreError`` with a
  message: never a bare ``OSError``.
* ``full``: a tiny budget, or a small tmpfs (4 MiB, partly taken by another
  file) holding the cache directory, while segments are mapped: the true data
  or ``CacheFullError`` (mode "auto" falls back to the file), never ``SIGBUS``
  (cases run in child processes, so a ``SIGBUS`` counts as a crash).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing as mp
import os
import random
import shutil
import signal
import stat
import subprocess
import time
import uuid
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

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

SECTION = "Faults"
SHM = Path("/dev/shm")
F8 = np.dtype("<f8")
ROWS, WIDTH = 512, 1024  # 4 MiB
SHAPE = (ROWS, WIDTH)
NOBODY = 65534
IS_ROOT = os.geteuid() == 0

KINDS: dict[str, tuple[str, int, int]] = {
    "kill": ("loader killed with SIGKILL at a random moment (sometimes with a waiter)", 40, 250),
    "vanish": ("cache directory removed while mapped and while a load runs", 12, 60),
    "readonly": ("cache directory read-only (ro remount / dropped privileges / chmod)", 9, 45),
    "full": ("tiny budget or a full 4 MiB tmpfs while segments are mapped", 12, 60),
}
_ORDER = (WRONG, CRASH, HANG, FAILED, LEAK, REFUSED, OK)


def expected(version: int, rows: int = ROWS) -> np.ndarray[Any, Any]:
    return np.arange(rows * WIDTH, dtype=F8).reshape(rows, WIDTH) + version * 1e7


def slow_fill(version: int, pieces: int = 32, pause: float = 0.004) -> Callable[[Any], None]:
    """A fill writing :func:`expected` in *pieces* with a pause after each: about 150 ms."""

    def fill(out: np.ndarray[Any, Any]) -> None:
        rows = expected(version, len(out))
        for part in np.array_split(np.arange(len(out)), pieces):
            out[part] = rows[part]
            time.sleep(pause)

    return fill


def fast_fill(version: int) -> Callable[[Any], None]:
    def fill(out: np.ndarray[Any, Any]) -> None:
        out[...] = expected(version, len(out))

    return fill


class Verdict:
    """Outcomes of one case's checks; the worst wins."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.seen: list[tuple[str, str]] = []

    def note(self, outcome: str, detail: str) -> None:
        self.seen.append((outcome, detail))

    def array(self, what: str, array: object, version: int) -> None:
        if not isinstance(array, np.ndarray):
            self.note(WRONG, f"{what}: got {type(array).__name__}")
        elif array.shape[1:] != (WIDTH,) or not np.array_equal(
            array, expected(version, len(array))
        ):
            self.note(WRONG, f"{what}: data that are not the true data (partial?)")
        else:
            self.note(OK, what)

    def error(self, what: str, err: BaseException) -> None:
        from shmstore import ShmStoreError

        if isinstance(err, ShmStoreError) and str(err).strip():
            self.note(REFUSED, f"{what}: {type(err).__name__}: {str(err)[:150]}")
        else:
            self.note(FAILED, f"{what}: {type(err).__name__}: {err}")

    def attempt(self, what: str, fn: Callable[[], object], version: int) -> None:
        try:
            result = fn()
        except Exception as err:
            self.error(what, err)
            return
        self.array(what, result, version)
        del result
        gc.collect()

    def worst(self) -> tuple[str, str]:
        for outcome in _ORDER:
            for seen, detail in self.seen:
                if seen == outcome:
                    return outcome, f"{self.case!r}: {detail}"
        return OK, f"{self.case!r}: nothing checked"


def _source(origin: Path, dataset: str, rows: int = ROWS) -> Any:
    from shmstore._segment import FileIdentity, SegmentSource

    return SegmentSource(
        path=str(origin),
        identity=(FileIdentity.of(origin),),
        dataset=dataset,
        version=0,
        start=0,
        stop=rows,
    )


def _loader(directory: str, budget: int, source_json: str, version: int, conn: Connection) -> None:
    """A process loading one slice slowly and reporting what it got, checked here."""
    from shmstore import ShmStoreError
    from shmstore._cache import Cache, SegmentSource

    logging.getLogger("shmstore").setLevel(logging.CRITICAL)
    try:
        source = SegmentSource.model_validate_json(source_json)
        cache = Cache(directory=directory, budget=budget)
        array = cache.get(source, F8, SHAPE, slow_fill(version), timeout=60)
        ok = np.array_equal(array, expected(version))
        conn.send((OK if ok else WRONG, "loader" if ok else "loader got wrong data"))
    except ShmStoreError as err:
        conn.send((REFUSED if str(err) else FAILED, f"loader: {type(err).__name__}: {err}"))
    except Exception as err:
        conn.send((FAILED, f"loader: {type(err).__name__}: {err}"))


class _Forked:
    """A forked child running ``target(*args, conn)``.

    Not ``multiprocessing``: it refuses children to the daemonic processes
    ``run_cases`` runs the cases in.
    """

    def __init__(self, target: Callable[..., None], *args: object) -> None:
        parent, child = mp.Pipe(duplex=False)
        pid = os.fork()
        if pid == 0:  # the child
            code = 0
            try:
                parent.close()
                target(*args, child)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        child.close()
        self.pid = pid
        self.conn = parent
        self.exitcode: int | None = None

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.exitcode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.exitcode = os.waitstatus_to_exitcode(status)
            elif time.monotonic() > deadline:
                return
            else:
                time.sleep(0.005)

    def is_alive(self) -> bool:
        self.join(0)
        return self.exitcode is None


def _start_loader(
    directory: Path, budget: int, source: Any, version: int
) -> tuple[_Forked, Connection]:
    proc = _Forked(_loader, str(directory), budget, source.model_dump_json(), version)
    return proc, proc.conn


def _answer(verdict: Verdict, what: str, proc: _Forked, conn: Connection, timeout: float) -> None:
    """The report of a loader process, or HANG/CRASH if it gives none."""
    if conn.poll(timeout):
        try:
            outcome, detail = conn.recv()
        except EOFError:
            outcome, detail = "", ""
        if outcome:
            verdict.note(outcome, f"{what}: {detail}")
            proc.join(10)
            return
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        verdict.note(HANG, f"{what}: no answer within {timeout} s")
        return
    proc.join(10)
    verdict.note(CRASH, f"{what}: died with exit code {proc.exitcode}")


def _temporaries(directory: Path) -> list[str]:
    try:
        return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))
    except FileNotFoundError:
        return []


def _cleanup(*paths: Path) -> None:
    for path in paths:
        if path.is_symlink():
            path.unlink()
        elif path.exists():
            with contextlib.suppress(OSError):
                os.chmod(path, 0o700)
            shutil.rmtree(path, ignore_errors=True)


# -- (a) kill -9 of loaders ---------------------------------------------------------


def kill_case(case: Case) -> tuple[str, str]:
    from shmstore._cache import Cache

    logging.getLogger("shmstore").setLevel(logging.CRITICAL)
    rng = random.Random(case.seed)
    work = Path(case.workdir) / f"kill-{case.seed}-{uuid.uuid4().hex[:6]}"
    work.mkdir(parents=True)
    directory = SHM / f"shmstore-relfault-{uuid.uuid4().hex[:12]}"
    verdict = Verdict(case)
    try:
        origin = work / "origin.bin"
        origin.write_bytes(b"origin")
        source = _source(origin, "data")
        probe = Cache(directory=directory, budget="64M")
        file_size = 4096 * 2 + ROWS * WIDTH * 8
        budget = file_size * 3 // 2  # a leftover that still counted would leave no room
        cache = Cache(directory=directory, budget=budget)
        del probe
        key = cache.key(source)
        loader, conn = _start_loader(directory, budget, source, 0)
        waiter = None
        if rng.random() < 0.4:
            time.sleep(rng.uniform(0, 0.02))
            waiter = _start_loader(directory, budget, source, 0)
        delay = rng.uniform(0, 0.35)
        time.sleep(delay)
        os.kill(loader.pid, signal.SIGKILL)
        loader.join(10)
        conn.close()
        what = f"killed after {delay * 1000:.0f} ms"
        # Whatever is attachable now is whole.
        verdict.attempt(f"find ({what})", lambda: _found_or_true(cache, key), 0)
        if waiter is not None:
            _answer(verdict, f"waiter ({what})", *waiter, timeout=60)
        verdict.attempt(f"next get ({what})", lambda: cache.get(source, F8, SHAPE, fast_fill(0)), 0)
        gc.collect()
        try:
            cache.gc()
            cache.clear()
        except Exception as err:
            verdict.error(f"gc ({what})", err)
        left = _temporaries(directory)
        if left:
            verdict.note(LEAK, f".tmp left after gc ({what}): {left}")
        # No budget lost: a second slice as big fits once the first is evicted.
        other = _source(origin, "other")
        verdict.attempt(
            f"load after ({what})", lambda: cache.get(other, F8, SHAPE, fast_fill(0)), 0
        )
        return verdict.worst()
    finally:
        _cleanup(directory, work)


def _found_or_true(cache: Any, key: str) -> np.ndarray[Any, Any]:
    found = cache.find(key)
    return expected(0) if found is None else found


# -- (b) the directory vanishes -----------------------------------------------------


def vanish_case(case: Case) -> tuple[str, str]:
    from shmstore._cache import Cache

    logging.getLogger("shmstore").setLevel(logging.CRITICAL)
    rng = random.Random(case.seed)
    work = Path(case.workdir) / f"vanish-{case.seed}-{uuid.uuid4().hex[:6]}"
    work.mkdir(parents=True)
    directory = SHM / f"shmstore-relfault-{uuid.uuid4().hex[:12]}"
    verdict = Verdict(case)
    try:
        origin = work / "origin.bin"
        origin.write_bytes(b"origin")
        budget = 64 << 20
        cache = Cache(directory=directory, budget=budget)
        held = cache.get(_source(origin, "held"), F8, SHAPE, fast_fill(1))
        loader = _start_loader(directory, budget, _source(origin, "loading"), 2)
        delay = rng.uniform(0, 0.25)
        time.sleep(delay)
        shutil.rmtree(directory)
        what = f"removed after {delay * 1000:.0f} ms"
        verdict.array(f"held mapping ({what})", held, 1)
        _answer(verdict, f"loader ({what})", *loader, timeout=60)
        verdict.attempt(
            f"get of a new slice ({what})",
            lambda: cache.get(_source(origin, "new"), F8, SHAPE, fast_fill(3)),
            3,
        )
        verdict.attempt(
            f"get of the held slice ({what})",
            lambda: cache.get(_source(origin, "held"), F8, SHAPE, fast_fill(1)),
            1,
        )
        verdict.attempt(
            f"new Cache and get ({what})",
            lambda: Cache(directory=directory, budget=budget).get(
                _source(origin, "again"), F8, SHAPE, fast_fill(4)
            ),
            4,
        )
        if directory.exists():
            mode = stat.S_IMODE(os.lstat(directory).st_mode)
            if mode != 0o700:
                verdict.note(WRONG, f"the directory was made again with mode {mode:o} ({what})")
            try:
                cache.gc()
            except Exception as err:
                verdict.error(f"gc ({what})", err)
            if _temporaries(directory):
                verdict.note(LEAK, f".tmp left after gc ({what}): {_temporaries(directory)}")
        verdict.array(f"held mapping at the end ({what})", held, 1)
        return verdict.worst()
    finally:
        _cleanup(directory, work)


# -- mounts -------------------------------------------------------------------------


def _mount(size: str) -> Path | None:
    """A fresh tmpfs of *size* under /dev/shm, or None when mounting is not possible."""
    if not IS_ROOT:
        return None
    point = SHM / f"shmstore-relmnt-{uuid.uuid4().hex[:12]}"
    point.mkdir(mode=0o700)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=700", "tmpfs", str(point)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        point.rmdir()
        return None
    return point


def _unmount(point: Path | None) -> None:
    if point is None:
        return
    subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)
    with contextlib.suppress(OSError):
        point.rmdir()


def _store(path: Path, rows: int) -> None:
    import shmstore

    with shmstore.open(path, "w") as store:
        store.write("x", expected(5, rows))


# -- (c) read-only directory ----------------------------------------------------------


def _readonly_requests(
    verdict: Verdict, cache: Any, origin: Path, store_path: Path, what: str
) -> None:
    import shmstore

    verdict.attempt(
        f"get of a cached slice ({what})",
        lambda: cache.get(_source(origin, "cached"), F8, SHAPE, fast_fill(1)),
        1,
    )
    verdict.attempt(
        f"get of a new slice ({what})",
        lambda: cache.get(_source(origin, "new"), F8, SHAPE, fast_fill(2)),
        2,
    )

    def view(mode: str) -> np.ndarray[Any, Any]:
        with (
            shmstore.open(store_path, "r", cache=cache) as store,
            store.view("x", mode=mode) as array,  # type: ignore[arg-type]
        ):
            return np.array(array)

    verdict.attempt(f"view auto ({what})", lambda: view("auto"), 5)
    verdict.attempt(f"view shared ({what})", lambda: view("shared"), 5)
    for name, call in (("entries", cache.entries), ("gc", cache.gc), ("clear", cache.clear)):
        try:
            call()
        except Exception as err:
            verdict.error(f"{name} ({what})", err)
        else:
            verdict.note(OK, name)


def _dropped_child(directory: str, origin: str, store_path: str, conn: Connection) -> None:
    """As uid 65534, in a cache directory of its own made read-only (0500): every request."""
    from shmstore._cache import Cache

    logging.getLogger("shmstore").setLevel(logging.CRITICAL)
    verdict = Verdict(Case("readonly", 0, ""))
    try:
        import unicodedata  # noqa: F401  (the interpreter's files may be unreadable as 65534)

        import shmstore

        warm = Path(directory + "-warm")
        # Every import a view needs, made now.
        with (
            shmstore.open(store_path, "r", cache=Cache(warm)) as store,
            store.view("x", mode="auto") as array,
        ):
            del array
        gc.collect()
        shutil.rmtree(warm)
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        cache = Cache(directory=directory, budget="64M")
        array = cache.get(_source(Path(origin), "cached"), F8, SHAPE, fast_fill(1))
        del array
        gc.collect()
        os.chmod(directory, 0o500)
        _readonly_requests(
            verdict, cache, Path(origin), Path(store_path), "dropped privileges, 0500"
        )
        conn.send(verdict.worst())
    except Exception as err:
        conn.send((FAILED, f"dropped child: {type(err).__name__}: {err}"))


def readonly_case(case: Case) -> tuple[str, str]:  # noqa: PLR0915
    from shmstore._cache import Cache

    logging.getLogger("shmstore").setLevel(logging.CRITICAL)
    rng = random.Random(case.seed)
    how = ["remount", "dropped", "chmod"][case.seed % 3]
    work = Path(case.workdir) / f"ro-{case.seed}-{uuid.uuid4().hex[:6]}"
    work.mkdir(parents=True)
    os.chmod(work, 0o755)
    point: Path | None = None
    directory = SHM / f"shmstore-relfault-{uuid.uuid4().hex[:12]}"
    verdict = Verdict(case)
    try:
        origin = work / "origin.bin"
        origin.write_bytes(b"origin")
        store_path = work / "store.h5"
        _store(store_path, rng.choice([64, 256]))
        os.chmod(origin, 0o644)
        os.chmod(store_path, 0o644)
        if how == "remount":
            point = _mount("16M")
            if point is None:
                how = "chmod"
            else:
                directory = point / "cache"
        if how == "dropped" and not IS_ROOT:
            how = "chmod"
        if how == "dropped":
            os.chmod(Path(case.workdir), 0o755)
            directory.mkdir(mode=0o700)
            os.chown(directory, NOBODY, NOBODY)
            proc = _Forked(_dropped_child, str(directory), str(origin), str(store_path))
            _answer(verdict, "dropped privileges", proc, proc.conn, timeout=60)
            return verdict.worst()
        cache = Cache(directory=directory, budget="64M")
        source = _source(origin, "cached")
        array = cache.get(source, F8, SHAPE, fast_fill(1))
        # The loader's own mapping holds its read-write descriptor, which
        # blocks a read-only remount: drop it, and maybe hold another mapping.
        del array
        gc.collect()
        held = cache.attach(cache.key(source)) if rng.random() < 0.5 else None
        if how == "remount":
            assert point is not None
            done = subprocess.run(
                ["mount", "-o", "remount,ro", str(point)], capture_output=True, check=False
            )
            if done.returncode != 0:
                return FAILED, f"{case!r}: harness: remount failed: {done.stderr!r}"
        else:
            os.chmod(directory, 0o500)
        _readonly_requests(verdict, cache, origin, store_path, how)
        if held is not None:
            verdict.array(f"held mapping ({how})", held, 1)
            del held
        return verdict.worst()
    finally:
        if point is not None:
            subprocess.run(
                ["mount", "-o", "remount,rw", str(point)], capture_output=True, check=False
            )
        _cleanup(directory)
        _unmount(point)
        _cleanup(work)


# -- (d) full /dev/shm ------------------------------------------------------------------


def full_case(case: Case) -> tuple[str, str]:  # noqa: PLR0915
    import shmstore
    from shmstore._cache import Cache

    logging.getLogger("shmstore").setLevel(logging.CRITICAL)
    rng = random.Random(case.seed)
    work = Path(case.workdir) / f"full-{case.seed}-{uuid.uuid4().hex[:6]}"
    work.mkdir(parents=True)
    point = _mount("4M") if case.seed % 2 == 0 else None
    base = point if point is not None else SHM
    directory = base / f"shmstore-relfault-{uuid.uuid4().hex[:12]}"
    what = "4 MiB tmpfs" if point is not None else "tiny budget"
    verdict = Verdict(case)
    try:
        if point is not None:
            filler = point / "filler.bin"
            with open(filler, "wb") as f:
                os.posix_fallocate(f.fileno(), 0, rng.choice([1, 2, 3]) << 20)
            budget = 64 << 20
        else:
            budget = rng.choice([3, 4, 5]) << 20
        origin = work / "origin.bin"
        origin.write_bytes(b"origin")
        store_path = work / "store.h5"
        rows = rng.choice([128, 256, 384])  # 1, 2 or 3 MiB
        _store(store_path, rows)
        cache = Cache(directory=directory, budget=budget)
        held = []
        for i in range(rng.randint(2, 5)):
            n = rng.choice([64, 128, 256])
            source = _source(origin, f"s{i}", n)
            try:
                array = cache.get(source, F8, (n, WIDTH), fast_fill(i))
            except Exception as err:
                verdict.error(f"get {n} rows ({what})", err)
                continue
            verdict.array(f"get {n} rows ({what})", array, i)
            if rng.random() < 0.7:
                held.append((array, i))
            del array
        for mode in ("auto", "shared", "auto"):
            try:
                with (
                    shmstore.open(store_path, "r", cache=cache) as store,
                    store.view("x", mode=mode) as array,  # type: ignore[arg-type]
                ):
                    verdict.array(f"view {mode} of {rows} rows ({what})", array, 5)
                    del array
            except Exception as err:
                if mode == "auto":
                    verdict.note(FAILED, f"view auto ({what}): {type(err).__name__}: {err}")
                else:
                    verdict.error(f"view shared ({what})", err)
        for array, i in held:
            verdict.array(f"held segment ({what})", array, i)
        del held
        gc.collect()
        cache.gc()
        if _temporaries(directory):
            verdict.note(LEAK, f".tmp left ({what}): {_temporaries(directory)}")
        return verdict.worst()
    finally:
        _cleanup(directory)
        _unmount(point)
        _cleanup(work)


_CHECKS: dict[str, Callable[[Case], tuple[str, str]]] = {
    "kill": kill_case,
    "vanish": vanish_case,
    "readonly": readonly_case,
    "full": full_case,
}


def check_case(case: Case) -> tuple[str, str]:
    """Run one case in this (child) process."""
    return _CHECKS[case.kind](case)


def run(settings: Settings) -> list[Row]:
    """Every kind of fault, a number of rounds each; one Row per kind."""
    work = Path(settings.workdir) / "cache-faults"
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)
    cases, rows = cases_by_kind(
        SECTION, KINDS, settings, lambda kind, seed: Case(kind, seed, str(work))
    )
    try:
        run_into_rows(check_case, cases, rows, workers=settings.workers, timeout=120)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not IS_ROOT:
        rows["readonly"].note = "not root: chmod 500 instead of a read-only mount"
        rows["full"].note = "not root: tiny budgets only, no small tmpfs"
    return list(rows.values())
