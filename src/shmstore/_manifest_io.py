"""Reading and writing the manifest attribute so that a crash cannot tear it.

The manifest is JSON, padded with spaces to a fixed capacity, in two
fixed-size root attributes: ``shmstore_manifest`` and its copy
``shmstore_manifest_backup``.  A fixed size lets HDF5 rewrite an attribute in
place instead of freeing and reallocating object-header space, and an update
writes the copy first and flushes, then the primary and flushes: whatever
moment a writer is killed at, at least one of the two holds a complete
manifest, and the primary is read first.
"""

from __future__ import annotations

import json
from typing import Any

import h5py
import numpy as np
from h5py import h5a
from pydantic import ValidationError

from .errors import ManifestError
from .manifest import FORMAT, FORMAT_VERSION, Manifest

__all__ = [
    "BACKUP_ATTR",
    "MANIFEST_ATTR",
    "copy_problems",
    "has_manifest",
    "read_manifest",
    "write_manifest",
]

MANIFEST_ATTR = "shmstore_manifest"
BACKUP_ATTR = "shmstore_manifest_backup"
_MIN_CAPACITY = 4096
# HDF5 keeps attributes in the object header (file format of HDF5 1.6, which
# shmstore writes for its crash behaviour); one header message is < 64 KiB.
_MAX_CAPACITY = 60 * 1024


def has_manifest(file: h5py.File) -> bool:
    """True when *file* carries a shmstore manifest (either copy)."""
    return MANIFEST_ATTR in file.attrs or BACKUP_ATTR in file.attrs


def _parse(file: h5py.File, attr: str) -> Manifest:
    try:
        raw = file.attrs[attr]
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise ManifestError(f"the manifest attribute {attr!r} cannot be read: {err}") from err
    if isinstance(raw, np.ndarray) and raw.shape == ():
        raw = raw[()]
    if isinstance(raw, (bytes, np.bytes_)):
        try:
            text = bytes(raw).decode("utf-8", errors="strict")
        except UnicodeDecodeError as err:
            raise ManifestError(
                f"the manifest attribute {attr!r} is not valid UTF-8 text: {err}"
            ) from err
    elif isinstance(raw, str):
        text = raw
    else:
        raise ManifestError(
            f"the manifest attribute {attr!r} holds {type(raw).__name__}, not JSON text"
        )
    try:
        data: Any = json.loads(text)
    except (ValueError, RecursionError) as err:  # garbage nested deeper than Python recurses
        raise ManifestError(f"the manifest attribute {attr!r} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ManifestError(f"the manifest attribute {attr!r} is not a JSON object")
    if data.get("format") != FORMAT:
        raise ManifestError(
            f"the manifest attribute {attr!r} has format {data.get('format')!r}, "
            f"expected {FORMAT!r}"
        )
    version = data.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise ManifestError(
            f"the manifest has format version {version}, written by a newer shmstore; this "
            f"one reads version {FORMAT_VERSION}: upgrade shmstore to open this file"
        )
    try:
        return Manifest.model_validate(data)
    except (ValidationError, RecursionError) as err:
        raise ManifestError(f"the manifest attribute {attr!r} is invalid: {err}") from err


def copy_problems(file: h5py.File) -> list[str]:
    """What is wrong with each stored copy of the manifest (empty: both are valid).

    A store opens with one good copy; ``shmstore validate`` reports the other.
    """
    problems = []
    for attr in (MANIFEST_ATTR, BACKUP_ATTR):
        if attr not in file.attrs:
            problems.append(f"the manifest attribute {attr!r} is missing")
            continue
        try:
            _parse(file, attr)
        except ManifestError as err:
            problems.append(str(err))
    return problems


def read_manifest(file: h5py.File) -> Manifest | None:
    """The stored manifest of *file*, or ``None`` when it has none.

    :raises ManifestError: neither copy holds a valid manifest; the message
        is the primary copy's problem.
    """
    if not has_manifest(file):
        return None
    try:
        return _parse(file, MANIFEST_ATTR)
    except ManifestError as primary_error:
        if BACKUP_ATTR not in file.attrs:
            raise
        try:
            return _parse(file, BACKUP_ATTR)
        except ManifestError:
            raise primary_error from None


def _capacity(size: int) -> int:
    wanted = max(_MIN_CAPACITY, size + size // 4)
    return -(-wanted // 1024) * 1024


def _write_attr(file: h5py.File, attr: str, payload: bytes, capacity: int) -> None:
    value = np.array(payload.ljust(capacity), dtype=f"S{capacity}")
    existing = file.attrs.get_id(attr) if attr in file.attrs else None
    if existing is not None and existing.dtype == value.dtype and existing.shape == ():
        existing.write(value)
        return
    if existing is not None:
        h5a.delete(file.id, attr.encode())
    file.attrs.create(attr, value)


def write_manifest(file: h5py.File, manifest: Manifest) -> None:
    """Store *manifest* in both attributes of *file*, each flushed to the file.

    :raises ManifestError: the manifest is too large for an attribute.
    """
    payload = manifest.model_dump_json(exclude={"inferred"}).encode()
    current = file.attrs.get_id(MANIFEST_ATTR) if MANIFEST_ATTR in file.attrs else None
    capacity = current.dtype.itemsize if current is not None else 0
    if len(payload) > capacity:
        # Room to grow, but never past what an attribute holds: a manifest
        # that fits is written even when it leaves no room for the next one.
        capacity = min(_capacity(len(payload)), _MAX_CAPACITY)
    if len(payload) > capacity:
        raise ManifestError(
            f"the manifest needs {len(payload)} bytes, more than the {_MAX_CAPACITY} bytes an "
            f"HDF5 attribute can hold here ({len(manifest.arrays)} datasets): split the data "
            "over several files"
        )
    # The copy first: when the primary is torn, the copy is already whole.
    for attr in (BACKUP_ATTR, MANIFEST_ATTR):
        _write_attr(file, attr, payload, capacity)
        file.flush()
