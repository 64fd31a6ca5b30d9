"""What a store holds: its datasets, described from their records, each once per change.

The store's own record (format 2) or root manifest (format 1, shmstore
0.1.0) is read at open; a dataset is described when first used: its record
(``_metadata``) is read, validated and compared with its header
(``_reconcile``), and the result kept until a change.

Two things are set right here as they are found, by a store open for writing:

* A dataset longer than its record is an append whose writer died after it
  grew the extent and before it rewrote the record (an append writes the
  rows, then the extent, then the record): its rows are complete, and are
  recorded with their checksums (:meth:`Catalog.lookup`).
* A store of metadata format 1 is migrated to format 2 at its first change,
  in a journaled change of its own (:meth:`Catalog.change`).

Every change that creates or unlinks HDF5 objects, or grows their metadata,
runs through :meth:`Catalog.change`: all of it or none of it (``_opening``,
``_journal``), with what the catalog knew restored when it rolls back.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import _hdf5, _metadata, _sums
from ._format1 import BACKUP_ATTR, MANIFEST_ATTR, copy_problems, read_manifest
from ._h5errors import ignored, translated
from ._names import RESERVED, is_reserved
from ._opening import OpenFile
from ._reconcile import check_record
from ._rows import RowsLike, resolve_rows
from .errors import (
    ArgumentError,
    ArrayNotFoundError,
    InvalidStoreError,
    ManifestError,
    RowsError,
    UnsupportedDtypeError,
)
from .manifest import FORMAT_VERSION, ArrayInfo, Manifest

__all__ = ["Catalog"]

_log = logging.getLogger("shmstore")

_RECORD_FIELDS = tuple(field for field in ArrayInfo.model_fields if field != "name")


class Catalog:
    """The datasets of the store open as *opened*, and its metadata format.

    :raises ManifestError: the store's record (or a format-1 manifest) is
        damaged, or of a newer format.
    :raises InvalidStoreError: it cannot be read at all.
    """

    format: int
    """The metadata format: 2, 1 (migrated at the first change), or 0 (none: a new file,
    or one of other tools)."""

    def __init__(self, opened: OpenFile) -> None:
        self._opened = opened
        self._known: dict[str, ArrayInfo | str] = {}
        self._format1: dict[str, ArrayInfo] | None = None
        path = opened.path
        with translated(InvalidStoreError, f"{path} is damaged"):
            record = _metadata.read_store_record(opened.file, str(path))
            stored = None if record is not None else read_manifest(opened.file)
        if record is not None:
            self.format = FORMAT_VERSION
        elif stored is not None:
            self.format = 1
            self._format1 = dict(stored.arrays)
        else:
            self.format = 0  # no shmstore metadata: a file of other tools, or a new one

    # -- changes -------------------------------------------------------------

    @contextmanager
    def change(self, expendable: list[tuple[int, int]] | None = None) -> Iterator[None]:
        """Run a change that creates or unlinks objects: all of it, or none of it.

        Inside another change, it is part of that one.  A store of metadata
        format 1 is migrated first, in a change of its own.  On an exception
        the file is rolled back and what the catalog knew restored.
        """
        if self._opened.in_change:  # the outer change covers this one
            yield
            return
        self._opened.begin_writing()
        if self.format == 1:
            self.migrate()
        known, format1, fmt = dict(self._known), self._format1, self.format
        try:
            with self._opened.journaled(expendable or ()):
                yield
        except BaseException:
            self._known, self._format1, self.format = known, format1, fmt
            raise

    def migrate(self) -> None:
        """Turn a store of metadata format 1 into format 2, all at once or not at all.

        Every dataset the root manifest lists gets its record (the entry as
        it was, with a new generation), the store record is written and the
        root manifest removed, in one journaled change: a writer killed at
        any point leaves the file in format 1 or in format 2, never a mix.

        :raises ManifestError: the manifest lists a dataset the file does not hold.
        """
        entries = self._format1 or {}
        for name in entries:
            if not _hdf5.is_dataset(self._opened.file, name):
                self.lookup(name)  # raises, naming it
        self.format = FORMAT_VERSION  # no migration inside the migration's own change
        try:
            with self.change():
                file = self._opened.file
                for name, info in entries.items():
                    record = _metadata.record_of(
                        info.model_copy(update={"generation": _metadata.new_generation()})
                    )
                    dataset = _hdf5.open_dataset(file, name)
                    _metadata.write_record(file, dataset, record, flush=False)
                _metadata.write_store_record(file)
                for attr in (MANIFEST_ATTR, BACKUP_ATTR):
                    if attr in file.attrs:
                        del file.attrs[attr]
        except BaseException:
            self.format = 1
            raise
        _log.info(
            "%s: migrated the metadata from format 1 to %d", self._opened.path, FORMAT_VERSION
        )
        self._format1 = None
        self._known.clear()

    def remember(self, info: ArrayInfo) -> None:
        """Keep *info* as what dataset ``info.name`` is now (a change wrote it)."""
        self._known[info.name] = info

    def forget(self, name: str) -> None:
        """Drop what is known of dataset *name* (a change removed it)."""
        self._known.pop(name, None)

    def known(self, name: str) -> ArrayInfo | None:
        """What is known of dataset *name* without looking at the file, if anything."""
        found = self._known.get(name)
        return found if isinstance(found, ArrayInfo) else None

    def store_record(self, info: ArrayInfo) -> None:
        """Write *info* as its dataset's record: in place, or journaled when it must grow."""
        record = _metadata.record_of(info)
        dataset = _hdf5.open_dataset(self._opened.file, info.name)
        in_change = self._opened.in_change
        if _metadata.fits(dataset, record) or in_change:
            _metadata.write_record(self._opened.file, dataset, record, flush=not in_change)
        else:
            with self.change():
                dataset = _hdf5.open_dataset(self._opened.file, info.name)
                _metadata.write_record(self._opened.file, dataset, record, flush=False)
        self._known[info.name] = info

    # -- describing ------------------------------------------------------------

    def describe(self, name: str, version: int = 0, *, strict: bool = False) -> ArrayInfo | str:
        """The :class:`ArrayInfo` of dataset *name* from its header, or why it is not served."""
        # Any h5py error here (a KeyError too: HDF5 refusing a damaged object
        # header, a bad datatype or dataspace) is a dataset that cannot be
        # read, not a missing one: its name was just listed.
        try:
            with translated(InvalidStoreError, f"{name!r} cannot be read"):
                dataset = _hdf5.open_dataset(self._opened.file, name)
                return _hdf5.describe(dataset, name, version, strict=strict)
        except InvalidStoreError as err:
            return str(err)

    def _stored_info(self, name: str) -> ArrayInfo | None:
        """What shmstore recorded of dataset *name*, or ``None`` (a dataset of another tool).

        :raises ManifestError: the record is damaged or of a newer format.
        """
        if self._format1 is not None:
            return self._format1.get(name)
        what = f"{name!r} in {self._opened.path}"
        with translated(ManifestError, f"{what}: its record cannot be read"):
            dataset = _hdf5.open_dataset(self._opened.file, name)
            record = _metadata.read_record(dataset, what)
        if record is None:
            return None
        return ArrayInfo.model_construct(
            name=name, **{field: getattr(record, field) for field in _RECORD_FIELDS}
        )

    def lookup(self, name: str) -> ArrayInfo | str | None:
        """The checked description of *name*, why it is not served, or ``None`` (no dataset).

        Described once per store and change: the record is validated and
        compared with the dataset's header here, on first use.

        :raises ManifestError: the record is damaged, or disagrees with the dataset.
        """
        known = self._known.get(name)
        if known is not None:
            return known
        path = self._opened.path
        exists = _hdf5.is_dataset(self._opened.file, name) and not is_reserved(name)
        if not exists:
            if self._format1 is not None and name in self._format1:
                info = self._format1[name]
                raise ManifestError(
                    f"the manifest of {path} lists {name!r} ({info.shape} {info.dtype}), "
                    "but the file has no such dataset: the file was changed by another tool; "
                    "restore it, or delete the root attribute 'shmstore_manifest' to have the "
                    "manifest inferred"
                )
            return None
        stored = self._stored_info(name)
        described = self.describe(name, strict=stored is not None)
        if isinstance(described, str):
            if stored is not None:
                raise ManifestError(f"{name!r} is recorded in {path}, but {described}")
            self._known[name] = described
            return described
        if stored is None:
            self._known[name] = described
            return described
        info = check_record(stored, described, str(path))
        if info.shape != stored.shape and self._opened.writable:
            info = self._repair(info)
        self._known[name] = info
        return info

    def _repair(self, info: ArrayInfo) -> ArrayInfo:
        """Record the rows of an append whose writer died (they are complete); the record.

        Their checksums were written before the extent grew: they are counted now.
        """
        self._opened.reopen_writable()
        if info.checksums is not None and info.checksums.per == "range":
            sums = _sums.read(
                self._opened.file,
                self._opened.path,
                info.checksums,
                repr(info.name),
                limit=info.nbytes,
            )
            info = info.model_copy(
                update={"checksums": info.checksums.model_copy(update={"count": len(sums)})}
            )
        self.store_record(info)
        self._opened.touch()
        return info

    # -- what the front serves -------------------------------------------------

    def info(self, name: str) -> ArrayInfo:
        """The checked :class:`ArrayInfo` of dataset *name* (see :meth:`Store.info`)."""
        self._opened.check_open()
        if not isinstance(name, str):
            raise ArgumentError(f"a dataset name must be a str, got {type(name).__name__} {name!r}")
        found = self.lookup(name)
        if isinstance(found, ArrayInfo):
            return found
        if isinstance(found, str):
            raise UnsupportedDtypeError(found)
        some = _hdf5.first_datasets(self._opened.file, RESERVED, 11)
        names = ", ".join(repr(n) for n in some[:10]) + (", ..." if len(some) > 10 else "")
        raise ArrayNotFoundError(
            f"no dataset {name!r} in {self._opened.path.name} (it holds {names or 'none'})"
        )

    def rows_of(self, name: str, rows: RowsLike) -> tuple[ArrayInfo, int, int]:
        """Dataset *name*'s :class:`ArrayInfo` and rows *rows* as ``(start, stop)``.

        A scalar dataset has the one "row" ``(0, 1)``, with ``rows=None`` only.

        :raises RowsError: see :func:`~shmstore._rows.resolve_rows`.
        """
        info = self.info(name)
        if not info.shape:
            if rows is not None:
                raise RowsError(f"{name!r} is a scalar dataset without rows: pass rows=None")
            return info, 0, 1
        start, stop = resolve_rows(rows, info.rows, name)
        return info, start, stop

    def names(self) -> list[str]:
        """Paths of every dataset, sorted (see :meth:`Store.names`)."""
        self._opened.check_open()
        names = set(_hdf5.walk_datasets(self._opened.file, skip=RESERVED))
        names.update(self._format1 or ())
        return sorted(names)

    def contains(self, name: object) -> bool:
        """True when *name* is a dataset of the store (served or not)."""
        self._opened.check_open()
        if not isinstance(name, str) or is_reserved(name):
            return False
        return _hdf5.is_dataset(self._opened.file, name) or (
            self._format1 is not None and name in self._format1
        )

    def manifest(self) -> Manifest:
        """The manifest of every served dataset, built now (see :attr:`Store.manifest`)."""
        self._opened.check_open()
        arrays = {}
        for name in self.names():
            found = self.lookup(name)
            if isinstance(found, ArrayInfo):
                arrays[name] = found
        return Manifest(
            format_version=1 if self.format == 1 else 2,
            inferred=self.format == 0,
            arrays=arrays,
        )

    def metadata_problems(self) -> list[str]:
        """What is wrong with the stored metadata's copies (:meth:`Store.metadata_problems`)."""
        self._opened.check_open()
        file = self._opened.file
        if self.format == 1:
            return copy_problems(file)
        problems = []
        for name in self.names():
            if not _hdf5.is_dataset(file, name):
                continue
            dataset = None
            with ignored():  # reported by info() as a dataset that cannot be read
                dataset = _hdf5.open_dataset(file, name)
            if dataset is not None:
                problems.extend(_metadata.record_problems(dataset, repr(name)))
        return problems

    def source_files(self, name: str) -> list[Path]:
        """The HDF5 file, then the raw files of dataset *name*.

        :raises ArrayNotFoundError: no dataset *name*.
        """
        self.info(name)
        path = self._opened.path
        dataset = _hdf5.open_dataset(self._opened.file, name)
        return [path, *(raw for raw, _, _ in _hdf5.external_files(dataset, path.parent))]
