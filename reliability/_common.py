"""What every part of the reliability run shares: tallies, and running cases in child processes.

A case runs in a child process so that a crash of the interpreter (a segfault
in a C library) or a hang is seen and counted instead of ending the run: the
parent waits for each answer with a timeout, kills a child that overruns it,
and starts a fresh one for the next case.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

# Outcomes a case can report; "ok" and "refused" are the two good ones.
OK = "ok"  # succeeded, and every value read was right
REFUSED = "refused"  # raised a ShmStoreError subclass with a message
FAILED = "failed"  # another exception type, or an error without a message
WRONG = "wrong"  # returned data that differ from what is intact, or mapped what it must not
LOST = "lost"  # acknowledged rows missing afterwards
LEAK = "leak"  # descriptors, mappings, segments or files left behind
HANG = "hang"  # did not answer within the timeout (set by the runner)
CRASH = "crash"  # the child process died (set by the runner)
BAD = (FAILED, WRONG, LOST, LEAK, HANG, CRASH)


@dataclass
class Row:
    """One line of a RELIABILITY.md table: one kind of case and what happened."""

    section: str
    what: str
    cases: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    lost_rows: int = 0
    examples: list[str] = field(default_factory=list)
    note: str = ""
    seconds: float = 0.0

    def add(self, outcome: str, detail: str = "") -> None:
        self.cases += 1
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        if outcome in BAD and len(self.examples) < 5:
            self.examples.append(f"{outcome}: {detail}"[:400])

    def n(self, outcome: str) -> int:
        return self.counts.get(outcome, 0)

    @property
    def bad(self) -> int:
        return sum(self.n(o) for o in BAD) + self.lost_rows


@dataclass(frozen=True)
class Settings:
    """How big the run is: ``quick`` for CI, the full run otherwise."""

    quick: bool
    seed: int
    workdir: str
    soak_seconds: float
    workers: int = 2


@dataclass(frozen=True)
class Case:
    """One case of a part: its kind, its seed, and where it may make files."""

    kind: str
    seed: int
    workdir: str

    def __repr__(self) -> str:
        return f"{self.kind}#{self.seed}"


def _child(fn: Callable[[Any], tuple[str, str]], conn: Connection) -> None:
    # The parent kills a hung child with SIGKILL; SIGINT is the parent's to handle.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            case = conn.recv()
        except EOFError:
            return
        if case is None:
            return
        try:
            answer = fn(case)
        except BaseException as err:  # the case function must classify; this is a harness bug
            answer = (FAILED, f"harness: {type(err).__name__}: {err}")
        conn.send(answer)


class _Slot:
    """One child process running cases one at a time."""

    def __init__(self, fn: Callable[[Any], tuple[str, str]]) -> None:
        self.fn = fn
        self.proc: mp.process.BaseProcess | None = None
        self.conn: Connection | None = None

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_child, args=(self.fn, child), daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent

    def _kill(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            os.kill(self.proc.pid or 0, signal.SIGKILL)
        if self.proc is not None:
            self.proc.join(10)
        if self.conn is not None:
            self.conn.close()
        self.proc = self.conn = None

    def run(self, case: Any, timeout: float) -> tuple[str, str]:
        if self.proc is None:
            self._start()
        assert self.conn is not None
        assert self.proc is not None
        self.conn.send(case)
        try:
            if self.conn.poll(timeout):
                return self.conn.recv()  # type: ignore[no-any-return]
        except (EOFError, OSError):
            # The pipe closed: the child died. Reap it before asking, or a
            # child that is still exiting would be taken for a hung one.
            self.proc.join(10)
        if self.proc.is_alive():
            self._kill()
            return HANG, f"no answer within {timeout:.0f} s"
        self.proc.join(5)
        code = self.proc.exitcode
        self._kill()
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return CRASH, f"the child process died ({how})"

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.send(None)
        if self.proc is not None:
            self.proc.join(10)
        self._kill()


def run_cases(
    fn: Callable[[Any], tuple[str, str]],
    cases: Sequence[Any],
    *,
    workers: int,
    timeout: float,
    describe: Callable[[Any], str] = repr,
) -> list[tuple[Any, str, str]]:
    """Run ``fn(case)`` for every case in child processes, *workers* at a time.

    *fn* must be importable by name (spawned children import it) and return
    ``(outcome, detail)``.  Returns ``(case, outcome, detail)`` in case order;
    a case that overran *timeout* seconds is a HANG, one whose child died a
    CRASH (the detail then names the case, via *describe*).
    """
    results: list[tuple[Any, str, str] | None] = [None] * len(cases)
    next_index = iter(range(len(cases)))
    lock = threading.Lock()

    def drive() -> None:
        slot = _Slot(fn)
        try:
            while True:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                outcome, detail = slot.run(cases[i], timeout)
                if outcome in (HANG, CRASH):
                    detail = f"{describe(cases[i])}: {detail}"
                results[i] = (cases[i], outcome, detail)
        finally:
            slot.close()

    threads = [threading.Thread(target=drive) for _ in range(max(1, workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for r in results if r is not None]


def cases_by_kind(
    section: str,
    kinds: dict[str, tuple[str, int, int]],
    settings: Settings,
    make: Callable[[str, int], Any],
) -> tuple[list[Any], dict[str, Row]]:
    """The cases of every kind and one empty Row per kind.

    *kinds* maps a kind to (what its Row says, cases in quick mode, cases in
    the full run); ``make(kind, seed)`` makes one case, each with its own
    seed derived from ``settings.seed``.
    """
    cases = []
    for n, (kind, (_, quick, full)) in enumerate(kinds.items()):
        count = quick if settings.quick else full
        cases += [make(kind, settings.seed * 1_000_000 + n * 10_000 + i) for i in range(count)]
    return cases, {kind: Row(section, text) for kind, (text, _, _) in kinds.items()}


def run_into_rows(
    fn: Callable[[Any], tuple[str, str]],
    cases: Sequence[Any],
    rows: dict[str, Row],
    *,
    workers: int,
    timeout: float,
) -> None:
    """Run *cases* (each with a ``kind``) with :func:`run_cases`, adding each outcome to
    ``rows[case.kind]``; the time taken is shared out among the rows by their cases."""
    with Timer() as timer:
        results = run_cases(fn, cases, workers=workers, timeout=timeout)
    for case, outcome, detail in results:
        rows[case.kind].add(outcome, detail)
    for row in rows.values():
        row.seconds = timer.seconds * row.cases / max(1, len(cases))


def tally(row: Row, outcomes: Iterable[tuple[Any, str, str]]) -> Row:
    """Add every ``(case, outcome, detail)`` to *row*."""
    for _, outcome, detail in outcomes:
        row.add(outcome, detail)
    return row


class Timer:
    """``with Timer() as t: ...; t.seconds``"""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
