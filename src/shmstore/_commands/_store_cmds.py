"""Commands on one HDF5 file: ``info``, ``validate``, ``put``, ``preload``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .._diskarray import open_disk_array
from .._manifest_io import copy_problems
from .._store import Store, open_store
from ..errors import ArgumentError, ShmStoreError
from ..manifest import ArrayInfo, Manifest
from ._format import emit_json, human_bytes, table

__all__ = ["info", "parse_rows", "preload", "put", "validate"]


def parse_rows(text: str | None) -> tuple[int | None, int | None] | None:
    """``"A:B"``, ``"A:"``, ``":B"`` (negative counts from the end) as ``(start, stop)``.

    :raises ArgumentError: anything else.
    """
    if text is None:
        return None
    start, sep, stop = text.partition(":")
    try:
        if not sep:
            raise ValueError(text)
        return (int(start) if start.strip() else None, int(stop) if stop.strip() else None)
    except ValueError:
        raise ArgumentError(
            f"--rows {text!r} is not a row range: give START:STOP, START: or :STOP "
            "(integers; negative ones count from the end)"
        ) from None


def _describe(info: ArrayInfo) -> dict[str, Any]:
    document = info.model_dump(mode="json")
    document["nbytes"] = info.nbytes
    return document


def info(args: argparse.Namespace) -> int:
    """List the datasets of FILE with shape, dtype, layout, chunks, compression and size."""
    with open_store(args.file) as store:
        manifest = store.manifest
        arrays = [manifest.arrays[name] for name in store.names()]
    if args.json:
        emit_json(
            {
                "path": str(Path(args.file).resolve()),
                "manifest": {"revision": manifest.revision, "inferred": manifest.inferred},
                "datasets": [_describe(a) for a in arrays],
                "nbytes": sum(a.nbytes for a in arrays),
            }
        )
        return 0
    origin = "inferred from the datasets (no manifest)" if manifest.inferred else "stored"
    print(f"{args.file}: {len(arrays)} datasets, manifest {origin}, revision {manifest.revision}")
    if arrays:
        rows = [
            (
                a.name,
                "x".join(map(str, a.shape)) or "()",
                a.dtype.str if a.dtype.fields is None else "compound",
                a.layout + (", appendable" if a.appendable else ""),
                "x".join(map(str, a.chunks)) if a.chunks else "-",
                a.compression or "-",
                human_bytes(a.nbytes),
            )
            for a in arrays
        ]
        print(table(("name", "shape", "dtype", "layout", "chunks", "compression", "size"), rows))
    return 0


def _problems(store: Store) -> list[str]:
    """What is wrong with an opened store's datasets and stored manifest."""
    problems = []
    for name in store.names():
        info = store.info(name)
        try:
            if info.shape and info.rows:
                store.read(name, (0, 1))
                store.read(name, (info.rows - 1, info.rows))
            elif not info.shape:
                store.read(name)
        except ShmStoreError as err:
            problems.append(f"{name}: {err}")
    if not store.manifest.inferred:
        with h5py.File(store.path, "r", locking=False) as f:
            problems.extend(copy_problems(f))
    return problems


def validate(args: argparse.Namespace) -> int:
    """Check FILE: it opens, its manifest is valid and agrees with the datasets, data read."""
    problems: list[str] = []
    manifest: Manifest | None = None
    try:
        with open_store(args.file) as store:
            manifest = store.manifest
            problems = _problems(store)
    except ShmStoreError as err:
        problems = [str(err)]
    ok = not problems
    if args.json:
        emit_json(
            {
                "path": str(Path(args.file).resolve()),
                "valid": ok,
                "problems": problems,
                "datasets": len(manifest.arrays) if manifest else None,
                "inferred": manifest.inferred if manifest else None,
            }
        )
    elif ok and manifest is not None:
        origin = "inferred (no manifest)" if manifest.inferred else "valid and in agreement"
        print(f"{args.file}: OK: {len(manifest.arrays)} datasets readable, manifest {origin}")
    else:
        print(f"{args.file}: {len(problems)} problem(s):")
        for problem in problems:
            print(f"  - {problem}")
    return 0 if ok else 1


def put(args: argparse.Namespace) -> int:
    """Write the array of SOURCE (.npy, or raw with --dtype and --shape) into FILE as NAME."""
    disk = open_disk_array(args.source, args.shape, args.dtype)
    chunks: Any = args.chunks
    if chunks not in (None, "auto"):
        chunks = tuple(int(c) for c in chunks.split(","))
    elif chunks == "auto":
        chunks = True
    started = time.monotonic()
    with open_store(args.file, "a") as store:
        store.write(
            args.name,
            disk.memmap(0, disk.shape[0]),  # streamed from the page cache, never all in memory
            chunks=chunks,
            compression=args.compression,
            appendable=args.appendable,
            overwrite=args.overwrite,
        )
        written = store.info(args.name)
    seconds = time.monotonic() - started
    if args.json:
        emit_json(
            {
                "path": str(Path(args.file).resolve()),
                "dataset": _describe(written),
                "source": str(disk.path),
                "seconds": seconds,
            }
        )
    else:
        print(
            f"wrote {args.name!r} ({'x'.join(map(str, written.shape))} {written.dtype}, "
            f"{human_bytes(written.nbytes)}, {written.layout}) into {args.file} in {seconds:.2f} s"
        )
    return 0


def preload(args: argparse.Namespace) -> int:
    """Load rows of NAME of FILE into this node's cache, unless they are there already."""
    rows = parse_rows(args.rows)
    started = time.monotonic()
    with open_store(args.file) as store:
        handle = store.handle(args.name, rows)
    loaded = handle.cached() is None
    if loaded:
        handle.pin()  # loads, once per node, with a progress bar on a terminal
    seconds = time.monotonic() - started
    nbytes = int(np.prod(handle.shape)) * handle.dtype.itemsize
    start, stop = handle.rows
    document = {
        "path": str(handle.path),
        "dataset": handle.name,
        "rows": [start, stop],
        "key": handle.key,
        "nbytes": nbytes,
        "loaded": loaded,
        "seconds": seconds,
        "cache": str(handle.cache.directory),
    }
    if args.json:
        emit_json(document)
    elif loaded:
        print(
            f"loaded {handle.name}[{start}:{stop}] ({human_bytes(nbytes)}) into "
            f"{handle.cache.directory} in {seconds:.2f} s (key {handle.key})"
        )
    else:
        print(
            f"{handle.name}[{start}:{stop}] is already in {handle.cache.directory} "
            f"(key {handle.key}); nothing to do"
        )
    return 0
