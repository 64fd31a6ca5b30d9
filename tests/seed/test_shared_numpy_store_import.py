"""``SharedNumpyStore.import_original``: a directory of the original module's files, brought in.

The original kept each array in a raw file ``<name>__<shape>__<dtype>``.
Every file is reported on, each importable one is imported whatever the
others are, a second run imports what was fixed, and writing a name whose
original file is not imported is refused instead of hiding its rows.
Real files, real HDF5 stores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import shmstore
from shmstore import shared_numpy_store as sns

VOLTAGES = np.arange(3_000.0).reshape(1_000, 3)
LABELS = np.array(["soma", "dendrite", "axon", ""], dtype="<U8")
TIMES = np.array(["2026-05-01T12:00", "NaT", "1999-12-31T23:59"], dtype="<M8[m]")
EVENTS = np.array(
    [(1, 0.5, "a"), (2, -1.0, "bc")], dtype=[("id", ">i4"), ("v", "<f8"), ("s", "S2")]
)


def _write_original(directory: Path, name: str, arr: np.ndarray[Any, Any]) -> Path:
    """A file as the original saved *arr*: ``<name>__<shape>__<str(dtype)>``, its raw bytes."""
    path = directory / f"{name}__{'_'.join(map(str, arr.shape))}__{arr.dtype}"
    arr.tofile(path)
    return path


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    """The working directory the original used."""
    made = tmp_path / "db"
    made.mkdir()
    return made


@pytest.fixture
def store(directory: Path, cache: shmstore.Cache) -> sns.SharedNumpyStore:
    """A SharedNumpyStore of that directory, with the test's own cache."""
    return sns.SharedNumpyStore(directory, cache=cache)


def _outcomes(report: sns.ImportReport) -> dict[str, str]:
    return {f.file: f.outcome for f in report.files}


def test_import_goes_on_past_a_file_it_refuses(
    directory: Path, store: sns.SharedNumpyStore
) -> None:
    _write_original(directory, "a", VOLTAGES[:3])
    (directory / "b__10_3__float64").write_bytes(bytes(16))  # damaged: shorter than its name
    _write_original(directory, "c", VOLTAGES[3:5])
    report = store.import_original()
    assert _outcomes(report) == {
        "a__3_3__float64": "imported",
        "b__10_3__float64": "refused",
        "c__2_3__float64": "imported",
    }
    assert report.imported == ["a", "c"]
    np.testing.assert_array_equal(store.load("c", mode="memory"), VOLTAGES[3:5])


def test_a_second_run_imports_what_was_fixed_and_skips_what_is_in(
    directory: Path, store: sns.SharedNumpyStore
) -> None:
    _write_original(directory, "a", VOLTAGES[:3])
    (directory / "b__10_3__float64").write_bytes(bytes(16))
    assert store.import_original().imported == ["a"]
    VOLTAGES[:10].tofile(directory / "b__10_3__float64")  # restored from a copy
    again = store.import_original()
    assert _outcomes(again) == {"a__3_3__float64": "skipped", "b__10_3__float64": "imported"}
    assert "in the store already" in again.skipped[0].reason
    np.testing.assert_array_equal(store.load("b", mode="memmap"), VOLTAGES[:10])


@pytest.mark.parametrize(
    "array", [LABELS, TIMES, EVENTS], ids=["unicode", "datetime", "structured"]
)
def test_unicode_datetime_and_structured_files_import_and_load_in_every_mode(
    directory: Path, store: sns.SharedNumpyStore, array: np.ndarray[Any, Any]
) -> None:
    _write_original(directory, "x", array)
    assert store.import_original().imported == ["x"]
    for mode in ("shared_memory", "memmap", "memory"):
        loaded = store.load("x", mode, allow_create_shm=True)
        assert loaded.dtype == array.dtype
        assert loaded.tobytes() == array.tobytes()


def test_a_structured_dtype_with_offsets_in_its_name_imports(
    directory: Path, store: sns.SharedNumpyStore
) -> None:
    padded = np.dtype(
        {"names": ["a", "b"], "formats": ["<i2", "<f8"], "offsets": [0, 8], "itemsize": 24}
    )
    values = np.zeros(3, dtype=padded)
    values["a"], values["b"] = [1, 2, 3], [0.5, 1.5, 2.5]
    path = _write_original(directory, "padded", values)
    assert "'offsets': [0, 8]" in path.name  # str() of such a dtype is a dict
    assert store.import_original().imported == ["padded"]
    np.testing.assert_array_equal(store.load("padded", mode="memory"), values)


def test_a_name_ending_in_an_underscore_imports_under_that_name(
    directory: Path, store: sns.SharedNumpyStore
) -> None:
    path = _write_original(directory, "x_", VOLTAGES[:4])
    assert path.name == "x___4_3__float64"
    assert store.import_original().imported == ["x_"]
    np.testing.assert_array_equal(store.load("x_", mode="memory"), VOLTAGES[:4])


def test_rows_past_the_shape_in_the_name_are_left_out_and_said(
    directory: Path, store: sns.SharedNumpyStore
) -> None:
    VOLTAGES[:3].tofile(directory / "v__2_3__float64")  # one row appended, never flushed
    (imported,) = store.import_original().files
    assert imported.outcome == "imported"
    assert "last 24 bytes" in imported.reason
    np.testing.assert_array_equal(store.load("v", mode="memory"), VOLTAGES[:2])


@pytest.mark.parametrize(
    ("file", "outcome", "reason"),
    [
        ("zero____float64", "refused", "0-d array"),
        ("odd__3__notadtype", "refused", "not a dtype numpy understands"),
        ("objects__3__object", "refused", "Python objects"),
        ("has space__3__float64", "refused", "rename the file"),
        ("x__3__float64.saving", "skipped", "unfinished save"),
        ("notes__about_runs.txt", "skipped", "not <name>__<shape>__<dtype>"),
    ],
)
def test_every_file_that_is_not_imported_is_reported_with_why(
    directory: Path, store: sns.SharedNumpyStore, file: str, outcome: str, reason: str
) -> None:
    (directory / file).write_bytes(bytes(24))
    (reported,) = store.import_original().files
    assert (reported.file, reported.outcome) == (file, outcome)
    assert reason in reported.reason
    assert store.names() == []


def test_a_directory_of_the_originals_form_is_skipped_with_why(
    directory: Path, store: sns.SharedNumpyStore
) -> None:
    (directory / "d__3__float64").mkdir()
    (reported,) = store.import_original().skipped
    assert reported.reason == "not a regular file"


def test_two_files_of_one_name_are_both_refused(
    directory: Path, store: sns.SharedNumpyStore
) -> None:
    """The original left the old file when save changed an array's shape."""
    _write_original(directory, "x", VOLTAGES[:2])
    _write_original(directory, "x", VOLTAGES[:5])
    report = store.import_original()
    assert [f.outcome for f in report.files] == ["refused", "refused"]
    assert "x__5_3__float64 holds 'x' too" in report.files[0].reason
    assert store.names() == []


def test_a_directory_with_nothing_to_import_gets_no_store_file(
    directory: Path, store: sns.SharedNumpyStore
) -> None:
    (directory / "zero____float64").write_bytes(bytes(8))
    assert store.import_original().refused
    assert not store.path.exists()
    assert str(sns.SharedNumpyStore(directory / "empty").import_original()) == (
        "no files of the original shared_numpy_store"
    )


# -- writing over an original file that is not imported ----------------------------------


@pytest.mark.parametrize("autoflush", [True, False])
def test_append_save_over_an_unimported_original_is_refused_saying_to_import(
    directory: Path, store: sns.SharedNumpyStore, autoflush: bool
) -> None:
    _write_original(directory, "voltages", VOLTAGES)
    with pytest.raises(
        sns.OriginalNotImportedError, match=r"voltages__1000_3__float64.*import_original\(\) first"
    ):
        store.append_save(VOLTAGES[:5], "voltages", autoflush=autoflush)
    store.flush()
    assert store.names() == []


def test_save_over_an_unimported_original_is_refused(
    directory: Path, store: sns.SharedNumpyStore
) -> None:
    _write_original(directory, "voltages", VOLTAGES)
    with pytest.raises(FileExistsError, match="would hide its rows"):
        store.save(VOLTAGES[:5], "voltages")
    assert store.names() == []


def test_after_the_import_append_save_adds_to_the_originals_rows(
    directory: Path, store: sns.SharedNumpyStore
) -> None:
    _write_original(directory, "voltages", VOLTAGES)
    store.import_original()
    store.append_save(VOLTAGES[:5], "voltages")
    assert store.load("voltages", mode="memory").shape == (1_005, 3)


def test_dump_into_a_directory_with_an_unimported_original_is_refused(
    directory: Path, tmp_path: Path
) -> None:
    _write_original(directory, "voltages", VOLTAGES)
    elsewhere = sns.SharedNumpyStore(tmp_path / "elsewhere")
    elsewhere.save(VOLTAGES[:5], "voltages")
    with pytest.raises(sns.OriginalNotImportedError, match="voltages"):
        sns.dump(elsewhere, directory)
    assert not (directory / sns.STORE_FILE).exists()
