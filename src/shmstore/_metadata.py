"""Per-dataset metadata (format 2): one record in each dataset, read when it is used.

Each dataset shmstore writes carries a :class:`~shmstore.manifest.DatasetRecord`
as JSON, padded with spaces to a fixed capacity, in two attributes of its own:
``shmstore_record`` and its copy ``shmstore_record_backup``; the root group
carries the :class:`~shmstore.manifest.StoreRecord` in ``shmstore_store``.

Why two copies of a fixed size: ``write`` and ``delete`` run under the undo
journal, but an append to a raw file does not (it would cost a reopen of the
file), and rewrites its dataset's record in place.  A fixed size lets HDF5
rewrite an attribute where it is instead of freeing and reallocating
object-header space; writing the copy first and flushing, then the primary
and flushing, leaves at least one whole copy whatever moment a writer is
killed at, and the primary is read first.  A record that does not fit its
attributes any more is rewritten under the journal (``fits`` says when).

Nothing here walks the file: the cost of reading or writing one record does
not depend on how many datasets there are (``docs/design.md``, "Metadata").
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import h5py
import numpy as np
from h5py import h5a
from pydantic import ValidationError

from ._h5errors import H5PY_ERRORS, translated
from .errors import ManifestError
from .manifest import (
    FORMAT_VERSION,
    RECORD_FORMAT,
    STORE_FORMAT,
    ArrayInfo,
    DatasetRecord,
    StoreRecord,
)

__all__ = [
    "RECORD_ATTR",
    "RECORD_BACKUP_ATTR",
    "STORE_ATTR",
    "fits",
    "has_record",
    "json_attr",
    "new_generation",
    "next_version",
    "read_record",
    "read_store_record",
    "record_of",
    "record_problems",
    "write_record",
    "write_store_record",
]

STORE_ATTR = "shmstore_store"
RECORD_ATTR = "shmstore_record"
RECORD_BACKUP_ATTR = "shmstore_record_backup"
_MIN_CAPACITY = 1024  # bytes; a record is a few hundred
# HDF5 keeps attributes in the object header (file format of HDF5 1.6, which
# shmstore writes for its crash behaviour); one header message is < 64 KiB.
_MAX_CAPACITY = 60 * 1024


def _read_attr(obj: h5py.HLObject, attr: str) -> Any:
    """The value of attribute *attr*; a fixed-length text one read straight into bytes.

    h5py's ``attrs[attr]`` costs several times more than the read itself,
    and every open reads the store record: the common case goes direct.
    """
    aid = h5a.open(obj.id, attr.encode())
    dtype = aid.dtype
    if aid.shape == () and dtype.kind == "S":
        value = np.empty((), dtype=dtype)
        aid.read(value)
        return value
    return obj.attrs[attr]


def json_attr(obj: h5py.HLObject, attr: str, what: str) -> dict[str, Any]:
    """The JSON object in the text attribute *attr* of *obj*, or ManifestError naming *what*.

    :raises ManifestError: the attribute cannot be read, is not UTF-8 text,
        not JSON, or not a JSON object.
    """
    with translated(
        ManifestError,
        f"{what}: the attribute {attr!r} cannot be read",
        errors=(*H5PY_ERRORS, TypeError),
    ):
        raw = _read_attr(obj, attr)
    if isinstance(raw, np.ndarray) and raw.shape == ():
        raw = raw[()]
    if isinstance(raw, (bytes, np.bytes_)):
        try:
            text = bytes(raw).decode("utf-8", errors="strict")
        except UnicodeDecodeError as err:
            raise ManifestError(
                f"{what}: the attribute {attr!r} is not valid UTF-8 text: {err}"
            ) from err
    elif isinstance(raw, str):
        text = raw
    else:
        raise ManifestError(
            f"{what}: the attribute {attr!r} holds {type(raw).__name__}, not JSON text"
        )
    try:
        data: Any = json.loads(text)
    except (ValueError, RecursionError) as err:  # garbage nested deeper than Python recurses
        raise ManifestError(f"{what}: the attribute {attr!r} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ManifestError(f"{what}: the attribute {attr!r} is not a JSON object")
    return data


def _check_format(data: dict[str, Any], attr: str, fmt: str, what: str) -> None:
    if data.get("format") != fmt:
        raise ManifestError(
            f"{what}: the attribute {attr!r} has format {data.get('format')!r}, expected {fmt!r}"
        )
    version = data.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise ManifestError(
            f"{what} has metadata of format version {version}, written by a newer shmstore; "
            f"this one reads versions up to {FORMAT_VERSION}: upgrade shmstore to read it"
        )


def read_store_record(file: h5py.File, where: str) -> StoreRecord | None:
    """The store record of *file*, or ``None`` when it has none.

    :raises ManifestError: the record is damaged or of a newer format.
    """
    if STORE_ATTR not in file.attrs:
        return None
    data = json_attr(file, STORE_ATTR, where)
    _check_format(data, STORE_ATTR, STORE_FORMAT, where)
    try:
        return StoreRecord.model_validate(data)
    except ValidationError as err:
        raise ManifestError(f"{where}: the store record is invalid: {err}") from err


def write_store_record(file: h5py.File) -> None:
    """Mark *file* as a store of this metadata format (once; run under the journal)."""
    if STORE_ATTR not in file.attrs:
        file.attrs.create(STORE_ATTR, np.bytes_(StoreRecord().model_dump_json().encode()))


def has_record(dataset: h5py.Dataset) -> bool:
    """True when *dataset* carries a record (either copy)."""
    attrs = dataset.attrs
    return RECORD_ATTR in attrs or RECORD_BACKUP_ATTR in attrs


def _parse_record(dataset: h5py.Dataset, attr: str, what: str) -> DatasetRecord:
    data = json_attr(dataset, attr, what)
    _check_format(data, attr, RECORD_FORMAT, what)
    try:
        return DatasetRecord.model_validate(data)
    except (ValidationError, RecursionError) as err:
        raise ManifestError(
            f"{what}: its record (attribute {attr!r}) is invalid: {err}; rewrite the dataset "
            "with store.write(..., overwrite=True), or remove the attribute to serve it "
            "as a dataset of another tool"
        ) from err


def read_record(dataset: h5py.Dataset, what: str) -> DatasetRecord | None:
    """The record of *dataset*, or ``None`` when it has none (a dataset of another tool).

    The primary copy is read first; the backup serves when the primary is
    damaged (a writer killed while rewriting it).

    :raises ManifestError: neither copy holds a valid record (the message
        is the primary's problem), or the record is of a newer format.
    """
    attrs = dataset.attrs
    if RECORD_ATTR not in attrs:
        return _parse_record(dataset, RECORD_BACKUP_ATTR, what) if has_record(dataset) else None
    try:
        return _parse_record(dataset, RECORD_ATTR, what)
    except ManifestError as primary_error:
        if RECORD_BACKUP_ATTR not in attrs:
            raise
        try:
            return _parse_record(dataset, RECORD_BACKUP_ATTR, what)
        except ManifestError:
            raise primary_error from None


def record_problems(dataset: h5py.Dataset, what: str) -> list[str]:
    """What is wrong with each copy of *dataset*'s record (empty: none, or both valid)."""
    if not has_record(dataset):
        return []
    problems = []
    for attr in (RECORD_ATTR, RECORD_BACKUP_ATTR):
        if attr not in dataset.attrs:
            problems.append(f"{what}: the record attribute {attr!r} is missing")
            continue
        try:
            _parse_record(dataset, attr, what)
        except ManifestError as err:
            problems.append(str(err))
    return problems


def record_of(info: ArrayInfo) -> DatasetRecord:
    """The record that describes *info* (which must have a generation)."""
    fields = info.model_dump(exclude={"name"})
    fields["dtype"] = info.dtype
    return DatasetRecord.model_validate(fields)


def new_generation() -> str:
    """A fresh generation: 64 random bits as hex, unique to one ``write``."""
    return secrets.token_hex(8)


def next_version(previous: int) -> int:
    """The version after *previous*: a clock reading in µs, or one more when the clock lags.

    A clock keeps versions growing also across a ``delete`` and a new
    ``write`` of the same name, where no previous version is left to count on.
    """
    return max(time.time_ns() // 1000, previous + 1)


def _payload(record: DatasetRecord) -> bytes:
    return record.model_dump_json().encode()


def _capacity(size: int) -> int:
    wanted = max(_MIN_CAPACITY, 2 * size)
    return min(-(-wanted // 256) * 256, _MAX_CAPACITY)


def fits(dataset: h5py.Dataset, record: DatasetRecord) -> bool:
    """True when *record* can be rewritten in place in *dataset*'s two attributes."""
    size = len(_payload(record))
    capacities = set()
    for attr in (RECORD_ATTR, RECORD_BACKUP_ATTR):
        if attr not in dataset.attrs:
            return False
        existing = dataset.attrs.get_id(attr)
        if existing.shape != () or existing.dtype.kind != "S":
            return False
        capacities.add(existing.dtype.itemsize)
    return len(capacities) == 1 and capacities.pop() >= size


def _write_attr(obj: h5py.HLObject, attr: str, payload: bytes, capacity: int) -> None:
    value = np.array(payload.ljust(capacity), dtype=f"S{capacity}")
    existing = obj.attrs.get_id(attr) if attr in obj.attrs else None
    if existing is not None and existing.dtype == value.dtype and existing.shape == ():
        existing.write(value)
        return
    if existing is not None:
        h5a.delete(obj.id, attr.encode())
    obj.attrs.create(attr, value)


def write_record(
    file: h5py.File, dataset: h5py.Dataset, record: DatasetRecord, *, flush: bool = True
) -> None:
    """Store *record* in both attributes of *dataset*, each flushed to the file.

    In place when it :func:`fits`; otherwise the attributes are made anew
    with room to grow, which allocates object-header space: only under the
    undo journal.

    :param flush: flush after each copy, the order that keeps one whole; a
        caller inside a journaled change passes ``False`` (the change is
        all or nothing, and closes the file at its end).

    :raises ManifestError: the record is larger than an attribute can hold.
    """
    payload = _payload(record)
    if len(payload) > _MAX_CAPACITY:
        raise ManifestError(
            f"the record of {dataset.name!r} needs {len(payload)} bytes, more than the "
            f"{_MAX_CAPACITY} bytes an HDF5 attribute can hold here"
        )
    if fits(dataset, record):
        capacity = dataset.attrs.get_id(RECORD_ATTR).dtype.itemsize
    else:
        capacity = _capacity(len(payload))
    # The copy first: when the primary is torn, the copy is already whole.
    for attr in (RECORD_BACKUP_ATTR, RECORD_ATTR):
        _write_attr(dataset, attr, payload, capacity)
        if flush:
            file.flush()
