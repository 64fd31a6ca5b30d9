"""``shmstore demo``: the memory one shared copy saves, measured on this machine.

It writes a sample store in a temporary directory, starts N worker
processes that each use the same slice, and measures the node's memory two
ways: the workers map the node's single copy through a handle, or each reads
its own copy with h5py.  Node memory = the workers' summed USS (private
memory, ``Private_Clean + Private_Dirty`` of ``/proc/<pid>/smaps_rollup``)
grown by the slice, plus the bytes the segment holds in shared memory
(allocated blocks), each page counted once: a segment page that only one
worker maps shows in its USS and is taken out of it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from .._cache import Cache, parse_budget
from .._store import open_store
from ._format import emit_json, human_bytes, table

__all__ = ["demo", "h5py_worker", "measure_workers", "private_bytes", "shared_worker"]

_NAME = "activations"
_PREFIX_VARIABLE = "HDF5_EXTFILE_PREFIX"
_ROW_FLOATS = 1024  # float64 per row: 8 KiB rows


def private_bytes(exclude: str | None = None) -> int:
    """This process's USS in bytes, less the private pages of its mapping of file *exclude*.

    USS counts a shared-memory page mapped by this process alone as private;
    *exclude* takes the segment's pages out, as they are counted once apart.
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
                inside = exclude is not None and line.rstrip().endswith(exclude)
            elif first in ("Private_Clean:", "Private_Dirty:") and not inside:
                total += int(line.split()[1]) * 1024
    return total


def shared_worker(handle: Any, segment: str, out: Connection, go: Any) -> None:
    """A worker that maps the node's copy through *handle*; sends its private growth in bytes."""
    # Measured from after the imports and set-up, so that only the slice's cost counts.
    handle.is_current()
    _ = handle.cache
    from .. import _store  # noqa: F401 - what a pin may import

    before = private_bytes()
    array = handle.pin()
    float(np.asarray(array).sum())  # touch every page
    out.send(private_bytes(exclude=segment) - before)
    go.wait(120)


def h5py_worker(path: str, name: str, out: Connection, go: Any) -> None:
    """A worker that reads its own copy of *name* with h5py; sends its private growth in bytes."""
    import h5py

    with h5py.File(path, "r", locking=False) as f:
        dataset = f[name]
        before = private_bytes()
        array = dataset[:]
    float(array.sum())
    out.send(private_bytes() - before)
    go.wait(120)


def measure_workers(target: Any, args: tuple[Any, ...], workers: int) -> int:
    """Run *workers* spawned processes of *target*; their summed private growth in bytes.

    Each holds its slice until all have reported, so their pages coexist.
    """
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    pipes, processes = [], []
    try:
        for _ in range(workers):
            receive, send = context.Pipe(duplex=False)
            process = context.Process(target=target, args=(*args, send, go), daemon=True)
            process.start()
            pipes.append(receive)
            processes.append(process)
        try:
            return sum(int(pipe.recv()) for pipe in pipes)  # every worker holds its slice now
        except EOFError:
            codes = [p.exitcode for p in processes if p.exitcode is not None]
            raise OSError(
                f"a demo worker died (exit codes {codes}) before it measured its memory; "
                "its traceback is above"
            ) from None
    finally:
        go.set()
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.terminate()


def _write_sample(path: Path, nbytes: int) -> None:
    rows = max(1, nbytes // (_ROW_FLOATS * 8))
    block = max(1, (64 << 20) // (_ROW_FLOATS * 8))
    with open_store(path, "w") as store:
        for first in range(0, rows, block):
            count = min(block, rows - first)
            values = np.arange(first * _ROW_FLOATS, (first + count) * _ROW_FLOATS, dtype=np.float64)
            store.append(_NAME, values.reshape(count, _ROW_FLOATS))


def demo(args: argparse.Namespace) -> int:
    """Measure node memory for N workers using one slice: shared copy against h5py copies."""
    if args.workers < 1:
        raise SystemExit("shmstore demo: error: --workers must be at least 1")
    nbytes = parse_budget(args.size, "/dev/shm", "--size")
    workdir = Path(tempfile.mkdtemp(prefix="shmstore-demo-"))
    shm_base = Path("/dev/shm") if Path("/dev/shm").is_dir() else workdir
    cache_dir = Path(tempfile.mkdtemp(prefix="shmstore-demo-cache-", dir=shm_base))
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
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
        segment = str(cache.directory / f"{handle.key}.seg")
        shared_bytes = os.stat(segment).st_blocks * 512
        handle.unpin()
        _say(args, f"{args.workers} workers map the node's copy")
        shared_private = measure_workers(shared_worker, (handle, segment), args.workers)
        _say(args, f"{args.workers} workers read their own copy with h5py")
        # How other tools find an appendable dataset's raw file beside its HDF5 file;
        # HDF5 reads it when it starts, so the workers get it in their environment.
        saved = os.environ.get(_PREFIX_VARIABLE)
        os.environ[_PREFIX_VARIABLE] = "${ORIGIN}"
        try:
            h5py_private = measure_workers(h5py_worker, (str(path), _NAME), args.workers)
        finally:
            if saved is None:
                os.environ.pop(_PREFIX_VARIABLE, None)
            else:
                os.environ[_PREFIX_VARIABLE] = saved
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(cache_dir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    with_shmstore = shared_private + shared_bytes
    document = {
        "workers": args.workers,
        "slice_bytes": size,
        "load_seconds": load_seconds,
        "shmstore": {
            "private_bytes": shared_private,
            "shared_bytes": shared_bytes,
            "node_bytes": with_shmstore,
        },
        "h5py": {"private_bytes": h5py_private, "shared_bytes": 0, "node_bytes": h5py_private},
        "saved_ratio": h5py_private / with_shmstore if with_shmstore else None,
    }
    if args.json:
        emit_json(document)
        return 0
    print(
        f"{args.workers} workers each using the same {human_bytes(size)} slice "
        f"(loaded once in {load_seconds:.2f} s):"
    )
    rows = [
        (
            "shmstore (one shared copy)",
            human_bytes(shared_private),
            human_bytes(shared_bytes),
            human_bytes(with_shmstore),
            f"{with_shmstore / size:.2f}x",
        ),
        (
            "h5py (a copy per worker)",
            human_bytes(h5py_private),
            "0 B",
            human_bytes(h5py_private),
            f"{h5py_private / size:.2f}x",
        ),
    ]
    print(table(("", "workers' private", "shared memory", "node memory", "of the slice"), rows))
    if with_shmstore:
        print(f"shmstore used {h5py_private / with_shmstore:.1f}x less memory on this node")
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.json:
        import sys

        print(f"... {message}", file=sys.stderr, flush=True)
