"""``shmstore demo``: the memory one shared copy saves, measured on this machine.

It writes a sample store in a temporary directory, starts N worker
processes that each use the same slice, and measures the node's memory two
ways: the workers map the node's single copy through a handle, or each reads
its own copy with h5py.  Node memory = the workers' summed USS (private
memory, ``Private_Clean + Private_Dirty`` of ``/proc/<pid>/smaps``, which
unlike ``smaps_rollup`` tells the segment's mapping apart)
grown by the slice, plus the bytes the segment holds in shared memory
(allocated blocks), each page counted once: a segment page that only one
worker maps shows in its USS and is taken out of it.  The workers' USS
before they touch the slice (Python, numpy, h5py: the same either way) is
reported apart, as ``baseline_bytes``.

Everything it creates is removed at the end, also on Ctrl-C or SIGTERM: the
workers are started with SIGINT blocked (the terminal sends Ctrl-C to the
whole process group; the parent stops them) and are terminated on an
interruption.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .._cache import Cache, parse_budget
from .._signals import Uninterruptible
from .._store import open_store
from ._format import emit_json, human_bytes, table

__all__ = [
    "Measured",
    "demo",
    "h5py_worker",
    "measure",
    "measure_workers",
    "private_bytes",
    "shared_worker",
]

_NAME = "activations"
_PREFIX_VARIABLE = "HDF5_EXTFILE_PREFIX"
_ROW_FLOATS = 1024  # float64 per row: 8 KiB rows


def private_bytes(exclude: str | None = None) -> int:
    """This process's USS in bytes, less the private pages of its mappings of files in *exclude*.

    USS counts a shared-memory page mapped by this process alone as private;
    *exclude* (the cache directory) takes the blocks' pages out, as they are
    counted once apart.
    One read of ``/proc/self/smaps``: whether a page is private changes as
    other processes map it, so the total and the part left out must be
    read together.
    """
    total = 0
    inside = False
    with open("/proc/self/smaps", encoding="utf-8", errors="replace") as smaps:
        for line in smaps:
            first = line.split(maxsplit=1)[0] if line.strip() else ""
            if "-" in first and not first.endswith(":"):  # a mapping's header line
                inside = exclude is not None and f" {exclude}/" in line
            elif first in ("Private_Clean:", "Private_Dirty:") and not inside:
                total += int(line.split()[1]) * 1024
    return total


def shared_worker(handle: Any, directory: str, out: Connection, go: Any) -> None:
    """A worker that maps the node's copy through *handle*; sends its private growth in bytes."""
    # Measured from after the imports and set-up, so that only the slice's cost counts.
    handle.is_current()
    _ = handle.cache
    from .. import _store  # noqa: F401 - what a pin may import

    before = private_bytes()
    array = handle.pin()
    float(np.asarray(array).sum())  # touch every page
    out.send((private_bytes(exclude=directory) - before, before))
    go.wait(120)


def h5py_worker(path: str, name: str, out: Connection, go: Any) -> None:
    """A worker that reads its own copy of *name* with h5py; sends its private growth in bytes."""
    import h5py

    with h5py.File(path, "r") as f:
        dataset = f[name]
        before = private_bytes()
        array = dataset[:]
    float(array.sum())
    out.send((private_bytes() - before, before))
    go.wait(120)


class Measured(NamedTuple):
    """What :func:`measure` found, summed over the workers, in bytes."""

    growth: int
    """USS after using the slice (still holding it) less USS before."""
    baseline: int
    """USS before using the slice: the interpreter and its imports."""


def measure(target: Any, args: tuple[Any, ...], workers: int) -> Measured:
    """Run *workers* spawned processes of *target*; their summed private memory in bytes.

    *target* is called as ``target(*args, out, go)`` and sends ``(growth,
    baseline)`` through *out*, then waits for the event *go*: each holds its
    slice until all have reported, so their pages coexist.  The workers
    start with SIGINT blocked; on any exception here (Ctrl-C included) they
    are terminated at once.
    """
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    pipes, processes = [], []
    finished = False
    try:
        # A blocked signal stays blocked in the child (fork and exec keep the mask).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            for _ in range(workers):
                receive, send = context.Pipe(duplex=False)
                process = context.Process(target=target, args=(*args, send, go), daemon=True)
                process.start()
                send.close()  # the child holds the sending end: recv sees EOF if it dies
                pipes.append(receive)
                processes.append(process)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a Ctrl-C meanwhile arrives now
        try:
            reports = [pipe.recv() for pipe in pipes]  # every worker holds its slice now
        except EOFError:
            codes = [p.exitcode for p in processes if p.exitcode is not None]
            raise OSError(
                f"a demo worker died (exit codes {codes}) before it measured its memory; "
                "its traceback is above"
            ) from None
        finished = True
        return Measured(sum(int(r[0]) for r in reports), sum(int(r[1]) for r in reports))
    finally:
        go.set()
        for process in processes:
            if not finished:
                process.terminate()
            process.join(30)
            if process.is_alive():
                process.kill()
                process.join()


def measure_workers(target: Any, args: tuple[Any, ...], workers: int) -> int:
    """Run *workers* spawned processes of *target*; their summed private growth in bytes.

    Each holds its slice until all have reported, so their pages coexist.
    """
    return measure(target, args, workers).growth


def _write_sample(path: Path, nbytes: int) -> None:
    rows = max(1, nbytes // (_ROW_FLOATS * 8))
    block = max(1, (64 << 20) // (_ROW_FLOATS * 8))
    with open_store(path, "w") as store:
        for first in range(0, rows, block):
            count = min(block, rows - first)
            values = np.arange(first * _ROW_FLOATS, (first + count) * _ROW_FLOATS, dtype=np.float64)
            store.append(_NAME, values.reshape(count, _ROW_FLOATS))


def _run(args: argparse.Namespace) -> dict[str, Any]:
    """Write the sample, measure both ways, clean up (also when interrupted); the figures."""
    nbytes = parse_budget(args.size, "/dev/shm", "--size")
    # Named by the pid, so whose they are is plain, should a kill -9 leave them.
    workdir = Path(tempfile.mkdtemp(prefix=f"shmstore-demo-{os.getpid()}-"))
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    cache_dir: Path | None = None
    try:
        shm_base = Path("/dev/shm") if Path("/dev/shm").is_dir() else workdir
        cache_dir = Path(
            tempfile.mkdtemp(prefix=f"shmstore-demo-cache-{os.getpid()}-", dir=shm_base)
        )
        path = workdir / "sample.h5"
        _say(args, f"writing a sample store of {human_bytes(nbytes)} in {workdir}")
        _write_sample(path, nbytes)
        cache = Cache(directory=cache_dir / "cache", budget=max(nbytes * 2, 1 << 20))
        with open_store(path, cache=cache) as store:
            handle = store.handle(_NAME)
            size = store.info(_NAME).nbytes
        started = time.monotonic()
        handle.pin()  # the node's one load
        load_seconds = time.monotonic() - started
        shared_bytes = sum(
            os.stat(cache.directory / f"{key}.seg").st_blocks * 512 for key in handle.keys
        )
        handle.unpin()
        _say(args, f"{args.workers} workers map the node's copy")
        shared = measure(shared_worker, (handle, str(cache.directory)), args.workers)
        _say(args, f"{args.workers} workers read their own copy with h5py")
        # How other tools find an appendable dataset's raw file beside its HDF5 file;
        # HDF5 reads it when it starts, so the workers get it in their environment.
        saved = os.environ.get(_PREFIX_VARIABLE)
        os.environ[_PREFIX_VARIABLE] = "${ORIGIN}"
        try:
            private = measure(h5py_worker, (str(path), _NAME), args.workers)
        finally:
            if saved is None:
                os.environ.pop(_PREFIX_VARIABLE, None)
            else:
                os.environ[_PREFIX_VARIABLE] = saved
    finally:
        try:
            with Uninterruptible():  # a second Ctrl-C waits until the files are gone
                if cache_dir is not None:
                    shutil.rmtree(cache_dir, ignore_errors=True)
                shutil.rmtree(workdir, ignore_errors=True)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return _document(
        workers=args.workers,
        size=size,
        load_seconds=load_seconds,
        shared=shared,
        shared_bytes=shared_bytes,
        private=private,
    )


def _document(
    *,
    workers: int,
    size: int,
    load_seconds: float,
    shared: Measured,
    shared_bytes: int,
    private: Measured,
) -> dict[str, Any]:
    """The demo's figures, as ``--json`` prints them (bytes and seconds)."""
    with_shmstore = shared.growth + shared_bytes
    return {
        "workers": workers,
        "slice_bytes": size,
        "load_seconds": load_seconds,
        "shmstore": {
            "private_bytes": shared.growth,
            "shared_bytes": shared_bytes,
            "node_bytes": with_shmstore,
            "baseline_bytes": shared.baseline,
        },
        "h5py": {
            "private_bytes": private.growth,
            "shared_bytes": 0,
            "node_bytes": private.growth,
            "baseline_bytes": private.baseline,
        },
        "saved_ratio": private.growth / with_shmstore if with_shmstore else None,
    }


def demo(args: argparse.Namespace) -> int:
    """Measure node memory for N workers using one slice: shared copy against h5py copies."""
    document = _run(args)
    if args.json:
        emit_json(document)
        return 0
    size = document["slice_bytes"]
    ours, theirs = document["shmstore"], document["h5py"]
    print(
        f"{args.workers} workers each using the same {human_bytes(size)} slice "
        f"(loaded once in {document['load_seconds']:.2f} s):"
    )
    rows = [
        (
            label,
            human_bytes(figures["private_bytes"]),
            human_bytes(figures["shared_bytes"]),
            human_bytes(figures["node_bytes"]),
            f"{figures['node_bytes'] / size:.2f}x",
        )
        for label, figures in (
            ("shmstore (one shared copy)", ours),
            ("h5py (a copy per worker)", theirs),
        )
    ]
    print(table(("", "workers' private", "shared memory", "node memory", "of the slice"), rows))
    if document["saved_ratio"]:
        print(f"shmstore used {document['saved_ratio']:.1f}x less memory on this node")
    whole = [f["node_bytes"] + f["baseline_bytes"] for f in (ours, theirs)]
    print(
        "node memory = the workers' summed USS growth while they hold the slice\n"
        "  (Private_Clean + Private_Dirty, /proc/<pid>/smaps) + the slice's pages in shared\n"
        "  memory, counted once. With the workers' whole USS (Python, numpy, h5py too):\n"
        f"  shmstore {human_bytes(whole[0])}, h5py {human_bytes(whole[1])}."
    )
    return 0


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM and SIGHUP stop the demo as Ctrl-C does, through its clean-up."""
    raise KeyboardInterrupt


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.json:
        print(f"... {message}", file=sys.stderr, flush=True)
