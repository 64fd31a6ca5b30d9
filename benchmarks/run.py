"""shmstore's benchmark: speed and memory against h5py, numpy and SharedArray, side by side.

    python3 -m pip install '.[bench]'
    python3 benchmarks/run.py                   # the full run: under 10 minutes on 2 cores
    python3 benchmarks/run.py --quick           # small sizes, under a minute (CI runs it)
    python3 benchmarks/run.py --write-results   # also write benchmarks/RESULTS.md and
                                                # the figures in docs/_static/benchmarks/
    python3 benchmarks/run.py --quick --plots DIR   # the figures into DIR (tox -e bench)

Prints one markdown table: each figure the median of several runs, each
ratio of two figures measured in the same run.  Targets are reported, not
enforced; the exit code is 1 only when a scenario fails or a correctness
check does (wrong data, more than one load in the stampede).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
from _blocks import BLOCK_SIZE_HEADER, appends, block_sizes, windows
from _common import Results, Settings, settings
from _imports import IMPORT_HEADER, imports
from _metadata import METADATA_HEADER, metadata_scale
from _plots import DOCS, draw
from _procs import MEMORY_HEADER, memory, stampede
from _speed import ATTACH_HEADER, CHUNKED_HEADER, attach, cold_chunked, cold_contiguous
from _verify import verification

ITEMS: dict[str, tuple[str, Callable[[Settings, Results], None], str]] = {
    "1": ("Attaching to a cached slice", attach, ATTACH_HEADER),
    "2": ("Cold load of a contiguous dataset", cold_contiguous, "| way | GB/s |\n|---|---|"),
    "3": ("Cold load of a chunked, compressed dataset", cold_chunked, CHUNKED_HEADER),
    "4": ("Node memory for N workers using one slice", memory, MEMORY_HEADER),
    "5": ("Stampede on one uncached slice", stampede, ""),
    "6": ("Import time", imports, IMPORT_HEADER),
    "7": ("Metadata cost against the number of datasets", metadata_scale, METADATA_HEADER),
    "8": ("Overlapping windows of one dataset", windows, ""),
    "9": ("Appends: what is loaded again", appends, ""),
    "10": ("Block size: cold load against a single row", block_sizes, BLOCK_SIZE_HEADER),
    "11": (
        "Cost of checksums: cold loads and appends with and without them",
        verification,
        "| what | with checksums | without | time ratio |\n|---|---|---|---|",
    ),
}


def headline(results: Results) -> str:
    lines = [
        "| item | measure | shmstore | baseline | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results.rows:
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}x"
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(
            f"| {r.item} | {r.measure} | {r.figure} | {r.baseline} | {ratio} | {r.target} | {met} |"
        )
    return "\n".join(lines)


def details(results: Results) -> str:
    parts = []
    for item, (title, _, header) in ITEMS.items():
        if item not in results.details:
            continue
        body = "\n".join(results.details[item])
        parts.append(
            f"### {item}. {title}\n\n{header}\n{body}"
            if header
            else f"### {item}. {title}\n\n{body}"
        )
    return "\n\n".join(parts)


def environment(command: str) -> str:
    from importlib.metadata import version

    import hdf5plugin
    import SharedArray  # noqa: F401

    import shmstore

    return "\n".join(
        [
            f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            f"- command: `{command}`",
            (
                f"- machine: {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), "
                f"Linux {platform.release()}, {platform.machine()}"
            ),
            (
                f"- python {platform.python_version()}, numpy {np.__version__}, "
                f"h5py {h5py.__version__} "
                f"(HDF5 {h5py.version.hdf5_version}), SharedArray {version('SharedArray')}, "
                f"hdf5plugin {hdf5plugin.version}, shmstore {shmstore.__version__}"
            ),
            (
                "- HDF5 files in a temporary directory on the root file system (ext4), read once "
                "before each cold load so they are in the page cache; caches on /dev/shm (tmpfs). "
                '"Cold" means the slice is not in shmstore\'s cache.'
            ),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, a minute at most")
    parser.add_argument("--only", help="items to run, as 1,2,5")
    parser.add_argument("--repeat", type=int, help="repeats per figure (default 5, quick 3)")
    parser.add_argument(
        "--write-results",
        action="store_true",
        help="write benchmarks/RESULTS.md and the figures in docs/_static/benchmarks/",
    )
    parser.add_argument("--plots", type=Path, metavar="DIR", help="draw the figures into DIR")
    args = parser.parse_args(argv)
    s = settings(args.quick, args.repeat)
    chosen = args.only.split(",") if args.only else list(ITEMS)
    results = Results()
    started = time.monotonic()
    failed = []
    for item in chosen:
        title, run, _ = ITEMS[item]
        print(f"... {item}. {title}", file=sys.stderr, flush=True)
        try:
            run(s, results)
        except Exception as err:  # reported, and the exit code says so
            failed.append(f"{item}: {type(err).__name__}: {err}")
            print(f"    failed: {err}", file=sys.stderr)
    seconds = time.monotonic() - started
    table = headline(results)
    print(table)
    print(f"\n({'quick' if s.quick else 'full'} run, {seconds:.0f} s)")
    if args.write_results:
        command = "python3 benchmarks/run.py" + (" --quick" if s.quick else "")
        text = (
            "# Benchmark results\n\n"
            + environment(command)
            + f"\n- wall time of the run: {seconds:.0f} s\n\n## Headline\n\n"
            + table
            + "\n\n## Details\n\n"
            + details(results)
            + "\n\n"
            + Path(__file__).with_name("LIMITS.md").read_text()
        )
        Path(__file__).with_name("RESULTS.md").write_text(text)
    for directory in [d for d in (args.plots, DOCS if args.write_results else None) if d]:
        try:
            for path in draw(results, directory):
                print(f"figure: {path}", file=sys.stderr)
        except Exception as err:  # reported, and the exit code says so
            failed.append(f"plots: {type(err).__name__}: {err}")
    for failure in failed:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
