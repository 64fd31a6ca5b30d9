"""The trash: what a change replaced or deleted, freed in a second journaled step.

``write`` (over an existing name), ``delete`` and ``seal`` move the datasets
and tables of checksums they replace into the root group ``.shmstore_tmp``
inside their journaled change, so the journal never copies their data.
Then the raw files of what is in the trash are removed, and the trash is
emptied in a journaled change that declares their bytes expendable (it
saves none of them).  A writer killed between the two steps leaves the
trash full: a store opened for writing empties it (:meth:`Trash.tidy`).
Raw files of a change that was rolled back are removed by the rollback:
the journal names them.
"""

from __future__ import annotations

import secrets

from . import _hdf5, _metadata, _raw
from ._catalog import Catalog
from ._durable import fsync_dir
from ._h5errors import ignored
from ._names import TMP_GROUP
from ._opening import OpenFile

__all__ = ["Trash"]


class Trash:
    """The trash of the store open as *opened*."""

    def __init__(self, opened: OpenFile, catalog: Catalog) -> None:
        self._opened = opened
        self._catalog = catalog

    @staticmethod
    def new_name() -> str:
        """A fresh path in the trash, for what a change moves there (or writes there first)."""
        return f"{TMP_GROUP}/{secrets.token_hex(8)}"

    def move_checksums(self, name: str) -> None:
        """Move the hidden checksums of dataset *name* to the trash (it goes there too).

        Inside a change.  A damaged record leaves its checksums, if any, unreferenced.
        """
        file = self._opened.file
        record = None
        with ignored():
            record = _metadata.read_record(_hdf5.open_dataset(file, name), repr(name))
        checksums = record.checksums if record is not None else None
        if checksums is not None and checksums.location in file:
            file.move(checksums.location, self.new_name())

    def tidy(self) -> None:
        """Free what a killed writer left in the trash (at open, in a write mode)."""
        if len(self._opened.file.get(TMP_GROUP, ())) > 0:
            self.empty()

    def empty(self) -> None:
        """Free the datasets a change moved to the trash, and their raw files.

        The raw files go first: while a trashed dataset is in the trash, a
        writer killed here leaves it to be found and freed on the next open,
        and no raw file is ever left that nothing refers to.  The trashed
        data need not be journaled (it is expendable).
        """
        file = self._opened.file
        path = self._opened.path
        trash = file.get(TMP_GROUP)
        if trash is None or len(trash) == 0:
            return
        names = [
            f"{TMP_GROUP}/{child}"
            for child in trash
            if _hdf5.is_dataset(file, f"{TMP_GROUP}/{child}")
        ]
        raw = [owned for name in names for owned in self._raw_files_of(name)]
        _raw.remove_raw(path, raw)
        if raw and self._opened.durable:
            fsync_dir(_raw.raw_dir(path))
        expendable = [
            span for name in names for span in _hdf5.data_ranges(_hdf5.open_dataset(file, name))
        ]
        with self._catalog.change(expendable):
            file = self._opened.file
            for child in list(file[TMP_GROUP]):
                del file[f"{TMP_GROUP}/{child}"]

    def _raw_files_of(self, name: str) -> tuple[str, ...]:
        """Raw files that dataset *name* owns (those inside this store's raw directory)."""
        dataset = _hdf5.open_dataset(self._opened.file, name)
        files = _hdf5.external_files(dataset, self._opened.path.parent)
        return _raw.owned(self._opened.path, (path for path, _, _ in files))
