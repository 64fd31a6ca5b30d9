"""shmstore.dask on a real ``distributed`` cluster: one copy per node, whatever the workers.

The clusters are ``LocalCluster``s of worker processes (spawned by nannies),
as on a real node; a second "node" is a second cache directory given to some
of the workers.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("distributed", reason="needs the dask extra: pip install 'shmstore[dask]'")

import dask
import dask.array as da
import h5py
from dask.base import tokenize
from distributed import Client, LocalCluster, Nanny, Scheduler, SpecCluster

import shmstore
import shmstore.dask as shmdask
from shmstore import ArgumentError, LayoutError, RowsError

from . import _children_dask as children

WORKERS = 4
BIG = np.random.default_rng(7).random((8_000, 1_024))  # 62.5 MiB of float64
SMALL = np.arange(6_000, dtype="<i8").reshape(1_500, 4)


def _cluster_options(cache_directory: Path) -> dict[str, Any]:
    return {
        "processes": True,
        "threads_per_worker": 1,
        "dashboard_address": ":0",
        "silence_logs": logging.ERROR,
        "env": {"SHMSTORE_DIR": str(cache_directory)},
    }


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with a big contiguous dataset, compressed and small ones, and a warm-up one."""
    directory = tmp_path_factory.mktemp("dask")
    with shmstore.open(directory / "data.h5", "w") as store:
        store.write("big", BIG)
        store.write("warm", SMALL)
        store.write("small", SMALL)
        store.write("zipped", SMALL, chunks=(100, 4), compression="gzip")
        store.write("preloaded", SMALL * 3)
    return directory


def _cache_dir(name: str) -> Path:
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
    return base / f"shmstore-dask-test-{os.getpid()}-{name}"


@pytest.fixture(scope="module")
def node_cache() -> Iterator[shmstore.Cache]:
    """The cache directory the module's cluster uses as its node's cache."""
    directory = _cache_dir("node")
    yield shmstore.Cache(directory)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def client(node_cache: shmstore.Cache) -> Iterator[Client]:
    """A client of 4 worker processes, one thread each, on one "node" (one cache)."""
    with (
        LocalCluster(n_workers=WORKERS, **_cluster_options(node_cache.directory)) as cluster,
        Client(cluster) as connected,
    ):
        yield connected


def _segments(cache: shmstore.Cache) -> list[str]:
    return sorted(p.name for p in cache.directory.iterdir() if p.name.endswith(".seg"))


def _copies(cache: shmstore.Cache, handle: shmstore.Handle) -> list[str]:
    """The keys of the blocks in *cache* of the dataset of *handle* (of any generation)."""
    return [
        entry.key
        for entry in cache.entries()
        if (entry.path, entry.dataset) == (str(handle.path), handle.name)
    ]


def _handle(data_dir: Path, name: str, rows: object = None) -> shmstore.Handle:
    with shmstore.open(data_dir / "data.h5") as store:  # the default cache: each worker's own
        return store.handle(name, rows)


# -- handles as task arguments ------------------------------------------------------------


def test_200_tasks_on_4_workers_share_one_copy_and_far_less_private_memory(
    client: Client, node_cache: shmstore.Cache, data_dir: Path
) -> None:
    workers = list(client.scheduler_info()["workers"])
    client.gather(
        [client.submit(children.warm_up, str(data_dir / "data.h5"), workers=[w]) for w in workers]
    )
    before = client.run(children.memory)
    handle = _handle(data_dir, "big")
    per_task = BIG.shape[0] // 200

    results = client.gather(
        client.map(children.sum_rows, range(200), handle=handle, per_task=per_task)
    )
    client.run(children.touch_all, handle)  # every worker maps every page
    after = client.run(children.memory)

    for task, (total, _, _, _) in enumerate(results):
        expected = BIG[task * per_task : (task + 1) * per_task].sum()
        np.testing.assert_allclose(total, expected, rtol=1e-12)
    by_process: dict[int, set[int]] = {}
    for _, pid, address, _ in results:
        by_process.setdefault(pid, set()).add(address)
    assert all(len(addresses) == 1 for addresses in by_process.values()), (
        "each worker attaches once and reuses the mapping"
    )
    assert _copies(node_cache, handle) == [handle.keys[0]], "one segment for the slice"
    origins = set(client.run(children.origin_of, handle).values())
    assert len(origins) == 1, "every worker maps the same segment, from one load"

    one_copy = BIG.nbytes
    private = sum(after[w][0] - before[w][0] for w in after)
    mapped = [after[w][1] - before[w][1] for w in after]
    assert all(m >= 0.95 * one_copy for m in mapped), f"each worker maps the copy: {mapped}"
    # A copy per worker would add WORKERS * one_copy of private pages.
    assert private < one_copy / 2, (
        f"the workers' private memory grew by {private / 2**20:.1f} MiB in all, for "
        f"{WORKERS} workers using a {one_copy / 2**20:.1f} MiB slice"
    )


# Slow: a cluster of its own.  Not slow: the threads of one process in
# test_attach_from_many_threads_at_once_maps_once, below.
@pytest.mark.slow
def test_several_threads_per_worker_share_one_mapping_per_process(
    data_dir: Path, tmp_path: Path
) -> None:
    cache = shmstore.Cache(_cache_dir("threads"))
    try:
        options = _cluster_options(cache.directory) | {"threads_per_worker": 4}
        with LocalCluster(n_workers=2, **options) as cluster, Client(cluster) as threaded:
            handle = _handle(data_dir, "small")
            results = threaded.gather(
                threaded.map(children.sum_rows, range(150), handle=handle, per_task=10)
            )
        for task, (total, _, _, _) in enumerate(results):
            assert total == SMALL[task * 10 : (task + 1) * 10].sum()
        addresses: dict[int, set[int]] = {}
        threads: dict[int, set[int]] = {}
        for _, pid, address, thread in results:
            addresses.setdefault(pid, set()).add(address)
            threads.setdefault(pid, set()).add(thread)
        assert all(len(a) == 1 for a in addresses.values())
        assert max(len(t) for t in threads.values()) > 1, "tasks ran in several threads"
        assert _segments(cache) == [f"{handle.keys[0]}.seg"]
    finally:
        shutil.rmtree(cache.directory, ignore_errors=True)


# -- the worker plugin --------------------------------------------------------------------


def test_preload_plugin_on_4_workers_loads_once_and_pins_in_each(
    client: Client, node_cache: shmstore.Cache, data_dir: Path
) -> None:
    client.register_plugin(shmdask.Preload(data_dir / "data.h5", {"preloaded": (0, 1_000)}))

    handle = _handle(data_dir, "preloaded", (0, 1_000))
    origins = client.run(children.origin_of, handle)
    assert len(set(origins.values())) == 1, "one load for the node"
    (loader, _, _, directory) = next(iter(origins.values()))
    assert loader in client.run(children.pid).values(), "loaded by one of the workers"
    assert directory == str(node_cache.directory)
    pinned = client.run(children.pinned_slices)
    assert all(("preloaded", (0, 1_000), True) in slices for slices in pinned.values())
    entry = next(e for e in node_cache.entries() if e.key == handle.keys[0])
    assert entry.in_use
    block = node_cache.attach(handle.keys[0])  # the bytes of the dataset's one block
    np.testing.assert_array_equal(block.view("<i8").reshape(-1, 4)[:1_000], SMALL[:1_000] * 3)


def test_preload_plugin_for_a_missing_dataset_fails_the_registration(
    client: Client, data_dir: Path
) -> None:
    with pytest.raises(shmstore.ArrayNotFoundError, match="absent"):
        client.register_plugin(shmdask.Preload(data_dir / "data.h5", "absent"))


def test_preload_needs_dataset_names(data_dir: Path) -> None:
    with pytest.raises(ArgumentError, match="dataset names"):
        shmdask.Preload(data_dir / "data.h5", [])


def test_preload_of_the_same_slices_has_the_same_plugin_name(data_dir: Path) -> None:
    first = shmdask.Preload(data_dir / "data.h5", ["small", "zipped"])
    again = shmdask.Preload(str(data_dir / "data.h5"), ["small", "zipped"])
    other = shmdask.Preload(data_dir / "data.h5", ["small"])
    assert first.name == again.name != other.name


# -- dask arrays --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["small", "zipped"])
def test_from_store_sum_on_the_cluster_equals_numpy(
    client: Client, node_cache: shmstore.Cache, data_dir: Path, name: str
) -> None:
    array = shmdask.from_store(data_dir / "data.h5", name, chunks=(250, 4))

    assert array.shape == SMALL.shape
    assert array.dtype == SMALL.dtype
    assert array.numblocks == (6, 1)
    assert client.compute(array.sum()).result() == SMALL.sum()
    np.testing.assert_array_equal(client.compute(array[100:900, 1:3]).result(), SMALL[100:900, 1:3])


def test_from_store_loads_each_block_of_rows_into_the_cache_once(
    client: Client, node_cache: shmstore.Cache, data_dir: Path
) -> None:
    with shmstore.open(data_dir / "data.h5") as store:
        array = shmdask.from_store(store, "zipped", rows=(500, 1_500), chunks=(300, 4))
        blocks = [store.handle("zipped", (s, min(s + 300, 1_500))) for s in range(500, 1_500, 300)]
    assert array.chunks == ((300, 300, 300, 100), (4,))

    first, second = client.compute([array.sum(), array.max()], sync=True)

    assert first == SMALL[500:].sum()
    assert second == SMALL[500:].max()
    assert {f"{b.keys[0]}.seg" for b in blocks} <= set(_segments(node_cache))


# -- two nodes ----------------------------------------------------------------------------


def test_two_nodes_each_hold_their_own_single_copy(data_dir: Path) -> None:
    caches = {node: shmstore.Cache(_cache_dir(f"node-{node}")) for node in "ab"}
    workers = {
        f"{node}{i}": {
            "cls": Nanny,
            "options": {"nthreads": 1, "env": {"SHMSTORE_DIR": str(caches[node].directory)}},
        }
        for node in "ab"
        for i in range(2)
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
    handle = _handle(data_dir, "small", (0, 1_200))
    try:
        with (
            SpecCluster(
                workers=workers, scheduler=scheduler, silence_logs=logging.ERROR
            ) as cluster,
            Client(cluster) as two_nodes,
        ):
            results = two_nodes.gather(
                two_nodes.map(children.sum_rows, range(120), handle=handle, per_task=10)
            )
            two_nodes.run(children.touch_all, handle)
            origins = two_nodes.run(children.origin_of, handle)
            names = {
                info["id"]: address
                for address, info in two_nodes.scheduler_info()["workers"].items()
            }
        for task, (total, _, _, _) in enumerate(results):
            assert total == SMALL[task * 10 : (task + 1) * 10].sum()
        for node, cache in caches.items():
            assert _segments(cache) == [f"{handle.keys[0]}.seg"], f"node {node} holds one copy"
            seen = {origins[names[f"{node}{i}"]] for i in range(2)}
            assert len(seen) == 1, f"the workers of node {node} map one load"
            assert next(iter(seen))[3] == str(cache.directory)
        assert origins[names["a0"]][:3] != origins[names["b0"]][:3], "each node loaded its own"
        assert not (handle.cache.directory / f"{handle.keys[0]}.seg").exists(), (
            "the client's own cache was not used"
        )
    finally:
        for cache in caches.values():
            shutil.rmtree(cache.directory, ignore_errors=True)


# -- in one process -----------------------------------------------------------------------


@pytest.fixture
def small_store(sample_store: Any) -> Path:
    return sample_store({"x": SMALL, "z": SMALL.astype("<f4")})


def test_attach_returns_the_same_pinned_array_on_every_call(small_store: Path) -> None:
    with shmstore.open(small_store) as store:
        handle = store.handle("x", (10, 20))
    again = pickle.loads(pickle.dumps(handle))  # as a second task receives it
    try:
        first = shmdask.attach(handle)
        assert shmdask.attach(again) is first
        assert not first.flags.writeable
        np.testing.assert_array_equal(first, SMALL[10:20])
        assert [h.rows for h in shmdask.pinned()] == [(10, 20)]
        assert next(e for e in handle.cache.entries() if e.key == handle.keys[0]).in_use
    finally:
        assert shmdask.unpin_all() == 1
    assert shmdask.pinned() == []


def test_attach_from_many_threads_at_once_maps_once(small_store: Path) -> None:
    with shmstore.open(small_store) as store:
        handle = store.handle("x")
    barrier = threading.Barrier(8)
    arrays: list[np.ndarray[Any, Any]] = []

    def ask() -> None:
        barrier.wait()
        arrays.append(shmdask.attach(pickle.loads(pickle.dumps(handle))))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(arrays) == 8
        assert len({id(a) for a in arrays}) == 1
    finally:
        shmdask.unpin_all()


def test_attach_after_an_append_serves_the_new_version_and_moves_the_pin(
    small_store: Path,
) -> None:
    with shmstore.open(small_store) as store:
        handle = store.handle("x", (0, 10))
    version = handle.version
    try:
        old = shmdask.attach(handle)
        with shmstore.open(small_store, "r+") as store:
            store.write("x", SMALL + 1, overwrite=True)
        new = shmdask.attach(handle)
        np.testing.assert_array_equal(new, SMALL[:10] + 1)
        np.testing.assert_array_equal(old, SMALL[:10])  # kept pages stay what they were
        assert [h.version > version for h in shmdask.pinned()] == [True]
    finally:
        shmdask.unpin_all()


def test_attach_refuses_what_is_not_a_handle() -> None:
    with pytest.raises(ArgumentError, match=r"shmstore\.Handle"):
        shmdask.attach(np.zeros(3))  # type: ignore[arg-type]


def test_a_handle_has_a_stable_dask_token_that_changes_with_the_data(small_store: Path) -> None:
    with shmstore.open(small_store) as store:
        handle = store.handle("x")
    assert tokenize(handle) == tokenize(pickle.loads(pickle.dumps(handle)))
    with shmstore.open(small_store, "r+") as store:
        store.write("x", SMALL * 2, overwrite=True)
        changed = store.handle("x")
    assert tokenize(changed) != tokenize(handle)


def test_a_handle_of_the_default_cache_resolves_its_cache_where_it_is_used(
    small_store: Path,
) -> None:
    with shmstore.open(small_store) as store:
        default = store.handle("x")
    with shmstore.open(small_store, cache=shmstore.Cache(_cache_dir("explicit"))) as store:
        explicit = store.handle("x")
    try:
        assert default._cache_directory is None
        assert explicit.cache.directory == _cache_dir("explicit")
        assert pickle.loads(pickle.dumps(explicit)).cache.directory == _cache_dir("explicit")
    finally:
        shutil.rmtree(_cache_dir("explicit"), ignore_errors=True)


@pytest.mark.parametrize("name", ["x", "z"])
def test_from_store_with_the_local_scheduler_equals_numpy(small_store: Path, name: str) -> None:
    expected = SMALL if name == "x" else SMALL.astype("<f4")
    array = shmdask.from_store(small_store, name, rows=slice(-700, None), chunks=(50, 4))
    with dask.config.set(scheduler="threads"):
        np.testing.assert_array_equal(array.compute(), expected[-700:])
        assert array.sum().compute() == expected[-700:].sum()


def test_from_store_splits_rows_only_by_default(small_store: Path) -> None:
    array = shmdask.from_store(small_store, "x")
    assert array.chunks[1:] == ((4,),)
    assert isinstance(array, da.Array)


def test_from_store_refuses_chunks_that_do_not_fit(small_store: Path) -> None:
    with pytest.raises(ArgumentError, match="chunks"):
        shmdask.from_store(small_store, "x", chunks=(100, 4, 2))


def test_from_store_refuses_a_scalar_dataset(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "foreign.h5", "w") as written_by_h5py:
        written_by_h5py["s"] = 3.0
    with pytest.raises(RowsError, match="scalar"):
        shmdask.from_store(tmp_path / "foreign.h5", "s")


def test_from_store_after_a_rewrite_with_other_rows_raises_layout_error(small_store: Path) -> None:
    array = shmdask.from_store(small_store, "x", chunks=(500, 4))
    with shmstore.open(small_store, "r+") as store:
        store.write("x", np.zeros((1_500, 3), "<i8"), overwrite=True)
    with pytest.raises(LayoutError, match="make a new one"):
        array.compute(scheduler="sync")
