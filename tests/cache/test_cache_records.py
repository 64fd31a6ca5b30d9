"""``Cache.gc`` and ``Cache.evict`` return a record of each file; the CLI prints those.

Real segments on /dev/shm; "kept: in use" with real processes (spawn)
holding a mapping.  The command line's output comes from the records, so
nothing in the log (silenced, reworded, verbose) changes it.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import shmstore
from shmstore import Cache, CacheAction
from shmstore._segment import SegmentSource
from tests._cache_children import SHM, fill_expected, hold, make_source

SPAWN = multiprocessing.get_context("spawn")
F8 = np.dtype("<f8")
SHAPE = (256, 512)  # what fill_expected writes
HELD_NAMED = "1" * 32
ORPHAN = "2" * 32
DEAD_LOADER = f"{'ab' * 16}.4242.deadbeef.tmp"
LONE_LOCK = f"{'cd' * 16}.lock"
NOT_A_FILE = f"{'ef' * 16}.seg"
NOT_CACHED = "0" * 32


def _named(name: str) -> SegmentSource:
    return SegmentSource(path="<memory>", identity=(), dataset=name, version=0, start=0, stop=4)


def _by_name(actions: list[CacheAction]) -> dict[str, tuple[str, str]]:
    return {a.name: (a.outcome, a.reason) for a in actions}


def _scenario(cache_dir: Path, current: Path, changing: Path) -> list[np.ndarray[Any, Any]]:
    """A cache with one file of each fate; returns the arrays that keep some of them in use.

    *changing* is to be changed afterwards: its copies are stale then.
    """
    cache = Cache(cache_dir, budget="64M")
    held = [
        cache.create(HELD_NAMED, _named("held"), F8, (4,)),
        cache.get(make_source(current, dataset="held"), F8, SHAPE, fill_expected()),
        cache.get(make_source(changing, dataset="held"), F8, SHAPE, fill_expected()),
    ]
    cache.create(ORPHAN, _named("orphan"), F8, (4,))  # garbage: no process maps it
    cache.get(make_source(current, dataset="free"), F8, SHAPE, fill_expected())
    cache.get(make_source(changing, dataset="free"), F8, SHAPE, fill_expected())
    gc.collect()
    (cache_dir / DEAD_LOADER).write_bytes(b"half a segment")
    (cache_dir / LONE_LOCK).touch()
    (cache_dir / "notes.txt").write_text("someone's notes")
    (cache_dir / NOT_A_FILE).mkdir()
    return held


def _keys(cache: Cache, current: Path, changing: Path) -> dict[str, str]:
    """The keys of the scenario's copies of files (taken before *changing* changes)."""
    return {
        role: cache.key(make_source(path, dataset=dataset))
        for role, path, dataset in (
            ("held current", current, "held"),
            ("held changed", changing, "held"),
            ("free current", current, "free"),
            ("free changed", changing, "free"),
        )
    }


@pytest.fixture
def origins(tmp_path: Path) -> tuple[Path, Path]:
    """Two source files: one that stays as it is, one that a test changes."""
    current, changing = tmp_path / "current.bin", tmp_path / "changing.bin"
    current.write_bytes(b"rows that stay")
    changing.write_bytes(b"rows that change")
    return current, changing


@pytest.fixture
def cache_dirs() -> Iterator[list[Path]]:
    """Four cache directory paths on /dev/shm, not yet created; removed afterwards."""
    if not SHM.is_dir():
        pytest.skip("needs /dev/shm, the tmpfs shared memory lives on")
    made = [SHM / f"shmstore-records-{os.getpid()}-{i}-{os.urandom(4).hex()}" for i in range(4)]
    yield made
    for directory in made:
        subprocess.run(["rm", "-rf", str(directory)], check=False)


# -- the records ------------------------------------------------------------------------


def test_gc_says_what_it_removed_kept_and_left_alone_and_why(
    cache_dir: Path, origins: tuple[Path, Path]
) -> None:
    current, changing = origins
    held = _scenario(cache_dir, current, changing)
    cache = Cache(cache_dir)
    key = _keys(cache, current, changing)
    with changing.open("ab") as more:
        more.write(b" and more")  # its copies are stale now

    dry = _by_name(cache.gc(dry_run=True))
    actions = cache.gc()
    done = _by_name(actions)

    assert dry[f"{ORPHAN}.seg"] == ("would remove", "a named array no process maps ('orphan')")
    assert done[f"{ORPHAN}.seg"] == ("removed", "a named array no process maps ('orphan')")
    assert done[DEAD_LOADER] == ("removed", "left by a loader that died")
    assert done[LONE_LOCK] == ("removed", "a lock file without its segment")
    assert done[f"{key['free changed']}.seg"] == (
        "removed",
        f"stale: {changing} changed or is gone",
    )
    assert done[f"{key['held changed']}.seg"] == (
        "kept",
        "in use: its file changed, but a process maps it; gc removes it once unmapped",
    )
    assert done[f"{key['held current']}.seg"] == ("kept", "in use: a process maps it")
    assert done[f"{HELD_NAMED}.seg"] == ("kept", "in use: a process maps this named array")
    assert done[f"{key['free current']}.seg"][0] == "kept"
    assert done[f"{key['free current']}.seg"][1].startswith("current: ")
    assert done[f"{key['free current']}.lock"] == ("kept", "the load lock of a cached segment")
    assert done["budget.lock"][0] == "kept"
    assert done["notes.txt"] == (
        "left alone",
        "not a file shmstore makes; remove it by hand if unneeded",
    )
    assert done[NOT_A_FILE] == ("left alone", "not a regular file, not this user's cache file")
    for a in actions:
        assert a.name in {p.name for p in cache_dir.iterdir()} or a.outcome == "removed"
    assert {a.kind for a in actions} == {
        "segment",
        "temporary",
        "lock",
        "budget lock",
        "other",
    }
    del held


def test_evict_says_what_it_removed_kept_left_alone_or_found_gone(
    cache_dir: Path, origins: tuple[Path, Path]
) -> None:
    current, changing = origins
    held = _scenario(cache_dir, current, changing)
    cache = Cache(cache_dir)
    key = _keys(cache, current, changing)
    asked = [key["held current"], key["free current"], NOT_CACHED, "ef" * 16]

    actions = cache.evict(asked)

    assert [(a.key, a.outcome, a.reason) for a in actions] == [
        (key["held current"], "kept", "in use: a process maps it"),
        (key["free current"], "removed", "no process maps it"),
        (NOT_CACHED, "gone", "not cached (nothing to do)"),
        ("ef" * 16, "left alone", "it is not a regular file"),
    ]
    assert all(a.kind == "segment" and a.name == f"{a.key}.seg" for a in actions)
    cleared = {a.key for a in cache.clear() if a.outcome == "removed"}
    assert cleared == {ORPHAN, key["free changed"]}  # sorted by name, not as listed here
    del held


def test_records_are_frozen_and_exported() -> None:
    action = CacheAction(
        name="budget.lock", key="", kind="budget lock", outcome="kept", reason="why"
    )
    assert shmstore.CacheAction is CacheAction
    assert "CacheAction" in shmstore.__all__
    with pytest.raises(ValueError, match="frozen"):
        action.reason = "another"  # type: ignore[misc]
    with pytest.raises(ValueError, match="outcome"):
        CacheAction(name="x", key="", kind="other", outcome="vanished", reason="")  # type: ignore[arg-type]


# -- in use by other processes ----------------------------------------------------------


@pytest.fixture
def holders() -> Iterator[list[Any]]:
    """Spawned processes that each map a segment until the test ends."""
    started: list[Any] = []
    yield started
    for process in started:
        process.kill()
        process.join(30)


def _hold(holders: list[Any], directory: Path, key: str) -> None:
    ready, results = SPAWN.Event(), SPAWN.Queue()
    process = SPAWN.Process(target=hold, args=(str(directory), key, ready, results), daemon=True)
    process.start()
    holders.append(process)
    assert ready.wait(120), f"the holder of {key} never mapped it"


def test_what_another_process_maps_is_kept_in_use_by_gc_and_evict(
    cache_dir: Path, origins: tuple[Path, Path], holders: list[Any]
) -> None:
    current, changing = origins
    _scenario(cache_dir, current, changing)  # this process keeps nothing mapped
    gc.collect()
    cache = Cache(cache_dir)
    key = _keys(cache, current, changing)
    for held in (HELD_NAMED, key["held current"], key["held changed"]):
        _hold(holders, cache_dir, held)
    with changing.open("ab") as more:
        more.write(b" and more")

    done = _by_name(cache.gc())
    assert done[f"{HELD_NAMED}.seg"] == ("kept", "in use: a process maps this named array")
    assert done[f"{key['held current']}.seg"] == ("kept", "in use: a process maps it")
    assert done[f"{key['held changed']}.seg"][1].startswith("in use: its file changed")
    assert done[f"{key['free changed']}.seg"][0] == "removed"
    assert done[f"{ORPHAN}.seg"][0] == "removed"

    evicted = cache.evict(all=True)
    assert {a.key: (a.outcome, a.reason) for a in evicted} == {
        HELD_NAMED: ("kept", "in use: a process maps it"),
        key["held current"]: ("kept", "in use: a process maps it"),
        key["held changed"]: ("kept", "in use: a process maps it"),
        key["free current"]: ("removed", "no process maps it"),
        "ef" * 16: ("left alone", "it is not a regular file"),
    }

    for process in holders:
        process.kill()
        process.join(30)
    done = _by_name(cache.gc())  # the holders are gone, and their locks with them
    assert done[f"{HELD_NAMED}.seg"][0] == "removed"
    assert done[f"{key['held changed']}.seg"][0] == "removed"
    assert done[f"{key['held current']}.seg"] == (
        "kept",
        "current: the rows it holds are unchanged (evict it to free the space)",
    )


# -- the command line ---------------------------------------------------------------------

_CLI = """
import logging, sys
mode = sys.argv[1]
if mode == "silenced":
    logging.disable(logging.CRITICAL)
elif mode == "reworded":
    class Reword(logging.Filter):
        def filter(self, record):
            record.msg, record.args = "something happened", ()
            return True
    logging.getLogger("shmstore").addFilter(Reword())
from shmstore._commands import main
sys.exit(main((["--debug"] if mode == "verbose" else []) + sys.argv[2:]))
"""
MODES = ("as is", "silenced", "reworded", "verbose")


def _cli(mode: str, cache_dir: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _CLI, mode, *args, "--cache-dir", str(cache_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.replace(str(cache_dir), "<CACHE>")


def test_gc_and_evict_print_the_same_whatever_the_log_does(
    cache_dirs: list[Path], origins: tuple[Path, Path]
) -> None:
    current, changing = origins
    held = [_scenario(directory, current, changing) for directory in cache_dirs]
    key = _keys(Cache(cache_dirs[0]), current, changing)
    with changing.open("ab") as more:
        more.write(b" and more")
    commands = [
        ("gc", "--dry-run"),
        ("gc", "--dry-run", "--json"),
        ("gc",),
        ("gc", "--json"),
        ("evict", key["held current"], key["free current"], NOT_CACHED),
        ("evict", "--all", "--json"),
    ]
    outputs = {
        mode: [_cli(mode, directory, *command) for command in commands]
        for mode, directory in zip(MODES, cache_dirs, strict=True)
    }
    for mode in MODES[1:]:
        assert outputs[mode] == outputs["as is"], mode

    dry, _, done, _, evicted, _ = outputs["as is"]
    assert f"  {DEAD_LOADER}: left by a loader that died\n" in dry
    assert f"kept {ORPHAN}: a named array no process maps ('orphan'): gc removes it\n" in dry
    assert "removed 6 files from <CACHE>:\n" in done  # 2 copies and their locks, tmp, lock
    assert f"  {key['free changed']}.seg: stale: {changing} changed or is gone\n" in done
    assert f"kept {key['held current']}: in use: a process maps it\n" in done
    assert f"kept {HELD_NAMED}: in use: a process maps this named array\n" in done
    assert (
        "note: gc left <CACHE>/notes.txt alone: not a file shmstore makes; "
        "remove it by hand if unneeded\n"
    ) in done
    assert f"note: gc left <CACHE>/{NOT_A_FILE} alone: not a regular file" in done
    assert evicted.splitlines() == [
        f"evicted {key['free current']}: free[0:256] of {current}, 1.0 MiB",
        f"kept {key['held current']}: in use: a process maps it",
        f"kept {NOT_CACHED}: not cached (nothing to do)",
    ]
    del held
