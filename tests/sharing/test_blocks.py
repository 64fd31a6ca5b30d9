"""The block cache: rows held in fixed blocks, mapped side by side, loaded once per node.

``docs/design.md``, "Blocks and identity": a dataset's rows are cached in
blocks of ``SHMSTORE_BLOCK`` bytes (whole pages; whole chunks for chunked
data); a view maps the covering blocks into one contiguous array, so
overlapping and nested views share pages; processes that miss the same
blocks load each one once; a damaged or planted block file is never mapped.
Real HDF5 files, a real cache on /dev/shm, real processes (spawn, kill -9).
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shmstore
from shmstore import ArgumentError, CacheFullError
from tests._cache_children import evicted_keys

from . import _children_blocks as children

PAGE = os.sysconf("SC_PAGE_SIZE")
BLOCK = 16 * PAGE  # the block size most tests ask for: small data, many blocks


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 16 pages, here and in the processes the test starts."""
    monkeypatch.setenv("SHMSTORE_BLOCK", str(BLOCK))


@pytest.fixture
def data() -> np.ndarray:
    """8,000 rows of 10 float64 (80 bytes: rows straddle block boundaries), 640,000 bytes."""
    return np.arange(80_000, dtype="<f8").reshape(8_000, 10)


@pytest.fixture
def path(tmp_path: Path, data: np.ndarray) -> Path:
    target = tmp_path / "blocks.h5"
    with shmstore.open(target, "w") as store:
        store.write("x", data)
    return target


def _seg_files(cache: shmstore.Cache) -> set[str]:
    return {p.name for p in cache.directory.iterdir() if p.suffix == ".seg"}


def _mappings_of(directory: Path) -> int:
    """How many mappings of files in *directory* this process has (``/proc/self/maps``)."""
    with open("/proc/self/maps", encoding="utf-8") as maps:
        return sum(str(directory) in line for line in maps)


# -- views across blocks -------------------------------------------------------------------


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    row_floats=st.integers(1, 700),
    rows=st.integers(1, 400),
    block_pages=st.integers(1, 3),
    data=st.data(),
)
def test_a_view_across_blocks_is_one_contiguous_array_of_the_rows_asked_for(
    tmp_path_factory: pytest.TempPathFactory,
    row_floats: int,
    rows: int,
    block_pages: int,
    data: st.DataObject,
) -> None:
    # Rows of 8 bytes to 5,600 bytes: rows inside a block, straddling blocks, wider than one.
    start = data.draw(st.integers(0, rows - 1), label="start")
    stop = data.draw(st.integers(start + 1, rows), label="stop")
    where = tmp_path_factory.mktemp("blocks")
    array = np.random.default_rng(rows).random((rows, row_floats))
    with shmstore.open(where / "s.h5", "w") as store:
        store.write("x", array)
    os.environ["SHMSTORE_BLOCK"] = str(block_pages * PAGE)  # the fixture restores it
    cache = shmstore.Cache(Path("/dev/shm") / f"shmstore-blocktest-{os.getpid()}-{where.name}")
    try:
        _check_view(where / "s.h5", cache, array, (start, stop), block_pages * PAGE)
    finally:
        shutil.rmtree(cache.directory, ignore_errors=True)


def _check_view(
    path: Path, cache: shmstore.Cache, array: np.ndarray, rows: tuple[int, int], block: int
) -> None:
    """The view of *rows*: the right values, one C-contiguous read-only array, its blocks."""
    start, stop = rows
    row_floats = array.shape[1]
    with shmstore.open(path, cache=cache) as store:
        handle = store.handle("x", (start, stop))
        with store.view("x", (start, stop), mode="shared") as arr:
            np.testing.assert_array_equal(arr, array[start:stop])
            assert arr.flags.c_contiguous
            assert not arr.flags.writeable
            first, last = start * row_floats * 8, stop * row_floats * 8
            assert len(handle.keys) == -(-last // block) - first // block  # blocks covering
            assert arr.nbytes == last - first
        del arr


def test_a_view_within_one_block_is_a_single_mapping(path: Path, cache: shmstore.Cache) -> None:
    with shmstore.open(path, cache=cache) as store, store.view("x", (0, 100)) as arr:
        assert len(store.handle("x", (0, 100)).keys) == 1
        assert _mappings_of(cache.directory) == 1
        del arr


def test_a_view_across_three_blocks_maps_each_block_side_by_side(
    path: Path, cache: shmstore.Cache, data: np.ndarray
) -> None:
    rows = (BLOCK // 80 - 10, 2 * BLOCK // 80 + 10)  # from block 0 into block 2
    with shmstore.open(path, cache=cache) as store, store.view("x", rows) as arr:
        assert len(store.handle("x", rows).keys) == 3
        assert _mappings_of(cache.directory) == 3
        np.testing.assert_array_equal(arr, data[rows[0] : rows[1]])
        del arr


def test_overlapping_and_nested_views_share_the_same_blocks(
    path: Path, cache: shmstore.Cache, data: np.ndarray
) -> None:
    with shmstore.open(path, cache=cache) as store:
        with store.view("x", (0, 4_000)) as whole:
            files = _seg_files(cache)
            with store.view("x", (0, 2_000)) as nested, store.view("x", (1_000, 3_500)) as inner:
                assert _seg_files(cache) == files  # nothing loaded again
                np.testing.assert_array_equal(nested, data[:2_000])
                np.testing.assert_array_equal(inner, data[1_000:3_500])
            np.testing.assert_array_equal(whole, data[:4_000])
        with store.view("x", (3_000, 6_000)):
            added = {name.removesuffix(".seg") for name in _seg_files(cache) - files}
        # Only blocks beyond row 4,000 were new; those it shares with the first view were mapped.
        beyond = set(store.handle("x", (4_000, 6_000)).keys) - set(
            store.handle("x", (0, 4_000)).keys
        )
    assert added == beyond


def test_overlapping_views_hold_the_union_of_their_blocks_once(
    path: Path, cache: shmstore.Cache
) -> None:
    windows = [(o, o + 4_800) for o in (0, 800, 1_600, 2_400)]  # 60 % of the rows each
    with shmstore.open(path, cache=cache) as store:
        held = [store.handle("x", w).pin() for w in windows]
        union = set().union(*(store.handle("x", w).keys for w in windows))
        assert {e.key for e in cache.entries()} == union
        assert sum(e.nbytes for e in cache.entries()) <= len(union) * BLOCK
        del held


# -- block size ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "nbytes"),
    [("65536", 65536), ("64K", 65536), ("1M", 1 << 20), ("100000", 100_000 // PAGE * PAGE)],
)
def test_shmstore_block_sets_the_block_size_in_whole_pages(
    setting: str, nbytes: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cache_dir: Path
) -> None:
    monkeypatch.setenv("SHMSTORE_BLOCK", setting)
    with shmstore.open(tmp_path / "s.h5", "w") as store:
        store.write("x", np.zeros((100_000, 8), dtype="<i8"))  # 64 bytes a row, 6.4 MB
    cache = shmstore.Cache(cache_dir)
    with shmstore.open(tmp_path / "s.h5", cache=cache) as store:
        handle = store.handle("x")
        assert handle.block_rows == nbytes // 64
        assert len(handle.keys) == -(-6_400_000 // nbytes)


@pytest.mark.parametrize("setting", ["lots", "10%", "-4K", "0"])
def test_a_bad_shmstore_block_is_refused_naming_the_variable(
    setting: str, monkeypatch: pytest.MonkeyPatch, path: Path, cache: shmstore.Cache
) -> None:
    monkeypatch.setenv("SHMSTORE_BLOCK", setting)
    with (
        shmstore.open(path, cache=cache) as store,
        pytest.raises(ArgumentError, match="SHMSTORE_BLOCK"),
    ):
        store.view("x", mode="shared")


def test_blocks_of_a_chunked_dataset_hold_whole_chunks(
    tmp_path: Path, cache: shmstore.Cache
) -> None:
    array = np.arange(80_000, dtype="<f4").reshape(5_000, 16)  # 64 bytes a row
    with shmstore.open(tmp_path / "c.h5", "w") as store:
        store.write("c", array, chunks=(100, 16), compression="gzip")  # 6,400-byte chunks
    with shmstore.open(tmp_path / "c.h5", cache=cache) as store:
        handle = store.handle("c")
        assert handle.block_rows is not None
        assert handle.block_rows % 100 == 0  # whole chunks...
        assert handle.block_rows * 64 % PAGE == 0  # ...and whole pages
        with handle.view("shared") as arr:
            np.testing.assert_array_equal(arr, array)


# -- several processes ---------------------------------------------------------------------


def test_processes_asking_at_once_load_each_block_exactly_once(
    path: Path, cache_dir: Path, data: np.ndarray
) -> None:
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(4), context.Queue()
    workers = [
        context.Process(
            target=children.view_at_the_barrier,
            args=(str(path), str(cache_dir), "x", barrier, results),
        )
        for _ in range(4)
    ]
    for w in workers:
        w.start()
    reports = [results.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(60)
    assert all(w.exitcode == 0 for w in workers)
    for _, seen in reports:
        np.testing.assert_array_equal(seen, data)
    # Every process mapped the same file of each block: none was loaded twice.
    assert len({made for made, _ in reports}) == 1
    made = reports[0][0]
    assert len(_seg_files(shmstore.Cache(cache_dir))) == len(made) == -(-data.nbytes // BLOCK)
    assert {pid for pid, _ in made} <= {w.pid for w in workers}


def test_a_loader_killed_mid_load_leaves_nothing_mapped_and_the_next_process_loads_it(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A gzip dataset of 32 MiB in 1 MiB blocks, one thread: a load of a second or so.
    monkeypatch.setenv("SHMSTORE_BLOCK", "1M")
    monkeypatch.setenv("SHMSTORE_THREADS", "1")
    rng = np.random.default_rng(0)
    array = np.round(rng.normal(size=(4_096, 1_024)), 1).astype("<f8")
    with shmstore.open(tmp_path / "g.h5", "w") as store:
        store.write("g", array, chunks=(128, 1_024), compression="gzip")
    context = multiprocessing.get_context("spawn")
    loader = context.Process(
        target=children.load_everything, args=(str(tmp_path / "g.h5"), str(cache_dir), "g")
    )
    loader.start()
    deadline = time.monotonic() + 60
    while not (
        cache_dir.is_dir() and any(p.suffix == ".tmp" for p in cache_dir.iterdir())
    ):  # a block being built
        assert loader.is_alive(), "the loader ended before it was killed"
        assert time.monotonic() < deadline, "the loader never started a block"
        time.sleep(0.001)
    os.kill(loader.pid, signal.SIGKILL)
    loader.join(10)
    cache = shmstore.Cache(cache_dir)
    published = {e.key for e in cache.entries()}
    with shmstore.open(tmp_path / "g.h5", cache=cache) as store:
        keys = store.handle("g").keys
        assert len(published) < len(keys)  # killed before the end
        with store.view("g", mode="shared") as arr:
            np.testing.assert_array_equal(arr, array)
        del arr
    # The blocks it had published were kept, the rest loaded here, each once.
    assert published <= {e.key for e in cache.entries()} == set(keys)
    cache.gc()
    assert not [p.name for p in cache_dir.iterdir() if p.suffix == ".tmp"]  # no half-built file


def test_a_block_mapped_by_another_process_is_never_evicted(
    path: Path, cache_dir: Path, data: np.ndarray
) -> None:
    context = multiprocessing.get_context("spawn")
    ready, done = context.Event(), context.Event()
    holder = context.Process(
        target=children.hold_rows,
        args=(str(path), str(cache_dir), "x", (0, 100), (ready, done)),
    )
    holder.start()
    try:
        assert ready.wait(60)
        cache = shmstore.Cache(cache_dir, budget=2 * BLOCK + 4 * PAGE)
        with shmstore.open(path, cache=cache) as store:
            (held,) = store.handle("x", (0, 100)).keys
            for rows in [(820 * b + 10, 820 * b + 20) for b in (2, 4, 6)]:  # one block each
                with store.view("x", rows, mode="shared") as arr:
                    np.testing.assert_array_equal(arr, data[rows[0] : rows[1]])
                del arr
            assert held in {e.key for e in cache.entries()}
            assert held not in evicted_keys(cache.evict(all=True))  # asked outright, still kept
            assert held in {e.key for e in cache.entries()}
    finally:
        done.set()
        holder.join(30)


def test_eviction_takes_the_least_recently_used_block_first(path: Path, cache_dir: Path) -> None:
    cache = shmstore.Cache(cache_dir, budget=3 * (BLOCK + PAGE))
    rows = [(i * 1_000, i * 1_000 + 10) for i in range(4)]  # four different blocks
    with shmstore.open(path, cache=cache) as store:
        keys = [store.handle("x", r).keys[0] for r in rows]
        for r in (rows[0], rows[1], rows[2], rows[0]):  # block 1 is now the oldest used
            with store.view("x", r, mode="shared") as arr:
                pass
            del arr
            time.sleep(0.15)  # access times are kept to 0.1 s
        with store.view("x", rows[3], mode="shared") as arr:
            pass
        del arr
    assert {e.key for e in cache.entries()} == {keys[0], keys[2], keys[3]}


# -- no room, bad files --------------------------------------------------------------------


def test_no_room_for_the_next_block_is_cache_full_and_the_blocks_held_stay_valid(
    path: Path, cache_dir: Path, data: np.ndarray
) -> None:
    cache = shmstore.Cache(cache_dir, budget=3 * (BLOCK + PAGE))
    with shmstore.open(path, cache=cache) as store:
        held = store.handle("x", (0, 1_500)).pin()  # two blocks, mapped
        with pytest.raises(CacheFullError, match="SHMSTORE_BUDGET"):
            store.view("x", (1_000, 5_000), mode="shared")
        np.testing.assert_array_equal(held, data[:1_500])  # still mapped, readable: no SIGBUS
        with store.view("x", (1_000, 5_000), mode="auto") as arr:  # falls back to the file
            np.testing.assert_array_equal(arr, data[1_000:5_000])
        del arr


def _damage(block_file: Path, how: str, elsewhere: Path) -> None:
    if how == "flipped header byte":
        raw = bytearray(block_file.read_bytes())
        raw[20] ^= 0xFF
        block_file.write_bytes(bytes(raw))
    elif how == "truncated":
        os.truncate(block_file, 5_000)
    elif how == "planted garbage":
        block_file.unlink()
        block_file.write_bytes(b"x" * 70_000)
        block_file.chmod(0o600)
    elif how == "symbolic link":
        block_file.unlink()
        block_file.symlink_to(elsewhere)
    else:  # readable by others
        block_file.chmod(0o644)


@pytest.mark.parametrize(
    "how",
    ["flipped header byte", "truncated", "planted garbage", "symbolic link", "readable by others"],
)
def test_a_bad_block_file_is_never_mapped_and_its_rows_are_loaded_again(
    how: str, path: Path, cache: shmstore.Cache, data: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    with shmstore.open(path, cache=cache) as store:
        (key,) = store.handle("x", (0, 100)).keys
        with store.view("x", (0, 100), mode="shared"):
            pass
        gc.collect()
        _damage(cache.directory / f"{key}.seg", how, elsewhere=path)
        with store.view("x", (0, 100), mode="shared") as arr:
            np.testing.assert_array_equal(arr, data[:100])
        del arr
    assert f"{key}.seg" in caplog.text
    assert "loading its rows again" in caplog.text
    assert (cache.directory / f"{key}.seg").is_file()  # a good block now, not a link
    assert not (cache.directory / f"{key}.seg").is_symlink()
    with shmstore.open(path) as store:  # a link's target is untouched
        np.testing.assert_array_equal(store.read("x"), data)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_block_file_of_another_user_is_refused_and_left_where_it_is(
    path: Path, cache: shmstore.Cache
) -> None:
    with shmstore.open(path, cache=cache) as store:
        (key,) = store.handle("x", (0, 100)).keys
        with store.view("x", (0, 100), mode="shared"):
            pass
        gc.collect()
        block_file = cache.directory / f"{key}.seg"
        os.chown(block_file, 65534, 65534)
        with pytest.raises(shmstore.SegmentError, match="belongs to uid 65534"):
            store.view("x", (0, 100), mode="shared")
    assert block_file.stat().st_uid == 65534  # as gc: another user's file is not removed


# -- workers -------------------------------------------------------------------------------


def test_workers_use_the_blocks_a_handle_names(
    path: Path, cache: shmstore.Cache, data: np.ndarray
) -> None:
    with shmstore.open(path, cache=cache) as store:
        parts = [store.handle("x", (a, a + 2_000)) for a in range(0, 8_000, 2_000)]
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        sums = pool.map(children.sum_of_rows, parts)
    assert sums == [float(data[a : a + 2_000].sum()) for a in range(0, 8_000, 2_000)]
    assert {e.key for e in cache.entries()} == set().union(*(p.keys for p in parts))


_LIMITED = """
import resource, sys, shmstore
path, directory = sys.argv[1:3]
with shmstore.open(path, cache=shmstore.Cache(directory)) as store:
    handle = store.handle("z")
    with open("/proc/self/status") as status:
        size = next(int(l.split()[1]) * 1024 for l in status if l.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (size + (16 << 20), size + (16 << 20)))
    try:
        with handle.view("shared"):
            print("mapped")
    except shmstore.SegmentError as err:
        print("SegmentError:", err)
"""


def test_a_view_the_address_space_cannot_hold_is_a_clear_error(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHMSTORE_BLOCK", "1M")
    with shmstore.open(tmp_path / "z.h5", "w") as store:
        store.write("z", np.zeros((64, 1 << 17)))  # 64 MiB in 64 blocks
    done = subprocess.run(
        [sys.executable, "-c", _LIMITED, str(tmp_path / "z.h5"), str(cache_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "SegmentError: cannot reserve 67108864 bytes of address space" in done.stdout
    assert "ulimit -v" in done.stdout
