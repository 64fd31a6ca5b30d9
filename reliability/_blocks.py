"""Blocks: fuzzed block files, kills inside a cooperative fill, writes racing views.

Three kinds of case, each in a child process of its own (``_common.run_cases``):

* ``fuzz``: a dataset's rows are cached in blocks, then one block file is
  damaged one way (bytes of its header flipped, truncated or grown, garbage
  planted under its name, another block's file renamed over it, a symbolic
  link, a mode open to others) and every row is viewed again.  Right: the
  true rows (the bad file refused and loaded again) or a ``ShmStoreError``
  with a message; never other bytes, and the file a link pointed to is
  unchanged.  The data bytes of a published block are not fuzzed: a block is
  checked by its header, and only this user can write into the cache
  directory.
* ``kill``: four processes (``subprocess``) view the same uncached rows at
  once, filling its blocks cooperatively; one or two of them get ``SIGKILL``
  at a random moment.  Right: every survivor sees the true rows (no partial
  view, no wrong byte), a view afterwards too, and ``gc`` leaves no
  half-built file.
* ``race``: a writer process appends to one dataset and overwrites another
  in a loop while this process views a third and both of those.  Right:
  every view is whole and true (the appended dataset a prefix of what was
  appended, the overwritten one a single version), and the viewed dataset's
  blocks are never loaded again.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    FAILED,
    LEAK,
    OK,
    REFUSED,
    WRONG,
    Case,
    Row,
    Settings,
    cases_by_kind,
    run_into_rows,
)

SECTION = "Blocks"
SHM = Path("/dev/shm")
BLOCK = "64K"

KINDS: dict[str, tuple[str, int, int]] = {
    "fuzz": ("a block file damaged, planted, swapped or linked; all rows viewed again", 40, 300),
    "kill": ("4 processes fill one slice together; 1-2 get SIGKILL at a random moment", 12, 60),
    "race": ("appends and overwrites of two datasets racing views of a third", 4, 16),
}


def _truth(rows: int, width: int) -> np.ndarray[Any, Any]:
    """Distinct values, so that any wrong byte shows."""
    return np.arange(rows * width, dtype="<f8").reshape(rows, width)


def _seg_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix == ".seg")


def _leftovers(directory: Path) -> list[str]:
    """Files no one needs after ``gc``: half-built blocks and retired ones."""
    from shmstore import Cache

    Cache(directory).gc()
    return [p.name for p in directory.iterdir() if p.suffix in (".tmp", ".stale")]


# -- fuzz ----------------------------------------------------------------------------------


def _damage(rng: random.Random, block: Path, other: Path, elsewhere: Path) -> str:
    how = rng.choice(
        ["flip", "flip", "flip", "truncate", "grow", "garbage", "swap", "link", "mode"]
    )
    if how == "flip":
        raw = bytearray(block.read_bytes())
        header_end = 4096  # the header and its padding: data start at the first page
        # Mostly in the first 512 bytes, where the prefix and the JSON text lie.
        flips = [
            rng.randrange(512 if rng.random() < 0.75 else header_end)
            for _ in range(rng.randint(1, 4))
        ]
        for at in flips:
            raw[at] ^= 1 << rng.randrange(8)
        block.write_bytes(bytes(raw))
        return f"header bytes {flips} flipped"
    if how == "truncate":
        size = rng.randrange(block.stat().st_size)
        os.truncate(block, size)
        return f"truncated to {size}"
    if how == "grow":
        extra = rng.randint(1, 10_000)
        with block.open("ab") as f:
            f.write(b"\0" * extra)
        return f"grown by {extra}"
    if how == "garbage":
        size = rng.randint(0, 80_000)
        block.unlink()
        block.write_bytes(rng.randbytes(size))
        block.chmod(0o600)
        return f"{size} random bytes planted"
    if how == "swap":
        os.replace(other, block)
        return "another block's file renamed over it"
    if how == "link":
        block.unlink()
        block.symlink_to(elsewhere)
        return "a symbolic link to the HDF5 file"
    mode = rng.choice([0o644, 0o666, 0o640, 0o604])
    block.chmod(mode)
    return f"chmod {mode:o}"


def _fuzz(case: Case, work: Path, directory: Path) -> tuple[str, str]:
    import shmstore

    rng = random.Random(case.seed)
    truth = _truth(4_000, 10)  # 320,000 bytes: 5 blocks of 64 KiB
    path = work / "f.h5"
    with shmstore.open(path, "w") as store:
        store.write("x", truth)
    before = path.read_bytes()
    cache = shmstore.Cache(directory)
    with shmstore.open(path, cache=cache) as store:
        with store.view("x", mode="shared"):
            pass
        gc.collect()
        files = _seg_files(directory)
        target, other = rng.sample(files, 2)
        how = _damage(rng, target, other, path)
        try:
            with store.view("x", mode="shared") as arr:
                right = np.array_equal(arr, truth)
            del arr
        except shmstore.ShmStoreError as err:
            if not str(err):
                return FAILED, f"{how}: {type(err).__name__} without a message"
            return REFUSED, f"{how}: {err}"
    if path.read_bytes() != before:
        return WRONG, f"{how}: the file a link pointed to was changed"
    if not right:
        return WRONG, f"{how}: a view gave other bytes than the true rows"
    left = _leftovers(directory)
    return (LEAK, f"{how}: left {left}") if left else (OK, how)


# -- kill ----------------------------------------------------------------------------------

_VIEWER = """
import sys, numpy as np, shmstore
path, directory = sys.argv[1:3]
with shmstore.open(path, cache=shmstore.Cache(directory)) as store:
    with store.view("g", mode="shared") as arr:
        rows, width = arr.shape
        truth = (np.arange(rows * width, dtype="<f8") % 1000 * 0.5).reshape(rows, width)
        print("right" if np.array_equal(arr, truth) else "wrong")
"""


def _kill(case: Case, work: Path, directory: Path) -> tuple[str, str]:
    import shmstore

    rng = random.Random(case.seed)
    rows, width = 4_096, 512  # 16 MiB of gzip chunks, 256 blocks of 64 KiB
    truth = (np.arange(rows * width, dtype="<f8") % 1000 * 0.5).reshape(rows, width)
    path = work / "k.h5"
    with shmstore.open(path, "w") as store:
        store.write("g", truth, chunks=(64, width), compression="gzip")
    env = {**os.environ, "SHMSTORE_BLOCK": BLOCK, "SHMSTORE_THREADS": "1"}
    viewers = [
        subprocess.Popen(
            [sys.executable, "-c", _VIEWER, str(path), str(directory)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    victims = rng.sample(viewers, rng.randint(1, 2))
    # Kill at a random moment of the fill: from when its first block is being built.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
        directory.is_dir() and any(p.suffix in (".tmp", ".seg") for p in directory.iterdir())
    ):
        time.sleep(0.002)
    delay = rng.uniform(0.0, 0.4)
    time.sleep(delay)
    building = sum(p.suffix == ".tmp" for p in directory.iterdir()) if directory.is_dir() else 0
    published = len(_seg_files(directory)) if directory.is_dir() else 0
    for v in victims:
        v.kill()
    delay_text = (
        f"{delay:.2f} s into the fill ({building} blocks being built, {published} published)"
    )
    answers = []
    for v in viewers:
        try:
            out, err = v.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            v.kill()
            return FAILED, f"killed after {delay_text}: a survivor did not finish in 120 s"
        if v in victims and v.returncode < 0:
            continue
        if v.returncode != 0:
            return FAILED, f"killed after {delay_text}: a survivor failed: {err.strip()[-300:]}"
        answers.append(out.strip())
    if any(a != "right" for a in answers):
        return WRONG, f"killed after {delay_text}: a survivor saw {answers}"
    with shmstore.open(path, cache=shmstore.Cache(directory)) as store:
        with store.view("g", mode="shared") as arr:
            right = np.array_equal(arr, truth)
        del arr
    if not right:
        return WRONG, f"killed after {delay_text}: a view after the kills was wrong"
    left = _leftovers(directory)
    if left:
        return LEAK, f"killed after {delay_text}: left {left}"
    return OK, f"killed after {delay_text}, {len(answers)} survivors right"


# -- race ----------------------------------------------------------------------------------

_WRITER = """
import sys, time, numpy as np, shmstore
path, seconds = sys.argv[1], float(sys.argv[2])
end, n, version = time.monotonic() + seconds, 100, 0
while time.monotonic() < end:
    with shmstore.open(path, "a") as store:
        store.append("log", np.arange(n, n + 10, dtype="<f8").reshape(10, 1))
        n += 10
        version += 1
        store.write("other", np.full((500, 8), float(version)), overwrite=True)
print(n)
"""


def _race(case: Case, work: Path, directory: Path) -> tuple[str, str]:
    import shmstore

    rng = random.Random(case.seed)
    big = _truth(8_000, 10)
    path = work / "r.h5"
    with shmstore.open(path, "w") as store:
        store.write("big", big)
        store.write("log", np.arange(100, dtype="<f8").reshape(100, 1), appendable=True)
        store.write("other", np.zeros((500, 8)))
    cache = shmstore.Cache(directory)
    with shmstore.open(path, cache=cache) as store, store.view("big", mode="shared"):
        pass
    gc.collect()
    loaded = {p.name: p.stat().st_ino for p in _seg_files(directory)}
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), "2"],
        env={**os.environ, "SHMSTORE_BLOCK": BLOCK},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    views = 0
    problem = ""
    try:
        while writer.poll() is None and not problem:
            with shmstore.open(path, cache=cache) as store:
                a = rng.randrange(8_000)
                b = rng.randrange(a, 8_000) + 1
                with store.view("big", (a, b), mode="shared") as arr:
                    if not np.array_equal(arr, big[a:b]):
                        problem = f"big rows {a}:{b} wrong"
                with store.view("log", mode="shared") as arr:
                    if not np.array_equal(arr[:, 0], np.arange(arr.shape[0], dtype="<f8")):
                        problem = f"log of {arr.shape[0]} rows is not what was appended"
                with store.view("other", mode="shared") as arr:
                    if len(np.unique(arr)) != 1:
                        problem = f"other holds several versions at once: {np.unique(arr)[:4]}"
                del arr
                views += 1
    except shmstore.ShmStoreError as err:
        writer.kill()
        writer.communicate()
        return FAILED, f"after {views} rounds: {type(err).__name__}: {err}"
    out, err = writer.communicate(timeout=60)
    if problem:
        return WRONG, f"after {views} rounds: {problem}"
    if writer.returncode != 0:
        return FAILED, f"the writer failed: {err.strip()[-300:]}"
    gc.collect()
    still = {p.name: p.stat().st_ino for p in _seg_files(directory) if p.name in loaded}
    if still != loaded:
        return WRONG, f"after {views} rounds: blocks of 'big' were loaded again"
    left = _leftovers(directory)
    if left:
        return LEAK, f"after {views} rounds: left {left}"
    return OK, f"{views} rounds of views against {out.strip()} rows appended"


def check_case(case: Case) -> tuple[str, str]:
    """Run one case in this (child) process; ``(outcome, detail)``."""
    logging.getLogger("shmstore").setLevel(logging.CRITICAL)  # refusals are logged
    os.environ["SHMSTORE_BLOCK"] = BLOCK
    work = Path(case.workdir) / f"blocks-{case.kind}-{case.seed}-{uuid.uuid4().hex[:6]}"
    work.mkdir(parents=True)
    directory = SHM / f"shmstore-relblk-{uuid.uuid4().hex[:12]}"
    run = {"fuzz": _fuzz, "kill": _kill, "race": _race}[case.kind]
    try:
        return run(case, work, directory)
    except Exception as err:  # classified: any escape but ShmStoreError is a failure
        import shmstore

        if isinstance(err, shmstore.ShmStoreError) and str(err):
            return REFUSED, f"{type(err).__name__}: {err}"
        return FAILED, f"{type(err).__name__}: {err}"
    finally:
        with contextlib.suppress(OSError):
            for p in directory.iterdir():
                if p.is_symlink():
                    p.unlink()
        shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def run(settings: Settings) -> list[Row]:
    """Every kind, a number of seeds each; one Row per kind."""
    work = Path(settings.workdir) / "blocks"
    work.mkdir(parents=True, exist_ok=True)
    cases, rows = cases_by_kind(
        SECTION, KINDS, settings, lambda kind, seed: Case(kind, seed, str(work))
    )
    try:
        run_into_rows(check_case, cases, rows, workers=settings.workers, timeout=180)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return list(rows.values())
