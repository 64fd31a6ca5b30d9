"""The manifest: what a store holds, as pydantic models.

The manifest is JSON text in the HDF5 file's root attribute
``shmstore_manifest``, valid against ``schemas/manifest.schema.json``.  It is
validated on every open and compared with the datasets themselves: a
manifest that disagrees with the file is an error, never wrong data.

This module holds models only; reading and writing them is the store's job.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, model_validator

from ._dtype import DType

__all__ = ["FORMAT", "FORMAT_VERSION", "ArrayInfo", "Layout", "Manifest"]

FORMAT = "shmstore-manifest"
FORMAT_VERSION = 1
"""The manifest format this version writes and reads; a newer one is refused."""

Layout = Literal["contiguous", "external", "chunked", "compact", "virtual"]
"""Where a dataset's bytes live.

* ``contiguous``: one block inside the HDF5 file (memory-mappable).
* ``external``: one raw file beside the HDF5 file (memory-mappable, appendable).
* ``chunked``: chunks, possibly compressed (not memory-mappable).
* ``compact``: inside the object header (tiny; not memory-mappable).
* ``virtual``: a view over other datasets (not memory-mappable).
"""

# Names shmstore writes are checked by the store; a file written by another
# tool may hold any HDF5 path, so the model only asks for a non-empty one.
_Name = Annotated[str, Field(min_length=1)]


class ArrayInfo(BaseModel):
    """One dataset: its shape, dtype and storage.

    ``shape[0]`` is the number of rows; ``nbytes`` is the size of the whole
    array in bytes.  ``version`` is the manifest revision at which the dataset
    last changed: every ``write``, ``append`` and ``delete`` moves it forward,
    so a cached copy of an older version is never served.  ``data_offset`` is
    where the bytes of a memory-mappable dataset begin in the file holding
    them (the HDF5 file, or the raw file of an appendable one), in bytes:
    HDF5's format keeps no checksum of its headers, so the offset is
    recorded and checked on every open, and a damaged header that points
    elsewhere is refused instead of read.  ``chunk_digest`` does the same for
    the chunk index of a chunked dataset shmstore wrote: a digest of every
    chunk's coordinates, byte offset, size and filter mask.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: _Name
    shape: tuple[NonNegativeInt, ...]
    dtype: DType
    layout: Layout
    chunks: tuple[Annotated[int, Field(ge=1)], ...] | None = None
    compression: str | None = None
    compression_opts: int | None = None
    appendable: bool = False
    version: NonNegativeInt = 0
    data_offset: NonNegativeInt | None = None
    chunk_digest: str | None = None

    @property
    def nbytes(self) -> int:
        """Size of the whole array in bytes."""
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def rows(self) -> int:
        """Number of rows (length of axis 0; 1 for a scalar dataset)."""
        return self.shape[0] if self.shape else 1

    @property
    def row_nbytes(self) -> int:
        """Size of one row in bytes."""
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    @property
    def memory_mappable(self) -> bool:
        """True when the bytes lie in one uncompressed block of one file."""
        return self.layout in ("contiguous", "external")

    @model_validator(mode="after")
    def _chunks_match_layout(self) -> ArrayInfo:
        if self.chunks is not None and len(self.chunks) != len(self.shape):
            raise ValueError(
                f"chunks {self.chunks} of {self.name!r} must have one entry per "
                f"dimension of shape {self.shape}"
            )
        if (self.chunks is None) == (self.layout == "chunked"):
            raise ValueError(
                f"{self.name!r}: a chunked layout needs chunks and only it has them "
                f"(layout {self.layout!r}, chunks {self.chunks})"
            )
        return self


class Manifest(BaseModel):
    """Everything a store holds, keyed by dataset path (``"grp/sub/ds"``).

    ``revision`` counts the changes made through shmstore; ``inferred`` is
    true when the file had no manifest and this one was read off the
    datasets (a file written by other tools).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["shmstore-manifest"] = "shmstore-manifest"
    format_version: Literal[1] = 1
    revision: NonNegativeInt = 0
    inferred: bool = False
    arrays: dict[_Name, ArrayInfo] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _keys_are_names(self) -> Manifest:
        for key, info in self.arrays.items():
            if key != info.name:
                raise ValueError(f"manifest key {key!r} holds the entry of {info.name!r}")
        return self
