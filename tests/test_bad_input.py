"""Bad input gets a clear error of the shmstore hierarchy, and nothing stored is lost."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

import shmstore
from shmstore._metadata import RECORD_ATTR, RECORD_BACKUP_ATTR

DATA = np.arange(30, dtype="<f8").reshape(10, 3)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    path = tmp_path / "s.h5"
    with shmstore.open(path, "w") as store:
        store.write("x", DATA)
        store.append("grown", DATA)
    return path


@pytest.mark.parametrize(
    "name",
    ["", "/abs", "a/../b", "..", "a//b", "a/./b", "with space", "ünï", ".shmstore_tmp/x", "a:b", 7],
    ids=repr,
)
def test_bad_names_are_refused_and_change_nothing(path: Path, name: object) -> None:
    with shmstore.open(path, "a") as store:
        with pytest.raises(shmstore.ArgumentError, match="name"):
            store.write(name, DATA)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="name"):
            store.append(name, DATA)  # type: ignore[arg-type]
        assert store.names() == ["grown", "x"]


@pytest.mark.parametrize(
    ("array", "kind"),
    [
        (np.array([object(), object()]), "Python objects"),
        (np.array(["text", "more"], dtype=object), r"Python objects.*astype\('U'\)"),
        (np.zeros(3, dtype=[]), "no bytes per element"),
        (np.zeros(3, dtype=[("a", "f8"), ("b", "O")]), "which shmstore does not serve"),
    ],
    ids=["object", "text-objects", "no-bytes", "compound-with-object"],
)
def test_dtypes_that_cannot_be_shared_are_refused(path: Path, array: np.ndarray, kind: str) -> None:
    with (
        shmstore.open(path, "a") as store,
        pytest.raises(shmstore.UnsupportedDtypeError, match=kind),
    ):
        store.write("bad", array)


def test_a_scalar_is_refused_with_what_to_do(path: Path) -> None:
    with (
        shmstore.open(path, "a") as store,
        pytest.raises(shmstore.ArgumentError, match="atleast_1d"),
    ):
        store.write("one", 3.0)


def test_a_failed_write_leaves_the_store_as_it_was(path: Path) -> None:
    with shmstore.open(path, "a") as store:
        with pytest.raises(shmstore.ArgumentError, match="compression"):
            store.write("x", -DATA, overwrite=True, compression="no-such-filter")
        np.testing.assert_array_equal(store.read("x"), DATA)
    with h5py.File(path) as file:
        assert len(file.get(".shmstore_tmp", ())) == 0
    assert not path.with_name(path.name + ".journal").exists()


def test_a_file_that_is_not_hdf5_is_an_invalid_store(tmp_path: Path) -> None:
    path = tmp_path / "notes.h5"
    path.write_text("just text")
    with pytest.raises(shmstore.InvalidStoreError, match="not an HDF5 file") as caught:
        shmstore.open(path)
    assert isinstance(caught.value, OSError)


def test_a_directory_is_an_invalid_store(tmp_path: Path) -> None:
    with pytest.raises(shmstore.InvalidStoreError, match="directory"):
        shmstore.open(tmp_path)


def _read_everything(path: Path) -> None:
    with shmstore.open(path) as store:
        for name in store.names():
            store.read(name)
            store.memmap(name)


@pytest.mark.parametrize("fraction", [0.02, 0.3, 0.6, 0.95])
def test_a_truncated_file_is_an_invalid_store_never_a_crash(
    path: Path, tmp_path: Path, fraction: float
) -> None:
    truncated = tmp_path / f"cut-{fraction}.h5"
    data = path.read_bytes()
    truncated.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(shmstore.ShmStoreError) as caught:
        _read_everything(truncated)
    assert isinstance(caught.value, (shmstore.InvalidStoreError, shmstore.ManifestError))


def _set_attr(path: Path, attr: str, text: str) -> None:
    with h5py.File(path, "r+") as file:
        file["x"].attrs[attr] = np.bytes_(text.encode())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"format": "shmstore-dataset", "format_version": 2, "version": "many"}', "invalid"),
        (
            '{"format": "shmstore-dataset", "format_version": 2, "extra": 1}',
            "invalid",
        ),
        ('{"format": "shmstore-dataset", "format_version": 99}', "upgrade shmstore"),
        ('{"format": "something-else"}', "format"),
        ("[1, 2]", "not a JSON object"),
    ],
    ids=["garbage", "wrong-type", "extra-field", "future-version", "foreign-format", "not-object"],
)
def test_a_corrupt_record_is_a_manifest_error_naming_the_dataset(
    path: Path, text: str, message: str
) -> None:
    _set_attr(path, RECORD_ATTR, text)
    _set_attr(path, RECORD_BACKUP_ATTR, text)
    with shmstore.open(path) as store:
        with pytest.raises(shmstore.ManifestError, match=message) as caught:
            store.read("x")
        assert "'x'" in str(caught.value)
        np.testing.assert_array_equal(store.read("grown"), DATA)


def test_a_damaged_primary_record_falls_back_to_its_copy(path: Path) -> None:
    _set_attr(path, RECORD_ATTR, "{torn")
    with shmstore.open(path) as store:
        np.testing.assert_array_equal(store.read("x"), DATA)
        assert store.info("x").generation is not None


def test_a_missing_raw_file_is_an_invalid_store_error(path: Path) -> None:
    for raw in path.with_name(path.name + ".raw").iterdir():
        raw.unlink()
    with shmstore.open(path) as store, pytest.raises(shmstore.InvalidStoreError, match="missing"):
        store.memmap("grown")


ERRORS = {
    shmstore.StoreNotFoundError: FileNotFoundError,
    shmstore.InvalidStoreError: OSError,
    shmstore.ManifestError: ValueError,
    shmstore.ArrayNotFoundError: KeyError,
    shmstore.RowsError: (IndexError, ValueError),
    shmstore.LayoutError: ValueError,
    shmstore.NotContiguousError: shmstore.LayoutError,
    shmstore.UnsupportedDtypeError: TypeError,
    shmstore.SegmentError: OSError,
    shmstore.CacheFullError: OSError,
    shmstore.ReadOnlyError: PermissionError,
    shmstore.LockTimeoutError: TimeoutError,
    shmstore.ArgumentError: ValueError,
}


@pytest.mark.parametrize(
    "error", sorted(ERRORS, key=lambda e: e.__name__), ids=lambda e: e.__name__
)
def test_every_error_has_two_parents_and_pickles(error: type[shmstore.ShmStoreError]) -> None:
    assert issubclass(error, shmstore.ShmStoreError)
    assert issubclass(error, ERRORS[error])
    raised = error("what was asked, what was found, what to do")
    again = pickle.loads(pickle.dumps(raised))
    assert type(again) is error
    assert str(again) == "what was asked, what was found, what to do"


def test_the_record_is_json_other_tools_can_read(path: Path) -> None:
    with h5py.File(path) as file:
        record = json.loads(bytes(file["x"].attrs[RECORD_ATTR]).decode())
    assert record["shape"] == [10, 3]
