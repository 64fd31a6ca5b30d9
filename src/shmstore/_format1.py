"""Reading the metadata of format 1 (shmstore 0.1.0): one manifest in the root.

Format 1 kept the whole manifest as JSON, padded to a fixed capacity, in two
root attributes: ``shmstore_manifest`` and its copy
``shmstore_manifest_backup`` (written copy first, so that a killed writer
left at least one whole; the primary is read first).  Such stores open and
read as before; their first write migrates them to format 2 (a record per
dataset, ``_metadata``), which removes both attributes.  Nothing here
writes format 1.
"""

from __future__ import annotations

from typing import Annotated, Literal

import h5py
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    ValidationError,
    model_validator,
)

from ._metadata import json_attr
from .errors import ManifestError
from .manifest import FORMAT, ArrayInfo

_VERSION = 1


class Format1Manifest(BaseModel):
    """The root manifest of format 1, as shmstore 0.1.0 wrote it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["shmstore-manifest"] = "shmstore-manifest"
    format_version: Literal[1] = 1
    revision: NonNegativeInt = 0
    inferred: bool = False
    arrays: dict[Annotated[str, Field(min_length=1)], ArrayInfo] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _keys_are_names(self) -> Format1Manifest:
        for key, info in self.arrays.items():
            if key != info.name:
                raise ValueError(f"manifest key {key!r} holds the entry of {info.name!r}")
        return self


__all__ = [
    "BACKUP_ATTR",
    "MANIFEST_ATTR",
    "Format1Manifest",
    "copy_problems",
    "has_manifest",
    "read_manifest",
]

MANIFEST_ATTR = "shmstore_manifest"
BACKUP_ATTR = "shmstore_manifest_backup"


def has_manifest(file: h5py.File) -> bool:
    """True when *file* carries a shmstore manifest (either copy)."""
    return MANIFEST_ATTR in file.attrs or BACKUP_ATTR in file.attrs


def _parse(file: h5py.File, attr: str) -> Format1Manifest:
    data = json_attr(file, attr, "the root manifest")
    if data.get("format") != FORMAT:
        raise ManifestError(
            f"the manifest attribute {attr!r} has format {data.get('format')!r}, "
            f"expected {FORMAT!r}"
        )
    version = data.get("format_version")
    if isinstance(version, int) and version > _VERSION:
        raise ManifestError(
            f"the manifest attribute {attr!r} has format version {version}; shmstore keeps "
            f"only version {_VERSION} there (later formats keep a record per dataset): the "
            "attribute was written by another program; remove it"
        )
    try:
        return Format1Manifest.model_validate(data)
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


def read_manifest(file: h5py.File) -> Format1Manifest | None:
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
