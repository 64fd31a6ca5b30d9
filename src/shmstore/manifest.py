"""What a store holds, as pydantic models.

Metadata format 2 keeps one :class:`DatasetRecord` per dataset, as JSON in an
attribute of the dataset itself, and one :class:`StoreRecord` in the root
group.  A record is read and validated when its dataset is first used, never
all at open, so the cost of opening a store, and of reading, writing or
appending one dataset, does not grow with the number of datasets.
:class:`Manifest` gathers every dataset's :class:`ArrayInfo`; the store builds
it on demand (``store.manifest``).  Format 1 (shmstore 0.1.0) kept the whole
manifest in one root attribute; such stores still open, and are migrated on
their first write.

This module holds models only; reading and writing them is the store's job.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, model_validator

from ._dtype import DType

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "RECORD_FORMAT",
    "STORE_FORMAT",
    "ArrayInfo",
    "Checksums",
    "DatasetRecord",
    "Layout",
    "Manifest",
    "StoreRecord",
]

FORMAT = "shmstore-manifest"
"""The ``format`` of a :class:`Manifest` (and of the root attribute of format 1)."""
STORE_FORMAT = "shmstore-store"
"""The ``format`` of a :class:`StoreRecord`."""
RECORD_FORMAT = "shmstore-dataset"
"""The ``format`` of a :class:`DatasetRecord`."""
FORMAT_VERSION = 2
"""The metadata format this version writes; it reads 1 and 2, and refuses newer ones."""

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
_Generation = Annotated[str, Field(pattern=r"^[0-9a-f]{16,64}$")]


class Checksums(BaseModel):
    """Where a dataset's checksums are, and what they cover.

    ``per="range"`` (contiguous and appendable data): a CRC32C of every
    range of ``range_nbytes`` bytes of the data, in C order, cut also where
    an append began; ``per="chunk"`` (chunked data): a CRC32C of every
    stored chunk's bytes as they lie in the file (compressed, if it is).
    ``count`` checksums are in the hidden dataset ``location`` of the same
    file (fewer valid ones there means it is damaged), verified on every
    load into the cache and every ``read``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    algorithm: Literal["crc32c"] = "crc32c"
    per: Literal["range", "chunk"]
    range_nbytes: PositiveInt | None = None
    count: NonNegativeInt = 0
    location: Annotated[str, Field(pattern=r"^\.shmstore_sums/[0-9a-f]{16,64}$")]

    @model_validator(mode="after")
    def _range_for_ranges(self) -> Checksums:
        if (self.range_nbytes is None) == (self.per == "range"):
            raise ValueError(
                f"checksums per range need range_nbytes and only they have it (per "
                f"{self.per!r}, range_nbytes {self.range_nbytes})"
            )
        return self


class _Stored(BaseModel):
    """The description of a dataset's data, shared by records and infos."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    shape: tuple[NonNegativeInt, ...]
    dtype: DType
    layout: Layout
    chunks: tuple[Annotated[int, Field(ge=1)], ...] | None = None
    compression: str | None = None
    compression_opts: int | None = None
    appendable: bool = False
    version: NonNegativeInt = 0
    generation: _Generation | None = None
    data_offset: NonNegativeInt | None = None
    chunk_digest: str | None = None
    checksums: Checksums | None = None

    @model_validator(mode="after")
    def _chunks_match_layout(self) -> _Stored:
        if self.chunks is not None and len(self.chunks) != len(self.shape):
            raise ValueError(
                f"chunks {self.chunks} must have one entry per dimension of shape {self.shape}"
            )
        if (self.chunks is None) == (self.layout == "chunked"):
            raise ValueError(
                f"a chunked layout needs chunks and only it has them "
                f"(layout {self.layout!r}, chunks {self.chunks})"
            )
        return self


class ArrayInfo(_Stored):
    """One dataset: its shape, dtype and storage.

    ``shape[0]`` is the number of rows; ``nbytes`` is the size of the whole
    array in bytes.  ``generation`` identifies one ``write`` of the dataset
    (a random hex token; ``None`` for a dataset shmstore did not write):
    ``write``, overwrite and ``delete`` start a new one, ``append`` keeps it,
    because rows once appended never change.  ``version`` grows with every
    change of the dataset through shmstore, appends included, so a cached
    copy of an older version is never served.  ``data_offset`` is where the
    bytes of a memory-mappable dataset begin in the file holding them (the
    HDF5 file, or the raw file of an appendable one), in bytes: HDF5's format
    keeps no checksum of its headers, so the offset is recorded and checked,
    and a damaged header that points elsewhere is refused instead of read.
    ``chunk_digest`` does the same for the chunk index of a chunked dataset
    shmstore wrote: a digest of every chunk's coordinates, byte offset, size
    and filter mask.  ``checksums`` says where the checksums of the data
    are (:class:`Checksums`); ``None``: the data load unverified (a dataset
    of another tool, or of format 1, until ``Store.seal``).
    """

    name: _Name

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
    def verified(self) -> bool:
        """True when the data have checksums, verified on every load and ``read``."""
        return self.checksums is not None

    @property
    def memory_mappable(self) -> bool:
        """True when the bytes lie in one uncompressed block of one file."""
        return self.layout in ("contiguous", "external")


class DatasetRecord(_Stored):
    """The record a dataset carries (format 2): JSON in its attribute ``shmstore_record``.

    The same fields as :class:`ArrayInfo` less the name, which is where the
    dataset is, plus the format and its version.  ``generation`` is always
    set: every dataset shmstore writes has one.
    """

    format: Literal["shmstore-dataset"] = "shmstore-dataset"
    format_version: Literal[2] = 2
    generation: _Generation


class StoreRecord(BaseModel):
    """The record of the store (format 2): JSON in the root attribute ``shmstore_store``.

    It says which metadata format the file's records follow; the records
    themselves live with their datasets.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["shmstore-store"] = "shmstore-store"
    format_version: Literal[2] = 2


class Manifest(BaseModel):
    """Every dataset a store serves, keyed by dataset path (``"grp/sub/ds"``).

    Built on demand from the datasets' records (``store.manifest``).
    ``format_version`` is the metadata format of the file (1: one root
    attribute, as shmstore 0.1.0 wrote; 2: a record per dataset);
    ``inferred`` is true when the file has no shmstore metadata at all and
    every entry was read off the datasets (a file written by other tools).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["shmstore-manifest"] = "shmstore-manifest"
    format_version: Literal[1, 2] = 2
    inferred: bool = False
    arrays: dict[_Name, ArrayInfo] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _keys_are_names(self) -> Manifest:
        for key, info in self.arrays.items():
            if key != info.name:
                raise ValueError(f"manifest key {key!r} holds the entry of {info.name!r}")
        return self
