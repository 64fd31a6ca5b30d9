"""The Store's public behaviour: names, info, versions, writing, appending, modes, locking."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest

import shmstore

DATA = np.arange(60, dtype="<f8").reshape(20, 3)
SampleStore = Callable[..., Path]  # the conftest fixture sample_store


def raw_files(path: Path) -> list[Path]:
    """The raw files in the store's ``<file>.raw/`` directory."""
    raw_dir = path.with_name(path.name + ".raw")
    return sorted(raw_dir.iterdir()) if raw_dir.is_dir() else []


def add_compact(path: Path, name: str, values: np.ndarray) -> None:
    """Add a compact dataset with plain h5py (shmstore never writes one)."""
    with h5py.File(path, "a") as file:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.COMPACT)
        space = h5py.h5s.create_simple(values.shape)
        type_id = h5py.h5t.py_create(values.dtype)
        h5py.h5d.create(file.id, name.encode(), type_id, space, dcpl=dcpl)
        file[name][...] = values


# -- what is stored ---------------------------------------------------------------


def test_names_are_every_dataset_path_sorted_nested_ones_included(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        for name in ("z", "grp/sub/ds", "grp/a", "a.b-c_d"):
            store.write(name, DATA)
        assert store.names() == ["a.b-c_d", "grp/a", "grp/sub/ds", "z"]


def test_iteration_and_len_follow_names(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        for name in ("b", "grp/sub/ds", "a"):
            store.write(name, DATA)
        assert list(store) == store.names()
        assert len(store) == 3


def test_in_is_true_for_datasets_only(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        store.write("grp/sub/ds", DATA)
        assert "grp/sub/ds" in store
        assert "grp" not in store
        assert "grp/sub" not in store
        assert "missing" not in store


@pytest.mark.parametrize("name", [7, None, ("x",), ["x"], {"x": 1}], ids=repr)
def test_in_is_false_for_something_that_is_not_a_name(store_path: Path, name: object) -> None:
    with shmstore.open(store_path, "w") as store:
        store.write("x", DATA)
        assert name not in store


def test_an_empty_store_has_no_names(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        assert (store.names(), len(store), list(store)) == ([], 0, [])


def test_info_of_a_contiguous_dataset(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        info = store.write("plain", DATA)
        assert store.info("plain") == info
    assert isinstance(info, shmstore.ArrayInfo)
    assert (info.name, info.shape, info.dtype, info.layout) == (
        "plain",
        (20, 3),
        DATA.dtype,
        "contiguous",
    )
    assert (info.chunks, info.compression, info.appendable) == (None, None, False)
    assert (info.nbytes, info.rows, info.row_nbytes) == (480, 20, 24)


def test_info_of_a_compressed_dataset_names_chunks_filter_and_level(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        info = store.write("packed", DATA, chunks=(5, 3), compression="gzip")
    assert (info.layout, info.chunks, info.compression, info.compression_opts) == (
        "chunked",
        (5, 3),
        "gzip",
        4,
    )
    assert (info.appendable, info.nbytes) == (False, 480)


def test_info_of_a_chunked_uncompressed_dataset(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        info = store.write("chunks", DATA, chunks=(4, 1))
    assert (info.layout, info.chunks, info.compression) == ("chunked", (4, 1), None)


def test_info_of_an_appended_dataset_is_external_and_appendable(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        store.append("grown", DATA[:5])
        info = store.append("grown", DATA[5:])
    assert (info.layout, info.appendable, info.shape, info.nbytes) == (
        "external",
        True,
        (20, 3),
        480,
    )


def test_info_of_a_chunked_appendable_dataset(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        info = store.write("log", DATA, appendable=True, compression="lzf")
    assert (info.layout, info.appendable, info.compression) == ("chunked", True, "lzf")


def test_info_of_a_missing_dataset_is_a_key_error_naming_what_exists(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        store.write("present", DATA)
        with pytest.raises(shmstore.ArrayNotFoundError, match=r"no dataset 'absent'.*'present'"):
            store.info("absent")
        with pytest.raises(KeyError):
            store.info("absent")


@pytest.mark.parametrize("name", [7, None, ["x"]], ids=repr)
def test_info_of_something_that_is_not_a_name_is_an_argument_error(
    store_path: Path, name: object
) -> None:
    with shmstore.open(store_path, "w") as store:
        store.write("x", DATA)
        for access in (store.info, store.read, store.memmap, store.delete):
            with pytest.raises(shmstore.ArgumentError, match="must be a str"):
                access(name)  # type: ignore[operator]


def test_the_manifest_lists_every_dataset_as_info_gives_it(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        store.write("a", DATA)
        store.append("grp/b", DATA)
        manifest = store.manifest
        assert isinstance(manifest, shmstore.Manifest)
        assert not manifest.inferred
        assert manifest.arrays == {"a": store.info("a"), "grp/b": store.info("grp/b")}


def test_the_manifest_survives_closing_and_reopening(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        store.write("a", DATA, chunks=(5, 3))
        store.append("b", DATA)
        before = store.manifest
    with shmstore.open(store_path) as store:
        assert store.manifest == before


# -- versions ---------------------------------------------------------------------


def test_write_append_and_overwrite_move_the_dataset_version_forward(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        written = store.write("x", DATA, appendable=True).version
        appended = store.append("x", DATA).version
        replaced = store.write("x", DATA, overwrite=True).version
        assert written < appended < replaced == store.info("x").version


def test_delete_then_recreate_gives_a_higher_version(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        first = store.write("x", DATA).version
        store.delete("x")
    with shmstore.open(store_path, "a") as store:  # also across sessions
        assert store.write("x", DATA).version > first


def test_a_change_leaves_the_versions_of_other_datasets_alone(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        other = store.write("other", DATA).version
        store.write("x", DATA)
        store.append("y", DATA)
        store.delete("x")
        assert store.info("other").version == other


def test_appending_no_rows_changes_nothing(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        before = store.append("x", DATA)
        assert store.append("x", DATA[:0]) == before
        assert store.info("x") == before


def test_versions_are_kept_across_sessions(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        store.write("x", DATA)
        version = store.append("y", DATA).version
    with shmstore.open(store_path) as store:
        assert store.info("y").version == version


# -- opening and closing ----------------------------------------------------------


def test_the_context_manager_closes_the_store(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        store.write("x", DATA)
    with pytest.raises(shmstore.ShmStoreError, match="closed"):
        store.names()


def test_close_is_idempotent(store_path: Path) -> None:
    store = shmstore.open(store_path, "w")
    store.close()
    store.close()
    assert "closed" in repr(store)


CLOSED_OPS: dict[str, Callable[[shmstore.Store], object]] = {
    "names": lambda s: s.names(),
    "in": lambda s: "x" in s,
    "len": len,
    "iter": list,
    "info": lambda s: s.info("x"),
    "manifest": lambda s: s.manifest,
    "read": lambda s: s.read("x"),
    "memmap": lambda s: s.memmap("x"),
    "view": lambda s: s.view("x", mode="memory").__enter__(),
    "write": lambda s: s.write("y", DATA),
    "append": lambda s: s.append("x", DATA),
    "delete": lambda s: s.delete("x"),
}


@pytest.mark.parametrize("op", sorted(CLOSED_OPS))
def test_every_operation_on_a_closed_store_says_it_is_closed(
    sample_store: SampleStore, op: str
) -> None:
    store = shmstore.open(sample_store(), "a")
    store.close()
    with pytest.raises(shmstore.ShmStoreError, match="is closed; open it again"):
        CLOSED_OPS[op](store)


def test_closing_releases_the_lock_for_the_next_writer(sample_store: SampleStore) -> None:
    path = sample_store()
    store = shmstore.open(path, "a")
    store.close()
    with shmstore.open(path, "a", lock_timeout=0.2) as again:
        assert "x" in again


def test_mode_r_of_a_missing_file_is_a_file_not_found_error(store_path: Path) -> None:
    with pytest.raises(shmstore.StoreNotFoundError, match="mode 'a' to create") as caught:
        shmstore.open(store_path)
    assert isinstance(caught.value, FileNotFoundError)
    assert not store_path.exists()


def test_mode_r_plus_of_a_missing_file_is_a_file_not_found_error(store_path: Path) -> None:
    with pytest.raises(shmstore.StoreNotFoundError):
        shmstore.open(store_path, "r+")
    assert not store_path.exists()


@pytest.mark.parametrize("mode", ["a", "w", "w-", "x"])
def test_creating_modes_make_a_new_store(store_path: Path, mode: str) -> None:
    with shmstore.open(store_path, mode) as store:
        store.write("x", DATA)
    with shmstore.open(store_path) as store:
        np.testing.assert_array_equal(store.read("x"), DATA)


@pytest.mark.parametrize("mode", ["a", "w", "x"])
def test_a_store_in_a_missing_directory_is_a_file_not_found_error(
    tmp_path: Path, mode: str
) -> None:
    path = tmp_path / "no" / "such" / "dir" / "s.h5"
    with pytest.raises(shmstore.StoreNotFoundError, match="directory") as caught:
        shmstore.open(path, mode)
    assert isinstance(caught.value, FileNotFoundError)


def test_mode_a_keeps_what_is_there(sample_store: SampleStore) -> None:
    with shmstore.open(sample_store(), "a") as store:
        assert store.names() == ["x"]


def test_mode_r_plus_writes_an_existing_store(sample_store: SampleStore) -> None:
    path = sample_store()
    with shmstore.open(path, "r+") as store:
        store.write("y", DATA)
    with shmstore.open(path) as store:
        assert store.names() == ["x", "y"]


def test_mode_w_truncates_and_drops_the_raw_files(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        store.write("x", DATA)
        store.append("grown", DATA)
    assert len(raw_files(store_path)) == 1
    with shmstore.open(store_path, "w") as store:
        assert store.names() == []
    assert raw_files(store_path) == []


@pytest.mark.parametrize("mode", ["w-", "x"])
def test_create_only_modes_refuse_an_existing_file_and_keep_it(
    sample_store: SampleStore, mode: str
) -> None:
    path = sample_store()
    before = path.read_bytes()
    with pytest.raises(shmstore.ArgumentError, match="only creates new files"):
        shmstore.open(path, mode)
    assert path.read_bytes() == before


@pytest.mark.parametrize("mode", ["rw", "R", "", "wb", None, 1])
def test_an_unknown_mode_is_refused(store_path: Path, mode: object) -> None:
    with pytest.raises(shmstore.ArgumentError, match="mode must be one of"):
        shmstore.open(store_path, mode)  # type: ignore[arg-type]
    assert not store_path.exists()


def test_opening_for_writing_without_a_change_leaves_the_file_untouched(
    sample_store: SampleStore,
) -> None:
    path = sample_store()
    before = os.stat(path)
    with shmstore.open(path, "a") as store:
        store.read("x")
    after = os.stat(path)
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size)


WRITES: dict[str, Callable[[shmstore.Store], object]] = {
    "write": lambda s: s.write("y", DATA),
    "overwrite": lambda s: s.write("x", DATA, overwrite=True),
    "append": lambda s: s.append("x", DATA),
    "append-new": lambda s: s.append("new", DATA),
    "delete": lambda s: s.delete("x"),
}


@pytest.mark.parametrize("change", sorted(WRITES))
def test_changes_in_mode_r_are_read_only_errors_and_change_nothing(
    sample_store: SampleStore, change: str
) -> None:
    path = sample_store()
    before, stat = path.read_bytes(), os.stat(path)
    with shmstore.open(path) as store:
        with pytest.raises(shmstore.ReadOnlyError, match="open it with mode 'a'") as caught:
            WRITES[change](store)
        assert store.names() == ["x"]
    assert isinstance(caught.value, PermissionError)
    assert path.read_bytes() == before
    assert os.stat(path).st_mtime_ns == stat.st_mtime_ns
    assert raw_files(path) == []


# -- writing ------------------------------------------------------------------------


def test_write_creates_the_groups_of_a_nested_name(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        store.write("a/b/c/d", DATA)
    with h5py.File(store_path) as file:
        assert isinstance(file["a/b/c"], h5py.Group)
        np.testing.assert_array_equal(file["a/b/c/d"][()], DATA)


def test_write_under_a_dataset_is_refused(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        store.write("x", DATA)
        with pytest.raises(shmstore.ArgumentError, match="'x' is a dataset, not a group"):
            store.write("x/y", DATA)
        np.testing.assert_array_equal(store.read("x"), DATA)


def test_write_over_a_group_is_refused(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        store.write("grp/x", DATA)
        with pytest.raises(shmstore.ArgumentError, match=r"'grp'.*group"):
            store.write("grp", DATA, overwrite=True)
        assert store.names() == ["grp/x"]


def test_write_without_overwrite_refuses_an_existing_name_and_keeps_it(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        info = store.write("x", DATA)
        with pytest.raises(shmstore.ArgumentError, match=r"'x' already exists.*overwrite=True"):
            store.write("x", -DATA)
        assert store.info("x") == info
        np.testing.assert_array_equal(store.read("x"), DATA)
    with shmstore.open(store_path) as store:
        np.testing.assert_array_equal(store.read("x"), DATA)


def test_overwrite_replaces_shape_dtype_and_data(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        store.write("x", DATA)
        store.write("x", np.ones((4, 2, 2), dtype=">i2"), overwrite=True)
    with shmstore.open(store_path) as store:
        assert store.info("x").shape == (4, 2, 2)
        assert store.read("x").dtype == np.dtype(">i2")
        np.testing.assert_array_equal(store.read("x"), np.ones((4, 2, 2)))


def test_overwrite_removes_the_old_raw_file_of_an_appendable_dataset(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        store.append("x", DATA)
        (old_raw,) = raw_files(store_path)
        store.write("x", -DATA[:5], overwrite=True)
        np.testing.assert_array_equal(store.read("x"), -DATA[:5])
    assert not old_raw.exists()
    assert raw_files(store_path) == []


def test_overwrite_with_an_appendable_dataset_swaps_the_raw_file(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        store.append("x", DATA)
        (old_raw,) = raw_files(store_path)
        store.write("x", -DATA, appendable=True, overwrite=True)
        (new_raw,) = raw_files(store_path)
        np.testing.assert_array_equal(store.memmap("x"), -DATA)
    assert new_raw != old_raw


def test_delete_removes_the_dataset_and_its_raw_file(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        store.append("x", DATA)
        store.write("y", DATA)
        store.delete("x")
        assert store.names() == ["y"]
    assert raw_files(store_path) == []
    with shmstore.open(store_path) as store:
        assert store.names() == ["y"]


def test_delete_of_a_missing_dataset_is_a_key_error(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        store.write("grp/x", DATA)
        for name in ("absent", "grp"):
            with pytest.raises(shmstore.ArrayNotFoundError):
                store.delete(name)
        assert store.names() == ["grp/x"]


# -- appending ---------------------------------------------------------------------


def test_append_to_a_new_name_makes_a_mappable_dataset_in_a_raw_file(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        store.append("grp/log", DATA[:4])
        store.append("grp/log", DATA[4:])
        info = store.info("grp/log")
        assert (info.layout, info.appendable, info.rows) == ("external", True, 20)
        mapped = store.memmap("grp/log")
        assert isinstance(mapped, np.memmap)
        np.testing.assert_array_equal(mapped, DATA)
    (raw,) = raw_files(store_path)
    assert raw.parent == store_path.with_name("store.h5.raw")
    assert raw.suffix == ".bin"
    assert raw.stat().st_size == DATA.nbytes


def test_the_raw_file_name_is_stored_relative(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        store.append("x", DATA)
    with h5py.File(store_path) as file:
        name, _offset, _size = file["x"].id.get_create_plist().get_external(0)
    assert not Path(os.fsdecode(name)).is_absolute()
    assert name.decode().startswith("store.h5.raw/")


def test_write_appendable_then_append_then_memmap(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        assert store.write("x", DATA[:10], appendable=True).layout == "external"
        store.append("x", DATA[10:])
        np.testing.assert_array_equal(store.memmap("x"), DATA)
    with shmstore.open(store_path) as store:
        np.testing.assert_array_equal(store.memmap("x", (-5, None)), DATA[-5:])


def test_appending_to_an_empty_appendable_dataset(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        store.append("x", DATA[:0])
        assert store.info("x").shape == (0, 3)
        store.append("x", DATA)
        np.testing.assert_array_equal(store.memmap("x"), DATA)


def test_a_chunked_appendable_dataset_grows(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        store.write("x", DATA[:10], appendable=True, compression="gzip", chunks=(4, 3))
        grown = store.append("x", DATA[10:])
        assert (grown.layout, grown.rows, grown.chunks) == ("chunked", 20, (4, 3))
    with shmstore.open(store_path) as store:
        np.testing.assert_array_equal(store.read("x"), DATA)


def test_many_small_appends_add_up(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as store:
        for row in DATA:
            store.append("x", row[np.newaxis])
        np.testing.assert_array_equal(store.memmap("x"), DATA)


@pytest.mark.parametrize("options", [{}, {"chunks": (5, 3)}, {"compression": "gzip"}], ids=str)
def test_append_to_a_fixed_size_dataset_says_how_to_make_it_appendable(
    store_path: Path, options: dict[str, object]
) -> None:
    with shmstore.open(store_path, "w") as store:
        store.write("x", DATA, **options)  # type: ignore[arg-type]
        with pytest.raises(
            shmstore.LayoutError, match=r"fixed size.*write\('x', data, appendable=True"
        ):
            store.append("x", DATA)
        np.testing.assert_array_equal(store.read("x"), DATA)


@pytest.mark.parametrize(
    "rows", [np.zeros((2, 4)), np.zeros(3), np.zeros((2, 3, 1))], ids=["wider", "1-d", "3-d"]
)
@pytest.mark.parametrize("appended", ["external", "chunked"])
def test_append_with_another_row_shape_is_refused(
    store_path: Path, rows: np.ndarray, appended: str
) -> None:
    with shmstore.open(store_path, "w") as store:
        store.write("x", DATA, appendable=True, chunks=True if appended == "chunked" else None)
        with pytest.raises(shmstore.LayoutError, match=r"shape \(n, 3\)"):
            store.append("x", rows)
        assert store.info("x").rows == 20
        np.testing.assert_array_equal(store.read("x"), DATA)


@pytest.mark.parametrize("dtype", ["<i4", "<f4", "<c16", "|S8", [("a", "<f8")]], ids=str)
def test_append_with_another_dtype_is_refused_saying_how_to_convert(
    store_path: Path, dtype: object
) -> None:
    with shmstore.open(store_path, "w") as store:
        store.append("x", DATA)
        with pytest.raises(shmstore.UnsupportedDtypeError, match=r"astype\('float64'\)"):
            store.append("x", np.zeros((1, 3), dtype=dtype))
        np.testing.assert_array_equal(store.read("x"), DATA)


@pytest.mark.parametrize("appended", ["external", "chunked"])
def test_append_with_only_another_byte_order_is_accepted(store_path: Path, appended: str) -> None:
    with shmstore.open(store_path, "w") as store:
        store.write("x", DATA, appendable=True, chunks=True if appended == "chunked" else None)
        store.append("x", DATA.astype(">f8"))
        assert store.info("x").dtype == np.dtype("<f8")
        np.testing.assert_array_equal(store.read("x"), np.concatenate([DATA, DATA]))


def test_append_of_a_big_endian_compound_in_the_other_byte_order(store_path: Path) -> None:
    big = np.zeros(4, dtype=[("t", ">f8"), ("n", ">i4", (2,))])
    big["t"], big["n"] = np.arange(4), 7
    with shmstore.open(store_path, "w") as store:
        store.append("x", big)
        store.append("x", big.astype([("t", "<f8"), ("n", "<i4", (2,))]))
        got = store.read("x")
    assert got.dtype == big.dtype
    np.testing.assert_array_equal(got, np.concatenate([big, big]))


# -- memory maps --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [({"chunks": (5, 3)}, "chunked"), ({"compression": "gzip"}, "compressed with gzip")],
    ids=["chunked", "gzip"],
)
def test_memmap_of_a_chunked_dataset_names_its_layout(
    store_path: Path, options: dict[str, object], named: str
) -> None:
    with shmstore.open(store_path, "w") as store:
        store.write("x", DATA, **options)  # type: ignore[arg-type]
        with pytest.raises(shmstore.NotContiguousError, match=named) as caught:
            store.memmap("x")
    assert isinstance(caught.value, shmstore.LayoutError)
    assert "use read()" in str(caught.value)


def test_memmap_of_a_compact_dataset_names_its_layout(sample_store: SampleStore) -> None:
    path = sample_store()
    add_compact(path, "tiny", np.arange(4, dtype="<i4"))
    with shmstore.open(path) as store:
        assert store.info("tiny").layout == "compact"
        np.testing.assert_array_equal(store.read("tiny"), np.arange(4))
        with pytest.raises(shmstore.NotContiguousError, match="stored compact"):
            store.memmap("tiny")


def test_a_memmap_outlives_its_store(sample_store: SampleStore) -> None:
    path = sample_store({"x": DATA})
    with shmstore.open(path) as store:
        mapped = store.memmap("x", (5, 10))
    np.testing.assert_array_equal(mapped, DATA[5:10])


def test_the_pair_moves_together_and_opens_from_another_directory(
    store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with shmstore.open(store_path, "w") as store:
        store.append("x", DATA)
        store.write("y", DATA, appendable=True)
    moved = tmp_path / "elsewhere" / "deeper"
    moved.mkdir(parents=True)
    shutil.move(store_path, moved / "store.h5")
    shutil.move(store_path.with_name("store.h5.raw"), moved / "store.h5.raw")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    with shmstore.open(moved / "store.h5") as store:
        for name in ("x", "y"):
            np.testing.assert_array_equal(store.read(name), DATA)
            np.testing.assert_array_equal(store.memmap(name), DATA)
    monkeypatch.chdir(moved.parent)
    with shmstore.open("deeper/store.h5", "a") as store:  # a relative path, and a write
        store.append("x", DATA)
        np.testing.assert_array_equal(store.read("x")[20:], DATA)


# -- locking -------------------------------------------------------------------------

HOLDER = """
import sys, shmstore
store = shmstore.open(sys.argv[1], sys.argv[2])
print("open", flush=True)
sys.stdin.readline()
store.close()
print("closed", flush=True)
"""


@contextmanager
def held(path: Path, mode: str) -> Iterator[subprocess.Popen[str]]:
    """Another process holding *path* open in *mode* until a line is written to it."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "open"
        yield child
    finally:
        child.kill()
        child.wait()


def release(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.write("\n")
    child.stdin.flush()


def test_a_second_writer_times_out_while_the_first_holds_the_store(
    sample_store: SampleStore,
) -> None:
    path = sample_store()
    with held(path, "a"):
        started = time.monotonic()
        with pytest.raises(shmstore.LockTimeoutError, match="open in another process") as caught:
            shmstore.open(path, "a", lock_timeout=0.3)
        assert time.monotonic() - started >= 0.3
    assert isinstance(caught.value, TimeoutError)
    assert "lock_timeout" in str(caught.value)


def test_a_reader_times_out_while_a_writer_holds_the_store(sample_store: SampleStore) -> None:
    path = sample_store()
    with held(path, "a"), pytest.raises(shmstore.LockTimeoutError, match="for writing"):
        shmstore.open(path, "r", lock_timeout=0.3)


def test_a_second_writer_waits_for_the_first_to_close(sample_store: SampleStore) -> None:
    path = sample_store()
    with held(path, "a") as child:
        timer = threading.Timer(0.5, release, (child,))
        timer.start()
        started = time.monotonic()
        try:
            with shmstore.open(path, "a", lock_timeout=30) as store:
                waited = time.monotonic() - started
                store.write("y", DATA)
        finally:
            timer.cancel()
    assert waited >= 0.4
    with shmstore.open(path) as store:
        assert store.names() == ["x", "y"]


def test_a_killed_writer_leaves_no_lock_behind(sample_store: SampleStore) -> None:
    path = sample_store()
    with held(path, "a") as child:
        child.kill()
        child.wait()
        with shmstore.open(path, "a", lock_timeout=5) as store:
            assert store.names() == ["x"]


def test_readers_share_the_store(sample_store: SampleStore) -> None:
    path = sample_store()
    with (
        held(path, "r"),
        shmstore.open(path, lock_timeout=0.3) as first,
        shmstore.open(path, lock_timeout=0.3) as second,
    ):
        np.testing.assert_array_equal(first.read("x"), second.read("x"))


def test_a_writer_waits_for_readers(sample_store: SampleStore) -> None:
    path = sample_store()
    with held(path, "r"), pytest.raises(shmstore.LockTimeoutError):
        shmstore.open(path, "a", lock_timeout=0.3)


def test_opening_a_store_this_thread_holds_for_writing_fails_at_once(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as writer:
        writer.write("x", np.arange(3))
        handle = writer.handle("x")
        started = time.monotonic()
        with pytest.raises(shmstore.LockTimeoutError, match="in this thread already"):
            shmstore.open(store_path, "r", lock_timeout=30)
        with pytest.raises(shmstore.LockTimeoutError, match="in this thread already"):
            handle.view("shared")  # would open the store to load the rows
        assert time.monotonic() - started < 5  # not the 30 s timeout
    with handle.view("shared") as array:  # closed: the handle opens it
        np.testing.assert_array_equal(array, np.arange(3))


def test_writing_a_store_this_thread_reads_fails_at_once(store_path: Path) -> None:
    with shmstore.open(store_path, "w") as writer:
        writer.write("x", np.arange(3))
    with (
        shmstore.open(store_path) as reader,
        shmstore.open(store_path) as second,
    ):  # readers share it
        assert reader.names() == second.names() == ["x"]
        with pytest.raises(shmstore.LockTimeoutError, match="for reading in this thread"):
            shmstore.open(store_path, "a", lock_timeout=30)
    with shmstore.open(store_path, "a", lock_timeout=1):  # once closed, it opens
        pass
