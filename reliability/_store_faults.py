"""Store-side faults: writers killed with SIGKILL, read-only files, files changed under the cache.

Three groups of cases (rows of the "Faults" section):

* **kill -9 of writers at random moments.**  A writer process (this module run
  as a script, ``writer`` command) opens a store and runs random changes
  (``append``, ``write`` of new datasets, ``write(overwrite=True)``,
  ``delete``), printing each change before it starts and ``ack`` after it
  returned.  The parent kills it after a random delay, then opens the store
  ("r", then "r+") and compares every dataset with what the acknowledged
  changes made: no acknowledged row may be missing (counted in
  ``Row.lost_rows``), every dataset holds exactly one version (the change in
  flight may show as done or not done, an append in flight as any whole
  number of its rows), nothing is left behind (journal, trash, orphaned raw
  files), and the store takes new changes.  Dataset contents identify their
  version: row ``i`` of generation ``g`` holds ``g * 100000 + i`` in every
  element.
* **read-only files.**  On a read-only mount, and as an unprivileged user on
  files made read-only with chmod: mode "r" serves read/memmap/views; write
  modes and writes raise a ShmStoreError with a message, never a bare OSError.
* **the file deleted, replaced or truncated under the cache.**  A slice is
  cached and another process holds a view of it; then the HDF5 file (or its
  raw file) is deleted, replaced by another store or truncated.  The holder
  keeps its old data; no new view serves the stale slice; ``Cache.gc``
  removes the orphaned segment once nobody maps it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import pickle
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import FAILED, LEAK, LOST, OK, REFUSED, WRONG, Row, Settings, Timer, run_cases

SECTION = "Faults"
HERE = Path(__file__).resolve()
GEN_SCALE = 100000
COLS = 3
NOBODY = 65534
_RANK = {OK: 0, REFUSED: 1, FAILED: 2, LEAK: 3, WRONG: 4, LOST: 5}


# -- dataset contents ------------------------------------------------------------------------------


def rows_of(gen: int, start: int, stop: int, dtype: str = "<i8") -> Any:
    """Rows ``[start, stop)`` of generation *gen*: row i holds ``gen * 100000 + i``."""
    import numpy as np

    col = np.arange(start, stop, dtype="<i8") + gen * GEN_SCALE
    return np.repeat(col[:, None], COLS, axis=1).astype(dtype)


@dataclass(frozen=True)
class Version:
    """One version of a dataset: its generation, row count, dtype and layout."""

    gen: int
    rows: int
    dtype: str
    kind: str  # "contiguous" | "chunked" | "gzip" | "raw" | "chunked-unlimited"

    @property
    def appendable(self) -> bool:
        return self.kind in ("raw", "chunked-unlimited")


State = dict[str, Version]
_KINDS = ("contiguous", "chunked", "gzip", "raw", "chunked-unlimited")
_NAMES = ("d0", "d1", "d2", "grp/d3", "grp/sub/d4")


def _write_options(kind: str) -> dict[str, Any]:
    return {
        "contiguous": {},
        "chunked": {"chunks": True},
        "gzip": {"compression": "gzip"},
        "raw": {"appendable": True},
        "chunked-unlimited": {"appendable": True, "chunks": True},
    }[kind]


def apply(state: State, op: dict[str, Any]) -> State:
    """The state after *op* (as the writer logs it) returned."""
    new = dict(state)
    name = op["name"]
    if op["op"] == "delete":
        new.pop(name, None)
    elif op["op"] == "append" and name in state:
        old = state[name]
        new[name] = Version(old.gen, old.rows + op["rows"], old.dtype, old.kind)
    elif op["op"] == "append":
        new[name] = Version(op["gen"], op["rows"], op["dtype"], "raw")
    else:
        new[name] = Version(op["gen"], op["rows"], op["dtype"], op["kind"])
    return new


def observe(store: Any) -> State:
    """The state a store holds; raises ``ValueError`` for a dataset of no version."""
    import numpy as np

    found: State = {}
    for name in store.names():
        data = store.read(name)
        info = store.info(name)
        if data.ndim != 2 or data.shape[1] != COLS:
            raise ValueError(f"{name!r} has shape {data.shape}")
        gen = int(data[0, 0]) // GEN_SCALE if len(data) else 0
        expected = rows_of(gen, 0, len(data), str(data.dtype))
        if not np.array_equal(data, expected):
            bad = int(np.argwhere(np.any(data != expected, axis=1))[0][0])
            raise ValueError(
                f"{name!r} is mixed: row {bad} holds {data[bad].tolist()}, generation {gen} "
                f"has {expected[bad].tolist()}"
            )
        if info.memory_mappable and len(data):
            mapped = store.memmap(name)
            if not np.array_equal(mapped, data):
                raise ValueError(f"{name!r}: memmap differs from read")
        kind = _kind_of(info)
        found[name] = Version(gen, len(data), data.dtype.str, kind)
    return found


def _kind_of(info: Any) -> str:
    if info.layout == "external":
        return "raw"
    if info.layout == "chunked":
        if info.appendable:
            return "chunked-unlimited"
        return "gzip" if info.compression else "chunked"
    return "contiguous"


def compare(
    seen: State, before: State, acked: list[dict[str, Any]], flight: dict[str, Any] | None
) -> tuple[str, str, int]:
    """Compare the state *seen* after a kill with what the writer acknowledged.

    :returns: ``(outcome, detail, lost_rows)``.
    """
    model = before
    for op in acked:
        model = apply(model, op)
    after = apply(model, flight) if flight is not None else model
    touched = flight["name"] if flight is not None else None
    lost = 0
    problems: list[tuple[str, str]] = []
    for name in sorted(set(model) | set(seen) | set(after)):
        have, want = seen.get(name), model.get(name)
        if have == want:
            continue
        if name == touched and have == after.get(name):
            continue
        if (
            name == touched
            and flight is not None
            and flight["op"] == "append"
            and have is not None
            and want is not None
            and (have.gen, have.dtype) == (want.gen, want.dtype)
            and want.rows <= have.rows <= want.rows + flight["rows"]
        ):
            continue  # the complete rows of an append in flight are kept
        if (
            want is not None
            and have is not None
            and (have.gen, have.dtype)
            == (
                want.gen,
                want.dtype,
            )
        ) and have.rows < want.rows:
            lost += want.rows - have.rows
            problems.append((LOST, f"{name!r} has {have.rows} of {want.rows} acked rows"))
            continue
        if want is not None and have is None:
            lost += want.rows
            problems.append((LOST, f"acknowledged {name!r} ({want}) is gone"))
            continue
        problems.append((WRONG, f"{name!r} is {have}, acknowledged {want}, in flight {flight}"))
    if not problems:
        return OK, "", 0
    outcome = max((p[0] for p in problems), key=_RANK.__getitem__)
    return outcome, "; ".join(p[1] for p in problems), lost


# -- the writer process ----------------------------------------------------------------------------


def _writer_main(path: str, seed: int, kinds: str, gen_base: int) -> None:
    """Open *path* with mode "a" and change it at random forever, logging each change."""
    import shmstore

    print("imported", flush=True)
    rng = random.Random(seed)
    allowed = kinds.split(",")
    store = shmstore.open(path, "a", cache=shmstore.Cache(os.environ["SHMSTORE_DIR"]))
    state = observe(store)
    print("ready", flush=True)
    gen = gen_base
    while True:
        gen += 1
        op = _next_op(rng, state, allowed, gen)
        print("begin " + json.dumps(op), flush=True)
        name = op["name"]
        if op["op"] == "delete":
            store.delete(name)
        elif op["op"] == "append":
            if name in state:
                old = state[name]
                store.append(name, rows_of(old.gen, old.rows, old.rows + op["rows"], old.dtype))
            else:
                store.append(name, rows_of(op["gen"], 0, op["rows"], op["dtype"]))
        else:
            store.write(
                name,
                rows_of(op["gen"], 0, op["rows"], op["dtype"]),
                overwrite=op["op"] == "overwrite",
                **_write_options(op["kind"]),
            )
        state = apply(state, op)
        print("ack", flush=True)


def _next_op(rng: random.Random, state: State, allowed: list[str], gen: int) -> dict[str, Any]:
    """A random change: appends only when *allowed* is an append kind."""
    rows = rng.choice((1, 2, 7, 30, 100, 1000, 5000))
    dtype = rng.choice(("<i8", "<f8"))
    if allowed in (["raw"], ["chunked-unlimited"]):
        kind = allowed[0]
        if "a" not in state:
            return {
                "op": "write",
                "name": "a",
                "gen": 0,
                "rows": rows,
                "dtype": "<i8",
                "kind": kind,
            }
        return {"op": "append", "name": "a", "rows": rows}
    name = rng.choice(_NAMES)
    if name in state:
        choices = ["overwrite", "delete"] + ["append"] * 2 * state[name].appendable
        what = rng.choice(choices)
    else:
        what = rng.choice(("write", "write", "append"))
    if what == "delete":
        return {"op": "delete", "name": name}
    if what == "append":
        return {"op": "append", "name": name, "rows": rows, "gen": gen, "dtype": dtype}
    kind = rng.choice(allowed)
    return {"op": what, "name": name, "gen": gen, "rows": rows, "dtype": dtype, "kind": kind}


# -- kill -9 cases ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class KillCase:
    """One store, *kills* writers killed one after another, the store checked after each."""

    kind: str  # "raw" | "chunked-unlimited" | "mixed"
    seed: int
    directory: str
    cache_dir: str
    kills: int
    max_delay: float


def _python_env(cache_dir: str) -> dict[str, str]:
    # The caller's PYTHONPATH is kept: a child must import the same shmstore as its parent.
    path = [str(HERE.parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "SHMSTORE_DIR": cache_dir, "PYTHONPATH": os.pathsep.join(path)}


class Lines:
    """The lines a child prints, read from its pipe without a buffer to lose at a kill."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.pending = b""
        self.eof = False

    def _take(self) -> str | None:
        if b"\n" in self.pending:
            line, self.pending = self.pending.split(b"\n", 1)
            return line.decode()
        return None

    def until(self, prefix: str, timeout: float) -> list[str]:
        """Lines up to and including one starting with *prefix* (or EOF / *timeout*)."""
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            line = self._take()
            if line is not None:
                lines.append(line)
                if line.startswith(prefix):
                    return lines
                continue
            left = deadline - time.monotonic()
            if self.eof or left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return lines
            chunk = os.read(self.fd, 1 << 16)
            self.eof = not chunk
            self.pending += chunk

    def rest(self) -> list[str]:
        """Every line until EOF (the child is dead)."""
        while not self.eof:
            chunk = os.read(self.fd, 1 << 16)
            self.eof = not chunk
            self.pending += chunk
        return [line.decode() for line in self.pending.split(b"\n") if line]


def _kill_round(case: KillCase, path: Path, rng: random.Random, gen_base: int) -> list[str]:
    """Start a writer, kill it with SIGKILL at a random moment, return all it printed."""
    kinds = {"mixed": ",".join(_KINDS)}.get(case.kind, case.kind)
    err = tempfile.TemporaryFile()  # noqa: SIM115  (closed below, after the child is gone)
    proc = subprocess.Popen(
        [
            sys.executable,
            str(HERE),
            "writer",
            str(path),
            str(rng.randrange(2**31)),
            kinds,
            str(gen_base),
        ],
        stdout=subprocess.PIPE,
        stderr=err,
        env=_python_env(case.cache_dir),
    )
    try:
        out = Lines(proc)
        # Now and then kill it while it opens the store (recovering the last kill).
        early = rng.random() < 0.2
        lines = out.until("imported" if early else "ready", 30)
        time.sleep(rng.uniform(0, 0.02 if early else case.max_delay))
        os.kill(proc.pid, signal.SIGKILL)
        lines += out.rest()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    if proc.returncode != -signal.SIGKILL:
        err.seek(0)
        lines.append(f"died by itself ({proc.returncode}): {err.read().decode()[-300:]}")
    err.close()
    return lines


def _parse(lines: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any] | None, str]:
    """The acknowledged changes, the change in flight, and what went wrong in the writer."""
    acked: list[dict[str, Any]] = []
    flight: dict[str, Any] | None = None
    trouble = ""
    for line in lines:
        if line.startswith("begin "):
            flight = json.loads(line[6:])
        elif line == "ack" and flight is not None:
            acked.append(flight)
            flight = None
        elif line.startswith("died by itself"):
            trouble = line
    return acked, flight, trouble


def _leftovers(store: Any, path: Path) -> list[str]:
    """What a store opened for writing should have tidied away."""
    found = []
    if path.with_name(path.name + ".journal").exists():
        found.append("the journal")
    import h5py

    # A second, read-only open of the file the store holds open (HDF5 shares it).
    with h5py.File(path, "r") as file:
        if len(file.get(".shmstore_tmp", ())) > 0:
            found.append("trashed datasets")
    referenced = {p for name in store.names() for p in store.source_files(name)}
    raw = path.with_name(path.name + ".raw")
    if raw.is_dir():
        found += [f"orphaned {p.name}" for p in raw.iterdir() if p not in referenced]
    return found


def _check_after_kill(
    path: Path, before: State, lines: list[str], cache_dir: str
) -> tuple[str, str, int, State]:
    """Open the store read-only, then for writing, and check it against the writer's log."""
    import shmstore
    from shmstore import ShmStoreError

    acked, flight, trouble = _parse(lines)
    if trouble:
        return FAILED, f"writer: {trouble}", 0, before
    cache = shmstore.Cache(cache_dir)
    try:
        with shmstore.open(path, "r", cache=cache) as store:
            seen = observe(store)
    except ShmStoreError as err:
        return FAILED, f"mode 'r' after the kill: {type(err).__name__}: {err}", 0, before
    except ValueError as err:
        return WRONG, f"mode 'r' after the kill: {err}", 0, before
    outcome, detail, lost = compare(seen, before, acked, flight)
    if outcome != OK:
        return outcome, f"{detail} (acked {len(acked)}, in flight {flight})", lost, seen
    try:
        with shmstore.open(path, "r+", cache=cache) as store:
            again = observe(store)
            if again != seen:
                return WRONG, f"mode 'r+' sees {again}, mode 'r' saw {seen}", 0, seen
            left = _leftovers(store, path)
            if left:
                return LEAK, f"after opening with 'r+': {', '.join(left)}", 0, seen
            # The store takes changes again.
            target = next((n for n, v in seen.items() if v.appendable), None)
            if target is not None:
                v = seen[target]
                store.append(target, rows_of(v.gen, v.rows, v.rows + 3, v.dtype))
            store.write("check", rows_of(7, 0, 4), overwrite="check" in seen)
            after = observe(store)
    except ShmStoreError as err:
        return FAILED, f"changing the store after the kill: {type(err).__name__}: {err}", 0, seen
    except ValueError as err:
        return WRONG, f"after the kill and a new change: {err}", 0, seen
    if target is not None and after[target].rows != seen[target].rows + 3:
        return WRONG, f"append after the kill: {after[target]}", 0, after
    return OK, "", 0, after


def _quiet() -> None:
    """The recoveries a case provokes are logged as warnings; the run reports them itself."""
    logging.getLogger("shmstore").setLevel(logging.ERROR)


def _kill_case(case: KillCase) -> tuple[str, str]:
    _quiet()
    import shmstore

    rng = random.Random(case.seed)
    path = Path(case.directory) / "store.h5"
    shutil.rmtree(case.directory, ignore_errors=True)
    Path(case.directory).mkdir(parents=True)
    worst, details, lost_total = OK, [], 0
    try:
        with shmstore.open(path, "w", cache=shmstore.Cache(case.cache_dir)) as store:
            if case.kind == "mixed":
                for i, name in enumerate(_NAMES[:3]):
                    kind = _KINDS[(case.seed + i) % len(_KINDS)]
                    store.write(name, rows_of(i + 1, 0, 20), **_write_options(kind))
            state = observe(store)
        for k in range(case.kills):
            lines = _kill_round(case, path, rng, gen_base=(k + 1) * 1000)
            outcome, detail, lost, state = _check_after_kill(path, state, lines, case.cache_dir)
            lost_total += lost
            if _RANK[outcome] > _RANK[worst]:
                worst = outcome
            if detail:
                details.append(f"kill {k + 1}: {detail}")
            if outcome != OK:
                break
    except Exception as err:
        return FAILED, f"{type(err).__name__}: {err} {traceback.format_exc(limit=-3)}"
    finally:
        shutil.rmtree(case.directory, ignore_errors=True)
        shutil.rmtree(case.cache_dir, ignore_errors=True)
    return worst, f"lost_rows={lost_total} " + " | ".join(details)


# -- read-only files -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadOnlyCase:
    """A store made read-only by *how*, probed (as root, or as nobody)."""

    how: str  # "ro-mount" | "ro-mount-no-lock" | "chmod-nobody" | "chmod-dir-nobody" | ...
    directory: str
    cache_dir: str


def make_sample(path: Path, cache_dir: str) -> dict[str, Any]:
    """A store with a contiguous, a chunked and a raw-file appendable dataset."""
    import shmstore

    with shmstore.open(path, "w", cache=shmstore.Cache(cache_dir)) as store:
        store.write("x", rows_of(1, 0, 50))
        store.write("c", rows_of(2, 0, 50), chunks=(8, COLS))
        store.append("e", rows_of(3, 0, 40))
    return {"x": (1, 50), "c": (2, 50), "e": (3, 40)}


def probe_read_only(path: str, cache_dir: str) -> list[tuple[str, str]]:
    """Everything a user does with a read-only store: ``(outcome, what)`` for each step."""

    import shmstore
    from shmstore import ShmStoreError

    results: list[tuple[str, str]] = []
    cache = shmstore.Cache(cache_dir)

    def step(what: str, fn: Callable[[], Any], should_refuse: bool) -> None:
        try:
            fn()
        except ShmStoreError as err:
            good = bool(str(err)) and should_refuse
            results.append((REFUSED if good else FAILED, f"{what}: {type(err).__name__}: {err}"))
        except AssertionError as err:
            results.append((WRONG, f"{what}: {err}"))
        except Exception as err:
            results.append((FAILED, f"{what}: bare {type(err).__name__}: {err}"))
        else:
            results.append((OK, what))

    def open_and_read() -> None:
        with shmstore.open(path, "r", cache=cache) as store:
            check_reads(store)
            for action in (
                lambda: store.write("n", rows_of(9, 0, 3)),
                lambda: store.append("e", rows_of(3, 40, 41)),
                lambda: store.delete("x"),
            ):
                step("a change in mode 'r'", action, True)

    # A journal left by a killed writer cannot be rolled back on a read-only file system.
    step("mode 'r' and reading", open_and_read, Path(path + ".journal").exists())
    for mode in ("r+", "a", "w"):

        def changes(mode: str = mode) -> None:
            with shmstore.open(path, mode, cache=cache) as store:
                # Opened (root on a chmod-ed file): each change must work or refuse cleanly.
                step(f"write in mode {mode!r}", lambda: store.write("n", rows_of(9, 0, 3)), True)
                step(f"append in mode {mode!r}", lambda: _append_one(store, "e"), True)
                step(
                    f"overwrite in mode {mode!r}",
                    lambda: store.write("x", rows_of(4, 0, 5), overwrite=True),
                    True,
                )
                step(
                    f"appendable write in mode {mode!r}",
                    lambda: store.write("n2", rows_of(9, 0, 3), appendable=True),
                    True,
                )
                step(f"delete in mode {mode!r}", lambda: store.delete("c"), True)

        step(f"open with mode {mode!r}", changes, True)
        # A refused (or done) change must leave a whole store behind.
        step(
            f"mode 'r' after mode {mode!r}",
            lambda: _readable(path, cache),
            Path(path + ".journal").exists(),
        )
    return results


def check_reads(store: Any) -> None:
    """Read the sample store every way; ``AssertionError`` for wrong data."""
    import numpy as np

    for name, (gen, rows) in {"x": (1, 50), "c": (2, 50), "e": (3, 40)}.items():
        want = rows_of(gen, 0, rows)
        assert np.array_equal(store.read(name), want), f"read {name}"
        if name != "c":
            assert np.array_equal(store.memmap(name), want), f"memmap {name}"
        with store.view(name, mode="shared") as arr:
            assert np.array_equal(arr, want), f"shared view {name}"
        handle = pickle.loads(pickle.dumps(store.handle(name, rows=(5, 20))))
        with handle.view() as arr:
            assert np.array_equal(arr, want[5:20]), f"handle view {name}"


def _append_one(store: Any, name: str) -> None:
    rows = store.info(name).rows
    store.append(name, rows_of(3, rows, rows + 1))


def _readable(path: str, cache: Any) -> None:
    import shmstore

    with shmstore.open(path, "r", cache=cache) as store:
        observe(store)


@contextlib.contextmanager
def _tmpfs(directory: Path) -> Iterator[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64M", "tmpfs", str(directory)],
        check=True,
        capture_output=True,
    )
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True, check=False)


def _run_probe(path: Path, cache_dir: str, as_nobody: bool) -> list[tuple[str, str]]:
    """Run :func:`probe_read_only` in a forked process, as user nobody if *as_nobody*.

    Forked, not spawned: the interpreter of the venv may be unreachable for nobody.
    """
    # Imported before the fork: nobody may not read the interpreter's directories.
    import concurrent.futures  # noqa: F401
    import importlib
    import pkgutil

    import shmstore

    for module in pkgutil.iter_modules(shmstore.__path__):
        # shmstore.dask needs an extra that this run does not install, nor read.
        if not module.name.startswith("__") and module.name != "dask":
            importlib.import_module(f"shmstore.{module.name}")
    with (
        contextlib.suppress(shmstore.ShmStoreError),
        shmstore.open(path, "r", cache=shmstore.Cache(cache_dir + "-warm")) as store,
    ):
        check_reads(store)  # what reading imports lazily
    shutil.rmtree(cache_dir + "-warm", ignore_errors=True)

    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answer through the pipe, never return
        code = 1
        try:
            os.close(reader)
            if as_nobody:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            os.environ["SHMSTORE_DIR"] = cache_dir
            answer = json.dumps(probe_read_only(str(path), cache_dir)).encode()
            with os.fdopen(writer, "wb") as out:
                out.write(answer)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(writer)
    with os.fdopen(reader, "rb") as inp:
        data = inp.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not data:
        return [(FAILED, f"the probe died (status {status})")]
    return [tuple(r) for r in json.loads(data)]  # type: ignore[misc]


def _read_only_case(case: ReadOnlyCase) -> tuple[str, str]:
    _quiet()
    base = Path(case.directory)
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    base.chmod(0o755)
    try:
        results = _read_only_setup(case, base)
    except subprocess.CalledProcessError as err:
        return REFUSED, f"could not set up {case.how}: {err.stderr!r} (needs root)"
    except Exception as err:
        return FAILED, f"harness: {type(err).__name__}: {err} {traceback.format_exc(limit=-3)}"
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(case.cache_dir, ignore_errors=True)
    bad = [r for r in results if r[0] not in (OK, REFUSED)]
    if bad:
        worst = max((r[0] for r in bad), key=_RANK.__getitem__)
        return worst, "; ".join(r[1] for r in bad)
    return (
        OK,
        f"{sum(r[0] == OK for r in results)} ok, {sum(r[0] == REFUSED for r in results)} refused",
    )


def _read_only_setup(case: ReadOnlyCase, base: Path) -> list[tuple[str, str]]:
    if case.how.startswith("ro-mount"):
        mnt = base / "mnt"
        with _tmpfs(mnt):
            path = mnt / "store.h5"
            make_sample(path, case.cache_dir)
            if case.how == "ro-mount-no-lock":
                (mnt / "store.h5.lock").unlink()
            if case.how == "ro-mount-journal":
                _leave_journal(path)
            subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True, capture_output=True)
            return _run_probe(path, case.cache_dir, as_nobody=False)
    # chmod cases, in a directory nobody may write to or not.
    work = base / "w"
    work.mkdir()
    path = work / "store.h5"
    make_sample(path, case.cache_dir)
    raw = work / "store.h5.raw"
    (work / "store.h5.lock").chmod(0o666)
    for p in raw.iterdir():
        p.chmod(0o444)
    raw.chmod(0o555)
    if case.how == "chmod-raw-only":
        os.chown(path, NOBODY, NOBODY)  # nobody may write the HDF5 file, not its raw file
    else:
        path.chmod(0o444)
    if case.how == "chmod-h5-only":  # nobody may write the raw file, not the HDF5 file
        for p in [raw, *raw.iterdir()]:
            os.chown(p, NOBODY, NOBODY)
            p.chmod(0o755 if p == raw else 0o644)
    work.chmod(0o755 if case.how == "chmod-dir-nobody" else 0o777)
    if case.how == "chmod-root":
        return _run_probe(path, case.cache_dir, as_nobody=False)
    # A cache directory nobody can create: not inside the run's own (0700) one.
    theirs = Path("/dev/shm") / f"shmstore-faults-nobody-{os.getpid()}-{case.how}"
    try:
        return _run_probe(path, str(theirs), as_nobody=True)
    finally:
        shutil.rmtree(theirs, ignore_errors=True)


def _leave_journal(path: Path) -> None:
    """Leave the journal of a ``write`` whose writer died mid-change (a child killed)."""
    code = (
        "import os, numpy, shmstore, shmstore._metadata as m\n"
        f"st = shmstore.open({str(path)!r}, 'a')\n"
        "orig = m.write_store_record\n"
        "def boom(file):\n"
        "    orig(file); file.flush(); os.kill(os.getpid(), 9)\n"
        "m.write_store_record = boom\n"
        "st.write('y', numpy.zeros((4, 3)))\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], env=os.environ.copy(), capture_output=True, check=False
    )
    if not path.with_name(path.name + ".journal").exists():
        raise RuntimeError("no journal left by the killed writer")


# -- the file changed under the cache --------------------------------------------------------------


@dataclass(frozen=True)
class ChangedCase:
    """Dataset *name* cached (and held by another process if *held*), then the file *change*d."""

    change: str  # "delete" | "replace" | "rewrite" | "truncate" | "delete-raw" | "truncate-raw"
    name: str
    held: bool
    directory: str
    cache_dir: str


def _holder_main(handle_b64: str) -> None:
    """Hold a view of a handle's slice; on each stdin line report whether it still holds it."""
    import numpy as np

    handle = pickle.loads(base64.b64decode(handle_b64))
    array = handle.pin()
    want = np.array(array, copy=True)
    print(f"holding {int(want.sum())}", flush=True)
    for line in sys.stdin:
        if line.strip() == "check":
            print("same" if np.array_equal(array, want) else "changed", flush=True)
        else:
            break
    handle.unpin()
    del array
    print("dropped", flush=True)


def _changed_case(case: ChangedCase) -> tuple[str, str]:
    _quiet()
    base = Path(case.directory)
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    try:
        return _changed(case, base)
    except Exception as err:
        return FAILED, f"harness: {type(err).__name__}: {err} {traceback.format_exc(limit=-3)}"
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(case.cache_dir, ignore_errors=True)


def _segments(cache_dir: str) -> set[str]:
    """Keys of the cached blocks, current (``.seg``) or retired while mapped (``.stale``)."""
    return (
        {p.name.split(".")[0] for p in Path(cache_dir).iterdir() if p.suffix in (".seg", ".stale")}
        if Path(cache_dir).is_dir()
        else set()
    )


def change_file(path: Path, change: str, cache_dir: str) -> dict[str, tuple[int, int]] | None:
    """Apply *change* to the store at *path*; the new contents, if a store is left."""
    import h5py

    import shmstore

    raw = path.with_name(path.name + ".raw")
    if change == "delete":
        path.unlink()
        shutil.rmtree(raw)
        return None
    if change in ("replace", "rewrite"):
        # "replace": a new store built elsewhere and renamed over the old one
        # (a new inode); "rewrite": the same file rewritten in place with mode "w".
        target = path.parent / "new" / path.name if change == "replace" else path
        target.parent.mkdir(exist_ok=True)
        with shmstore.open(target, "w", cache=shmstore.Cache(cache_dir)) as store:
            store.write("x", rows_of(11, 0, 50))
            store.write("c", rows_of(12, 0, 50), chunks=(8, COLS))
            store.append("e", rows_of(13, 0, 40))
        if change == "replace":
            shutil.rmtree(raw)
            os.replace(target, path)
            os.replace(target.with_name(raw.name), raw)
        return {"x": (11, 50), "c": (12, 50), "e": (13, 40)}
    if change == "truncate":
        with h5py.File(path, "r") as f:
            end = f["x"].id.get_offset() + 5 * COLS * 8  # cuts rows 5:20 of x
        os.truncate(path, end)
        return None
    if change == "delete-raw":
        for p in raw.iterdir():
            p.unlink()
        return None
    if change == "truncate-raw":
        for p in raw.iterdir():
            os.truncate(p, p.stat().st_size // 2)
        return None
    raise ValueError(change)


def _changed(case: ChangedCase, base: Path) -> tuple[str, str]:  # noqa: PLR0915  (one story)
    import numpy as np

    import shmstore
    from shmstore import ShmStoreError

    path = base / "store.h5"
    old = make_sample(path, case.cache_dir)
    cache = shmstore.Cache(case.cache_dir)
    gen, _rows = old[case.name]
    with shmstore.open(path, "r", cache=cache) as store:
        handle = store.handle(case.name, rows=(5, 20))
    with handle.view("shared") as arr:
        first_ok = np.array_equal(arr, rows_of(gen, 5, 20))
    del arr  # the mapping goes with the last reference
    if not first_ok:
        return WRONG, "the first view is wrong"
    stale = _segments(case.cache_dir)
    if len(stale) != 1:
        return FAILED, f"expected one segment, found {stale}"
    holder = None
    if case.held:
        holder = subprocess.Popen(
            [sys.executable, str(HERE), "holder", base64.b64encode(pickle.dumps(handle)).decode()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=_python_env(case.cache_dir),
        )
        said = Lines(holder)
    problems: list[tuple[str, str]] = []
    try:
        if holder is not None:
            first = said.until("holding", 60)
            if not first or not first[-1].startswith("holding"):
                return FAILED, f"the holder did not start: {first}"
        # A store open across the change (an in-place rewrite would wait for its lock).
        opened = None if case.change == "rewrite" else shmstore.open(path, "r", cache=cache)
        new = change_file(path, case.change, case.cache_dir)
        want = None if new is None or case.name not in new else rows_of(new[case.name][0], 5, 20)
        if case.change == "truncate" and case.name == "e":
            want = rows_of(gen, 5, 20)  # in the raw file, which is whole

        def judge(what: str, fn: Callable[[], Any]) -> None:
            try:
                got = fn()
            except ShmStoreError as err:
                if not str(err):
                    problems.append((FAILED, f"{what}: {type(err).__name__} without a message"))
                return  # refusing is right: the slice it knew is gone
            except Exception as err:
                problems.append((FAILED, f"{what}: bare {type(err).__name__}: {err}"))
                return
            if got is None:
                return
            if want is None or not np.array_equal(got, want):
                stale_data = np.array_equal(got, rows_of(gen, 5, 20))
                problems.append(
                    (WRONG, f"{what}: served {'the stale slice' if stale_data else 'wrong data'}")
                )

        def via_handle(h: Any) -> Any:
            with h.view() as arr:
                return np.array(arr, copy=True)

        def via_store(mode: str) -> Any:
            with (
                shmstore.open(path, "r", cache=cache) as store,
                store.view(case.name, rows=(5, 20), mode=mode) as arr,
            ):  # type: ignore[arg-type]
                return np.array(arr, copy=True)

        if opened is not None:
            with opened:

                def via_opened(mode: str) -> Any:
                    assert opened is not None
                    with opened.view(case.name, rows=(5, 20), mode=mode) as arr:  # type: ignore[arg-type]
                        return np.array(arr, copy=True)

                judge(
                    "a store open across the change: view('shared')", lambda: via_opened("shared")
                )
                if case.name != "c":
                    judge("a store open across the change: memmap()", lambda: via_opened("memmap"))
        judge("handle.cached()", handle.cached)
        if handle.is_current():
            problems.append((WRONG, "handle.is_current() is True after the change"))
        judge("handle.view()", lambda: via_handle(handle))
        judge(
            "an unpickled handle's view()", lambda: via_handle(pickle.loads(pickle.dumps(handle)))
        )
        judge("store.view(mode='shared')", lambda: via_store("shared"))
        judge("store.view(mode='auto')", lambda: via_store("auto"))
        judge("store.read()", lambda: _read(path, cache, case.name))
        if holder is not None:
            assert holder.stdin is not None
            holder.stdin.write(b"check\n")
            holder.stdin.flush()
            answer = said.until("", 30)
            if answer != ["same"]:
                problems.append((WRONG, f"the holder's data: {answer}"))
            cache.gc()
            if not stale <= _segments(case.cache_dir):
                problems.append((WRONG, "gc removed the segment a process maps"))
            holder.stdin.write(b"drop\n")
            holder.stdin.flush()
            said.until("dropped", 30)
            holder.wait(30)
        cache.gc()
        if stale & _segments(case.cache_dir):
            problems.append((LEAK, "gc left the orphaned segment"))
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
            holder.wait()
    if not problems:
        return OK, ""
    worst = max((p[0] for p in problems), key=_RANK.__getitem__)
    return worst, "; ".join(p[1] for p in problems)


def _read(path: Path, cache: Any, name: str) -> Any:
    import shmstore

    with shmstore.open(path, "r", cache=cache) as store:
        return store.read(name, rows=(5, 20))


# -- run -------------------------------------------------------------------------------------------


def _lost(detail: str) -> int:
    if detail.startswith("lost_rows="):
        return int(detail.split(maxsplit=1)[0].split("=")[1])
    return 0


def run(settings: Settings) -> list[Row]:
    """Run every store-side fault case; one :class:`Row` per kind of case."""
    rng = random.Random(settings.seed)
    work = Path(settings.workdir) / "store_faults"
    shm = Path(tempfile.mkdtemp(prefix="shmstore-faults-", dir="/dev/shm"))
    rows: list[Row] = []
    try:
        rounds = 6 if settings.quick else 100
        for kind, what, delay in (
            ("raw", "kill -9 of a writer appending (raw-file layout)", 0.15),
            ("chunked-unlimited", "kill -9 of a writer appending (chunked, unlimited)", 0.15),
            ("mixed", "kill -9 of a writer doing write/overwrite/delete/append", 0.4),
        ):
            cases = [
                KillCase(
                    kind,
                    rng.randrange(2**31),
                    str(work / f"{kind}-{i}"),
                    str(shm / f"{kind}-{i}"),
                    kills=2,
                    max_delay=delay,
                )
                for i in range(rounds)
            ]
            row = Row(SECTION, what, note=f"{2 * rounds} kills on {rounds} stores")
            with Timer() as t:
                results = run_cases(_kill_case, cases, workers=settings.workers, timeout=180)
            for _, outcome, detail in results:
                row.lost_rows += _lost(detail)
                row.add(outcome, detail)
            row.seconds = t.seconds
            rows.append(row)

        ro_cases = [
            ReadOnlyCase(
                how,
                str(Path("/tmp") / f"shmstore-faults-ro-{os.getpid()}-{how}"),
                str(shm / f"ro-{how}"),
            )
            for how in (
                "ro-mount",
                "ro-mount-no-lock",
                "ro-mount-journal",
                "chmod-nobody",
                "chmod-dir-nobody",
                "chmod-raw-only",
                "chmod-h5-only",
                "chmod-root",
            )
        ]
        row = Row(SECTION, "read-only HDF5 file (read-only mount, chmod 0444)")
        with Timer() as t:
            results = run_cases(_read_only_case, ro_cases, workers=settings.workers, timeout=180)
        for case, outcome, detail in results:
            row.add(outcome, f"{case.how}: {detail}")
        row.seconds = t.seconds
        rows.append(row)

        changed = [
            ChangedCase(
                change,
                name,
                held,
                str(work / f"chg-{change}-{name}-{held}"),
                str(shm / f"chg-{change}-{name}-{held}"),
            )
            for change in ("delete", "replace", "rewrite", "truncate", "delete-raw", "truncate-raw")
            for name in ("x", "c", "e")
            for held in (False, True)
            if not (change.endswith("-raw") and name != "e")
        ]
        row = Row(SECTION, "HDF5 file deleted/replaced/truncated while cached and held")
        with Timer() as t:
            results = run_cases(_changed_case, changed, workers=settings.workers, timeout=120)
        for case, outcome, detail in results:
            row.add(outcome, f"{case.change} {case.name} held={case.held}: {detail}")
        row.seconds = t.seconds
        rows.append(row)
    finally:
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return rows


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "writer":
        _writer_main(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
    elif command == "probe":
        print(json.dumps(probe_read_only(sys.argv[2], sys.argv[3])))
    elif command == "holder":
        _holder_main(sys.argv[2])
    else:
        raise SystemExit(f"unknown command {command!r}")
