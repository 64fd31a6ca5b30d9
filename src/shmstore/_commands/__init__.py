"""The ``shmstore`` command line, for people running jobs and the prologues of their schedulers.

Exit codes: 0 success (also when the goal already held), 1 failure (one
line on stderr, ``shmstore: error: <what went wrong>; <what to do>``), 2
wrong usage (argparse's message).  ``--debug`` before the command shows the
traceback of a failure and shmstore's log.  Every command takes ``--json``:
one JSON document on stdout, with the figures the Python API reports.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence

from .. import __version__
from ..errors import ShmStoreError

__all__ = ["main"]

_JSON_HELP = "print one JSON document on stdout instead of a table"
_ROWS_VALUE = re.compile(r"-?\d*:-?\d*")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shmstore",
        description="Numpy arrays in HDF5 files, shared between the processes of a node.",
        epilog="Exit codes: 0 success (also when there was nothing to do), 1 failure, "
        "2 wrong usage. The cache is $SHMSTORE_DIR, else $JOB_SHMTMPDIR/shmstore, else "
        "/dev/shm/shmstore-<uid>; its budget $SHMSTORE_BUDGET (bytes, 64G or 50%).",
    )
    parser.add_argument("--version", action="version", version=f"shmstore {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of a failure, and shmstore's log"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, json_keys: str, run: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=summary,
            description=f"{summary}.",
            epilog=f"--json prints one object: {json_keys}",
        )
        sub.add_argument("--json", action="store_true", help=_JSON_HELP)
        sub.set_defaults(run=run)
        return sub

    def with_cache(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--cache-dir",
            metavar="DIR",
            help="the cache directory (default: $SHMSTORE_DIR, else $JOB_SHMTMPDIR/shmstore, "
            "else /dev/shm/shmstore-<uid>)",
        )

    sub = command(
        "info",
        "the datasets of FILE: shape, dtype, layout, chunks, compression, size; the manifest",
        "path; format_version (2: a record per dataset; 1: one root manifest, shmstore "
        "0.1.0; 0: none); manifest {inferred} (inferred: the file has no shmstore metadata, "
        "it was read off the datasets); datasets [ArrayInfo fields as Store.info() reports "
        "them, plus nbytes]; unsupported [{name, reason}] (datasets shmstore does not "
        "serve); refused [{name, reason}] (datasets whose record is damaged or disagrees "
        "with them); nbytes (bytes of all datasets).",
        "_store_cmds.info",
    )
    sub.add_argument("file", metavar="FILE", help="an HDF5 file (any, also one without manifest)")
    sub.add_argument(
        "--all", action="store_true", help="list every dataset (default: the first 50)"
    )

    sub = command(
        "ls",
        "the node's cache: key, source file (or named array), dataset, rows, size, in use, "
        "age; totals",
        "directory; budget, used, free (bytes: the cache's budget, the bytes of its slices, "
        "the free space of its file system); in_use (slices a process maps); entries "
        "[CacheEntry fields as Cache.entries() reports them (created and last_access in unix "
        "seconds), plus age_seconds].",
        "_cache_cmds.ls",
    )
    with_cache(sub)

    sub = command(
        "preload",
        "load rows of dataset NAME of FILE into the node's cache, once per node (for a "
        "scheduler's prologue); exits 0 at once when they are there already",
        "path; dataset; rows [start, stop]; key (as `shmstore ls` shows it); nbytes; loaded "
        "(false: it was there, or another process loaded it meanwhile); seconds; cache "
        "(the directory).",
        "_store_cmds.preload",
    )
    sub.add_argument("file", metavar="FILE")
    sub.add_argument("name", metavar="NAME", help="the dataset, as `shmstore info` lists it")
    sub.add_argument(
        "--rows",
        metavar="A:B",
        help="rows A (included) to B (excluded); A: and :B run to an end; negative numbers "
        "count from the end (--rows -100: is fine). Default: every row",
    )
    with_cache(sub)

    sub = command(
        "gc",
        "remove what no process needs: files of loaders that died, slices whose file "
        "changed or is gone, damaged files; never a slice a process maps",
        "directory; dry_run; removed [file names] (with --dry-run: what would go); "
        "kept {key: why} for every slice left; kept_in_use [keys a process maps]; notes "
        "[the files gc left alone, and why]; actions [{name, key, kind, outcome, reason} "
        "for every file of the cache, as Cache.gc returns them].",
        "_cache_cmds.gc",
    )
    sub.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    with_cache(sub)

    sub = command(
        "evict",
        "remove the cached slices KEY... (or every one with --all) that no process maps",
        "directory; evicted [keys removed]; kept {key: why} (mapped by a process, or not "
        "cached); actions [{name, key, kind, outcome, reason} for each file, as Cache.evict "
        "returns them].",
        "_cache_cmds.evict",
    )
    sub.add_argument("keys", nargs="*", metavar="KEY", help="keys as `shmstore ls` shows them")
    sub.add_argument("--all", action="store_true", help="every slice no process maps")
    with_cache(sub)

    sub = command(
        "validate",
        "check FILE: it opens, its manifest is valid against the schema and agrees with the "
        "datasets, both stored copies of it are valid, and every dataset reads, matching "
        "its checksums; exit 1 on any problem",
        "path; valid; problems [one sentence each]; datasets (how many); inferred (no "
        "manifest in the file); unverified [names of datasets without checksums: `shmstore "
        "seal` records them]. Datasets shmstore does not serve are no problem of the "
        "file: `shmstore info --json` lists them.",
        "_store_cmds.validate",
    )
    sub.add_argument("file", metavar="FILE")
    sub.add_argument(
        "--full",
        action="store_true",
        help="read every row of every dataset and check every checksum (default: the first "
        "and last rows of each, and the checksums over them)",
    )

    sub = command(
        "seal",
        "record checksums of the data of FILE's datasets NAME... (every one when none is "
        "given) as they are now: for files written by other tools or by shmstore 0.1.0, and "
        "after another tool changed a dataset on purpose; from then on every load and read "
        "checks them",
        "path; sealed [{name, per (range or chunk), count (checksums), nbytes}]; seconds.",
        "_store_cmds.seal",
    )
    sub.add_argument("file", metavar="FILE", help="the HDF5 file (opened for writing)")
    sub.add_argument("names", nargs="*", metavar="NAME", help="datasets (default: every one)")

    sub = command(
        "put",
        "write the array in SOURCE (a .npy file, or a raw file with --dtype and --shape) into "
        "FILE as dataset NAME, streamed from the file, never all in memory",
        "path; dataset [ArrayInfo fields as Store.info() reports them, plus nbytes]; source; "
        "seconds.",
        "_store_cmds.put",
    )
    sub.add_argument("file", metavar="FILE", help="the HDF5 file (created if absent)")
    sub.add_argument("name", metavar="NAME", help="the dataset, as grp/sub/name")
    sub.add_argument("source", metavar="SOURCE", help="a .npy file, or a raw file")
    sub.add_argument("--dtype", help="numpy dtype of a raw file (float32, <i8, f4, ...)")
    sub.add_argument("--shape", type=_shape, help="shape of a raw file, as 1000,16")
    sub.add_argument(
        "--chunks",
        type=_chunks,
        help="chunked, with chunks of this shape (100,16), or auto (default: contiguous)",
    )
    sub.add_argument(
        "--compression",
        type=_compression,
        metavar="FILTER",
        help="gzip (gzip:1 to gzip:9), lzf, zstd (needs hdf5plugin), or an HDF5 filter id; "
        "implies chunks",
    )
    sub.add_argument(
        "--appendable", action="store_true", help="let `Store.append` grow it on axis 0 later"
    )
    sub.add_argument("--overwrite", action="store_true", help="replace an existing NAME")

    sub = command(
        "demo",
        "write a sample store in a temporary directory, let N worker processes use one "
        "slice of it, and measure the node's memory with shmstore (one shared copy) against "
        "h5py (a copy per worker); everything is removed at the end, also on Ctrl-C",
        "workers; slice_bytes; load_seconds; shmstore and h5py, each {private_bytes (the "
        "workers' summed USS growth while holding the slice), shared_bytes (bytes in "
        "shared memory, counted once), node_bytes (their sum), baseline_bytes (the "
        "workers' summed USS before using the slice: Python, numpy, h5py)}; saved_ratio "
        "(h5py node_bytes / shmstore node_bytes).",
        "_demo.demo",
    )
    sub.add_argument("--workers", type=_positive, default=4, help="worker processes (default 4)")
    sub.add_argument("--size", default="256M", help="slice size: bytes, or 64M, 1G (default 256M)")
    return parser


def _shape(text: str) -> tuple[int, ...]:
    """``"1000,16"`` as ``(1000, 16)``; an argparse type (a bad one is a usage error)."""
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a shape: give integers separated by commas, as 1000,16"
        ) from None
    if any(n < 0 for n in shape):
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape: sizes cannot be negative")
    return shape


def _chunks(text: str) -> tuple[int, ...] | bool:
    """``"auto"`` (h5py picks) or a chunk shape ``"100,16"`` of positive sizes."""
    if text.strip().lower() == "auto":
        return True
    shape = _shape(text)
    if not all(shape):
        raise argparse.ArgumentTypeError(f"{text!r}: every chunk size must be at least 1")
    return shape


_HDF5PLUGIN_FILTERS = {"zstd": "Zstd", "lz4": "LZ4", "blosc": "Blosc", "bzip2": "BZip2"}


def _compression(text: str) -> object:
    """``--compression``: ``gzip``, ``gzip:4``, ``lzf``, an hdf5plugin filter name, or a filter id.

    Returns what :meth:`Store.write` takes as *compression*.
    """
    name, _, level = text.strip().lower().partition(":")
    if name.isdigit() and not level:
        return _filter_id(int(name))
    if name == "gzip":
        if not level:
            return "gzip"
        if level.isdigit() and 0 <= int(level) <= 9:
            return {"compression": "gzip", "compression_opts": int(level)}
        raise argparse.ArgumentTypeError(f"{text!r}: the gzip level is 0 to 9, as gzip:4")
    if name in ("lzf", "szip") and not level:
        return name
    if name in _HDF5PLUGIN_FILTERS and not level:
        try:
            import hdf5plugin
        except ImportError:
            raise argparse.ArgumentTypeError(
                f"{name} needs the hdf5plugin package: pip install hdf5plugin"
            ) from None
        return getattr(hdf5plugin, _HDF5PLUGIN_FILTERS[name])()
    raise argparse.ArgumentTypeError(
        f"unknown filter {text!r}: give gzip, gzip:1 to gzip:9, lzf, "
        f"{', '.join(_HDF5PLUGIN_FILTERS)} (with hdf5plugin), or an HDF5 filter id"
    )


def _filter_id(number: int) -> int:
    """HDF5 filter *number*, checked to be available (hdf5plugin's registered if installed)."""
    import contextlib

    import h5py

    with contextlib.suppress(ImportError):
        import hdf5plugin  # noqa: F401 - registers its filters with HDF5

    if not h5py.h5z.filter_avail(number):
        raise argparse.ArgumentTypeError(
            f"HDF5 filter {number} is not available here: pip install hdf5plugin, or point "
            "HDF5_PLUGIN_PATH at a directory holding it"
        )
    return number


def _positive(text: str) -> int:
    """A whole number of at least 1; an argparse type."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: it must be at least 1")
    return value


def _join_rows(argv: Sequence[str]) -> list[str]:
    """``--rows -10:`` as ``--rows=-10:``: argparse takes ``-10:`` for an option otherwise."""
    joined: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--rows":
            value = next(args, None)
            if value is not None and _ROWS_VALUE.fullmatch(value):
                joined.append(f"--rows={value}")
                continue
            joined.append(arg)
            if value is not None:
                joined.append(value)
            continue
        joined.append(arg)
    return joined


def _resolve(run: str) -> Callable[[argparse.Namespace], int]:
    import importlib

    module, function = run.split(".")
    # Each command imports only what it needs: `shmstore ls` never loads h5py.
    return getattr(importlib.import_module(f".{module}", __name__), function)  # type: ignore[no-any-return]


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"shmstore: {record.levelname.lower()}: {record.getMessage()}"


def _log_to_stderr(debug: bool) -> None:
    """shmstore's warnings (``--debug``: everything) on stderr, one line each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    logger = logging.getLogger("shmstore")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)


def _what_to_do(err: BaseException) -> str:
    """The error's message, with a hint of what to do when the message has none."""
    message = str(err) or type(err).__name__
    if isinstance(err, ShmStoreError):
        return message  # shmstore's messages say what was asked, found, and what to do
    if isinstance(err, PermissionError):
        return f"{message}; check the path's permissions, or run as the user who owns it"
    if isinstance(err, OSError):
        return f"{message}; check the path, and the space and health of its file system"
    return (
        f"unexpected {type(err).__name__}: {message}; this is a bug in shmstore: rerun "
        "with `shmstore --debug ...` and report the traceback"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with *argv* (default ``sys.argv[1:]``); returns the exit code."""
    parser = _parser()
    args = parser.parse_args(_join_rows(sys.argv[1:] if argv is None else argv))
    _log_to_stderr(args.debug)
    try:
        return _resolve(args.run)(args)
    except KeyboardInterrupt:
        print("shmstore: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (`shmstore ls | head -1`): not worth a word.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as err:
        if args.debug:
            traceback.print_exc()
        print(f"shmstore: error: {_what_to_do(err)}", file=sys.stderr)
        return 1
