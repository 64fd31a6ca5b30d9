"""Commands on one HDF5 file: ``info``, ``validate``, ``put``, ``preload``."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from .._cache import Cache
from .._diskarray import open_disk_array
from .._store import Store, open_store
from ..errors import (
    ArgumentError,
    LockTimeoutError,
    ManifestError,
    ShmStoreError,
    StoreNotFoundError,
    UnsupportedDtypeError,
)
from ..manifest import ArrayInfo
from ._format import count, emit_json, human_bytes, table

__all__ = ["info", "parse_rows", "preload", "put", "seal", "validate"]

_READ_BLOCK = 64 << 20
"""Bytes per read of ``validate --full``: every row is read, never all at once."""
_SHOWN = 50
"""Datasets ``info`` lists in its table unless ``--all`` is given."""


def parse_rows(text: str | None) -> tuple[int | None, int | None] | None:
    """``"A:B"``, ``"A:"``, ``":B"`` (negative counts from the end) as ``(start, stop)``.

    ``None`` (no ``--rows``) stands for every row.

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
    """*info* as ``Store.info`` reports it (``model_dump(mode="json")``), plus ``nbytes``.

    ``checksums`` is ``null`` for data without them (``shmstore info`` says "unverified").
    """
    document = info.model_dump(mode="json")
    document["nbytes"] = info.nbytes
    return document


def _checks(info: ArrayInfo) -> str:
    """What checks *info*'s data on every load, in a word or two."""
    if info.checksums is None:
        return "unverified"
    return f"crc32c/{info.checksums.per}"


def _dims(shape: tuple[int, ...] | None) -> str:
    return "-" if shape is None else "x".join(map(str, shape)) or "()"


def _dtype(info: ArrayInfo) -> str:
    return info.dtype.str if info.dtype.fields is None else f"compound({len(info.dtype.fields)})"


def _catalogue(store: Store) -> tuple[list[ArrayInfo], dict[str, str], dict[str, str]]:
    """The datasets *store* serves; those it does not, with why; those refused as damaged."""
    arrays, unsupported, refused = [], {}, {}
    for name in store.names():
        try:
            arrays.append(store.info(name))
        except UnsupportedDtypeError as err:
            unsupported[name] = str(err)
        except ManifestError as err:
            refused[name] = str(err)
    return arrays, unsupported, refused


def _origin(store: Store) -> str:
    """Where the metadata of *store* comes from, in words."""
    if store.format_version == 0:
        return "none in the file, inferred from the datasets"
    if store.format_version == 1:
        return "format 1 (one root manifest, shmstore 0.1.0; migrated on the first write)"
    return "format 2 (a record per dataset)"


def info(args: argparse.Namespace) -> int:
    """List the datasets of FILE with shape, dtype, layout, chunks, compression and size."""
    with open_store(args.file) as store:
        arrays, unsupported, refused = _catalogue(store)
        path, version, origin = store.path, store.format_version, _origin(store)
    if args.json:
        emit_json(
            {
                "path": str(path),
                "format_version": version,
                "manifest": {"inferred": version == 0},
                "datasets": [_describe(a) for a in arrays],
                "unsupported": [{"name": k, "reason": v} for k, v in unsupported.items()],
                "refused": [{"name": k, "reason": v} for k, v in refused.items()],
                "nbytes": sum(a.nbytes for a in arrays),
            }
        )
        return 0
    print(
        f"{args.file}: {count(len(arrays), 'dataset')}, "
        f"{human_bytes(sum(a.nbytes for a in arrays))}; metadata {origin}"
    )
    shown = arrays if args.all else arrays[:_SHOWN]
    if shown:
        rows = [
            (
                a.name,
                _dims(a.shape),
                _dtype(a),
                a.layout + (", appendable" if a.appendable else ""),
                _dims(a.chunks),
                (a.compression or "-")
                + (f":{a.compression_opts}" if a.compression_opts is not None else ""),
                human_bytes(a.nbytes),
                _checks(a),
                a.version,
            )
            for a in shown
        ]
        print(
            table(
                (
                    "name",
                    "shape",
                    "dtype",
                    "layout",
                    "chunks",
                    "compression",
                    "size",
                    "checks",
                    "version",
                ),
                rows,
            )
        )
    if len(shown) < len(arrays):
        print(
            f"... and {len(arrays) - len(shown)} more datasets "
            f"({human_bytes(sum(a.nbytes for a in arrays[len(shown) :]))}): --all lists "
            "every one, --json prints them for a script"
        )
    unverified = [a.name for a in arrays if not a.verified]
    if unverified:
        print(
            f"unverified: {count(len(unverified), 'dataset')} without checksums (loaded "
            f"unchecked): `shmstore seal {args.file}` records them"
        )
    for name, why in unsupported.items():
        print(f"not served: {name}: {why}")
    for name, why in refused.items():
        print(f"refused: {name}: {why}")
    return 0


def _read_everything(store: Store, info: ArrayInfo) -> None:
    """Read every row of *info*'s dataset, in blocks of about :data:`_READ_BLOCK` bytes."""
    step = max(1, _READ_BLOCK // max(1, info.row_nbytes))
    for start in range(0, info.rows, step):
        store.read(info.name, (start, min(info.rows, start + step)))


def _problems(store: Store, arrays: list[ArrayInfo], full: bool) -> list[str]:
    """What is wrong with an opened store's datasets and its stored manifest copies."""
    problems = []
    for info in arrays:
        try:
            if not info.shape:
                store.read(info.name)
            elif full:
                _read_everything(store, info)
            elif info.rows:
                store.read(info.name, (0, 1))
                store.read(info.name, (info.rows - 1, info.rows))
        except ShmStoreError as err:
            problems.append(f"{info.name}: {err}")
    problems.extend(store.metadata_problems())
    return problems


def validate(args: argparse.Namespace) -> int:
    """Check FILE: it opens, its manifest is valid and agrees with the datasets, data read."""
    problems: list[str] = []
    arrays: list[ArrayInfo] | None = None
    unsupported: dict[str, str] = {}
    inferred = None
    try:
        with open_store(args.file) as store:
            inferred = store.format_version == 0
            arrays, unsupported, refused = _catalogue(store)
            problems = [f"{name}: {why}" for name, why in refused.items()]
            problems += _problems(store, arrays, args.full)
    except (StoreNotFoundError, LockTimeoutError):
        raise  # nothing was checked: the usual one line on stderr
    except ShmStoreError as err:
        problems = [str(err)]
    ok = not problems
    if args.json:
        emit_json(
            {
                "path": os.path.abspath(args.file),
                "valid": ok,
                "problems": problems,
                "datasets": len(arrays) if arrays is not None else None,
                "inferred": inferred,
                "unverified": [a.name for a in arrays or () if not a.verified],
            }
        )
    elif ok and arrays is not None:
        origin = (
            "none (a file of other tools): inferred from the datasets"
            if inferred
            else "valid, both copies, in agreement with the datasets"
        )
        extent = "every row" if args.full else "first and last rows"
        unverified = sum(not a.verified for a in arrays)
        checked = (
            "checksums match"
            if not unverified
            else f"{unverified} without checksums: `shmstore seal {args.file}` records them"
        )
        print(
            f"{args.file}: OK: {count(len(arrays), 'dataset')} readable ({extent}; {checked}); "
            f"manifest {origin}"
        )
    else:
        print(f"{args.file}: {count(len(problems), 'problem')}:")
        for problem in problems:
            print(f"  - {problem}")
    if not args.json:
        for name, why in unsupported.items():
            print(f"  not served (not a problem of the file): {name}: {why}")
    return 0 if ok else 1


def put(args: argparse.Namespace) -> int:
    """Write the array of SOURCE (.npy, or raw with --dtype and --shape) into FILE as NAME."""
    disk = open_disk_array(args.source, args.shape, args.dtype)
    started = time.monotonic()
    with open_store(args.file, "a") as store:
        if args.name in store and not args.overwrite:
            raise ArgumentError(
                f"{args.name!r} already exists in {args.file}: pass --overwrite to replace it"
            )
        # A read-only memmap of the source: HDF5 reads it page by page from the
        # page cache, so a file larger than memory goes in too.
        store.write(
            args.name,
            disk.memmap(0, disk.shape[0]),
            chunks=args.chunks,
            compression=args.compression,
            appendable=args.appendable,
            overwrite=args.overwrite,
        )
        written = store.info(args.name)
        path = store.path
    seconds = time.monotonic() - started
    if args.json:
        emit_json(
            {
                "path": str(path),
                "dataset": _describe(written),
                "source": str(disk.path),
                "seconds": seconds,
            }
        )
    else:
        print(
            f"wrote {args.name!r} ({_dims(written.shape)} {_dtype(written)}, "
            f"{human_bytes(written.nbytes)}, {written.layout}"
            f"{', appendable' if written.appendable else ''}) into {args.file} "
            f"in {seconds:.2f} s"
        )
    return 0


def seal(args: argparse.Namespace) -> int:
    """Record checksums of the data of FILE's datasets NAMES (every one when none given)."""
    started = time.monotonic()
    with open_store(args.file, "r+") as store:
        sealed = store.seal(*args.names)
        path = store.path
    seconds = time.monotonic() - started
    if args.json:
        emit_json(
            {
                "path": str(path),
                "sealed": [
                    {
                        "name": a.name,
                        "per": a.checksums.per if a.checksums else None,
                        "count": a.checksums.count if a.checksums else 0,
                        "nbytes": a.nbytes,
                    }
                    for a in sealed
                ],
                "seconds": seconds,
            }
        )
        return 0
    print(
        f"sealed {count(len(sealed), 'dataset')} of {args.file} "
        f"({human_bytes(sum(a.nbytes for a in sealed))} read) in {seconds:.2f} s: "
        "every load and read checks them from now on"
    )
    for a in sealed:
        if a.checksums is not None:
            print(f"  {a.name}: {count(a.checksums.count, 'checksum')} per {a.checksums.per}")
    return 0


def preload(args: argparse.Namespace) -> int:
    """Load rows of NAME of FILE into this node's cache, unless they are there already."""
    rows = parse_rows(args.rows)
    cache = Cache(directory=args.cache_dir)
    started = time.monotonic()
    with open_store(args.file, cache=cache) as store:
        handle = store.handle(args.name, rows)
        there = handle.cached() is not None
        if not there:
            # Loads once per node (a load another process runs is waited for, not
            # repeated), with a progress bar on a terminal.
            with store.view(args.name, rows, mode="shared"):
                pass
    seconds = time.monotonic() - started
    # Exact: each block records the process that loaded it.
    loaded = not there and any(cache.header(key).creator_pid == os.getpid() for key in handle.keys)
    nbytes = handle.dtype.itemsize
    for n in handle.shape:
        nbytes *= n
    start, stop = handle.rows
    if args.json:
        emit_json(
            {
                "path": str(handle.path),
                "dataset": handle.name,
                "rows": [start, stop],
                "keys": list(handle.keys),
                "nbytes": nbytes,
                "loaded": loaded,
                "seconds": seconds,
                "cache": str(cache.directory),
            }
        )
    elif loaded:
        print(
            f"loaded {handle.name}[{start}:{stop}] ({human_bytes(nbytes)}) into "
            f"{cache.directory} in {seconds:.2f} s ({count(len(handle.keys), 'block')})"
        )
    else:
        print(
            f"{handle.name}[{start}:{stop}] ({human_bytes(nbytes)}) is already in "
            f"{cache.directory} ({count(len(handle.keys), 'block')}); nothing to do"
        )
    return 0
