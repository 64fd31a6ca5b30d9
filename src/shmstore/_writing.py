"""Writing datasets: ``write``, ``delete`` and ``seal``, each one journaled change.

``write`` and ``delete`` create and unlink HDF5 objects, whose metadata
flush is not crash-safe in any order: they run under the undo journal
(``Catalog.change``) and are rolled back whole if their writer dies.  A new
dataset is written whole under a name in the trash, with its record and
its checksums, before it takes its name; what it replaces, and what
``delete`` removes, goes to the trash inside the change and is freed in a
second journaled step (``_trash``), so the journal never copies their data.
Each dataset's record is written whole, twice (see ``_metadata``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import _hdf5, _metadata, _raw, _sums
from ._catalog import Catalog
from ._dtype import check_supported
from ._durable import fsync_dir
from ._fill import worker_count
from ._h5errors import translated
from ._integrity import RANGE_NBYTES, Summing, bytes_of
from ._memmap import source_block
from ._names import TMP_GROUP, check_name
from ._opening import OpenFile
from ._trash import Trash
from .errors import (
    ArgumentError,
    InvalidStoreError,
    LayoutError,
    ReadOnlyError,
    UnsupportedDtypeError,
)
from .manifest import FORMAT_VERSION, ArrayInfo

__all__ = ["Writer", "as_rows", "check_rows_fit", "chunk_digest"]


def as_rows(array: object, what: str) -> np.ndarray[Any, Any]:
    """*array* as an ndarray of rows to store (*what* names it in messages).

    :raises UnsupportedDtypeError: a dtype shmstore does not store.
    :raises ArgumentError: a scalar.
    """
    arr = np.asarray(array)
    check_supported(arr.dtype, what)
    if arr.ndim == 0:
        raise ArgumentError(
            f"{what} is a scalar; shmstore stores arrays of rows: pass np.atleast_1d(value)"
        )
    return arr


def check_rows_fit(info: ArrayInfo, rows: np.ndarray[Any, Any]) -> None:
    """Check that *rows* can be appended to the dataset *info* describes.

    :raises LayoutError: another number of dimensions or another trailing shape.
    :raises UnsupportedDtypeError: a dtype that does not convert to the dataset's unchanged.
    """
    if rows.shape[1:] != info.shape[1:] or rows.ndim != len(info.shape):
        wanted = ("n", *info.shape[1:])
        raise LayoutError(
            f"rows appended to {info.name!r} must have shape ({', '.join(map(str, wanted))}) "
            f"like its rows, got {rows.shape}"
        )
    if not np.can_cast(rows.dtype, info.dtype, casting="equiv"):
        raise UnsupportedDtypeError(
            f"rows appended to {info.name!r} have dtype {rows.dtype}, the dataset {info.dtype}: "
            f"convert them with rows.astype({str(info.dtype)!r}) first"
        )


def chunk_digest(dataset: h5py.Dataset) -> str | None:
    """The digest of a chunked dataset's chunk index for its record; None for other layouts."""
    if dataset.chunks is None:
        return None
    from ._chunk_index import digest, stored_chunks

    return digest(stored_chunks(dataset.id))


class Writer:
    """Writes, deletes and seals datasets of the store open for writing as *opened*."""

    def __init__(self, opened: OpenFile, catalog: Catalog, trash: Trash) -> None:
        self._opened = opened
        self._catalog = catalog
        self._trash = trash

    def after_change(self, *, trashed: bool) -> None:
        """Finish a change: free what it moved to the trash (*trashed*), tell caches."""
        if trashed:
            self._trash.empty()
        self._opened.touch()

    def write(
        self,
        name: str,
        array: object,
        *,
        chunks: bool | tuple[int, ...] | None,
        compression: str | int | Mapping[str, Any] | None,
        appendable: bool,
        overwrite: bool,
    ) -> ArrayInfo:
        """Store *array* as dataset *name* (see :meth:`Store.write`)."""
        self._opened.check_writable(f"write {name!r}")
        check_name(name)
        arr = as_rows(array, f"array for {name!r}")
        path = self._opened.path
        exists = self._catalog.contains(name)
        if exists and not overwrite:
            raise ArgumentError(
                f"{name!r} already exists in {path.name}: pass overwrite=True to replace "
                "it, or append() to add rows"
            )
        self._check_parents(name)
        ranges = chunks is None and compression is None  # contiguous: checksums per range
        external = appendable and ranges
        raw_name = self._new_raw_name(name) if external else None
        summing = None
        if ranges and not external:
            # Summed from the caller's bytes, in threads beside HDF5's write.
            arr = np.ascontiguousarray(arr)
            summing = Summing(bytes_of(arr), 0, threads=worker_count())
        previous = self._catalog.known(name)
        version = _metadata.next_version(previous.version if previous is not None else 0)
        try:
            with self._catalog.change():
                temporary = self._trash.new_name()
                if raw_name is not None:
                    entries = self._write_external(name, temporary, arr, raw_name)
                else:
                    self._write_h5(temporary, arr, chunks, compression, appendable)
                    entries = summing.entries() if summing is not None else None
                described = self._catalog.describe(temporary, version, strict=True)
                if isinstance(described, str):
                    raise InvalidStoreError(
                        f"the dataset written for {name!r} is unreadable: {described}"
                    )
                file = self._opened.file
                dataset = _hdf5.open_dataset(file, temporary)
                checksums = _sums.for_written(file, dataset, entries, appendable=appendable)
                info = described.model_copy(
                    update={
                        "name": name,
                        "generation": _metadata.new_generation(),
                        "chunk_digest": chunk_digest(dataset),
                        "checksums": checksums,
                    }
                )
                # The record goes with the dataset: it is whole before the name is.
                _metadata.write_record(file, dataset, _metadata.record_of(info), flush=False)
                _metadata.write_store_record(file)
                if exists:
                    self._trash.move_checksums(name)
                    file.move(name, self._trash.new_name())
                file.move(temporary, name)
                self._catalog.format = FORMAT_VERSION
        except BaseException:
            if raw_name is not None:
                _raw.remove_raw(path, (raw_name,))
            if summing is not None:
                summing.close()
            raise
        self._catalog.remember(info)
        self.after_change(trashed=exists)
        return info

    def _check_parents(self, name: str) -> None:
        file = self._opened.file
        parts = name.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in file and _hdf5.is_dataset(file, parent):
                raise ArgumentError(f"cannot create {name!r}: {parent!r} is a dataset, not a group")
        if name in file and not _hdf5.is_dataset(file, name):
            raise ArgumentError(f"cannot write {name!r}: it is a group of the file")

    def _new_raw_name(self, name: str) -> str:
        path = self._opened.path
        what = f"cannot create the raw file directory of {path.name} for {name!r}"
        try:
            return _raw.new_raw_name(path, name)
        except PermissionError as err:
            raise ReadOnlyError(f"{what}: {err}") from err
        except OSError as err:
            raise InvalidStoreError(
                f"{what}: {err}; move what is in the way of {_raw.raw_dir(path)}"
            ) from err

    def write_raw(
        self,
        path: Path,
        offset: int,
        data: np.ndarray[Any, Any],
        name: str,
        ranges: tuple[int, int] | None = None,
    ) -> np.ndarray[Any, Any] | None:
        """Write *data* into the raw file *path* of dataset *name* at byte *offset*.

        :param ranges: ``(begin, size)``: sum the data per range as they go
            (see :func:`_raw.write_raw`) and return the checksum entries.
        :raises ReadOnlyError: this user may not write the raw file or its directory.
        :raises InvalidStoreError: another failure of the write (no space, I/O error).
        """
        try:
            return _raw.write_raw(path, offset, data, durable=self._opened.durable, ranges=ranges)
        except PermissionError as err:
            raise ReadOnlyError(
                f"cannot write the rows of {name!r} to its raw file {path}: {err.strerror}; "
                "the raw files of a store must be as writable as the store itself"
            ) from err
        except OSError as err:
            raise InvalidStoreError(
                f"writing the rows of {name!r} to its raw file {path} failed: {err}"
            ) from err

    def _write_external(
        self, name: str, temporary: str, arr: np.ndarray[Any, Any], raw_name: str
    ) -> np.ndarray[Any, Any] | None:
        """Write *arr* into the new raw file *raw_name*; the checksum entries of its bytes."""
        path = self._opened.path
        group = self._opened.file.require_group(TMP_GROUP)
        data = np.ascontiguousarray(arr)
        self._opened.created(path.parent / raw_name)  # a rollback of the change removes it
        entries = self.write_raw(path.parent / raw_name, 0, data, name, (0, RANGE_NBYTES))
        if self._opened.durable:
            fsync_dir(_raw.raw_dir(path))  # the raw file's name
        _hdf5.create_external(group, temporary.rsplit("/", 1)[1], data.dtype, data.shape, raw_name)
        return entries

    def _write_h5(
        self,
        temporary: str,
        arr: np.ndarray[Any, Any],
        chunks: object,
        compression: object,
        appendable: bool,
    ) -> None:
        """Create dataset *temporary* from *arr*."""
        options: dict[str, Any] = {}
        if isinstance(compression, Mapping):
            options.update(compression)
        elif compression is not None:
            options["compression"] = compression
        if chunks is not None:
            options["chunks"] = chunks
        if appendable:
            options["maxshape"] = (None, *arr.shape[1:])
            options.setdefault("chunks", True)
        with translated(
            ArgumentError,
            f"cannot create a dataset with chunks={chunks!r}, compression={compression!r}",
            errors=(ValueError, TypeError, OSError),
        ):
            # Unicode and datetimes go to h5py tagged as opaque (_hdf5.storage_dtype).
            data = _hdf5.as_stored(arr)
            self._opened.file.create_dataset(temporary, data=data, dtype=data.dtype, **options)

    def delete(self, name: str) -> None:
        """Remove dataset *name* (see :meth:`Store.delete`)."""
        self._opened.check_writable(f"delete {name!r}")
        if not self._catalog.contains(name):
            self._catalog.info(name)
        with self._catalog.change():
            file = self._opened.file
            if _hdf5.is_dataset(file, name):
                self._trash.move_checksums(name)
                file.move(name, self._trash.new_name())
        self._catalog.forget(name)
        self.after_change(trashed=True)

    def _unsealable(self, info: ArrayInfo) -> str | None:
        """Why *info*'s data cannot have checksums, or ``None`` when they can."""
        if info.layout in ("compact", "virtual"):
            return f"is stored {info.layout}"
        if info.layout == "external":
            dataset = _hdf5.open_dataset(self._opened.file, info.name)
            files = _hdf5.external_files(dataset, self._opened.path.parent)
            if len(files) != 1:
                return f"is spread over {len(files)} external files"
        return None

    def seal(self, names: tuple[str, ...]) -> list[ArrayInfo]:
        """Record checksums of the data of datasets *names* (see :meth:`Store.seal`)."""
        self._opened.check_writable("seal " + (", ".join(map(repr, names)) or "the datasets"))
        chosen: list[ArrayInfo] = []
        for name in names or self._catalog.names():
            if names:
                info = self._catalog.info(name)
            else:
                found = self._catalog.lookup(name)
                if not isinstance(found, ArrayInfo):
                    continue
                info = found
            why = self._unsealable(info)
            if why is not None:
                if names:
                    raise LayoutError(
                        f"{name!r} {why}: its bytes cannot be checked where they lie; "
                        "rewrite it with store.write(name, data, overwrite=True)"
                    )
                continue
            chosen.append(info)
        if not chosen:
            return []
        self._opened.reopen_writable()
        sealed = []
        path = self._opened.path
        with self._catalog.change():
            file = self._opened.file
            for info in chosen:
                dataset = _hdf5.open_dataset(file, info.name)
                source = None if info.layout == "chunked" else source_block(dataset, info, path)
                self._trash.move_checksums(info.name)
                checksums = _sums.for_stored(
                    file,
                    dataset,
                    source,
                    info.nbytes,
                    appendable=info.appendable,
                    threads=worker_count(),
                )
                done = info.model_copy(
                    update={
                        "checksums": checksums,
                        "generation": info.generation or _metadata.new_generation(),
                        "version": _metadata.next_version(info.version),
                        "chunk_digest": chunk_digest(dataset),
                    }
                )
                _metadata.write_record(file, dataset, _metadata.record_of(done), flush=False)
                sealed.append(done)
            _metadata.write_store_record(file)
            self._catalog.format = FORMAT_VERSION
        for done in sealed:
            self._catalog.remember(done)
        self.after_change(trashed=True)
        return sealed
