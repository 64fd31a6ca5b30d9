"""h5py at the level the store needs: opening, describing and creating datasets.

Every dataset is opened with a dataset access list whose external-file prefix
is ``${ORIGIN}``, so the raw file of an appendable dataset is found beside the
HDF5 file wherever the pair was moved, whatever the working directory.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from h5py import h5d, h5f, h5p, h5s, h5t, h5z

from ._chunk_index import stored_chunks
from ._dtype import is_supported, unsupported_reason
from ._h5errors import ignored, translated
from .errors import InvalidStoreError
from .manifest import ArrayInfo, Layout

__all__ = [
    "FILTER_NAMES",
    "as_stored",
    "create_external",
    "data_ranges",
    "describe",
    "external_files",
    "external_spans",
    "missing_filters",
    "open_dataset",
    "served_dtype",
    "storage_dtype",
    "walk_datasets",
]

# HDF5's registered filter ids; a filter not listed is named by HDF5 itself.
FILTER_NAMES = {
    1: "gzip",
    2: "shuffle",
    3: "fletcher32",
    4: "szip",
    5: "nbit",
    6: "scaleoffset",
    32000: "lzf",
    32001: "blosc",
    32004: "lz4",
    32008: "bitshuffle",
    32015: "zstd",
    32026: "blosc2",
}
_NOT_COMPRESSION = frozenset({2, 3})

_DAPL = h5p.create(h5p.DATASET_ACCESS)
_DAPL.set_efile_prefix(b"${ORIGIN}")

# numpy kinds with no HDF5 type: stored as HDF5 opaque data of the same size.
_OPAQUE_KINDS = frozenset("UMm")
_OPAQUE_TAG = "h5py_opaque"  # the dtype metadata by which h5py marks them (opaque_dtype)


def _rebuild(dtype: np.dtype[Any], leaf: Any) -> np.dtype[Any]:
    """*dtype* with *leaf* applied to every leaf of its fields and sub-arrays.

    The dtype itself when nothing changed, so most dtypes pass untouched.
    """
    if dtype.subdtype is not None:
        base, shape = dtype.subdtype
        inner = _rebuild(base, leaf)
        return dtype if inner is base else np.dtype((inner, shape))
    if dtype.fields is not None:
        names = list(dtype.names or ())
        old = [dtype.fields[n][0] for n in names]
        new = [_rebuild(f, leaf) for f in old]
        if all(a is b for a, b in zip(old, new, strict=True)):
            return dtype
        return np.dtype(
            {
                "names": names,
                "formats": new,
                "offsets": [dtype.fields[n][1] for n in names],
                "itemsize": dtype.itemsize,
            }
        )
    changed: np.dtype[Any] = leaf(dtype)
    return changed


def _tagged(dtype: np.dtype[Any]) -> bool:
    metadata: dict[str, Any] = dict(dtype.metadata or {})
    return bool(metadata.get(_OPAQUE_TAG))


def _tag(dtype: np.dtype[Any]) -> np.dtype[Any]:
    if dtype.kind in _OPAQUE_KINDS and not _tagged(dtype):
        tagged: np.dtype[Any] = h5py.opaque_dtype(dtype)
        return tagged
    return dtype


def _untag(dtype: np.dtype[Any]) -> np.dtype[Any]:
    if _tagged(dtype):
        plain: np.dtype[Any] = np.dtype(dtype.str)
        return plain
    return dtype


def storage_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The dtype to give h5py for arrays of *dtype* (``docs/design.md``, "Dtypes HDF5 lacks").

    Unicode, ``datetime64`` and ``timedelta64`` parts, which HDF5 has no type
    for, are tagged as ``h5py.opaque_dtype`` tags them: HDF5 stores them as
    opaque data of the same size, tagged ``NUMPY:<dtype.str>``, and copies
    their bytes unchanged; h5py reads them back as the same dtype.  Every
    other dtype is returned as it is.
    """
    return _rebuild(dtype, _tag)


def served_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """*dtype* as h5py reports it for a dataset, without h5py's opaque tags.

    The dtype shmstore records and serves: the tag is h5py's business, and
    arrays handed to users carry none.
    """
    return _rebuild(dtype, _untag)


def as_stored(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """*array* viewed as :func:`storage_dtype` of its dtype, for h5py to read into or write from.

    The same memory (a view, never a copy); the array itself when its dtype
    needs no tag.
    """
    stored = storage_dtype(array.dtype)
    return array if stored is array.dtype else array.view(stored)


def open_dataset(file: h5py.File, name: str) -> h5py.Dataset:
    """Open dataset *name* with external files resolved beside the HDF5 file.

    When this process already holds the dataset open through h5py with
    another external-file prefix, HDF5 refuses a second prefix; the dataset
    is then opened with the prefix it has.  shmstore never lets HDF5 read
    external data (it finds raw files itself, see ``_memmap``), so the
    prefix only matters to other code.

    :raises KeyError: no such object.
    """
    try:
        return h5py.Dataset(h5d.open(file.id, name.encode(), dapl=_DAPL))
    except KeyError as err:
        if "external file prefix" not in str(err):
            raise
        return h5py.Dataset(h5d.open(file.id, name.encode()))


def _skipped(name: str, skip: tuple[str, ...]) -> bool:
    return name.split("/", 1)[0] in skip


def walk_datasets(file: h5py.File, skip: tuple[str, ...]) -> list[str]:
    """Paths of every dataset in *file* ("grp/sub/ds"), except under the root groups *skip*.

    Objects are classified without being opened: a dataset opened here with
    HDF5's default external-file prefix while another thread of the process
    holds it open with ``${ORIGIN}`` (:func:`open_dataset`) would be refused.
    """
    found: list[str] = []

    def visit(name: str) -> None:
        if is_dataset(file, name) and not _skipped(name, skip):
            found.append(name)

    with translated(InvalidStoreError, f"{file.filename} is damaged: listing its datasets failed"):
        file.visit(visit)
    return sorted(found)


def is_dataset(file: h5py.File, name: str) -> bool:
    """True when *name* is a dataset of *file* (its object header is read, it is not opened).

    *name* is a relative path (``"grp/ds"``); an absolute or unnormalised
    one (``"/ds"``, ``"a//b"``, ``"a/./b"``) names no dataset of a store.

    :raises InvalidStoreError: the object, or a group on its path, is there
        but its header cannot be read (a damaged file: not "no such dataset").
    """
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in name.split("/")):
        return False
    # A missing name gives None; an exception means a header that is there is damaged.
    with translated(
        InvalidStoreError,
        f"{file.filename} is damaged: the HDF5 object {name!r} (or a group on its path) "
        "cannot be read",
        advice="restore the file from a copy",
    ):
        return file.get(name, getclass=True) is h5py.Dataset


def first_datasets(file: h5py.File, skip: tuple[str, ...], limit: int) -> list[str]:
    """Up to *limit* dataset paths of *file* in visiting order (for messages: cheap)."""
    found: list[str] = []

    def visit(name: str) -> bool | None:
        if is_dataset(file, name) and not _skipped(name, skip):
            found.append(name)
        return True if len(found) >= limit else None

    with ignored():  # a damaged file: what was found
        file.visit(visit)
    return found


_NO_FLOCK = re.compile(r"errno = (38|95)\b")  # ENOSYS, EOPNOTSUPP


def open_file(path: Path, mode: str) -> h5py.File:
    """Open the HDF5 file *path* with the file locking h5py uses by default.

    With the same locking flags, HDF5 lets an ``h5py.File(path)`` of this
    process and a store share the open file, in either order.  A file this
    process opened with other flags (``locking=False``, ``True``) is opened
    with those; a file system without locks is opened without them.

    :raises OSError: as h5py raises it (``_h5errors.open_error`` says what it means).
    """
    refused: list[OSError] = []
    for locking in (None, False, True, "best-effort"):
        try:
            return h5py.File(path, mode, locking=locking)
        except OSError as err:
            text = str(err)
            if locking is None and "unable to lock file" in text and _NO_FLOCK.search(text):
                return h5py.File(path, mode, locking=False)  # no flock on this file system
            if "flag values don't match" not in text:
                raise
            refused.append(err)  # opened in this process with other flags: try those
    raise refused[0]


def other_opens(file: h5py.File) -> int:
    """How many other HDF5 file handles of this process refer to *file*'s file.

    An ``h5py.File`` of the same path, opened by the user beside a store,
    shares HDF5's open file with the store's; shmstore must not write behind
    its back (see ``OpenFile.check_alone`` in ``_opening``).
    """
    ours = file.id.id
    try:
        mine = os.stat(file.filename)
    except OSError:
        return 0
    count = 0
    for fid in h5f.get_obj_ids(h5f.OBJ_ALL, h5f.OBJ_FILE):
        if fid.id == ours:
            continue
        try:
            st = os.stat(os.fsdecode(fid.name))
        except (OSError, ValueError, TypeError):
            continue
        if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
            count += 1
    return count


def _layout(dcpl: Any) -> Layout:
    layout = dcpl.get_layout()
    if layout == h5d.CHUNKED:
        return "chunked"
    if layout == h5d.COMPACT:
        return "compact"
    if layout == h5d.VIRTUAL:
        return "virtual"
    return "external" if dcpl.get_external_count() > 0 else "contiguous"


def _compression(dcpl: Any) -> tuple[str | None, int | None]:
    for index in range(dcpl.get_nfilters()):
        code, _flags, values, raw_name = dcpl.get_filter(index)
        if code in _NOT_COMPRESSION:
            continue
        name = FILTER_NAMES.get(code) or raw_name.decode(errors="replace") or f"filter-{code}"
        level = int(values[0]) if code == 1 and len(values) > 0 else None
        return name, level
    return None, None


def _unavailable(dcpl: Any) -> list[tuple[int, str]]:
    missing = []
    for index in range(dcpl.get_nfilters()):
        code, _flags, _values, raw_name = dcpl.get_filter(index)
        if not h5z.filter_avail(code):
            name = FILTER_NAMES.get(code) or raw_name.decode(errors="replace") or "unnamed"
            missing.append((code, name))
    return missing


def missing_filters(dataset: h5py.Dataset) -> str:
    """Why HDF5 cannot decode *dataset* here, or "" when every filter it uses is available.

    A filter HDF5 lacks is looked for in ``hdf5plugin`` first: importing it
    registers its filters (zstd, blosc, lz4, bitshuffle, ...), so a store
    written with them reads without the user importing it.
    """
    dcpl = dataset.id.get_create_plist()
    if dcpl.get_layout() != h5d.CHUNKED:
        return ""
    missing = _unavailable(dcpl)
    if missing:
        with contextlib.suppress(ImportError):
            import hdf5plugin  # noqa: F401  (registers its filters with HDF5)
        missing = _unavailable(dcpl)
    if not missing:
        return ""
    names = ", ".join(f"{name!r} (filter id {code})" for code, name in missing)
    return (
        f"it is compressed with {names}, which HDF5 in this Python cannot decode: "
        "install hdf5plugin (pip install hdf5plugin) or the plugin that provides it"
    )


def _data_offset(dataset: h5py.Dataset, layout: Layout) -> int | None:
    if layout == "contiguous":
        offset = dataset.id.get_offset()
        return None if offset is None else int(offset)
    if layout == "external":
        return int(dataset.id.get_create_plist().get_external(0)[1])
    return None


def _damage(dataset: h5py.Dataset, name: str, dtype: np.dtype[Any], strict: bool) -> str | None:
    """Why *dataset*'s header cannot be what was written, or None.

    HDF5's file format of 1.6 keeps no checksums, so a flipped bit in a
    header is read as it is; these checks catch the flips that would
    otherwise give wrong values without an error.
    """
    hdf5_type = dataset.id.get_type()
    if hdf5_type.get_class() == h5t.OPAQUE and hdf5_type.get_size() != dtype.itemsize:
        return (
            f"{name!r} is damaged: its HDF5 opaque type holds {hdf5_type.get_size()} bytes per "
            f"element, but its tag names {served_dtype(dtype)}, of {dtype.itemsize}"
        )
    dcpl = dataset.id.get_create_plist()
    for index in range(dcpl.get_nfilters()):
        code, _flags, values, _raw = dcpl.get_filter(index)
        if code == h5z.FILTER_SHUFFLE and tuple(values[:1]) not in ((), (dtype.itemsize,)):
            return (
                f"{name!r} is damaged: its shuffle filter is set for {values[0]}-byte "
                f"elements, its dtype {dtype} has {dtype.itemsize}"
            )
    if strict and not _same_numbers(dataset.id.get_type(), h5t.py_create(dtype, logical=True)):
        return (
            f"{name!r} is damaged: its HDF5 datatype is not the one shmstore writes for "
            f"{dtype} (a changed byte order, precision or bit layout would convert every value)"
        )
    if dcpl.get_layout() == h5d.CONTIGUOUS and dcpl.get_external_count() == 0:
        # HDF5 reads past a too-small storage size as fill values, without an error.
        stored = dataset.id.get_storage_size()
        nbytes = int(np.prod(dataset.shape, dtype=np.int64)) * dtype.itemsize
        if stored not in (0, nbytes):  # 0: never written, read as fill values
            return (
                f"{name!r} is damaged: its header says {stored} bytes of data are stored, "
                f"its shape {dataset.shape} and dtype {dtype} need {nbytes}"
            )
    return None


def _same_numbers(stored: Any, written: Any) -> bool:
    """True when the numeric parts of two HDF5 types read the same bytes as the same values.

    Integers and floats must agree in byte order, precision and bit offset
    (floats also in the place of sign, exponent and mantissa, and the
    exponent bias); compounds member by member; other classes (strings,
    enums' names, opaque) are not converted number by number and pass.
    """
    kind = stored.get_class()
    if kind != written.get_class():
        return False
    if kind in (h5t.INTEGER, h5t.FLOAT):
        same = (
            stored.get_order() == written.get_order()
            and stored.get_precision() == written.get_precision()
            and stored.get_offset() == written.get_offset()
            and stored.get_size() == written.get_size()
        )
        if kind == h5t.FLOAT:
            same = (
                same
                and stored.get_fields() == written.get_fields()
                and stored.get_ebias() == written.get_ebias()
            )
        elif same:
            same = stored.get_sign() == written.get_sign()
        return bool(same)
    if kind == h5t.COMPOUND:
        return stored.get_nmembers() == written.get_nmembers() and all(
            stored.get_member_offset(i) == written.get_member_offset(i)
            and _same_numbers(stored.get_member_type(i), written.get_member_type(i))
            for i in range(stored.get_nmembers())
        )
    if kind == h5t.ENUM:
        return _same_numbers(stored.get_super(), written.get_super())
    return True


def describe(
    dataset: h5py.Dataset, name: str, version: int = 0, *, strict: bool = False
) -> ArrayInfo | str:
    """The :class:`ArrayInfo` of *dataset*, or why shmstore cannot serve it.

    *strict* (a dataset in a stored manifest): its number types must also
    be the ones shmstore writes for its dtype (byte order, precision, bit
    layout), so HDF5 converts nothing on the way.  Without it, only the
    header checks that hold for any file (a shuffle filter for the dtype's
    element size) apply.
    """
    try:
        stored = dataset.dtype
    except TypeError as err:  # h5py found no numpy dtype for it (a 3-byte integer, ...)
        return f"{name!r} has an HDF5 datatype that numpy cannot represent ({err})"
    except ValueError as err:  # an opaque type whose NUMPY: tag is no dtype numpy knows
        return f"{name!r} has an HDF5 opaque datatype whose tag is not a numpy dtype ({err})"
    dtype = served_dtype(stored)
    if dataset.shape is None:
        return f"{name!r} is an empty (null dataspace) dataset and holds no array"
    if dtype.subdtype is not None:
        # numpy folds an array element type into the shape, so neither the
        # dtype nor the shape a read returns would be the dataset's own.
        base, inner = dtype.subdtype
        return (
            f"{name!r} has the HDF5 array type {dtype} as its element type, which shmstore does "
            f"not serve: rewrite it with shape {(*dataset.shape, *inner)} and dtype {base}"
        )
    if not is_supported(dtype):
        return unsupported_reason(dtype, repr(name))
    damage = _damage(dataset, name, stored, strict)
    if damage is not None:
        return damage
    dcpl = dataset.id.get_create_plist()
    layout = _layout(dcpl)
    compression, level = _compression(dcpl) if layout == "chunked" else (None, None)
    if layout == "chunked":
        missing_filters(dataset)  # imports hdf5plugin when the dataset needs it
    maxshape: tuple[int | None, ...] = tuple(dataset.maxshape or ())
    appendable = bool(maxshape) and maxshape[0] is None and layout in ("external", "chunked")
    return ArrayInfo(
        name=name,
        shape=tuple(int(n) for n in dataset.shape),
        dtype=dtype,
        layout=layout,
        chunks=tuple(dataset.chunks) if layout == "chunked" else None,
        compression=compression,
        compression_opts=level,
        appendable=appendable,
        version=version,
        data_offset=_data_offset(dataset, layout),
    )


def external_files(dataset: h5py.Dataset, origin: Path) -> list[tuple[Path, int, int]]:
    """The external raw files of *dataset*: ``(path, byte offset, size in bytes)``.

    Relative names are resolved against *origin* (the HDF5 file's directory),
    as the ``${ORIGIN}`` prefix makes HDF5 itself do.  ``size`` is
    ``h5f.UNLIMITED`` for a file that grows with the dataset.
    """
    dcpl = dataset.id.get_create_plist()
    files = []
    for index in range(dcpl.get_external_count()):
        raw_name, offset, size = dcpl.get_external(index)
        path = Path(os.fsdecode(raw_name))
        files.append((path if path.is_absolute() else origin / path, int(offset), int(size)))
    return files


def external_spans(
    dataset: h5py.Dataset, origin: Path, start: int, stop: int
) -> list[tuple[Path, int, int]]:
    """Where bytes ``[start, stop)`` of *dataset*'s data lie: ``(path, file offset, length)``.

    The data runs through the external files in order, each holding its
    declared size (the last may be unlimited).  Bytes past the end of the
    last file's size are in no span: the lengths then add up to less than
    ``stop - start``.
    """
    spans: list[tuple[Path, int, int]] = []
    begins = 0  # offset in the data where the current file's part begins
    for path, offset, size in external_files(dataset, origin):
        ends = stop if size == h5f.UNLIMITED else begins + size
        low, high = max(start, begins), min(stop, ends)
        if low < high:
            spans.append((path, offset + low - begins, high - low))
        if ends >= stop:
            break
        begins = ends
    return spans


def create_external(
    group: h5py.Group, name: str, dtype: np.dtype[Any], shape: tuple[int, ...], raw_name: str
) -> h5py.Dataset:
    """Create an appendable contiguous dataset stored in the raw file *raw_name*.

    The dataset is unlimited along axis 0 and stored in one external file of
    unlimited size: h5py's high-level ``create_dataset`` would insist on
    chunks for an unlimited axis, so it is made through the low-level API.
    Nothing is written to the raw file here.
    """
    dcpl = h5p.create(h5p.DATASET_CREATE)
    dcpl.set_external(raw_name.encode(), 0, h5f.UNLIMITED)
    # Fill values would be written into the raw file on every extent change.
    dcpl.set_fill_time(h5d.FILL_TIME_NEVER)
    space = h5s.create_simple(shape, (h5s.UNLIMITED, *shape[1:]))
    type_id = h5t.py_create(storage_dtype(dtype), logical=True)
    dataset_id = h5d.create(group.id, name.encode(), type_id, space, dcpl=dcpl, dapl=_DAPL)
    return h5py.Dataset(dataset_id)


def data_ranges(dataset: h5py.Dataset) -> list[tuple[int, int]]:
    """Byte ranges ``(start, stop)`` of the HDF5 file holding *dataset*'s data.

    Contiguous storage is one range, chunked storage one per written chunk;
    compact and external storage hold no data range of their own.
    """
    dsid = dataset.id
    layout = dsid.get_create_plist().get_layout()
    if layout == h5d.CONTIGUOUS:
        offset = dsid.get_offset()
        size = dsid.get_storage_size()
        return [(offset, offset + size)] if offset is not None and size else []
    if layout != h5d.CHUNKED:
        return []
    return [(info.byte_offset, info.byte_offset + info.size) for info in stored_chunks(dsid)]
