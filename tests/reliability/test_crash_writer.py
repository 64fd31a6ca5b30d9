"""Invariant 8 (docs/design.md): acknowledged appends survive a ``kill -9`` of the writer.

A writer process appends in a loop and acknowledges each append once it has
returned; it is killed with SIGKILL at a random moment (often in the middle
of a later append's writes and metadata flushes).  Every time, the file must
open, and every acknowledged row must be there with its right values.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import shmstore

from ._children_writer import expected_rows, generation
from .writer_kills import WRITER, needs_strace, run_killed_at

KILLS = 50


def _start_writer(path: Path, name: str, batch: int) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(path), name, str(batch)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(WRITER.parent)},
    )
    assert proc.stdout is not None
    ready = proc.stdout.readline().split()
    assert ready[:1] == ["ready"], f"writer did not start: {ready}"
    return proc, int(ready[1])


def _kill_after(proc: subprocess.Popen[str], delay: float) -> int:
    """SIGKILL *proc* after *delay* seconds; return the last acknowledged row count."""
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate()
    acknowledged = [int(line) for line in out.split()]
    return acknowledged[-1] if acknowledged else -1


def _check_survivors(path: Path, name: str, acknowledged: int) -> int:
    with shmstore.open(path, "r") as store:
        info = store.info(name)
        assert info.rows >= acknowledged, f"lost rows: {info.rows} < {acknowledged}"
        np.testing.assert_array_equal(store.read(name), expected_rows(0, info.rows))
        np.testing.assert_array_equal(store.memmap(name), expected_rows(0, info.rows))
        # The checksums of every surviving row survived with it.
        assert store.verify(name) == info.nbytes, "rows without their checksums"
        return info.rows


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "batch"),
    [("external", 7), ("small_batches", 1)],
    ids=["raw-file-layout", "one-row-appends"],
)
def test_invariant_8_acknowledged_appends_survive_kill_9_of_the_writer(
    tmp_path: Path, name: str, batch: int
) -> None:
    path = tmp_path / "crash.h5"
    rng = random.Random(8)
    acknowledged_total = 0
    for _ in range(KILLS // 2):
        proc, start_rows = _start_writer(path, name, batch)
        assert start_rows >= acknowledged_total
        acknowledged = _kill_after(proc, rng.uniform(0.0, 0.05))
        acknowledged_total = max(acknowledged_total, acknowledged, start_rows)
        rows = _check_survivors(path, name, acknowledged_total)
        acknowledged_total = max(acknowledged_total, rows)
    assert acknowledged_total > 0, "the writer never acknowledged an append"


@pytest.mark.slow
@needs_strace
def test_invariant_8_kill_9_at_every_write_of_an_append_keeps_acknowledged_rows(
    tmp_path: Path,
) -> None:
    """SIGKILL delivered exactly at the N-th ``pwrite`` of the writer, for every N.

    An append makes six writes (rows into the raw file, their checksums,
    the grown extent, then the record's copy and primary, each an object-header chunk that
    spans several pages), so successive N land between and inside every
    step of several consecutive appends, after the writer's open.
    """
    path = tmp_path / "exact.h5"
    with shmstore.open(path, "a") as store:
        store.append("x", expected_rows(0, 3))
    acknowledged_total = 3
    killed = 0
    interrupted = 0
    for nth in range(1, 41):
        proc = run_killed_at(nth, str(path), "x", "2")
        acks = [int(line) for line in proc.stdout.split() if line.isdigit()]
        killed += proc.returncode != 0
        acknowledged_total = max([acknowledged_total, *acks])
        rows = _check_survivors(path, "x", acknowledged_total)
        # Rows beyond the last acknowledgement: killed between the extent
        # and the manifest of an append, the window the recovery is for.
        interrupted += rows > acknowledged_total
        acknowledged_total = rows
    assert killed == 40, "strace did not kill the writer every time"
    assert interrupted > 0, "no kill landed between an append's extent and its manifest"


@pytest.mark.slow
@needs_strace
def test_kill_9_at_every_write_of_an_overwrite_or_delete_keeps_old_or_new_data_whole(
    tmp_path: Path,
) -> None:
    """A ``write(overwrite=True)`` or ``delete`` killed anywhere is all or nothing.

    The file always opens, the rewritten array is the old or the new one,
    never a mix, and an untouched dataset beside it is intact.
    """
    path = tmp_path / "overwrite.h5"
    with shmstore.open(path, "a") as store:
        store.write("x", generation(1))
        store.write("keep", expected_rows(0, 4))
    acknowledged = 1
    for nth in range(1, 61):
        proc = run_killed_at(nth, str(path), "x", "overwrite")
        acks = [int(line) for line in proc.stdout.split() if line.isdigit()]
        acknowledged = max([acknowledged, *acks])
        with shmstore.open(path, "r") as store:
            data = store.read("x")
            g = int(data[0, 0])
            assert g in (acknowledged, acknowledged + 1), f"generation {g} after ack {acknowledged}"
            np.testing.assert_array_equal(data, generation(g))
            np.testing.assert_array_equal(store.read("keep"), expected_rows(0, 4))
            if "scratch" in store:  # a delete, or its rewrite, rolled back in some round
                # Each round writes "x" first: kills that land in the rewrite of
                # "scratch" round after round leave it any number of rounds behind.
                scratch = store.read("scratch")
                assert int(scratch[0, 0]) <= g
                np.testing.assert_array_equal(scratch, generation(int(scratch[0, 0])))
        acknowledged = g
    raw_dir = path.with_name(path.name + ".raw")
    with shmstore.open(path, "a") as store:  # a writer's open finishes what a kill left
        owned = {p.name for p in raw_dir.iterdir()} if raw_dir.exists() else set()
        assert len(owned) <= 1, f"raw files of replaced generations left behind: {owned}"
        assert store.read("x")[0, 0] == acknowledged
