"""Metadata format 2: a record per dataset, read when the dataset is first used.

See ``docs/design.md``, "Metadata".  The store's root keeps only the store
record; each dataset carries its own.  Stores of format 1 (one root
manifest, as shmstore 0.1.0 wrote them) open and read as before and are
migrated, crash-safely, on their first write.  ``tests/data/format1`` is a
store written by shmstore 0.1.0 itself.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import shmstore
from shmstore._format1 import BACKUP_ATTR, MANIFEST_ATTR
from shmstore._metadata import RECORD_ATTR, RECORD_BACKUP_ATTR, STORE_ATTR
from tests.reliability._children_writer import generation
from tests.reliability.writer_kills import needs_strace, run_killed_at

FORMAT1 = Path(__file__).resolve().parents[1] / "data" / "format1"
FORMAT1_ARRAYS = {
    "contiguous": np.arange(60, dtype="<f8").reshape(20, 3),
    "grp/chunked": np.arange(100, dtype="<i4").reshape(25, 4),
    "grp/sub/appendable": np.arange(16, dtype="<i2").reshape(8, 2),
    "compound": np.zeros(4, dtype=[("a", "<i4"), ("b", "<f8")]),
    "big_endian": np.arange(5, dtype=">u8"),
    "chunked_appendable": np.arange(8, dtype="<f4").reshape(4, 2),
}
"""What the 0.1.0 store in ``tests/data/format1`` holds."""


@pytest.fixture
def format1(tmp_path: Path) -> Path:
    """A fresh copy of the store shmstore 0.1.0 wrote (metadata format 1)."""
    shutil.copytree(FORMAT1, tmp_path / "format1")
    return tmp_path / "format1" / "format1.h5"


def assert_format1_intact(path: Path) -> None:
    with shmstore.open(path) as store:
        assert store.names() == sorted(FORMAT1_ARRAYS)
        for name, expected in FORMAT1_ARRAYS.items():
            np.testing.assert_array_equal(store.read(name), expected)
            assert store.read(name).dtype == expected.dtype


def records_present(path: Path) -> dict[str, bool]:
    with h5py.File(path, "r") as file:
        return {name: RECORD_ATTR in file[name].attrs for name in FORMAT1_ARRAYS}


# -- format 1 ----------------------------------------------------------------------------------


def test_a_store_written_by_0_1_0_opens_and_reads_as_before(format1: Path) -> None:
    before = format1.read_bytes()
    with shmstore.open(format1) as store:
        assert store.format_version == 1
        assert store.manifest.format_version == 1
        assert not store.manifest.inferred
        np.testing.assert_array_equal(store.memmap("contiguous"), FORMAT1_ARRAYS["contiguous"])
        with store.view("grp/chunked", mode="shared") as shared:
            np.testing.assert_array_equal(shared, FORMAT1_ARRAYS["grp/chunked"])
    assert_format1_intact(format1)
    assert format1.read_bytes() == before, "reading a format-1 store changed it"


def test_a_format1_store_opened_for_writing_stays_format1_until_written(format1: Path) -> None:
    before = format1.read_bytes()
    with shmstore.open(format1, "a") as store:
        np.testing.assert_array_equal(store.read("compound"), FORMAT1_ARRAYS["compound"])
        store.append("grp/sub/appendable", np.zeros((0, 2), dtype="<i2"))  # no rows: no change
    assert format1.read_bytes() == before


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s.write("new", np.arange(3)),
        lambda s: s.append("chunked_appendable", np.ones((1, 2), dtype="<f4")),
        lambda s: s.append("grp/sub/appendable", np.ones((1, 2), dtype="<i2")),
        lambda s: s.delete("big_endian"),
    ],
    ids=["write", "chunked-append", "raw-append", "delete"],
)
def test_the_first_change_migrates_a_format1_store_in_place(format1: Path, change: object) -> None:
    with shmstore.open(format1) as store:
        versions = {name: store.info(name).version for name in FORMAT1_ARRAYS}
    with shmstore.open(format1, "a") as store:
        change(store)  # type: ignore[operator]
        names = store.names()
    with h5py.File(format1, "r") as file:
        assert set(file.attrs) == {STORE_ATTR}
    with shmstore.open(format1) as store:
        migrated = store.format_version == 2
        for name in set(FORMAT1_ARRAYS) & set(names):
            info = store.info(name)
            if migrated:
                assert info.generation is not None
                assert info.version >= versions[name]
            expected = FORMAT1_ARRAYS[name]
            np.testing.assert_array_equal(store.read(name)[: len(expected)], expected)
    assert migrated


def test_a_format1_manifest_listing_a_vanished_dataset_refuses_that_dataset(
    format1: Path,
) -> None:
    with h5py.File(format1, "r+") as file:
        del file["big_endian"]
    with shmstore.open(format1) as store:
        assert "big_endian" in store
        with pytest.raises(shmstore.ManifestError, match=r"'big_endian'.*no such dataset"):
            store.info("big_endian")
        np.testing.assert_array_equal(store.read("contiguous"), FORMAT1_ARRAYS["contiguous"])


def test_a_damaged_format1_manifest_falls_back_to_its_copy(format1: Path) -> None:
    with h5py.File(format1, "r+") as file:
        file.attrs[MANIFEST_ATTR] = np.bytes_(b"{torn")
    assert_format1_intact(format1)


def test_a_format1_manifest_damaged_in_both_copies_refuses_the_store(format1: Path) -> None:
    with h5py.File(format1, "r+") as file:
        file.attrs[MANIFEST_ATTR] = np.bytes_(b"{torn")
        file.attrs[BACKUP_ATTR] = np.bytes_(b"[1]")
    with pytest.raises(shmstore.ManifestError, match="not valid JSON"):
        shmstore.open(format1)


@pytest.mark.slow
@needs_strace
def test_a_migration_killed_at_any_write_leaves_format1_or_format2_never_a_mix(
    tmp_path: Path,
) -> None:
    """SIGKILL at the N-th ``pwrite`` of a first write to a format-1 store, for every N."""
    formats: set[int] = set()
    for nth in range(1, 200):
        shutil.rmtree(tmp_path / "format1", ignore_errors=True)
        shutil.copytree(FORMAT1, tmp_path / "format1")
        path = tmp_path / "format1" / "format1.h5"
        finished = run_killed_at(nth, str(path), "new", "migrate").returncode == 0
        assert_format1_intact_or_written(path)
        with shmstore.open(path) as store:
            version = store.format_version
        records = records_present(path)
        with h5py.File(path, "r") as file:
            root = set(file.attrs)
        if version == 1:
            assert not any(records.values()), f"format 1 with records after write {nth}"
            assert root == {MANIFEST_ATTR, BACKUP_ATTR}
        else:
            assert version == 2
            assert all(records.values()), f"format 2 missing records after write {nth}"
            assert root == {STORE_ATTR}
        formats.add(version)
        if finished:
            break
    else:
        pytest.fail("the writer never finished: raise the range of N")
    assert formats == {1, 2}, f"kills left only format {formats}"
    assert nth > 10, "the migration made too few writes to be tested write by write"


def assert_format1_intact_or_written(path: Path) -> None:
    """Every dataset of the 0.1.0 store is whole; "new" is absent or whole."""
    with shmstore.open(path) as store:
        for name, expected in FORMAT1_ARRAYS.items():
            np.testing.assert_array_equal(store.read(name), expected)
        if "new" in store:
            np.testing.assert_array_equal(store.read("new"), generation(1))


# -- format 2 ----------------------------------------------------------------------------------


def test_a_new_store_keeps_a_record_in_each_dataset_and_none_in_the_root(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    with shmstore.open(path, "w") as store:
        assert store.format_version == 0  # nothing written yet
        store.write("a", np.arange(3))
        store.append("g/b", np.arange(4).reshape(2, 2))
        assert store.format_version == 2
    with h5py.File(path, "r") as file:
        assert set(file.attrs) == {STORE_ATTR}
        for name in ("a", "g/b"):
            assert {RECORD_ATTR, RECORD_BACKUP_ATTR} <= set(file[name].attrs)


def test_write_starts_a_generation_and_append_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    with shmstore.open(path, "w") as store:
        first = store.append("x", np.arange(4).reshape(2, 2))
        grown = store.append("x", np.arange(4).reshape(2, 2))
        assert grown.generation == first.generation
        assert grown.version > first.version
        rewritten = store.write("x", np.arange(4).reshape(2, 2), overwrite=True)
        assert rewritten.generation != first.generation
        assert rewritten.version > grown.version
        store.delete("x")
        again = store.write("x", np.arange(4).reshape(2, 2))
        assert again.generation not in (first.generation, rewritten.generation)
        assert again.version > rewritten.version
    with shmstore.open(path) as store:
        assert store.info("x") == again


def test_a_change_to_one_dataset_leaves_the_records_of_the_others_alone(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    with shmstore.open(path, "w") as store:
        store.write("a", np.arange(3))
        store.append("b", np.arange(3))
        before = store.info("a")
        store.append("b", np.arange(3))
        store.write("c", np.arange(3))
        store.delete("c")
    with shmstore.open(path) as store:
        assert store.info("a") == before


@pytest.mark.slow
def test_a_store_holds_twenty_thousand_datasets(tmp_path: Path) -> None:
    path = tmp_path / "many.h5"
    row = np.arange(4, dtype="<i4")
    with shmstore.open(path, "w") as store:
        for i in range(20_000):
            store.write(f"g{i % 20:02d}/d{i:05d}", row + i)
    with shmstore.open(path) as store:
        assert len(store) == 20_000
        for i in (0, 9_999, 19_999):
            np.testing.assert_array_equal(store.read(f"g{i % 20:02d}/d{i:05d}"), row + i)
    with shmstore.open(path, "a") as store:
        store.append("log", row.reshape(1, 4))
        assert store.info("log").rows == 1


def test_a_dataset_of_another_tool_in_a_store_is_served_and_gets_a_record_on_append(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.h5"
    with shmstore.open(path, "w") as store:
        store.write("ours", np.arange(3))
    with h5py.File(path, "r+") as file:
        file.create_dataset("theirs", data=np.arange(6.0).reshape(3, 2), maxshape=(None, 2))
    with shmstore.open(path, "a") as store:
        assert store.info("theirs").generation is None
        grown = store.append("theirs", np.ones((1, 2)))
        assert grown.generation is not None
    with shmstore.open(path) as store:
        assert store.info("theirs") == grown
        np.testing.assert_array_equal(store.read("theirs")[3], [1.0, 1.0])


def test_a_foreign_file_is_not_described_at_open(tmp_path: Path) -> None:
    """Only the datasets used are described: one that cannot be served costs nothing until asked."""
    path = tmp_path / "foreign.h5"
    with h5py.File(path, "w") as file:
        for i in range(50):
            file.create_dataset(f"grp{i % 5}/d{i}", data=np.arange(i + 1))
        file.create_dataset("text", data=["a"], dtype=h5py.string_dtype())
    with shmstore.open(path) as store:
        assert store.format_version == 0
        np.testing.assert_array_equal(store.read("grp3/d8"), np.arange(9))
        with pytest.raises(shmstore.UnsupportedDtypeError):
            store.info("text")
        assert store.manifest.inferred
        assert len(store.manifest.arrays) == 50


# -- h5py in the same process --------------------------------------------------------------


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "s.h5"
    with shmstore.open(path, "w") as store:
        store.write("x", np.arange(12.0).reshape(4, 3))
    return path


@pytest.mark.parametrize("locking", [None, False, True, "best-effort"], ids=str)
def test_a_file_open_in_h5py_opens_in_shmstore(small: Path, locking: object) -> None:
    with h5py.File(small, "r", locking=locking) as file, shmstore.open(small) as store:
        np.testing.assert_array_equal(store.read("x"), file["x"][...])


def test_a_file_open_in_shmstore_opens_in_h5py(small: Path) -> None:
    with shmstore.open(small) as store, h5py.File(small, "r") as file:
        np.testing.assert_array_equal(file["x"][...], store.read("x"))
        np.testing.assert_array_equal(file["x"][...], store.memmap("x"))


def test_a_file_open_in_a_writable_store_opens_in_h5py(small: Path) -> None:
    with shmstore.open(small, "a") as store, h5py.File(small, "r") as file:
        np.testing.assert_array_equal(file["x"][...], store.read("x"))


@pytest.mark.parametrize("h5mode", ["r", "a"])
def test_a_write_while_h5py_holds_the_file_says_so_and_changes_nothing(
    small: Path, h5mode: str
) -> None:
    before = small.read_bytes()
    with h5py.File(small, h5mode) as file, shmstore.open(small, "a") as store:
        with pytest.raises(shmstore.ReadOnlyError, match="h5py") as caught:
            store.write("y", np.arange(3))
        assert "damaged" not in str(caught.value)
        np.testing.assert_array_equal(file["x"][...], store.read("x"))
    assert small.read_bytes() == before


def test_a_write_after_h5py_closed_the_file_works(small: Path) -> None:
    with shmstore.open(small, "a") as store:
        with h5py.File(small, "r"), pytest.raises(shmstore.ReadOnlyError):
            store.write("y", np.arange(3))
        store.write("y", np.arange(3))
    with shmstore.open(small) as store:
        assert store.names() == ["x", "y"]


HOLDER = "import sys, h5py; f = h5py.File(sys.argv[1], 'a'); print('open', flush=True); input()"


def test_a_file_another_process_holds_open_through_h5py_is_not_called_damaged(
    small: Path,
) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            HOLDER,
            str(small),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "open"
        with (
            pytest.raises(shmstore.ShmStoreError) as caught,
            shmstore.open(small, "a", lock_timeout=1) as store,
        ):
            store.write("y", np.arange(3))
        assert "damaged" not in str(caught.value)
        assert "HDF5_USE_FILE_LOCKING" in str(caught.value)
    finally:
        holder.communicate("", timeout=30)
    with shmstore.open(small) as store:
        assert store.names() == ["x"]


# -- durability on request -------------------------------------------------------------------


def test_durable_comes_from_the_environment(small: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHMSTORE_DURABLE", "1")
    with shmstore.open(small) as store:
        assert store.durable
    monkeypatch.setenv("SHMSTORE_DURABLE", "0")
    with shmstore.open(small) as store:
        assert not store.durable
    with shmstore.open(small, durable=True) as store:
        assert store.durable


DURABLE_WRITER = """
import sys, numpy as np, shmstore
with shmstore.open(sys.argv[1], "a", durable=sys.argv[2] == "1") as store:
    store.append("log", np.arange(4.0).reshape(2, 2))
    print("appended", flush=True)
    store.append("log", np.arange(4.0).reshape(2, 2))
    print("appended", flush=True)
"""


def _fsyncs(path: Path, durable: bool) -> list[str]:
    strace = shutil.which("strace")
    assert strace is not None
    proc = subprocess.run(
        [
            strace,
            "-f",
            "-y",
            "-e",
            "trace=fsync,fdatasync,write",
            sys.executable,
            "-c",
            DURABLE_WRITER,
            str(path),
            "1" if durable else "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    calls = []
    for line in proc.stderr.splitlines():
        if "fsync(" in line:
            calls.append(line.split("<", 1)[1].split(">", 1)[0])
        elif "appended" in line and "write(" in line:
            calls.append("appended")
    return calls


@needs_strace
def test_a_durable_append_flushes_the_raw_file_then_the_hdf5_file(tmp_path: Path) -> None:
    path = tmp_path / "d.h5"
    calls = _fsyncs(path, durable=True)
    second = calls[calls.index("appended") + 1 :]
    raw = [i for i, c in enumerate(second) if c.endswith(".bin")]
    h5 = [i for i, c in enumerate(second) if c == str(path)]
    assert raw, calls
    assert h5, calls
    assert raw[0] < h5[-1] < second.index("appended"), calls
    first = calls[: calls.index("appended")]
    assert str(path.parent) in first, "the directory of the new raw file was not flushed"


@needs_strace
def test_a_store_that_is_not_durable_never_waits_for_the_disk(tmp_path: Path) -> None:
    assert _fsyncs(tmp_path / "d.h5", durable=False) == ["appended", "appended"]
