"""shmstore's reliability run: fuzzed files and segments, faults, and a soak, counted.

    python3 -m pip install . -r reliability/requirements.txt
    python3 reliability/run.py --write      # the full run; writes RELIABILITY.md
    python3 reliability/run.py --quick      # the short version CI runs (a few minutes)

Every case runs in real processes on real files and real shared memory; a
crash or a hang of one case is counted, not fatal.  The exit code is 1 when
any case failed (an exception of another type than ``ShmStoreError``, wrong
data, a lost acknowledged row, a leak, a hang or a crash), 0 otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import CRASH, FAILED, HANG, LEAK, LOST, OK, REFUSED, WRONG, Row, Settings

HERE = Path(__file__).resolve().parent
RESULT = HERE.parent / "RELIABILITY.md"

# (module, title); each module has run(settings) -> list[Row].
PARTS: list[tuple[str, str]] = [
    ("_fuzz_files", "Fuzzed files"),
    ("_segments", "Fuzzed segments"),
    ("_cache_faults", "Faults in the cache"),
    ("_store_faults", "Faults in the store"),
    ("_blocks", "Blocks"),
    ("_flips", "Flipped bytes in data"),
    ("_soak", "Soak"),
]

HEADER = (
    "| section | what was tried | cases | ok | refused | failed | hangs | crashes | wrong | "
    "rows lost | leaks | s |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def table(rows: list[Row]) -> str:
    lines = [HEADER]
    for r in rows:
        counts = [r.n(o) for o in (OK, REFUSED, FAILED, HANG, CRASH, WRONG)]
        lost = r.lost_rows + r.n(LOST)
        cells = [r.section, r.what, str(r.cases), *map(str, counts), str(lost), str(r.n(LEAK))]
        lines.append("| " + " | ".join(cells) + f" | {r.seconds:.0f} |")
    total = Row("**all**", "")
    for r in rows:
        total.cases += r.cases
        total.lost_rows += r.lost_rows + r.n(LOST)
        for outcome, n in r.counts.items():
            total.counts[outcome] = total.counts.get(outcome, 0) + n
        total.seconds += r.seconds
    counts = [total.n(o) for o in (OK, REFUSED, FAILED, HANG, CRASH, WRONG)]
    cells = ["**all**", "", str(total.cases), *map(str, counts), str(total.lost_rows)]
    lines.append("| " + " | ".join([*cells, str(total.n(LEAK))]) + f" | {total.seconds:.0f} |")
    return "\n".join(lines)


def notes(rows: list[Row]) -> str:
    parts = []
    for r in rows:
        if r.note:
            parts.append(f"- **{r.section}, {r.what}**: {r.note}")
        parts.extend(f"  - {r.section}, {r.what}: `{example}`" for example in r.examples)
    return "\n".join(parts) or "- nothing to report"


def environment(command: str, settings: Settings, seconds: float) -> str:
    from importlib.metadata import version

    return "\n".join(
        [
            f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            f"- command: `{command}` (seed {settings.seed}, {seconds:.0f} s in all)",
            (
                f"- shmstore {version('shmstore')}, h5py {version('h5py')} "
                f"(HDF5 {__import__('h5py').version.hdf5_version}), numpy {version('numpy')}, "
                f"Python {platform.python_version()}"
            ),
            (
                f"- machine: {platform.machine()}, {os.cpu_count()} cores, Linux "
                f"{platform.release()}; cache on /dev/shm, files in {tempfile.gettempdir()}"
            ),
        ]
    )


LEGEND = """\
Columns: **ok** the case succeeded and every value read was right; **refused**
shmstore raised a `ShmStoreError` subclass with a message (the right answer to
damage it cannot read past); **failed** another exception type, or an error
without a message; **hangs** no answer within the case's timeout (the child is
killed); **crashes** the child process died (a segfault, a SIGBUS); **wrong**
data that differ from what is intact, or a planted file mapped; **rows lost**
acknowledged rows missing afterwards; **leaks** descriptors, mappings,
segments or files left behind.  Every case runs in a child process, so a crash
or a hang is counted instead of ending the run.  Zero in every column from
*failed* on is the bar; the exit code says whether it was met."""


FOUND = """\
## Found by these runs, and fixed

Each with a regression test (the test file in brackets):

- HDF5 headers read without an error though damaged (HDF5's 1.6 format keeps no
  checksums): a moved data address, a changed number precision, a shuffle filter
  for another element size, chunk pointers, sizes, coordinates and B-tree keys.
  The manifest now records each dataset's data offset and a digest of each chunk
  index; number types, filters and HDF5's own chunk lookups are checked
  (`tests/store/test_damaged_headers.py`).
- h5py's `Dataset.fillvalue` segfaulted on a damaged fill-value message during a
  load (`tests/store/test_damaged_headers.py`).
- A kill -9 inside an append to a chunked dataset could tear its chunk index:
  unopenable file, wrong or lost acknowledged rows; chunked appends now run under
  the undo journal (`tests/reliability/test_hardening_store_faults.py`).
- Mode "w" deleted the old raw files before a refused truncation; unwritable or
  missing raw files and a file renamed over an open store gave bare OS errors or
  another file's bytes (`tests/reliability/test_hardening_store_faults.py`).
- A segment header flipped into other valid JSON (another byte order) was served:
  headers carry a CRC-32; a cache directory swapped for a link was followed; a
  vanished or read-only cache directory gave bare OS errors
  (`tests/cache/test_hardening_segments.py`, `tests/cache/test_hardening_cache_faults.py`).
- A pinned handle served an old version again after a view had served the new
  one (`tests/reliability/test_soak.py`).
- A datatype that HDF5 refuses to open, or that numpy cannot represent, escaped
  from a store's open as a bare KeyError or TypeError (`tests/store/test_damaged_headers.py`).
- An HDF5 file truncated while its blocks were cached and mapped left those
  blocks behind for good: gc took them for current (same inode); a block is
  now kept only while its file is at least as large as when it was loaded
  (`tests/cli/test_cli_commands.py`)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the short version (CI)")
    parser.add_argument("--seed", type=int, default=1, help="the seed of every generated case")
    parser.add_argument(
        "--soak-seconds", type=float, default=None, help="soak duration (60 s; quick: 20 s)"
    )
    parser.add_argument("--only", nargs="*", help="run only these parts, e.g. _fuzz_files")
    parser.add_argument("--write", action="store_true", help=f"write {RESULT.name}")
    args = parser.parse_args(argv)
    soak = args.soak_seconds if args.soak_seconds is not None else (20 if args.quick else 60)
    workdir = Path(tempfile.mkdtemp(prefix="shmstore-reliability-"))
    # Some fault cases run a child with dropped privileges on files in here.
    workdir.chmod(0o755)
    settings = Settings(
        quick=args.quick,
        seed=args.seed,
        workdir=str(workdir),
        soak_seconds=soak,
        workers=min(4, os.cpu_count() or 2),
    )
    rows: list[Row] = []
    start = time.perf_counter()
    try:
        for module, title in PARTS:
            if args.only and module not in args.only:
                continue
            print(f"-- {title}", flush=True)
            run: Callable[[Settings], list[Row]] = importlib.import_module(module).run
            began = time.perf_counter()
            part = run(settings)
            for r in part:
                print(f"   {r.what[:60]:60} {r.cases:5} cases {dict(sorted(r.counts.items()))}")
                for example in r.examples:
                    print(f"      {example}")
            print(f"   ({time.perf_counter() - began:.0f} s)", flush=True)
            rows += part
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    seconds = time.perf_counter() - start
    bad = sum(r.bad for r in rows)
    command = "python3 reliability/run.py" + (" --quick" if args.quick else "")
    report = "\n\n".join(
        [
            "# shmstore reliability",
            (
                "What shmstore was put through, and what happened: generated by "
                f"`{command} --write` (see `reliability/run.py`)."
            ),
            environment(command, settings, seconds),
            table(rows),
            LEGEND,
            FOUND,
            "## Notes and failures\n\n" + notes(rows),
        ]
    )
    print()
    print(table(rows))
    if args.write:
        RESULT.write_text(report + "\n")
        print(f"\nwrote {RESULT}")
    print(f"\n{'no failures' if not bad else f'{bad} FAILURES'} in {seconds:.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
