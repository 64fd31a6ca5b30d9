"""The Store's public behaviour: names, info, versions, layouts, modes, locking."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import shmstore

DATA = np.arange(60, dtype="<f8").reshape(20, 3)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store.h5"


def test_names_list_nested_datasets_sorted(path: Path) -> None:
    with shmstore.open(path, "w") as store:
        for name in ("z", "grp/sub/ds", "grp/a"):
            store.write(name, DATA)
        assert store.names() == ["grp/a", "grp/sub/ds", "z"]
        assert list(store) == store.names()
        assert len(store) == 3
        assert "grp/sub/ds" in store
        assert "grp" not in store
        assert "missing" not in store


def test_info_describes_shape_dtype_layout_and_size(path: Path) -> None:
    with shmstore.open(path, "w") as store:
        store.write("plain", DATA)
        store.write("packed", DATA, chunks=(5, 3), compression="gzip")
        store.append("grown", DATA)
        plain, packed, grown = (store.info(n) for n in ("plain", "packed", "grown"))
    assert (plain.shape, plain.dtype, plain.layout, plain.nbytes) == (
        (20, 3),
        DATA.dtype,
        "contiguous",
        480,
    )
    assert (plain.chunks, plain.compression, plain.appendable) == (None, None, False)
    assert (packed.layout, packed.chunks, packed.compression) == ("chunked", (5, 3), "gzip")
    assert (grown.layout, grown.appendable) == ("external", True)


def test_info_of_a_missing_dataset_is_a_key_error_naming_what_exists(path: Path) -> None:
    with shmstore.open(path, "w") as store:
        store.write("present", DATA)
        with pytest.raises(KeyError, match=r"no dataset 'absent'.*'present'"):
            store.info("absent")
        with pytest.raises(shmstore.ArrayNotFoundError):
            store.read("absent")


def test_every_change_moves_the_versions_forward(path: Path) -> None:
    with shmstore.open(path, "w") as store:
        first = store.write("x", DATA).version
        second = store.append("y", DATA).version
        third = store.append("y", DATA).version
        store.delete("x")
        recreated = store.write("x", DATA).version
        assert first < second < third < recreated


def test_overwrite_false_keeps_the_existing_data(path: Path) -> None:
    with shmstore.open(path, "w") as store:
        store.write("x", DATA)
        with pytest.raises(shmstore.ArgumentError, match="overwrite=True"):
            store.write("x", -DATA)
        np.testing.assert_array_equal(store.read("x"), DATA)


def test_overwrite_replaces_the_data_and_the_old_raw_file(path: Path) -> None:
    with shmstore.open(path, "w") as store:
        store.append("x", DATA)
        raw_dir = path.with_name(path.name + ".raw")
        (old_raw,) = raw_dir.iterdir()
        store.write("x", -DATA[:5], overwrite=True)
        np.testing.assert_array_equal(store.read("x"), -DATA[:5])
        assert not old_raw.exists()


def test_append_to_a_new_name_makes_a_mappable_dataset_in_a_raw_file(path: Path) -> None:
    with shmstore.open(path, "w") as store:
        store.append("log", DATA[:4])
        store.append("log", DATA[4:])
        info = store.info("log")
        assert (info.layout, info.rows) == ("external", 20)
        assert isinstance(store.memmap("log"), np.memmap)
        np.testing.assert_array_equal(store.memmap("log", (-3, None)), DATA[-3:])
    assert [p.suffix for p in path.with_name(path.name + ".raw").iterdir()] == [".bin"]


def test_write_appendable_then_append(path: Path) -> None:
    with shmstore.open(path, "w") as store:
        store.write("x", DATA[:10], appendable=True)
        store.append("x", DATA[10:])
        np.testing.assert_array_equal(store.memmap("x"), DATA)


def test_a_chunked_appendable_dataset_grows(path: Path) -> None:
    with shmstore.open(path, "w") as store:
        store.write("x", DATA[:10], appendable=True, compression="gzip")
        store.append("x", DATA[10:])
        assert store.info("x").layout == "chunked"
        np.testing.assert_array_equal(store.read("x"), DATA)


def test_append_to_a_fixed_size_dataset_says_how_to_make_it_appendable(path: Path) -> None:
    with shmstore.open(path, "w") as store:
        store.write("x", DATA)
        with pytest.raises(shmstore.LayoutError, match=r"appendable=True, overwrite=True"):
            store.append("x", DATA)
        np.testing.assert_array_equal(store.read("x"), DATA)


def test_append_with_another_row_shape_is_refused(path: Path) -> None:
    with shmstore.open(path, "w") as store:
        store.append("x", DATA)
        with pytest.raises(shmstore.LayoutError, match=r"shape \(n, 3\)"):
            store.append("x", np.zeros((2, 4)))
        assert store.info("x").rows == 20


def test_append_with_another_dtype_is_refused(path: Path) -> None:
    with shmstore.open(path, "w") as store:
        store.append("x", DATA)
        with pytest.raises(shmstore.UnsupportedDtypeError, match="astype"):
            store.append("x", np.zeros((2, 3), dtype=np.int32))


def test_append_with_only_another_byte_order_is_accepted(path: Path) -> None:
    with shmstore.open(path, "w") as store:
        store.append("x", DATA)
        store.append("x", DATA.astype(">f8"))
        np.testing.assert_array_equal(store.read("x"), np.concatenate([DATA, DATA]))
        assert store.info("x").dtype == np.dtype("<f8")


@pytest.mark.parametrize("options", [{"chunks": (5, 3)}, {"compression": "gzip"}])
def test_memmap_of_a_chunked_dataset_names_its_layout(
    path: Path, options: dict[str, object]
) -> None:
    with shmstore.open(path, "w") as store:
        store.write("x", DATA, **options)  # type: ignore[arg-type]
        with pytest.raises(shmstore.NotContiguousError, match="chunked") as caught:
            store.memmap("x")
    assert isinstance(caught.value, shmstore.LayoutError)


def test_memmaps_are_read_only(path: Path) -> None:
    with shmstore.open(path, "w") as store:
        store.write("x", DATA)
        mapped = store.memmap("x")
        with pytest.raises(ValueError, match="read-only"):
            mapped[0, 0] = 1.0


def test_the_pair_moves_together_and_opens_from_any_directory(path: Path, tmp_path: Path) -> None:
    with shmstore.open(path, "w") as store:
        store.append("x", DATA)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.move(str(path), moved / path.name)
    shutil.move(str(path.with_name(path.name + ".raw")), moved / (path.name + ".raw"))
    code = (
        "import shmstore, sys, numpy as np; s = shmstore.open(sys.argv[1]);"
        "print(s.read('x').sum(), np.asarray(s.memmap('x')).sum())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(moved / path.name)],
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.split() == [str(DATA.sum())] * 2


def test_mode_r_of_a_missing_file_is_a_file_not_found_error(path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="mode 'a' to create"):
        shmstore.open(path)
    with pytest.raises(shmstore.StoreNotFoundError):
        shmstore.open(path, "r+")


def test_mode_w_truncates(path: Path) -> None:
    with shmstore.open(path, "w") as store:
        store.write("x", DATA)
    with shmstore.open(path, "w") as store:
        assert store.names() == []


@pytest.mark.parametrize("mode", ["w-", "x"])
def test_create_only_modes_refuse_an_existing_file(path: Path, mode: str) -> None:
    shmstore.open(path, "w").close()
    with pytest.raises(shmstore.ArgumentError, match="only creates new files"):
        shmstore.open(path, mode)


def test_an_unknown_mode_is_refused(path: Path) -> None:
    with pytest.raises(shmstore.ArgumentError, match="mode must be one of"):
        shmstore.open(path, "rw")


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s.write("y", DATA),
        lambda s: s.append("x", DATA),
        lambda s: s.delete("x"),
    ],
    ids=["write", "append", "delete"],
)
def test_changes_in_mode_r_are_permission_errors_and_change_nothing(
    path: Path, change: object
) -> None:
    with shmstore.open(path, "w") as store:
        store.write("x", DATA)
    before = path.read_bytes()
    with shmstore.open(path) as store, pytest.raises(PermissionError, match="mode 'a'"):
        change(store)  # type: ignore[operator]
    assert path.read_bytes() == before


def test_opening_for_append_without_changing_leaves_the_file_untouched(path: Path) -> None:
    with shmstore.open(path, "w") as store:
        store.write("x", DATA)
    before = os.stat(path)
    with shmstore.open(path, "a") as store:
        store.read("x")
    after = os.stat(path)
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size)


def test_a_closed_store_says_so(path: Path) -> None:
    store = shmstore.open(path, "w")
    store.close()
    store.close()
    with pytest.raises(shmstore.ShmStoreError, match="closed"):
        store.names()


def test_a_second_writer_waits_for_the_first_and_times_out(path: Path) -> None:
    shmstore.open(path, "w").close()
    hold = (
        "import shmstore, sys, time; s = shmstore.open(sys.argv[1], 'a');"
        "print('open', flush=True); time.sleep(30)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(TimeoutError, match="open in another process"):
            shmstore.open(path, "a", lock_timeout=0.3)
        with pytest.raises(shmstore.LockTimeoutError):
            shmstore.open(path, "r", lock_timeout=0.3)
    finally:
        holder.kill()
        holder.wait()
    with shmstore.open(path, "a", lock_timeout=5):  # a killed writer leaves no lock behind
        pass


def test_readers_share_the_store(path: Path) -> None:
    with shmstore.open(path, "w") as store:
        store.write("x", DATA)
    with shmstore.open(path) as first, shmstore.open(path, lock_timeout=1) as second:
        np.testing.assert_array_equal(first.read("x"), second.read("x"))


def test_opening_a_store_this_thread_holds_for_writing_fails_at_once(path: Path) -> None:
    with shmstore.open(path, "w") as writer:
        writer.write("x", np.arange(3))
        handle = writer.handle("x")
        started = time.monotonic()
        with pytest.raises(shmstore.LockTimeoutError, match="in this thread already"):
            shmstore.open(path, "r", lock_timeout=30)
        with pytest.raises(shmstore.LockTimeoutError, match="in this thread already"):
            handle.view("shared")  # would open the store to load the rows
        assert time.monotonic() - started < 5  # not the 30 s timeout
    with handle.view("shared") as array:  # closed: the handle opens it
        np.testing.assert_array_equal(array, np.arange(3))


def test_writing_a_store_this_thread_reads_fails_at_once(path: Path) -> None:
    with shmstore.open(path, "w") as writer:
        writer.write("x", np.arange(3))
    with shmstore.open(path) as reader, shmstore.open(path) as second:  # readers share it
        assert reader.names() == second.names() == ["x"]
        with pytest.raises(shmstore.LockTimeoutError, match="for reading in this thread"):
            shmstore.open(path, "a", lock_timeout=30)
    with shmstore.open(path, "a", lock_timeout=1):  # once closed, it opens
        pass
