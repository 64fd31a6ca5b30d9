"""Bad input and damaged files get a clear error of the shmstore hierarchy; nothing is lost.

Every error shmstore raises derives from ``ShmStoreError`` and from the
builtin a user would already catch, and pickles.  Damage is reported, never
served as data, never a crash.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

import shmstore
from shmstore import errors
from shmstore._metadata import RECORD_ATTR, RECORD_BACKUP_ATTR

DATA = np.arange(30, dtype="<f8").reshape(10, 3)
COMPOUND = np.zeros(4, dtype=[("a", ">i4"), ("b", "S3")])


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """A store holding a contiguous, an appendable and a compressed compound dataset."""
    path = tmp_path / "s.h5"
    with shmstore.open(path, "w") as store:
        store.write("x", DATA)
        store.append("grown", DATA)
        store.write("grp/packed", COMPOUND, compression="gzip")
    return path


def raw_files(path: Path) -> list[Path]:
    raw_dir = path.with_name(path.name + ".raw")
    return sorted(raw_dir.iterdir()) if raw_dir.is_dir() else []


def assert_intact(path: Path) -> None:
    """The store opens and holds exactly what the ``path`` fixture wrote, with no leftovers."""
    with shmstore.open(path) as store:
        assert store.names() == ["grown", "grp/packed", "x"]
        np.testing.assert_array_equal(store.read("x"), DATA)
        np.testing.assert_array_equal(store.memmap("grown"), DATA)
        np.testing.assert_array_equal(store.read("grp/packed"), COMPOUND)
    with h5py.File(path) as file:
        assert len(file.get(".shmstore_tmp", ())) == 0
    assert not path.with_name(path.name + ".journal").exists()
    assert len(raw_files(path)) == 1


# -- names -----------------------------------------------------------------------------

BAD_NAMES = [
    "",
    "/abs",
    "..",
    "a/../b",
    "a//b",
    "a/./b",
    "a/",
    "with space",
    "tab\there",
    "ünï",
    "a:b",
    "a\\b",
    ".shmstore_tmp/x",
    ".shmstore_tmp",
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_a_bad_name_is_an_argument_error_and_changes_nothing(path: Path, name: str) -> None:
    with shmstore.open(path, "a") as store:
        with pytest.raises(shmstore.ArgumentError, match="invalid dataset name") as caught:
            store.write(name, DATA)
        assert isinstance(caught.value, ValueError)
        with pytest.raises(shmstore.ArgumentError, match="invalid dataset name"):
            store.append(name, DATA)
    assert_intact(path)


@pytest.mark.parametrize("name", [7, None, b"x", Path("x"), ["x"]], ids=repr)
def test_a_name_that_is_not_a_str_is_an_argument_error(path: Path, name: object) -> None:
    with shmstore.open(path, "a") as store:
        for change in (store.write, store.append):
            with pytest.raises(shmstore.ArgumentError, match="must be a str"):
                change(name, DATA)  # type: ignore[operator]
    assert_intact(path)


def test_a_name_says_which_characters_are_allowed(path: Path) -> None:
    with (
        shmstore.open(path, "a") as store,
        pytest.raises(shmstore.ArgumentError, match=r"letters, digits and _ \. -"),
    ):
        store.write("a b", DATA)


# -- dtypes and shapes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("array", "kind"),
    [
        (np.array([object(), object()]), "Python objects"),
        (np.array(["text", "more"], dtype=object), r"Python objects.*astype\('U'\)"),
        (np.array(["a", "bb"], dtype=h5py.string_dtype()), "variable-length strings"),
        (np.array([b"a", b"bb"], dtype=h5py.vlen_dtype(bytes)), "variable-length strings"),
        (np.empty(2, dtype=h5py.vlen_dtype(np.int32)), "variable-length sequences"),
        (np.zeros(3, dtype=[]), "no bytes per element"),
        (np.zeros(3, dtype=[("a", "f8"), ("b", "O")]), "does not serve"),
        (np.zeros(3, dtype=[("a", "f8"), ("b", h5py.string_dtype())]), "variable-length"),
    ],
    ids=[
        "object",
        "text-objects",
        "vlen-str",
        "vlen-bytes",
        "vlen-int",
        "no-bytes",
        "compound-object",
        "compound-vlen-str",
    ],
)
def test_a_dtype_that_cannot_be_shared_is_refused(path: Path, array: np.ndarray, kind: str) -> None:
    with shmstore.open(path, "a") as store:
        with pytest.raises(shmstore.UnsupportedDtypeError, match=kind) as caught:
            store.write("bad", array)
        assert isinstance(caught.value, TypeError)
        with pytest.raises(shmstore.UnsupportedDtypeError):
            store.append("bad", array)
    assert_intact(path)


@pytest.mark.parametrize("value", [3.0, np.float32(1), np.array(5), b"x"], ids=repr)
def test_a_scalar_is_refused_with_what_to_do(path: Path, value: object) -> None:
    with shmstore.open(path, "a") as store:
        with pytest.raises(shmstore.ArgumentError, match="atleast_1d"):
            store.write("one", value)
        with pytest.raises(shmstore.ArgumentError, match="atleast_1d"):
            store.append("one", value)
    assert_intact(path)


# -- failed writes lose nothing -----------------------------------------------------------

FAILING_WRITES: dict[str, Callable[[shmstore.Store], object]] = {
    "unknown-filter": lambda s: s.write("x", -DATA, overwrite=True, compression="no-such"),
    "unknown-filter-id": lambda s: s.write("x", -DATA, overwrite=True, compression=99),
    "bad-chunks": lambda s: s.write("x", -DATA, overwrite=True, chunks=(5,)),
    "zero-chunks": lambda s: s.write("x", -DATA, overwrite=True, chunks=(0, 3)),
    "bad-filter-options": lambda s: s.write("x", -DATA, overwrite=True, compression={"no": 1}),
    "appendable-bad-filter": lambda s: s.write(
        "grown", -DATA, overwrite=True, appendable=True, compression="no-such"
    ),
    "new-name-bad-filter": lambda s: s.write("new", DATA, compression="no-such"),
}


@pytest.mark.parametrize("write", sorted(FAILING_WRITES))
def test_a_failed_write_leaves_the_store_as_it_was(path: Path, write: str) -> None:
    with shmstore.open(path, "a") as store:
        before = store.manifest
        with pytest.raises(shmstore.ArgumentError, match="cannot create a dataset"):
            FAILING_WRITES[write](store)
        assert store.manifest == before
        np.testing.assert_array_equal(store.read("x"), DATA)
        store.write("after", DATA)  # and the store still takes writes
        store.delete("after")
    assert_intact(path)


# -- files that are not stores ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["r", "r+", "a"])
@pytest.mark.parametrize("content", [b"just text", b"", b"\x89HDF\r\n\x1a\n" + b"\0" * 100])
def test_a_file_that_is_not_hdf5_is_an_invalid_store(
    tmp_path: Path, mode: str, content: bytes
) -> None:
    path = tmp_path / "notes.h5"
    path.write_bytes(content)
    with pytest.raises(shmstore.InvalidStoreError) as caught:
        shmstore.open(path, mode)
    assert isinstance(caught.value, OSError)
    if not content.startswith(b"\x89HDF"):
        assert "not an HDF5 file" in str(caught.value)
    assert path.read_bytes() == content


def test_mode_w_replaces_a_file_that_is_not_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "notes.h5"
    path.write_text("just text")
    with shmstore.open(path, "w") as store:
        store.write("x", DATA)
    with shmstore.open(path) as store:
        np.testing.assert_array_equal(store.read("x"), DATA)


def test_a_directory_is_an_invalid_store(tmp_path: Path) -> None:
    with pytest.raises(shmstore.InvalidStoreError, match="directory"):
        shmstore.open(tmp_path)


def _open_and_read_everything(path: Path, mode: str) -> None:
    with shmstore.open(path, mode) as store:
        for name in store.names():
            store.read(name)
            if store.info(name).memory_mappable:
                store.memmap(name)


@pytest.mark.parametrize("mode", ["r", "a"])
def test_a_truncated_store_is_an_invalid_store_at_every_cut(
    path: Path, tmp_path: Path, mode: str
) -> None:
    data = path.read_bytes()
    cut_file = tmp_path / "cut.h5"
    cuts = sorted({1, 8, 100, 512, *range(0, len(data), max(1, len(data) // 40)), len(data) - 1})
    for cut in cuts:
        cut_file.write_bytes(data[:cut])
        try:
            _open_and_read_everything(cut_file, mode)
        except shmstore.InvalidStoreError:
            continue
        pytest.fail(f"a store cut at byte {cut} of {len(data)} opened and read")


def test_a_truncated_raw_file_is_an_error_never_zeros(path: Path) -> None:
    (raw,) = raw_files(path)
    with raw.open("r+b") as handle:
        handle.truncate(DATA.nbytes // 2)
    with shmstore.open(path) as store:
        for access in (store.read, store.memmap):
            with pytest.raises(shmstore.InvalidStoreError, match=r"'grown'.*holds 120 bytes"):
                access("grown")
        np.testing.assert_array_equal(store.read("x"), DATA)  # the rest is served


def test_a_missing_raw_file_is_an_invalid_store_error(path: Path) -> None:
    (raw,) = raw_files(path)
    raw.unlink()
    with shmstore.open(path) as store:
        for access in (store.read, store.memmap):
            with pytest.raises(shmstore.InvalidStoreError, match="missing"):
                access("grown")


def test_an_append_to_a_short_raw_file_is_refused(path: Path) -> None:
    (raw,) = raw_files(path)
    with raw.open("r+b") as handle:
        handle.truncate(DATA.nbytes // 2)
    with shmstore.open(path, "a") as store:
        with pytest.raises(shmstore.InvalidStoreError, match="'grown'"):
            store.append("grown", DATA)
        assert store.info("grown").rows == 10
    assert raw.stat().st_size == DATA.nbytes // 2


# -- records ----------------------------------------------------------------------------------


def _set_attr(path: Path, attr: str, value: object, dataset: str = "x") -> None:
    with h5py.File(path, "r+") as file:
        attrs = file[dataset].attrs
        if attr in attrs:
            del attrs[attr]
        if value is not None:
            attrs[attr] = value


def _good_record(path: Path, dataset: str = "x") -> dict[str, object]:
    with h5py.File(path) as file:
        return json.loads(bytes(file[dataset].attrs[RECORD_ATTR]).decode())  # type: ignore[no-any-return]


def _with_entry(path: Path, **changes: object) -> str:
    return json.dumps({**_good_record(path), **changes})


def _replace_keeping_record(path: Path, name: str, data: np.ndarray, **options: object) -> None:
    """Replace dataset *name* behind shmstore's back, its record left as it was.

    As a damaged object header would: the record says one thing, the header another.
    """
    with h5py.File(path, "r+") as file:
        kept = {attr: file[name].attrs[attr] for attr in (RECORD_ATTR, RECORD_BACKUP_ATTR)}
        del file[name]
        file.create_dataset(name, data=data, **options)
        for attr, value in kept.items():
            file[name].attrs[attr] = value


CORRUPT: dict[str, tuple[Callable[[Path], object], str]] = {
    "garbage": (lambda p: np.bytes_(b"{not json"), "not valid JSON"),
    "not-utf8": (lambda p: np.bytes_(b"\xff\xfe{}"), "not valid UTF-8"),
    "deeply-nested": (lambda p: np.bytes_(b"[" * 15000 + b"]" * 15000), "not valid JSON"),
    "not-an-object": (lambda p: np.bytes_(b"[1, 2]"), "not a JSON object"),
    "a-number": (lambda p: np.int64(7), "not JSON text"),
    "an-array-of-text": (lambda p: np.array([b"{}", b"{}"]), "not JSON text"),
    "foreign-format": (lambda p: np.bytes_(b'{"format": "something-else"}'), "format"),
    "future-version": (
        lambda p: np.bytes_(json.dumps({**_good_record(p), "format_version": 3}).encode()),
        "format version 3, written by a newer shmstore.*upgrade shmstore",
    ),
    "version-of-wrong-type": (
        lambda p: np.bytes_(json.dumps({**_good_record(p), "version": "many"}).encode()),
        "invalid",
    ),
    "unknown-field": (
        lambda p: np.bytes_(json.dumps({**_good_record(p), "extra": 1}).encode()),
        "invalid",
    ),
    "generation-not-hex": (
        lambda p: np.bytes_(_with_entry(p, generation="not-hex!").encode()),
        "invalid",
    ),
    "no-generation": (
        lambda p: np.bytes_(_with_entry(p, generation=None).encode()),
        "invalid",
    ),
    "shape-of-wrong-type": (lambda p: np.bytes_(_with_entry(p, shape="10x3").encode()), "invalid"),
    "negative-shape": (lambda p: np.bytes_(_with_entry(p, shape=[-10, 3]).encode()), "invalid"),
    "unknown-layout": (lambda p: np.bytes_(_with_entry(p, layout="tape").encode()), "invalid"),
    "dtype-not-understood": (lambda p: np.bytes_(_with_entry(p, dtype="f9").encode()), "dtype"),
    "dtype-syntax-error": (lambda p: np.bytes_(_with_entry(p, dtype="i4,(2").encode()), "dtype"),
    "dtype-of-wrong-type": (lambda p: np.bytes_(_with_entry(p, dtype=[1]).encode()), "dtype"),
    "dtype-bad-compound": (
        lambda p: np.bytes_(
            _with_entry(
                p, dtype={"names": ["a"], "formats": ["<f8"], "offsets": [0], "itemsize": "x"}
            ).encode()
        ),
        "dtype",
    ),
}


@pytest.mark.parametrize("mode", ["r", "a"])
@pytest.mark.parametrize("damage", sorted(CORRUPT))
def test_a_corrupt_record_and_copy_refuse_that_dataset_only(
    path: Path, damage: str, mode: str
) -> None:
    make, message = CORRUPT[damage]
    value = make(path)
    _set_attr(path, RECORD_ATTR, value)
    _set_attr(path, RECORD_BACKUP_ATTR, value)
    with shmstore.open(path, mode) as store:
        for access in (store.info, store.read):
            with pytest.raises(shmstore.ManifestError, match=message) as caught:
                access("x")
            assert isinstance(caught.value, ValueError)
            assert "'x'" in str(caught.value)
        np.testing.assert_array_equal(store.read("grown"), DATA)  # the others are served
        np.testing.assert_array_equal(store.read("grp/packed"), COMPOUND)
        assert store.names() == ["grown", "grp/packed", "x"]


@pytest.mark.parametrize("damage", sorted(CORRUPT))
def test_a_damaged_primary_record_falls_back_to_its_copy(path: Path, damage: str) -> None:
    version = shmstore.open(path).info("x").version
    _set_attr(path, RECORD_ATTR, CORRUPT[damage][0](path))
    with shmstore.open(path) as store:
        assert store.info("x").version == version
        assert store.info("x").generation is not None
    assert_intact(path)


def test_a_missing_primary_record_falls_back_to_its_copy(path: Path) -> None:
    version = shmstore.open(path).info("grown").version
    _set_attr(path, RECORD_ATTR, None, dataset="grown")
    with shmstore.open(path) as store:
        assert store.info("grown").version == version
        assert store.info("grown").generation is not None
    assert_intact(path)


def test_a_damaged_copy_does_not_matter_while_the_primary_is_whole(path: Path) -> None:
    _set_attr(path, RECORD_BACKUP_ATTR, np.bytes_(b"{torn"))
    assert_intact(path)


def test_an_append_after_falling_back_makes_both_copies_whole(path: Path) -> None:
    _set_attr(path, RECORD_ATTR, np.bytes_(b"{torn"), dataset="grown")
    with shmstore.open(path, "a") as store:
        store.append("grown", DATA)
    _set_attr(path, RECORD_BACKUP_ATTR, np.bytes_(b"{torn"), dataset="grown")
    with shmstore.open(path) as store:
        assert store.info("grown").rows == 20
        np.testing.assert_array_equal(store.read("grown"), np.concatenate([DATA, DATA]))


def test_a_record_naming_another_dtype_names_the_dataset_and_both(path: Path) -> None:
    _replace_keeping_record(path, "x", DATA.astype("<i4"))
    with (
        shmstore.open(path) as store,
        pytest.raises(shmstore.ManifestError, match=r"'x' has dtype float64, the file holds int32"),
    ):
        store.info("x")


def test_a_record_naming_another_byte_order_is_an_error(path: Path) -> None:
    _replace_keeping_record(path, "x", DATA.astype(">f8"))
    with (
        shmstore.open(path) as store,
        pytest.raises(shmstore.ManifestError, match=r"'x' has dtype float64.*>f8"),
    ):
        store.read("x")


@pytest.mark.parametrize("name", ["x", "grown"])
@pytest.mark.parametrize("shape", [(4, 3), (10, 2), (10, 3, 1), (30,)], ids=str)
def test_a_record_naming_another_shape_names_the_dataset_and_both(
    path: Path, name: str, shape: tuple[int, ...]
) -> None:
    _replace_keeping_record(path, name, np.zeros(shape), maxshape=(None, *shape[1:]))
    with shmstore.open(path) as store:
        with pytest.raises(
            shmstore.ManifestError,
            match=rf"{name!r} has shape \(10, 3\), the file holds {re.escape(str(shape))}",
        ):
            store.info(name)
        np.testing.assert_array_equal(store.read("grp/packed"), COMPOUND)


def test_a_record_of_a_dataset_now_unsupported_is_an_error(path: Path) -> None:
    _replace_keeping_record(
        path, "x", np.array(["a", "b"], dtype=object), dtype=h5py.string_dtype()
    )
    with (
        shmstore.open(path) as store,
        pytest.raises(shmstore.ManifestError, match=r"'x'.*variable-length strings"),
    ):
        store.info("x")


def test_the_record_is_json_other_tools_can_read(path: Path) -> None:
    record = _good_record(path)
    assert record["format"] == "shmstore-dataset"
    assert record["shape"] == [10, 3]
    assert _good_record(path, "grp/packed")["dtype"]["names"] == ["a", "b"]  # type: ignore[index]


# -- the error classes ----------------------------------------------------------------------

PARENTS: dict[type[shmstore.ShmStoreError], tuple[type[BaseException], ...]] = {
    shmstore.StoreNotFoundError: (FileNotFoundError,),
    shmstore.InvalidStoreError: (OSError,),
    shmstore.ManifestError: (ValueError,),
    shmstore.ArrayNotFoundError: (KeyError,),
    shmstore.RowsError: (IndexError, ValueError),
    shmstore.LayoutError: (ValueError,),
    shmstore.NotContiguousError: (shmstore.LayoutError, ValueError),
    shmstore.UnsupportedDtypeError: (TypeError,),
    shmstore.SegmentError: (OSError,),
    shmstore.CacheFullError: (OSError,),
    shmstore.ReadOnlyError: (PermissionError,),
    shmstore.LockTimeoutError: (TimeoutError,),
    shmstore.ArgumentError: (ValueError,),
}
ALL_ERRORS = sorted(
    {getattr(errors, name) for name in errors.__all__} - {shmstore.ShmStoreError},
    key=lambda error: error.__name__,
)


@pytest.mark.parametrize("error", sorted(PARENTS, key=lambda e: e.__name__), ids=repr)
def test_every_error_derives_from_shmstore_error_and_its_builtin(
    error: type[shmstore.ShmStoreError],
) -> None:
    assert issubclass(error, shmstore.ShmStoreError)
    for parent in PARENTS[error]:
        assert issubclass(error, parent)


@pytest.mark.parametrize("error", ALL_ERRORS, ids=lambda e: e.__name__)
def test_every_error_pickles_with_its_type_and_message(
    error: type[shmstore.ShmStoreError],
) -> None:
    assert issubclass(error, shmstore.ShmStoreError)
    raised = error("what was asked, what was found, what to do")
    again = pickle.loads(pickle.dumps(raised))
    assert type(again) is error
    assert str(again) == str(raised) == "what was asked, what was found, what to do"
    assert again.args == raised.args


def test_every_public_error_is_exported() -> None:
    for error in PARENTS:
        assert getattr(shmstore, error.__name__) is error
        assert error.__name__ in shmstore.__all__


def test_errors_raised_by_the_store_pickle_too(path: Path, tmp_path: Path) -> None:
    caught: list[shmstore.ShmStoreError] = []
    with shmstore.open(path) as store:
        for attempt in (
            lambda: store.read("x", (0, 99)),
            lambda: store.info("absent"),
            lambda: store.memmap("grp/packed"),
            lambda: store.write("y", DATA),
        ):
            with pytest.raises(shmstore.ShmStoreError) as info:
                attempt()
            caught.append(info.value)
    with pytest.raises(shmstore.ShmStoreError) as info:
        shmstore.open(tmp_path / "absent.h5")
    caught.append(info.value)
    assert [type(e).__name__ for e in caught] == [
        "RowsError",
        "ArrayNotFoundError",
        "NotContiguousError",
        "ReadOnlyError",
        "StoreNotFoundError",
    ]
    for error in caught:
        again = pickle.loads(pickle.dumps(error))
        assert (type(again), str(again)) == (type(error), str(error))


def test_a_key_error_message_is_not_quoted_twice(path: Path) -> None:
    with shmstore.open(path) as store, pytest.raises(KeyError) as caught:
        store.info("absent")
    assert str(caught.value).startswith("no dataset 'absent'")


def test_a_file_in_the_way_of_the_raw_directory_is_a_clear_error(path: Path) -> None:
    raw_dir = path.with_name(path.name + ".raw")
    for raw in raw_files(path):
        raw.unlink()
    raw_dir.rmdir()
    raw_dir.write_text("in the way")
    with shmstore.open(path, "a") as store:
        with pytest.raises(shmstore.InvalidStoreError, match=r"raw file directory.*in the way"):
            store.append("new", DATA)
        assert "new" not in store
        np.testing.assert_array_equal(store.read("x"), DATA)


def test_long_names_fill_no_shared_attribute(path: Path) -> None:
    """Format 1 refused a store whose manifest outgrew one attribute; records never do."""
    long = "n" * 200
    with shmstore.open(path, "a") as store:
        for i in range(400):
            store.write(f"{long}{i}", DATA[i % 10 : i % 10 + 1])
    with shmstore.open(path) as store:
        assert len(store) == 403
        np.testing.assert_array_equal(store.read(f"{long}399"), DATA[9:10])
        np.testing.assert_array_equal(store.read("x"), DATA)
