"""The node cache and its invariants (DESIGN.md 1, 2, 4, 5, 7), with real processes.

Each test gets its own cache directory on /dev/shm.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import shmstore
from shmstore._cache import parse_budget

from . import _children_cache as children
from ._cache_children import evicted_keys, removed_names
from ._children_cache import ROWS, WIDTH, expected, make_source

SHM = Path("/dev/shm")
CHILD = Path(__file__).with_name("_children_cache.py")
pytestmark = pytest.mark.skipif(not SHM.is_dir(), reason="needs /dev/shm")
F8 = np.dtype("<f8")


@pytest.fixture
def cache_dir() -> Iterator[Path]:
    directory = SHM / f"shmstore-test-{uuid.uuid4().hex[:12]}"
    yield directory
    subprocess.run(["rm", "-rf", str(directory)], check=False)


@pytest.fixture
def cache(cache_dir: Path) -> shmstore.Cache:
    return shmstore.Cache(directory=cache_dir)


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    path = tmp_path / "origin.bin"
    path.write_bytes(b"the file the cached rows come from")
    return path


def _fill(out: np.ndarray) -> None:
    out[...] = expected()


def _child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(CHILD.parent)},
    )


def _segments(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.suffix == ".seg")


# -- invariant 1 -----------------------------------------------------------------


def test_invariant_1_one_copy_per_node_under_a_stampede(
    cache: shmstore.Cache, origin: Path, tmp_path: Path
) -> None:
    counter = tmp_path / "loads.txt"
    source = make_source(origin)
    ctx = multiprocessing.get_context("spawn")
    barrier, results_queue = ctx.Barrier(8), ctx.Queue()
    args = (str(cache.directory), source.model_dump_json(), str(counter), barrier, results_queue)
    workers = [ctx.Process(target=children.stampede, args=args) for _ in range(8)]
    for worker in workers:
        worker.start()
    results = [results_queue.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    assert len(counter.read_text().split()) == 1, "more than one process loaded the slice"
    assert {total for _, total in results} == {float(expected().sum())}
    assert len({key for key, _ in results}) == 1
    assert _segments(cache.directory) == [f"{results[0][0]}.seg"]


def test_a_second_request_in_the_process_reuses_the_mapping(
    cache: shmstore.Cache, origin: Path
) -> None:
    first = cache.get(make_source(origin), F8, (ROWS, WIDTH), _fill)
    second = cache.lookup(make_source(origin))
    assert second is not None
    assert np.shares_memory(first, second)


def test_a_segment_is_attached_knowing_only_its_key(cache: shmstore.Cache, origin: Path) -> None:
    source = make_source(origin)
    cache.get(source, F8, (ROWS, WIDTH), _fill)
    elsewhere = _child("map", str(cache.directory), cache.key(source))
    assert elsewhere.stdout is not None
    assert elsewhere.stdout.readline().split() == ["mapped", str(float(expected().sum()))]
    elsewhere.kill()
    elsewhere.wait()


def test_attaching_an_unknown_key_is_a_key_error(cache: shmstore.Cache) -> None:
    with pytest.raises(KeyError, match="never loaded or was evicted"):
        cache.attach("0" * 32)


def test_compound_big_endian_dtypes_survive_the_header(cache: shmstore.Cache, origin: Path) -> None:
    dtype = np.dtype([("t", ">f8"), ("xyz", "<i2", (3,)), ("tag", "S3")])
    data = np.zeros(5, dtype=dtype)
    data["t"] = np.arange(5)
    data["tag"] = b"abc"

    def fill(out: np.ndarray) -> None:
        out[...] = data

    source = make_source(origin).model_copy(update={"stop": 5})
    cache.get(source, dtype, (5,), fill)
    other = shmstore.Cache(directory=cache.directory)
    gc.collect()
    mapped = other.attach(cache.key(source))
    assert mapped.dtype == dtype
    np.testing.assert_array_equal(mapped, data)


def test_an_empty_slice_is_served(cache: shmstore.Cache, origin: Path) -> None:
    source = make_source(origin).model_copy(update={"stop": 0})
    array = cache.get(source, F8, (0, WIDTH), lambda out: None)
    assert array.shape == (0, WIDTH)
    assert not array.flags.writeable


# -- invariant 2 -----------------------------------------------------------------


@pytest.mark.slow
def test_invariant_2_a_killed_loader_leaves_nothing_that_can_be_attached(
    cache: shmstore.Cache, origin: Path
) -> None:
    rng = random.Random(2)
    source = make_source(origin)
    for _ in range(20):
        loader = _child("load", str(cache.directory), source.model_dump_json())
        assert loader.stdout is not None
        assert loader.stdout.readline().strip() == "filling"
        threading.Event().wait(rng.uniform(0.0, 0.45))
        loader.send_signal(signal.SIGKILL)
        finished = "loaded" in loader.communicate()[0]
        found = cache.lookup(source)
        if finished:
            assert found is not None
        if found is not None:  # published: then it is complete
            np.testing.assert_array_equal(found, expected())
            del found
            gc.collect()
            assert evicted_keys(cache.evict([cache.key(source)])) == [cache.key(source)]
        cache.gc()
        leftovers = [p.name for p in cache.directory.iterdir() if p.name.endswith(".tmp")]
        assert leftovers == []
    np.testing.assert_array_equal(cache.get(source, F8, (ROWS, WIDTH), _fill), expected())


# -- invariant 4 -----------------------------------------------------------------


def test_invariant_4_a_slice_over_the_budget_is_refused_with_the_numbers(
    cache_dir: Path, origin: Path
) -> None:
    small = shmstore.Cache(directory=cache_dir, budget="512K")
    with pytest.raises(shmstore.CacheFullError, match=r"needs \d+ bytes.*budget of 524288"):
        small.get(make_source(origin), F8, (ROWS, WIDTH), _fill)
    assert _segments(cache_dir) == []


def test_invariant_4_unused_segments_are_evicted_least_recent_first(
    cache_dir: Path, origin: Path
) -> None:
    two = shmstore.Cache(directory=cache_dir, budget="2200K")  # room for two 1 MiB slices
    for version in (1, 2):
        two.get(make_source(origin, version), F8, (ROWS, WIDTH), _fill)
    gc.collect()
    time.sleep(0.15)  # access times are refreshed when older than 100 ms
    two.attach(two.key(make_source(origin, 1)))  # version 1 is now the most recent
    gc.collect()
    two.get(make_source(origin, 3), F8, (ROWS, WIDTH), _fill)
    kept = {e.key for e in two.entries()}
    assert two.key(make_source(origin, 2)) not in kept
    assert {two.key(make_source(origin, v)) for v in (1, 3)} <= kept


def test_invariant_4_segments_in_use_are_named_when_the_cache_is_full(
    cache_dir: Path, origin: Path
) -> None:
    one = shmstore.Cache(directory=cache_dir, budget="1100K")
    held = one.get(make_source(origin, 1), F8, (ROWS, WIDTH), _fill)
    with pytest.raises(shmstore.CacheFullError, match="1 segments in use"):
        one.get(make_source(origin, 2), F8, (ROWS, WIDTH), _fill)
    del held
    gc.collect()
    one.get(make_source(origin, 2), F8, (ROWS, WIDTH), _fill)


def _mount_small_tmpfs(where: Path) -> bool:
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def test_invariant_4_a_full_tmpfs_gives_cache_full_never_sigbus(
    tmp_path: Path, origin: Path
) -> None:
    mount = tmp_path / "small-tmpfs"
    if not _mount_small_tmpfs(mount):
        pytest.skip("this machine does not let the test mount a small tmpfs")
    try:
        code = (
            "import numpy as np, shmstore, sys; sys.path.insert(0, sys.argv[2]);"
            "from _children_cache import make_source, expected, ROWS, WIDTH;"
            "from pathlib import Path;"
            "c = shmstore.Cache(directory=sys.argv[1], budget='1G');"
            "s = make_source(Path(sys.argv[3]));"
            "c.get(s, np.dtype('<f8'), (ROWS, WIDTH), lambda out: out.fill(1.0))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, str(mount / "cache"), str(CHILD.parent), str(origin)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    finally:
        subprocess.run(["umount", str(mount)], check=False)
    assert done.returncode == 1, f"exit {done.returncode} (SIGBUS is -7): {done.stderr}"
    assert "CacheFullError" in done.stderr
    assert "are free" in done.stderr


# -- invariant 5 -----------------------------------------------------------------


def test_invariant_5_a_segment_mapped_by_a_child_is_never_evicted_until_it_dies(
    cache: shmstore.Cache, origin: Path
) -> None:
    source = make_source(origin)
    key = cache.key(source)
    cache.get(source, F8, (ROWS, WIDTH), _fill)
    gc.collect()
    mapper = _child("map", str(cache.directory), key)
    assert mapper.stdout is not None
    assert mapper.stdout.readline().startswith("mapped")
    try:
        assert evicted_keys(cache.evict([key])) == []
        assert evicted_keys(cache.clear()) == []
        assert removed_names(cache.gc()) == []
        assert [e.in_use for e in cache.entries()] == [True]
    finally:
        mapper.send_signal(signal.SIGKILL)
        mapper.wait()
    assert evicted_keys(cache.evict([key])) == [key]
    assert _segments(cache.directory) == []


def test_a_mapping_is_released_when_its_array_is_garbage(
    cache: shmstore.Cache, origin: Path
) -> None:
    source = make_source(origin)
    array = cache.get(source, F8, (ROWS, WIDTH), _fill)
    view = array[10:20]
    del array
    gc.collect()
    assert evicted_keys(cache.evict([cache.key(source)])) == [], (
        "a slice of the array still maps the pages"
    )
    del view
    gc.collect()
    assert evicted_keys(cache.evict([cache.key(source)])) == [cache.key(source)]


def test_gc_removes_segments_whose_source_changed(cache: shmstore.Cache, origin: Path) -> None:
    source = make_source(origin)
    cache.get(source, F8, (ROWS, WIDTH), _fill)
    gc.collect()
    origin.write_bytes(b"rewritten: the cached copy is stale now")
    assert f"{cache.key(source)}.seg" in removed_names(cache.gc())
    assert _segments(cache.directory) == []


# -- invariant 6 -----------------------------------------------------------------


def test_invariant_6_mapped_arrays_cannot_be_made_writeable(
    cache: shmstore.Cache, origin: Path
) -> None:
    array = cache.get(make_source(origin), F8, (ROWS, WIDTH), _fill)
    with pytest.raises(ValueError, match="read-only"):
        array[0, 0] = 1.0
    with pytest.raises(ValueError, match="cannot set WRITEABLE"):
        array.flags.writeable = True


# -- invariant 7 -----------------------------------------------------------------


def test_invariant_7_the_directory_is_0700_and_segments_0600(
    cache: shmstore.Cache, origin: Path
) -> None:
    cache.get(make_source(origin), F8, (ROWS, WIDTH), _fill)
    assert stat.S_IMODE(os.stat(cache.directory).st_mode) == 0o700
    for name in _segments(cache.directory):
        assert stat.S_IMODE(os.stat(cache.directory / name).st_mode) == 0o600


def test_invariant_7_an_existing_directory_open_to_others_is_tightened(cache_dir: Path) -> None:
    cache_dir.mkdir(mode=0o777)
    os.chmod(cache_dir, 0o777)
    shmstore.Cache(directory=cache_dir)
    assert stat.S_IMODE(os.stat(cache_dir).st_mode) == 0o700


def test_invariant_7_a_directory_of_another_user_is_refused(cache_dir: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to make a directory owned by another user")
    cache_dir.mkdir(mode=0o700)
    os.chown(cache_dir, 65534, 65534)
    with pytest.raises(shmstore.SegmentError, match="belongs to uid 65534"):
        shmstore.Cache(directory=cache_dir)


def _planted(cache: shmstore.Cache, origin: Path) -> tuple[str, Path]:
    source = make_source(origin)
    cache.get(source, F8, (ROWS, WIDTH), _fill)
    gc.collect()
    key = cache.key(source)
    assert evicted_keys(cache.evict([key])) == [key]
    return key, cache.directory / f"{key}.seg"


def test_invariant_7_a_symlink_planted_as_a_segment_is_refused(
    cache: shmstore.Cache, origin: Path, tmp_path: Path
) -> None:
    key, path = _planted(cache, origin)
    target = tmp_path / "target"
    target.write_bytes(b"x" * 8192)
    path.symlink_to(target)
    with pytest.raises(shmstore.SegmentError, match="symbolic link"):
        cache.attach(key)
    assert cache.entries() == []
    assert path.name in removed_names(cache.gc())
    assert target.exists()


@pytest.mark.parametrize("problem", ["another-owner", "open-mode", "garbage"])
def test_invariant_7_a_foreign_or_damaged_segment_is_refused(
    cache: shmstore.Cache, origin: Path, problem: str
) -> None:
    source = make_source(origin)
    cache.get(source, F8, (ROWS, WIDTH), _fill)
    gc.collect()
    key = cache.key(source)
    path = cache.directory / f"{key}.seg"
    if problem == "another-owner":
        if os.getuid() != 0:
            pytest.skip("needs root to give a file to another user")
        os.chown(path, 65534, 65534)
    elif problem == "open-mode":
        os.chmod(path, 0o644)
    else:
        with path.open("r+b") as segment:
            segment.write(b"not a segment header at all")
    fresh = shmstore.Cache(directory=cache.directory)
    from shmstore._segment import forget_headers

    forget_headers()
    with pytest.raises(shmstore.SegmentError):
        fresh.attach(key)
    assert fresh.entries() == []


@pytest.mark.parametrize("key", ["../escape", "a/b", "", "0" * 31, "Z" * 32])
def test_invariant_7_keys_cannot_escape_the_directory(cache: shmstore.Cache, key: str) -> None:
    with pytest.raises(shmstore.SegmentError, match="not a cache key"):
        cache.attach(key)


def test_invariant_7_a_fifo_planted_as_a_segment_never_hangs(
    cache: shmstore.Cache, origin: Path
) -> None:
    key, path = _planted(cache, origin)
    os.mkfifo(path, 0o600)
    with pytest.raises(shmstore.SegmentError, match="not a regular file"):
        cache.attach(key)
    assert cache.entries() == []
    cache.gc()  # refused or removed, and above all: returns


def test_a_stray_file_is_left_alone_by_gc(cache: shmstore.Cache) -> None:
    stray = cache.directory / "notes.txt"
    stray.write_text("someone's notes")
    assert removed_names(cache.gc()) == []
    assert stray.exists()


# -- budget and directory settings -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected_bytes"),
    [(1000, 1000), ("64G", 64 << 30), ("512k", 512 << 10), ("1.5M", 3 << 19), ("2TB", 2 << 40)],
)
def test_budget_sizes_are_read(text: str | int, expected_bytes: int) -> None:
    assert parse_budget(text, SHM) == expected_bytes


def test_a_budget_in_percent_is_a_share_of_the_file_system() -> None:
    vfs = os.statvfs(SHM)
    assert parse_budget("50%", SHM) == vfs.f_blocks * vfs.f_frsize // 2


@pytest.mark.parametrize("text", ["lots", "-5", "0", "5X", ""])
def test_a_bad_budget_is_refused_naming_the_forms(text: str) -> None:
    with pytest.raises(shmstore.ArgumentError, match="budget"):
        parse_budget(text, SHM)


def test_environment_chooses_directory_and_budget(
    monkeypatch: pytest.MonkeyPatch, cache_dir: Path
) -> None:
    monkeypatch.setenv("SHMSTORE_DIR", str(cache_dir))
    monkeypatch.setenv("SHMSTORE_BUDGET", "3M")
    cache = shmstore.Cache()
    assert (cache.directory, cache.budget) == (cache_dir, 3 << 20)


def test_a_directory_that_cannot_be_made_is_a_segment_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(shmstore.SegmentError, match="SHMSTORE_DIR"):
        shmstore.Cache(directory=blocker / "cache")


def test_job_shmtmpdir_is_honoured(monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> None:
    monkeypatch.delenv("SHMSTORE_DIR", raising=False)
    monkeypatch.setenv("JOB_SHMTMPDIR", str(cache_dir))
    assert shmstore.Cache().directory == cache_dir / "shmstore"


# -- Uninterruptible ---------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_uninterruptible_defers_a_signal_to_the_end_of_the_block(signum: int) -> None:
    code = (
        "import os, signal, time, shmstore\n"
        "try:\n"
        "    with shmstore.Uninterruptible():\n"
        f"        os.kill(os.getpid(), {int(signum)}); time.sleep(0.2)\n"
        "        print('block finished', flush=True)\n"
        "    print('after the block', flush=True)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted after the block', flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    lines = done.stdout.split("\n")
    assert lines[0] == "block finished"
    if signum == signal.SIGINT:
        assert lines[1] == "interrupted after the block"
    else:
        assert done.returncode == -signal.SIGTERM
        assert "after the block" not in done.stdout


def test_uninterruptible_does_nothing_outside_the_main_thread() -> None:
    handler = signal.getsignal(signal.SIGINT)
    seen: list[object] = []

    def worker() -> None:
        with shmstore.Uninterruptible():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [handler]
