"""The soak (issue 8, hardening): seven real processes on one store and one cache.

The soak itself lives in ``reliability/_soak.py`` (the reliability run uses it
for a minute or more); this test runs it for a few seconds with a fixed seed,
and holds the regression tests of the bugs it found.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import shmstore

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "reliability"))

import _soak as soak
from _common import BAD, Settings

SECONDS = 8.0


@pytest.fixture
def cache_dir() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="shmstore-test-soak-", dir="/dev/shm")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.slow
def test_soak_finds_no_failure_hang_leak_or_lost_row(tmp_path: Path) -> None:
    settings = Settings(quick=True, seed=8, workdir=str(tmp_path), soak_seconds=SECONDS)
    rows, ops = soak.soak(settings)
    report = "\n".join(
        f"{row.what}: {row.counts}, lost {row.lost_rows}; {row.note}; {row.examples}"
        for row in rows
    )
    for row in rows:
        assert row.bad == 0, report
        assert not any(row.n(outcome) for outcome in BAD), report
    assert rows[-1].n("ok") >= 6, report  # the final checks ran
    for op in ("attaches", "reads", "appends", "rewrites", "evictions", "loads", "pins"):
        assert ops[op] >= 5, f"only {ops[op]} {op}\n{report}"
    for kind, (count, _) in soak.KINDS.items():
        row = next(r for r in rows if r.what.startswith(f"{count} {kind}"))
        assert row.n("ok") >= 5, report
    assert not list(Path(tmp_path).iterdir()), "the soak's store was not removed"


# -- the checks can fail ------------------------------------------------------------------


def test_check_slice_sees_a_mix_of_versions_and_wrong_rows() -> None:
    good = soak.expected("fixed", 10, 20, version=3)
    good.flags.writeable = False
    assert soak.check_slice("fixed", 10, good) == (3, "")
    mixed = good.copy()
    mixed[5:] = soak.expected("fixed", 15, 20, version=4)
    mixed.flags.writeable = False
    assert "mix of versions" in soak.check_slice("fixed", 10, mixed)[1]
    assert soak.check_slice("log0", 11, soak.expected("log0", 10, 20))[1]
    assert "writeable" in soak.check_slice("log0", 10, soak.expected("log0", 10, 20))[1]


def test_mapping_check_sees_an_array_not_from_the_cache(cache_dir: str) -> None:
    assert "not mapped from the cache" in soak._mapping_ok(np.arange(1000.0), cache_dir)


def test_mapping_check_sees_a_segment_removed_while_mapped(tmp_path: Path, cache_dir: str) -> None:
    path = tmp_path / "s.h5"
    cache = shmstore.Cache(cache_dir, 1 << 20)
    soak.make_store(path)
    with shmstore.open(path, "r", cache=cache) as store, store.view("fixed", (0, 8)) as array:
        assert soak._mapping_ok(array, cache_dir) == ""
        for segment in Path(cache_dir).glob("*.seg"):
            segment.unlink()  # what an eviction of a mapped segment would do
        assert "removed while mapped" in soak._mapping_ok(array, cache_dir)


# -- regressions ------------------------------------------------------------------------


def test_pinned_handle_never_serves_the_old_version_after_a_view_saw_the_new_one(
    tmp_path: Path, cache_dir: str
) -> None:
    # The soak's handle reader saw a dataset go back to an older version: a
    # view after a rewrite refreshed the handle's source but kept the old
    # pinned mapping, which then passed the identity check of the new source.
    path = tmp_path / "s.h5"
    cache = shmstore.Cache(cache_dir, 1 << 20)
    with shmstore.open(path, "w", cache=cache) as store:
        store.write("x", np.zeros((8, 4)))
    with shmstore.open(path, "r", cache=cache) as store:
        handle = store.handle("x", (0, 8))
    assert handle.pin()[0, 0] == 0
    with shmstore.open(path, "a", cache=cache) as store:
        store.write("x", np.ones((8, 4)), overwrite=True)
    for mode in ("shared", "auto", "shared"):
        with handle.view(mode) as array:
            assert array[0, 0] == 1
    assert handle.pin()[0, 0] == 1
    handle.unpin()
