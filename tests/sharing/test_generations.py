"""Which blocks stay valid: generations per dataset, and what shmstore wrote last.

A block is keyed by its dataset's generation: shmstore's changes start a new
one for the dataset they change only, and a change by another tool is
detected through ``<file>.written`` (``docs/design.md``, "Keys and
generations").  Real HDF5 files, a real cache on /dev/shm.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

import shmstore


def _inodes(cache: shmstore.Cache, keys: tuple[str, ...]) -> list[int]:
    return [os.stat(cache.directory / f"{key}.seg").st_ino for key in keys]


@pytest.fixture
def two_datasets(tmp_path: Path) -> Path:
    path = tmp_path / "s.h5"
    with shmstore.open(path, "w") as store:
        store.write("a", np.arange(4_000, dtype="<f8").reshape(1_000, 4))
        store.write("b", np.arange(400, dtype="<i4").reshape(100, 4), appendable=True)
    return path


def test_shmstore_records_the_files_identity_after_its_last_write(two_datasets: Path) -> None:
    written = json.loads(two_datasets.with_name("s.h5.written").read_text())
    st = os.stat(two_datasets)
    assert (written["ino"], written["size"], written["mtime_ns"]) == (
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
    )


def test_an_append_to_another_dataset_keeps_every_block_of_this_one(
    two_datasets: Path, cache: shmstore.Cache
) -> None:
    with shmstore.open(two_datasets, cache=cache) as store:
        handle = store.handle("a")
    with handle.view():
        before = (handle.keys, _inodes(cache, handle.keys))
    with shmstore.open(two_datasets, "a") as store:
        store.append("b", np.ones((3, 4), dtype="<i4"))
    assert not handle.is_current()  # the file changed: the handle looks again...
    with handle.view() as arr:
        np.testing.assert_array_equal(arr[-1], [3996, 3997, 3998, 3999])
    assert (handle.keys, _inodes(cache, handle.keys)) == before  # ...and finds the same blocks


def test_an_overwrite_of_another_dataset_keeps_every_block_of_this_one(
    two_datasets: Path, cache: shmstore.Cache
) -> None:
    with shmstore.open(two_datasets, cache=cache) as store:
        handle = store.handle("a")
    with handle.view():
        before = _inodes(cache, handle.keys)
    with shmstore.open(two_datasets, "a") as store:
        store.write("b", np.zeros((5, 4), dtype="<i4"), overwrite=True)
    with handle.view():
        assert _inodes(cache, handle.keys) == before


def test_an_overwrite_starts_a_new_generation_of_that_dataset(
    two_datasets: Path, cache: shmstore.Cache
) -> None:
    with shmstore.open(two_datasets, cache=cache) as store:
        handle = store.handle("a")
    with handle.view():
        old = handle.generation
    with shmstore.open(two_datasets, "a") as store:
        store.write("a", np.full((1_000, 4), 7.0), overwrite=True)
    with handle.view() as arr:
        assert (arr == 7.0).all()
    assert handle.generation != old
    assert all(entry.generation == handle.generation for entry in cache.entries())


def test_an_h5py_write_in_place_is_a_new_generation_never_served_stale(
    two_datasets: Path, cache: shmstore.Cache
) -> None:
    with shmstore.open(two_datasets, cache=cache) as store:
        handle = store.handle("a")
    with handle.view():
        old = handle.generation
    with h5py.File(two_datasets, "r+") as file:
        file["a"][0] = [-1.0, -1.0, -1.0, -1.0]
    # The new bytes do not match the checksums shmstore recorded: an error, not the old rows.
    with pytest.raises(shmstore.IntegrityError, match="shmstore seal"), handle.view():
        pass
    with shmstore.open(two_datasets, "a") as store:
        store.seal("a")
    with handle.view() as arr:
        np.testing.assert_array_equal(arr[0], [-1.0, -1.0, -1.0, -1.0])
    assert handle.generation != old
    with shmstore.open(two_datasets, cache=cache) as store, store.view("a", (0, 1)) as arr:
        np.testing.assert_array_equal(arr[0], [-1.0, -1.0, -1.0, -1.0])


def test_a_shmstore_write_after_an_h5py_write_does_not_vouch_for_the_other_datasets(
    two_datasets: Path, cache: shmstore.Cache
) -> None:
    """The h5py change to "a" left its record as it was: a new epoch covers it."""
    with shmstore.open(two_datasets, cache=cache) as store:
        handle = store.handle("a")
    with handle.view():
        pass
    with h5py.File(two_datasets, "r+") as file:
        file["a"][0] = [-2.0, -2.0, -2.0, -2.0]
    with shmstore.open(two_datasets, "a") as store:  # shmstore writes last, to "b" only
        store.append("b", np.ones((1, 4), dtype="<i4"))
    # Not the old rows of "a": its new bytes fail their checksums until sealed.
    with pytest.raises(shmstore.IntegrityError), handle.view():
        pass
    with shmstore.open(two_datasets, "a") as store:
        store.seal("a")
    with handle.view() as arr:
        np.testing.assert_array_equal(arr[0], [-2.0, -2.0, -2.0, -2.0])


def test_a_file_copied_over_the_store_is_a_new_generation(
    two_datasets: Path, tmp_path: Path, cache: shmstore.Cache
) -> None:
    other = tmp_path / "other.h5"
    with shmstore.open(other, "w") as store:
        store.write("a", np.full((1_000, 4), 3.0))
    with shmstore.open(two_datasets, cache=cache) as store:
        handle = store.handle("a")
    with handle.view():
        pass
    os.replace(other, two_datasets)
    with handle.view() as arr:
        assert (arr == 3.0).all()


def test_a_written_record_that_is_not_json_is_a_foreign_change_not_an_error(
    two_datasets: Path, cache: shmstore.Cache
) -> None:
    two_datasets.with_name("s.h5.written").write_text("{ not json")
    with shmstore.open(two_datasets, cache=cache) as store:
        handle = store.handle("a")
        assert handle.generation.startswith("f")  # made from the file's identity
        with store.view("a", (0, 2)) as arr:
            np.testing.assert_array_equal(arr, np.arange(8, dtype="<f8").reshape(2, 4))


def test_an_append_to_the_dataset_reloads_only_its_last_block(
    tmp_path: Path, cache: shmstore.Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHMSTORE_BLOCK", "16K")
    path = tmp_path / "s.h5"
    rows = np.arange(10_000 * 4, dtype="<i8").reshape(10_000, 4)  # 320,000 bytes: 20 blocks
    with shmstore.open(path, "w") as store:
        store.write("log", rows, appendable=True)
    with shmstore.open(path, cache=cache) as store:
        handle = store.handle("log")
    with handle.view():
        before = dict(zip(handle.keys, _inodes(cache, handle.keys), strict=True))
    with shmstore.open(path, "a") as store:
        store.append("log", np.zeros((10, 4), dtype="<i8"))
    with shmstore.open(path, cache=cache) as store, store.view("log") as arr:
        assert len(arr) == 10_010
        keys = store.handle("log").keys
    after = dict(zip(keys, _inodes(cache, keys), strict=True))
    kept = {key for key in before if after.get(key) == before[key]}
    assert len(before) == 20
    assert kept == set(list(before)[:-1])  # every full block, not the old last one
    assert list(before)[-1] not in {e.key for e in cache.entries()}  # unmapped: removed
