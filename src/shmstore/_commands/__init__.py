"""The ``shmstore`` command line, for people running jobs and the prologues of their schedulers.

Exit codes: 0 success (also when the goal already held), 1 failure (one
line on stderr saying what went wrong and what to do), 2 wrong usage.
``--debug`` before the command shows the traceback of a failure.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence

from .. import __version__
from ..errors import ShmStoreError

__all__ = ["main"]

_JSON_HELP = "print one JSON document on stdout instead of a table"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shmstore",
        description="Numpy arrays in HDF5 files, shared between the processes of a node.",
        epilog="Exit codes: 0 success, 1 failure, 2 wrong usage. "
        "The cache is $SHMSTORE_DIR, else $JOB_SHMTMPDIR/shmstore, else /dev/shm/shmstore-<uid>.",
    )
    parser.add_argument("--version", action="version", version=f"shmstore {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, run: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("--json", action="store_true", help=_JSON_HELP)
        sub.set_defaults(run=run)
        return sub

    def with_cache(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--cache-dir", metavar="DIR", help="the cache directory (default: as shmstore finds it)"
        )

    sub = command(
        "info",
        "datasets of FILE: shape, dtype, layout, chunks, compression, size; the manifest. "
        "JSON keys: path, manifest {revision, inferred}, datasets [ArrayInfo + nbytes], nbytes",
        "_store_cmds.info",
    )
    sub.add_argument("file", metavar="FILE")

    sub = command(
        "ls",
        "the node's cache: key, file, dataset, rows, size, in use, age; totals. JSON keys: "
        "directory, budget, used, free (bytes), in_use, entries [CacheEntry + age_seconds]",
        "_cache_cmds.ls",
    )
    with_cache(sub)

    sub = command(
        "preload",
        "load rows of NAME of FILE into the node's cache (exit 0 at once if there). JSON keys: "
        "path, dataset, rows, key, nbytes, loaded, seconds, cache",
        "_store_cmds.preload",
    )
    sub.add_argument("file", metavar="FILE")
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("--rows", metavar="A:B", help="rows A to B (A:, :B, negative from the end)")

    sub = command(
        "gc",
        "remove what no process needs (dead loaders' files, stale or damaged slices); never a "
        "mapped slice. JSON keys: directory, dry_run, removed, kept_in_use",
        "_cache_cmds.gc",
    )
    sub.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    with_cache(sub)

    sub = command(
        "evict",
        "remove cached slices KEY... (or --all) that no process maps. JSON keys: directory, "
        "evicted, kept {key: why}",
        "_cache_cmds.evict",
    )
    sub.add_argument("keys", nargs="*", metavar="KEY", help="keys as `shmstore ls` shows them")
    sub.add_argument("--all", action="store_true", help="every slice no process maps")
    with_cache(sub)

    sub = command(
        "validate",
        "check FILE: it opens, the manifest validates and agrees with the datasets, every "
        "dataset is readable; exit 1 on any problem. JSON keys: path, valid, problems, "
        "datasets, inferred",
        "_store_cmds.validate",
    )
    sub.add_argument("file", metavar="FILE")

    sub = command(
        "put",
        "write the array of SOURCE (.npy, or raw with --dtype and --shape) into FILE as NAME. "
        "JSON keys: path, dataset [ArrayInfo + nbytes], source, seconds",
        "_store_cmds.put",
    )
    sub.add_argument("file", metavar="FILE")
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("source", metavar="SOURCE")
    sub.add_argument("--dtype", help="numpy dtype of a raw file (float32, <i8, ...)")
    sub.add_argument("--shape", type=_shape, help="shape of a raw file, as 1000,16")
    sub.add_argument("--chunks", help="chunk shape as 100,16, or auto (default: contiguous)")
    sub.add_argument("--compression", help="gzip, lzf, ... (implies chunks)")
    sub.add_argument("--appendable", action="store_true", help="let `append` grow it later")
    sub.add_argument("--overwrite", action="store_true", help="replace an existing NAME")

    sub = command(
        "demo",
        "write a sample store, let N workers use one slice, and measure node memory with "
        "shmstore against a copy per worker with h5py. JSON keys: workers, slice_bytes, "
        "load_seconds, shmstore {private_bytes, shared_bytes, node_bytes}, h5py {...}, "
        "saved_ratio",
        "_demo.demo",
    )
    sub.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    sub.add_argument("--size", default="256M", help="slice size: bytes, or 64M, 1G (default 256M)")
    return parser


def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a shape: give integers separated by commas, as 1000,16"
        ) from None


def _resolve(run: str) -> Callable[[argparse.Namespace], int]:
    import importlib

    module, function = run.split(".")
    # Each command imports only what it needs: `shmstore ls` never loads h5py's writers.
    return getattr(importlib.import_module(f".{module}", __name__), function)  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return _resolve(args.run)(args)
    except KeyboardInterrupt:
        print("shmstore: interrupted", file=sys.stderr)
        return 130
    except (ShmStoreError, OSError) as err:
        if args.debug:
            traceback.print_exc()
        message = str(err) or type(err).__name__
        print(f"shmstore: error: {message}", file=sys.stderr)
        return 1
