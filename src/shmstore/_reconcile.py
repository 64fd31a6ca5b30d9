"""Checking a stored manifest against the datasets an HDF5 file really holds.

Pure functions over the manifest models: the store reads both sides, this
decides what may be served.  A disagreement is an error naming both values,
never wrong data, with one exception: an appendable dataset longer than its
manifest entry is an append whose writer died after growing the extent and
before rewriting the manifest; its rows were written before the extent, so
they are complete and kept.
"""

from __future__ import annotations

import logging

from .errors import ManifestError
from .manifest import ArrayInfo, Manifest

__all__ = ["needs_repair", "reconcile"]

_log = logging.getLogger("shmstore")


def _check_offset(info: ArrayInfo, found: ArrayInfo) -> None:
    """Refuse a dataset whose bytes are not where shmstore wrote them (a damaged header)."""
    if info.data_offset is not None and found.data_offset != info.data_offset:
        raise ManifestError(
            f"manifest says the data of {info.name!r} begin at byte {info.data_offset}, the "
            f"file's header says {found.data_offset}: the header is damaged (or another tool "
            "such as h5repack rewrote the file); refusing to serve data from the wrong place"
        )


def _checked(info: ArrayInfo, found: ArrayInfo, where: str) -> ArrayInfo:
    """*found* (the dataset) with *info*'s version, if the two agree."""
    if found.dtype != info.dtype:
        raise ManifestError(
            f"manifest says {info.name!r} has dtype {info.dtype}, the file holds "
            f"{found.dtype}: refusing to serve data of the wrong type"
        )
    if found.shape == info.shape:
        _check_offset(info, found)
        return found.model_copy(update={"version": info.version, "chunk_digest": info.chunk_digest})
    same_rows = len(found.shape) == len(info.shape) and found.shape[1:] == info.shape[1:]
    if info.appendable and same_rows and found.shape[0] > info.shape[0]:
        _log.warning(
            "%s: %r has %d rows, its manifest %d: keeping the rows of an interrupted append",
            where,
            info.name,
            found.shape[0],
            info.shape[0],
        )
        _check_offset(info, found)
        return found.model_copy(update={"version": info.version})
    raise ManifestError(
        f"manifest says {info.name!r} has shape {info.shape}, the file holds {found.shape}: "
        "refusing to serve data of the wrong shape"
    )


def reconcile(
    stored: Manifest | None,
    live: dict[str, ArrayInfo],
    unsupported: dict[str, str],
    where: str,
) -> Manifest:
    """The manifest to serve: *stored* checked against the *live* datasets.

    :param stored: the manifest in the file, or ``None`` (then it is inferred).
    :param live: what each servable dataset holds, read off the file.
    :param unsupported: datasets that cannot be served, and why.
    :param where: the file, for messages.
    :raises ManifestError: a listed dataset is missing, unservable, or holds
        another dtype or shape than the manifest says.
    """
    if stored is None:
        return Manifest(inferred=True, arrays=live)
    result: dict[str, ArrayInfo] = {}
    for name, info in stored.arrays.items():
        if name in unsupported:
            raise ManifestError(f"manifest lists {name!r}, but {unsupported[name]}")
        found = live.get(name)
        if found is None:
            raise ManifestError(
                f"manifest lists {name!r} ({info.shape} {info.dtype}), but the file has no "
                "such dataset: the file was changed by another tool; restore it, or delete "
                "the attribute 'shmstore_manifest' to have the manifest inferred"
            )
        result[name] = _checked(info, found, where)
    for name, found in live.items():
        result.setdefault(name, found)  # added by another tool: served as inferred
    return stored.model_copy(update={"arrays": result, "inferred": False})


def needs_repair(stored: Manifest, served: Manifest) -> bool:
    """True when *served* differs from *stored* in what it lists or their shapes."""
    return any(
        stored.arrays.get(name) is None or stored.arrays[name].shape != info.shape
        for name, info in served.arrays.items()
    )
